//! `llama_tensor_get_type_impl` of llama.cpp src/llama-quant.cpp for the
//! presets llmq-gpu writes: which tensors of a model get more bits than
//! the preset's base type. The k-quant mixes (`_S`, `_M`, `_L`) give the
//! value projections and the down projections of some layers one or two
//! types more, and the output head Q6_K. The rules count tensors in the
//! order llama.cpp visits them (layer, then name), so the model's tensor
//! names are given up front.

use super::presets::Preset;
use super::GgmlType;

/// The model facts the rules read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelFacts {
    /// `block_count`.
    pub n_layer: usize,
    /// Query heads per key-value head (`head_count / head_count_kv`).
    pub n_gqa: u32,
    /// `expert_count`, at least 1.
    pub n_expert: u32,
    /// Falcon's rules differ in places.
    pub falcon: bool,
    /// llama.cpp's `LLM_TYPE_70B` (80 layers of a grouped-query Llama,
    /// Qwen2, Deci or OLMo): its value projections get more bits.
    pub is_70b: bool,
}

impl ModelFacts {
    /// From the GGUF metadata of `arch` (missing keys read as a dense
    /// model without grouped-query attention).
    pub fn from_metadata(arch: &str, get: impl Fn(&str) -> Option<u64>) -> Self {
        let key = |k: &str| get(&format!("{arch}.{k}"));
        let n_layer = key("block_count").unwrap_or(0) as usize;
        let heads = key("attention.head_count").unwrap_or(1).max(1);
        let kv = key("attention.head_count_kv").unwrap_or(heads).max(1);
        let n_gqa = (heads / kv) as u32;
        let is_70b = n_layer == 80
            && match arch {
                "llama" => heads != kv,
                "qwen2" | "deci" | "olmo" => true,
                _ => false,
            };
        Self {
            n_layer,
            n_gqa,
            n_expert: key("expert_count").unwrap_or(1).max(1) as u32,
            falcon: arch == "falcon",
            is_70b,
        }
    }
}

/// llama-quant.cpp `tensor_category`, by the same substring tests in the
/// same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    match name {
        "output.weight" => return Category::Output,
        "token_embd.weight" | "per_layer_token_embd.weight" => return Category::TokenEmbd,
        _ => {}
    }
    // attn_qkv and attn_kv_b count as value projections (category_is_attn_v).
    const ORDER: [(&str, Category); 9] = [
        ("attn_qkv.weight", Category::AttnV),
        ("attn_kv_b.weight", Category::AttnV),
        ("attn_v.weight", Category::AttnV),
        ("attn_k.weight", Category::AttnK),
        ("attn_q.weight", Category::AttnQ),
        ("attn_output.weight", Category::AttnOutput),
        ("ffn_up", Category::FfnUp),
        ("ffn_gate", Category::FfnGate),
        ("ffn_down", Category::FfnDown),
    ];
    ORDER
        .iter()
        .find(|(s, _)| name.contains(s))
        .map_or(Category::Other, |&(_, c)| c)
}

/// `use_more_bits`: the first and last eighth of the layers and every
/// third in between.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2
}

/// llama.cpp's visiting order (`weight_name_comparer`): by layer number
/// (`blk.N.`, −1 for the rest), then by name.
pub fn visit_order(names: &[&str]) -> Vec<usize> {
    let layer = |n: &str| -> i64 {
        n.strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|d| d.parse().ok())
            .unwrap_or(-1)
    };
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| (layer(names[a]), names[a]).cmp(&(layer(names[b]), names[b])));
    order
}

/// The per-tensor rules with llama.cpp's counters; call [`Mix::choose`]
/// for each quantized tensor without a `--tensor-type` rule, in
/// [`visit_order`].
pub struct Mix {
    preset: Preset,
    facts: ModelFacts,
    tied: bool,
    n_attn_v: usize,
    i_attn_v: usize,
    i_ffn_down: usize,
}

impl Mix {
    /// `names`: every tensor of the model.
    pub fn new(preset: Preset, facts: ModelFacts, names: &[&str]) -> Self {
        Self {
            preset,
            facts,
            tied: !names.contains(&"output.weight"),
            n_attn_v: names
                .iter()
                .filter(|n| category(n) == Category::AttnV)
                .count(),
            i_attn_v: 0,
            i_ffn_down: 0,
        }
    }

    pub fn preset(&self) -> Preset {
        self.preset
    }

    /// The type of quantized tensor `name` whose rows hold `row` values
    /// (before the fallback for rows its blocks do not divide).
    pub fn choose(&mut self, name: &str, row: u64) -> GgmlType {
        use GgmlType as T;
        use Preset as P;
        let (p, f) = (self.preset, self.facts);
        let base = p.base();
        if !base.is_quantized() {
            return base;
        }
        let cat = category(name);
        match cat {
            // The head, and the token embedding when it is the head too.
            Category::Output | Category::TokenEmbd if cat == Category::Output || self.tied => {
                if f.falcon || !row.is_multiple_of(base.block_size() as u64) {
                    T::Q8_0
                } else if base != T::Q8_0 {
                    T::Q6K
                } else {
                    base
                }
            }
            Category::AttnV => {
                let (i, n) = (self.i_attn_v, self.n_attn_v);
                self.i_attn_v += 1;
                let mut t = match p {
                    P::Q2K if f.n_gqa >= 4 => T::Q4K,
                    P::Q2K => T::Q3K,
                    P::Q3KM if i < 2 => T::Q5K,
                    P::Q3KM => T::Q4K,
                    P::Q3KL => T::Q5K,
                    P::Iq4Nl if f.n_gqa >= 4 => T::Q5K,
                    P::Q4KM | P::Q5KM if use_more_bits(i, n) => T::Q6K,
                    P::Q4KS if i < 4 => T::Q5K,
                    _ => base,
                };
                if f.is_70b && matches!(t, T::Q3K | T::Q4K) {
                    t = T::Q5K;
                }
                if f.n_expert == 8 {
                    t = T::Q8_0;
                }
                t
            }
            Category::AttnK if f.n_expert == 8 => T::Q8_0,
            Category::FfnDown => {
                let (i, n) = (self.i_ffn_down, f.n_layer);
                self.i_ffn_down += 1;
                match p {
                    P::Q2K => T::Q3K,
                    P::Q3KM if i < n / 16 => T::Q5K,
                    P::Q3KM if !f.falcon || use_more_bits(i, n) => T::Q4K,
                    P::Q3KM => T::Q3K,
                    P::Q3KL if f.falcon => T::Q4K,
                    P::Q3KL => T::Q5K,
                    P::Q4KM if f.falcon && i < n / 16 => T::Q6K,
                    P::Q4KM if f.falcon && use_more_bits(i, n) => T::Q5K,
                    P::Q4KM if !f.falcon && use_more_bits(i, n) => T::Q6K,
                    P::Q4KM => base,
                    // Without an imatrix (llmq-gpu gives llama.cpp none).
                    P::Iq4Nl if i < n / 8 => T::Q5K,
                    P::Q5KM if use_more_bits(i, n) => T::Q6K,
                    P::Q4KS if !f.falcon && i < n / 8 => T::Q5K,
                    _ => base,
                }
            }
            Category::AttnOutput if !f.falcon && f.n_expert == 8 => match p {
                P::Q2K | P::Q3KS | P::Q3KM | P::Iq4Nl | P::Q4KS | P::Q4KM => T::Q5K,
                _ => base,
            },
            Category::AttnOutput if !f.falcon => match p {
                P::Q2K => T::Q3K,
                P::Q3KM => T::Q4K,
                P::Q3KL => T::Q5K,
                _ => base,
            },
            Category::AttnOutput if p == P::Q3KL => T::Q4K,
            _ => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> ModelFacts {
        ModelFacts {
            n_layer: 30,
            n_gqa: 3,
            n_expert: 1,
            falcon: false,
            is_70b: false,
        }
    }

    /// Q4_K_M on a 30-layer model: attn_v and ffn_down of layers 0–2,
    /// 26–29 and every third between (5, 8, ...) get Q6_K, as
    /// llama-quantize prints for SmolLM2.
    #[test]
    fn q4_k_m_gives_more_bits_where_llama_cpp_does() {
        let more: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        let names: Vec<String> = (0..30)
            .flat_map(|l| ["attn_v", "ffn_down", "attn_q"].map(|t| format!("blk.{l}.{t}.weight")))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut mix = Mix::new(Preset::Q4KM, smollm2(), &refs);
        let mut got = vec![GgmlType::F32; refs.len()];
        for i in visit_order(&refs) {
            got[i] = mix.choose(refs[i], 1536);
        }
        for l in 0..30 {
            let want = if more.contains(&l) {
                GgmlType::Q6K
            } else {
                GgmlType::Q4K
            };
            assert_eq!(got[3 * l], want, "attn_v {l}");
            assert_eq!(got[3 * l + 1], want, "ffn_down {l}");
            assert_eq!(got[3 * l + 2], GgmlType::Q4K);
        }
        // blk.10 is visited after blk.9, not after blk.1.
        assert_eq!(
            visit_order(&["blk.10.a", "blk.9.a", "output.weight"]),
            [2, 1, 0]
        );
    }

    #[test]
    fn the_head_and_small_mixes() {
        let f = smollm2();
        let mut mix = Mix::new(
            Preset::Q3KM,
            f,
            &["token_embd.weight", "blk.0.attn_v.weight"],
        );
        assert_eq!(mix.choose("token_embd.weight", 576), GgmlType::Q8_0);
        assert_eq!(mix.choose("blk.0.attn_v.weight", 576), GgmlType::Q5K);
        assert_eq!(mix.choose("blk.0.attn_output.weight", 576), GgmlType::Q4K);
        let mut mix = Mix::new(Preset::Q2K, f, &["output.weight"]);
        assert_eq!(mix.choose("output.weight", 4096), GgmlType::Q6K);
        assert_eq!(mix.choose("token_embd.weight", 4096), GgmlType::Q2K);
        assert_eq!(mix.choose("blk.3.ffn_down.weight", 4096), GgmlType::Q3K);
    }
}
