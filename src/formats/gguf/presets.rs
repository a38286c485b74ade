//! Which ggml type each tensor of a GGUF file gets: `llama-quantize`'s
//! presets (`LLAMA_FTYPE_*`), its choice of the tensors it quantizes, its
//! per-tensor mix (`llama_tensor_get_type` in llama.cpp
//! src/llama-quant.cpp) and `--tensor-type REGEX=TYPE` overrides.

use super::GgmlType;
use crate::encoding::ggml::quantizable;
use crate::error::{Error, Result};

/// Elements per k-quant super-block: types built on it need rows of a
/// multiple of 256.
const QK_K: u64 = 256;

/// A `llama-quantize` preset: the type most weights get, and the
/// `general.file_type` it records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
}

/// (preset, name, `llama_ftype` id, base type).
const PRESETS: &[(Preset, &str, u32, GgmlType)] = &[
    (Preset::F32, "F32", 0, GgmlType::F32),
    (Preset::F16, "F16", 1, GgmlType::F16),
    (Preset::Bf16, "BF16", 32, GgmlType::Bf16),
    (Preset::Q8_0, "Q8_0", 7, GgmlType::Q8_0),
    (Preset::Q4_0, "Q4_0", 2, GgmlType::Q4_0),
    (Preset::Q4_1, "Q4_1", 3, GgmlType::Q4_1),
    (Preset::Q5_0, "Q5_0", 8, GgmlType::Q5_0),
    (Preset::Q5_1, "Q5_1", 9, GgmlType::Q5_1),
];

impl Preset {
    /// A preset by its llama.cpp name (`Q4_0`, `q8_0`, ...).
    pub fn parse(name: &str) -> Result<Self> {
        PRESETS
            .iter()
            .find(|p| p.1.eq_ignore_ascii_case(name))
            .map(|p| p.0)
            .ok_or_else(|| {
                let known: Vec<&str> = PRESETS.iter().map(|p| p.1).collect();
                Error::Config(format!(
                    "unknown GGUF type preset '{name}'; llmq-gpu writes {} (the k-quant and \
                     IQ presets are not written yet)",
                    known.join(", ")
                ))
            })
    }
    fn entry(self) -> &'static (Preset, &'static str, u32, GgmlType) {
        // PRESETS lists every variant.
        PRESETS.iter().find(|p| p.0 == self).unwrap_or(&PRESETS[0])
    }
    pub fn name(self) -> &'static str {
        self.entry().1
    }
    /// `general.file_type` (`enum llama_ftype`).
    pub fn file_type(self) -> u32 {
        self.entry().2
    }
    /// The type of every quantized tensor without a rule of its own.
    pub fn base(self) -> GgmlType {
        self.entry().3
    }
}

/// A ggml type by name, for `--tensor-type` (`q8_0`, `F16`, ...); only
/// types llmq-gpu writes.
pub fn parse_type(name: &str) -> Result<GgmlType> {
    let ty = (0..64)
        .filter_map(GgmlType::from_id)
        .find(|t| t.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| Error::Config(format!("unknown ggml type '{name}'")))?;
    if !quantizable(ty) {
        return Err(Error::Config(format!(
            "ggml type {} is not one llmq-gpu writes yet",
            ty.name()
        )));
    }
    Ok(ty)
}

/// `--tensor-type REGEX=TYPE`: tensors whose name the pattern finds get
/// the type (the first matching rule wins, as in `llama-quantize`).
#[derive(Clone, Debug)]
pub struct TypeRule {
    pub pattern: regex::Regex,
    pub ty: GgmlType,
}

impl std::str::FromStr for TypeRule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (pattern, ty) = s.rsplit_once('=').ok_or_else(|| {
            Error::Config(format!(
                "--tensor-type '{s}': expected REGEX=TYPE, e.g. 'ffn_down=Q8_0'"
            ))
        })?;
        let pattern = regex::Regex::new(pattern)
            .map_err(|e| Error::Config(format!("--tensor-type '{s}': {e}")))?;
        Ok(Self {
            pattern,
            ty: parse_type(ty)?,
        })
    }
}

/// Whether `llama-quantize` quantizes the tensor at all: 2D and larger
/// weights, not norms (the rest is copied as stored).
pub fn is_quantized_tensor(name: &str, dims: &[u64]) -> bool {
    name.ends_with("weight")
        && dims.iter().filter(|&&d| d > 1).count() >= 2
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("pos_embd")
        && !name.contains("token_types")
}

/// The type `llama_tensor_get_type` gives a tensor with rows of
/// `row` values: the output head (the token embedding when the model
/// ties them) takes Q8_0 when its rows are no multiple of 256 and Q6_K
/// otherwise (unless the preset is Q8_0); every other weight the base.
/// Non-quantized presets take the base everywhere.
pub fn preset_type(preset: Preset, name: &str, row: u64, has_output: bool) -> GgmlType {
    let base = preset.base();
    if !base.is_quantized() {
        return base;
    }
    let is_output = name == "output.weight" || (!has_output && name == "token_embd.weight");
    match is_output {
        true if !row.is_multiple_of(QK_K) => GgmlType::Q8_0,
        true if base != GgmlType::Q8_0 => GgmlType::Q6K,
        _ => base,
    }
}

/// `tensor_type_fallback` of llama-quant.cpp: the type taken when `ty`'s
/// blocks do not divide a row (a 256-block k-quant or IQ type falls back
/// to a 32-block type; a 32-block type, or a fallback that still does not
/// fit, to F16).
fn fallback(ty: GgmlType, row: u64) -> GgmlType {
    let fb = match ty {
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Tq1_0 | GgmlType::Tq2_0 => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        GgmlType::Iq1S
        | GgmlType::Iq1M
        | GgmlType::Iq2Xxs
        | GgmlType::Iq2Xs
        | GgmlType::Iq2S
        | GgmlType::Iq3Xxs
        | GgmlType::Iq3S
        | GgmlType::Iq4Xs => GgmlType::Iq4Nl,
        other => other,
    };
    match row.is_multiple_of(fb.block_size() as u64) {
        true => fb,
        false => GgmlType::F16,
    }
}

/// The type a quantized tensor is written as, and a note when its rows
/// forced a fallback: the first `rules` match, else the preset's; an
/// error when the type is not one llmq-gpu writes.
pub fn tensor_type(
    preset: Preset,
    rules: &[TypeRule],
    name: &str,
    row: u64,
    has_output: bool,
) -> Result<(GgmlType, Option<String>)> {
    let ruled = rules
        .iter()
        .find(|r| r.pattern.is_match(name))
        .map(|r| r.ty);
    let wanted = ruled.unwrap_or_else(|| preset_type(preset, name, row, has_output));
    let (ty, note) = match row.is_multiple_of(wanted.block_size() as u64) {
        true => (wanted, None),
        false => {
            let fb = fallback(wanted, row);
            let note = format!(
                "tensor '{name}': rows of {row} values are no multiple of {} ({}'s block); \
                 written as {} instead, as llama-quantize does",
                wanted.block_size(),
                wanted.name(),
                fb.name()
            );
            (fb, Some(note))
        }
    };
    if !quantizable(ty) {
        return Err(Error::Config(format!(
            "tensor '{name}' takes {} under the {} preset, a type llmq-gpu does not write yet; \
             give it another with --tensor-type '{}=Q8_0'",
            ty.name(),
            preset.name(),
            regex::escape(name)
        )));
    }
    Ok((ty, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_follow_llama_quantize() {
        let p = Preset::parse("q4_0").unwrap();
        assert_eq!((p.file_type(), p.base()), (2, GgmlType::Q4_0));
        assert!(Preset::parse("Q9_9").is_err());
        // A tied head with 576-wide rows takes Q8_0; 4096-wide rows Q6_K.
        assert_eq!(
            preset_type(p, "token_embd.weight", 576, false),
            GgmlType::Q8_0
        );
        assert_eq!(preset_type(p, "output.weight", 4096, true), GgmlType::Q6K);
        assert_eq!(
            preset_type(p, "token_embd.weight", 4096, true),
            GgmlType::Q4_0
        );
        assert_eq!(
            preset_type(Preset::F16, "output.weight", 4096, true),
            GgmlType::F16
        );
        let rule: TypeRule = "ffn_down=q8_0".parse().unwrap();
        let t = tensor_type(p, &[rule], "blk.0.ffn_down.weight", 1536, false).unwrap();
        assert_eq!(t, (GgmlType::Q8_0, None));
        assert!("ffn_down".parse::<TypeRule>().is_err());
        assert!("x=Q4_K".parse::<TypeRule>().is_err());
        let t = tensor_type(p, &[], "output.weight", 4096, true).unwrap();
        assert_eq!(t, (GgmlType::Q6K, None));
        // Q6_K on 576-wide rows falls back to Q8_0, with a note.
        let rule: TypeRule = "attn_q=Q6_K".parse().unwrap();
        let (t, note) = tensor_type(p, &[rule], "blk.0.attn_q.weight", 576, true).unwrap();
        assert_eq!(t, GgmlType::Q8_0);
        assert!(note.unwrap().contains("no multiple of 256"));
        // A 32-block type on 48-wide rows falls back to F16.
        assert_eq!(fallback(GgmlType::Q4_0, 48), GgmlType::F16);
        assert!(is_quantized_tensor("blk.0.attn_q.weight", &[576, 576]));
        assert!(!is_quantized_tensor("blk.0.attn_norm.weight", &[576]));
    }
}
