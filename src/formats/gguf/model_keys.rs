//! The metadata a GGUF file of a model needs besides its tokenizer, from
//! the model's [`ArchConfig`], as llama.cpp's `convert_hf_to_gguf.py`
//! writes it for the Llama family; and Llama 3.1's `rope_freqs.weight`,
//! which llama.cpp reads instead of a rope-scaling key.

use super::GgufValue;
use crate::error::{Error, Result};
use crate::model::arch::{ArchConfig, RopeScaling};

/// The `general.architecture` llama.cpp runs `arch` as: Mistral's
/// checkpoints are Llama models to it.
pub fn gguf_architecture(arch: &ArchConfig) -> Result<&'static str> {
    match arch.architecture.as_str() {
        "llama" | "mistral" => Ok("llama"),
        "qwen2" => Ok("qwen2"),
        other => Err(Error::Config(format!(
            "GGUF output supports the Llama family (llama, mistral, qwen2), not '{other}'"
        ))),
    }
}

/// `general.*` and `{arch}.*` keys of `arch`, named `name`.
pub fn arch_keys(arch: &ArchConfig, name: &str) -> Result<Vec<(String, GgufValue)>> {
    let a = gguf_architecture(arch)?;
    let u32_of = |what: &str, v: usize| {
        u32::try_from(v).map_err(|_| Error::Config(format!("{what} = {v} does not fit GGUF's u32")))
    };
    let mut keys: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), GgufValue::String(a.into())),
        ("general.type".into(), GgufValue::String("model".into())),
        ("general.name".into(), GgufValue::String(name.into())),
    ];
    let mut put = |k: &str, v: GgufValue| keys.push((format!("{a}.{k}"), v));
    // In convert_hf_to_gguf.py's order.
    let counts = [
        ("block_count", arch.num_layers),
        ("context_length", arch.context_length),
        ("embedding_length", arch.hidden_size),
        ("feed_forward_length", arch.intermediate_size),
        ("attention.head_count", arch.num_heads),
        ("attention.head_count_kv", arch.num_kv_heads),
    ];
    for (k, v) in counts {
        put(k, GgufValue::U32(u32_of(k, v)?));
    }
    put("rope.freq_base", GgufValue::F32(arch.rope_theta));
    put(
        "attention.layer_norm_rms_epsilon",
        GgufValue::F32(arch.rms_norm_eps),
    );
    put(
        "vocab_size",
        GgufValue::U32(u32_of("vocab_size", arch.vocab_size)?),
    );
    put(
        "rope.dimension_count",
        GgufValue::U32(u32_of("rope.dimension_count", arch.head_dim())?),
    );
    match &arch.rope_scaling {
        None | Some(RopeScaling::Llama3 { .. }) => {}
        Some(RopeScaling::Linear { factor }) => {
            put("rope.scaling.type", GgufValue::String("linear".into()));
            put("rope.scaling.factor", GgufValue::F32(*factor));
        }
        Some(RopeScaling::Unsupported { name }) => {
            return Err(Error::Config(format!(
                "the model's RoPE scaling '{name}' has no GGUF form llmq-gpu writes"
            )))
        }
    }
    Ok(keys)
}

/// Llama 3.1's per-frequency divisors as llama.cpp's converter computes
/// them (`LlamaModel.generate_extra_tensors`): `head_dim / 2` values, or
/// `None` when the model has no Llama 3 scaling.
pub fn rope_freqs(arch: &ArchConfig) -> Option<Vec<f32>> {
    let Some(RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_context_length,
    }) = arch.rope_scaling
    else {
        return None;
    };
    let dim = arch.head_dim();
    let (base, old) = (arch.rope_theta as f64, original_context_length as f64);
    let (lo, hi, factor) = (
        low_freq_factor as f64,
        high_freq_factor as f64,
        factor as f64,
    );
    let (low_wavelen, high_wavelen) = (old / lo, old / hi);
    Some(
        (0..dim / 2)
            .map(|i| {
                let freq = 1.0 / base.powf((2 * i) as f64 / dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let f = if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (old / wavelen - lo) / (hi - lo);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                };
                f as f32
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The divisors undo exactly what [`RopeScaling::apply`] does to the
    /// inverse frequencies (which the forward pass uses for HF models).
    #[test]
    fn rope_freqs_match_the_forward_scaling() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context_length: 8192,
        };
        let arch = ArchConfig {
            architecture: "llama".into(),
            hidden_size: 4096,
            intermediate_size: 14336,
            num_layers: 1,
            num_heads: 32,
            num_kv_heads: 8,
            vocab_size: 10,
            context_length: 131072,
            rope_theta: 500000.0,
            rms_norm_eps: 1e-5,
            tied_embeddings: false,
            rope_adjacent_pairs: false,
            rope_scaling: Some(scaling.clone()),
        };
        let divisors = rope_freqs(&arch).unwrap();
        let dim = arch.head_dim();
        let base: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / 500000f64.powf((2 * i) as f64 / dim as f64))
            .collect();
        let mut scaled = base.clone();
        scaling.apply(&mut scaled).unwrap();
        for i in 0..dim / 2 {
            let want = base[i] / scaled[i];
            assert!((divisors[i] as f64 - want).abs() < 1e-5 * want, "{i}");
        }
        assert!(divisors.contains(&1.0) && divisors.contains(&8.0));
        let keys = arch_keys(&arch, "m").unwrap();
        assert!(keys.iter().any(|(k, _)| k == "llama.rope.dimension_count"));
        assert!(!keys.iter().any(|(k, _)| k.contains("scaling")));
    }
}
