//! Tensor names and q/k row orders between the two ecosystems: GGUF
//! (`blk.3.attn_q.weight`, q/k rows permuted by llama.cpp's converter so
//! that RoPE rotates adjacent pairs) and transformers
//! (`model.layers.3.self_attn.q_proj.weight`, half-split pairs).

use crate::error::{Error, Result};
use crate::model::arch::ArchConfig;

/// GGUF block tensor ↔ transformers module, per layer.
const BLOCK_NAMES: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// GGUF ↔ transformers names outside the blocks.
const TOP_NAMES: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// True when llama.cpp stores this architecture's q/k rows permuted
/// (its Llama converter does; Qwen2 keeps transformers' layout and runs
/// NeoX-style RoPE).
pub fn permutes_qk(arch: &ArchConfig) -> bool {
    arch.architecture != "qwen2"
}

/// Heads of the q/k rows of GGUF block tensor `what` (`attn_q`, `attn_k`)
/// when `arch` permutes them.
fn qk_heads(what: &str, arch: &ArchConfig) -> Option<usize> {
    match what {
        "attn_q" if permutes_qk(arch) => Some(arch.num_heads),
        "attn_k" if permutes_qk(arch) => Some(arch.num_kv_heads),
        _ => None,
    }
}

/// The transformers name of GGUF tensor `name`, and whether its rows are
/// q/k rows to un-permute (`Some(heads)`); `None` for tensors transformers
/// has no place for (`rope_freqs.weight`: config.json's rope_scaling).
pub fn hf_name(name: &str, arch: &ArchConfig) -> Result<Option<(String, Option<usize>)>> {
    if name == "rope_freqs.weight" {
        return Ok(None);
    }
    if let Some((_, hf)) = TOP_NAMES.iter().find(|(g, _)| *g == name) {
        return Ok(Some((hf.to_string(), None)));
    }
    let unknown = || unknown_tensor(name, arch);
    let rest = name.strip_prefix("blk.").ok_or_else(unknown)?;
    let (layer, what) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    let (what, param) = what.rsplit_once('.').ok_or_else(unknown)?;
    let (_, hf) = BLOCK_NAMES
        .iter()
        .find(|(g, _)| *g == what)
        .ok_or_else(unknown)?;
    let heads = qk_heads(what, arch);
    Ok(Some((format!("model.layers.{layer}.{hf}.{param}"), heads)))
}

/// The GGUF name of transformers tensor `name`, and whether its rows are
/// q/k rows to permute into llama.cpp's layout (`Some(heads)`).
pub fn gguf_name(name: &str, arch: &ArchConfig) -> Result<(String, Option<usize>)> {
    if let Some((g, _)) = TOP_NAMES.iter().find(|(_, hf)| *hf == name) {
        return Ok((g.to_string(), None));
    }
    let unknown = || unknown_tensor(name, arch);
    let rest = name.strip_prefix("model.layers.").ok_or_else(unknown)?;
    let (layer, what) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    let (what, param) = what.rsplit_once('.').ok_or_else(unknown)?;
    let (g, _) = BLOCK_NAMES
        .iter()
        .find(|(_, hf)| *hf == what)
        .ok_or_else(unknown)?;
    Ok((format!("blk.{layer}.{g}.{param}"), qk_heads(g, arch)))
}

fn unknown_tensor(name: &str, arch: &ArchConfig) -> Error {
    Error::Config(format!(
        "tensor '{name}' has no counterpart in the other format for a {} model; llmq-gpu \
         converts the Llama family's tensors",
        arch.architecture
    ))
}

/// `order[r]`: the GGUF row that is transformers row `r` of a q/k weight
/// of `rows` rows over `heads` heads. llama.cpp's `permute`
/// (`w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2)`) puts transformers
/// row `h·hd + j·hd/2 + i` at GGUF row `h·hd + 2i + j`.
pub fn hf_row_order(rows: usize, heads: usize) -> Result<Vec<usize>> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(Error::Config(format!(
            "cannot (un)permute {rows} q/k rows over {heads} heads"
        )));
    }
    let hd = rows / heads;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                order[h * hd + j * hd / 2 + i] = h * hd + 2 * i + j;
            }
        }
    }
    Ok(order)
}

/// The inverse order: `order[g]` is the transformers row that is GGUF row `g`.
pub fn gguf_row_order(rows: usize, heads: usize) -> Result<Vec<usize>> {
    let hf = hf_row_order(rows, heads)?;
    let mut inv = vec![0; rows];
    for (r, &g) in hf.iter().enumerate() {
        inv[g] = r;
    }
    Ok(inv)
}

/// Rows `order[0], order[1], ...` of `data` (rows of `row_bytes` bytes).
pub fn gather_rows(data: &[u8], row_bytes: usize, order: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for &r in order {
        out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
    }
    out
}

/// GGUF q/k rows of f32 values in transformers' order.
pub fn unpermute(x: &[f32], rows: usize, heads: usize) -> Result<Vec<f32>> {
    let cols = x.len() / rows.max(1);
    let order = hf_row_order(rows, heads)?;
    Ok(order
        .iter()
        .flat_map(|&g| x[g * cols..(g + 1) * cols].iter().copied())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch(name: &str) -> ArchConfig {
        ArchConfig {
            architecture: name.into(),
            hidden_size: 8,
            intermediate_size: 16,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            vocab_size: 10,
            context_length: 16,
            rope_theta: 1e4,
            rms_norm_eps: 1e-5,
            tied_embeddings: false,
            rope_adjacent_pairs: true,
            rope_scaling: None,
        }
    }

    /// Un-permuting inverts llama.cpp's `permute` (convert_hf_to_gguf.py):
    /// `w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2)`.
    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (heads, hd, cols) = (3, 4, 2);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    // permute: new index (h, i, j) takes old (h, j, i).
                    let (new, old) = (h * hd + i * 2 + j, h * hd + j * hd / 2 + i);
                    gguf[new * cols..][..cols].copy_from_slice(&hf[old * cols..][..cols]);
                }
            }
        }
        assert_eq!(unpermute(&gguf, rows, heads).unwrap(), hf);
        assert!(unpermute(&gguf, rows, 5).is_err());
        // The GGUF order applied to transformers rows gives the GGUF rows back.
        let order = gguf_row_order(rows, heads).unwrap();
        let back = gather_rows(bytemuck::cast_slice(&hf), cols * 4, &order);
        assert_eq!(back, bytemuck::cast_slice::<f32, u8>(&gguf));
    }

    #[test]
    fn names_map_both_ways() {
        let a = arch("llama");
        for g in [
            "token_embd.weight",
            "output.weight",
            "output_norm.weight",
            "blk.7.attn_q.weight",
            "blk.0.attn_k.bias",
            "blk.12.ffn_down.weight",
        ] {
            let (hf, heads) = hf_name(g, &a).unwrap().unwrap();
            let (back, heads2) = gguf_name(&hf, &a).unwrap();
            assert_eq!((back.as_str(), heads), (g, heads2));
        }
        assert_eq!(
            hf_name("blk.1.attn_q.weight", &a).unwrap().unwrap().1,
            Some(2)
        );
        assert_eq!(
            gguf_name("model.layers.1.self_attn.k_proj.weight", &a)
                .unwrap()
                .1,
            Some(1)
        );
        // Qwen2 keeps transformers' q/k rows.
        let q = arch("qwen2");
        assert_eq!(hf_name("blk.1.attn_q.weight", &q).unwrap().unwrap().1, None);
        assert!(hf_name("rope_freqs.weight", &a).unwrap().is_none());
        assert!(gguf_name("model.layers.0.mlp.experts.weight", &a).is_err());
        assert!(gguf_name("vision_tower.weight", &a).is_err());
    }
}
