//! Which ggml type each tensor of a GGUF file gets: `llama-quantize`'s
//! presets (`LLAMA_FTYPE_*`), its choice of the tensors it quantizes, its
//! per-tensor mix (`llama_tensor_get_type` in llama.cpp
//! src/llama-quant.cpp) and `--tensor-type REGEX=TYPE` overrides.

use super::mix::Mix;
use super::GgmlType;
use crate::encoding::ggml::quantizable;
use crate::error::{Error, Result};

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
    Q2K,
    Q3KS,
    Q3KM,
    Q3KL,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Q6K,
    Iq4Nl,
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
    (Preset::Q2K, "Q2_K", 10, GgmlType::Q2K),
    (Preset::Q3KS, "Q3_K_S", 11, GgmlType::Q3K),
    (Preset::Q3KM, "Q3_K_M", 12, GgmlType::Q3K),
    (Preset::Q3KL, "Q3_K_L", 13, GgmlType::Q3K),
    (Preset::Q4KS, "Q4_K_S", 14, GgmlType::Q4K),
    (Preset::Q4KM, "Q4_K_M", 15, GgmlType::Q4K),
    (Preset::Q5KS, "Q5_K_S", 16, GgmlType::Q5K),
    (Preset::Q5KM, "Q5_K_M", 17, GgmlType::Q5K),
    (Preset::Q6K, "Q6_K", 18, GgmlType::Q6K),
    (Preset::Iq4Nl, "IQ4_NL", 25, GgmlType::Iq4Nl),
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
                    "unknown GGUF type preset '{name}'; llmq-gpu writes {}",
                    known.join(", ")
                ))
            })
    }
    /// The first preset whose base type is `ty` (`general.file_type` of a
    /// file mostly of `ty`).
    pub fn for_type(ty: GgmlType) -> Option<Self> {
        PRESETS.iter().find(|p| p.3 == ty).map(|p| p.0)
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
    let ty = GgmlType::from_name(name)
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

/// A type whose blocks do not divide a tensor's rows, and what was
/// written instead ([`tensor_type`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallback {
    pub wanted: GgmlType,
    pub written: GgmlType,
    pub row: u64,
}

impl Fallback {
    /// The warning llama-quantize prints, for `names` (one or more tensors).
    pub fn note(&self, names: &[&str]) -> String {
        let who = match names {
            [one] => format!("tensor '{one}'"),
            [first, rest @ ..] => format!("tensor '{first}' (and {} more)", rest.len()),
            [] => "no tensor".to_string(),
        };
        format!(
            "{who}: rows of {} values are no multiple of {} ({}'s block); written as {} \
             instead, as llama-quantize does",
            self.row,
            self.wanted.block_size(),
            self.wanted.name(),
            self.written.name()
        )
    }
}

/// The type a quantized tensor is written as, and the fallback when its
/// rows forced one: the first `rules` match, else the preset's mix
/// ([`Mix`], called in [`super::mix::visit_order`]); an error when the
/// type is not one llmq-gpu writes.
pub fn tensor_type(
    mix: &mut Mix,
    rules: &[TypeRule],
    name: &str,
    row: u64,
) -> Result<(GgmlType, Option<Fallback>)> {
    let preset = mix.preset();
    // A ruled tensor skips the mix and its counters, as in llama.cpp.
    let ruled = rules
        .iter()
        .find(|r| r.pattern.is_match(name))
        .map(|r| r.ty);
    let wanted = ruled.unwrap_or_else(|| mix.choose(name, row));
    let (ty, fb) = match row.is_multiple_of(wanted.block_size() as u64) {
        true => (wanted, None),
        false => {
            let written = fallback(wanted, row);
            let fb = Fallback {
                wanted,
                written,
                row,
            };
            (written, Some(fb))
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
    Ok((ty, fb))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::formats::gguf::mix::ModelFacts;

    fn mix(p: Preset, names: &[&str]) -> Mix {
        let facts = ModelFacts {
            n_layer: 30,
            n_gqa: 3,
            n_expert: 1,
            falcon: false,
            is_70b: false,
        };
        Mix::new(p, facts, names)
    }

    #[test]
    fn presets_follow_llama_quantize() {
        let p = Preset::parse("q4_0").unwrap();
        assert_eq!((p.file_type(), p.base()), (2, GgmlType::Q4_0));
        assert_eq!(Preset::parse("q4_k_m").unwrap().file_type(), 15);
        assert!(Preset::parse("Q9_9").is_err());
        // A tied head with 576-wide rows takes Q6_K's fallback Q8_0 (with
        // llama-quantize's warning); 4096-wide rows Q6_K.
        let mut m = mix(p, &["token_embd.weight"]);
        let (t, fb) = tensor_type(&mut m, &[], "token_embd.weight", 576).unwrap();
        assert_eq!(t, GgmlType::Q8_0);
        assert_eq!(fb.unwrap().wanted, GgmlType::Q6K);
        let mut m = mix(p, &["token_embd.weight", "output.weight"]);
        let t = tensor_type(&mut m, &[], "output.weight", 4096).unwrap();
        assert_eq!(t, (GgmlType::Q6K, None));
        let t = tensor_type(&mut m, &[], "token_embd.weight", 4096).unwrap();
        assert_eq!(t, (GgmlType::Q4_0, None));
        let mut m = mix(Preset::F16, &["output.weight"]);
        let t = tensor_type(&mut m, &[], "output.weight", 4096).unwrap();
        assert_eq!(t, (GgmlType::F16, None));
        let rule: TypeRule = "ffn_down=q8_0".parse().unwrap();
        let t = tensor_type(&mut m, &[rule], "blk.0.ffn_down.weight", 1536).unwrap();
        assert_eq!(t, (GgmlType::Q8_0, None));
        assert!("ffn_down".parse::<TypeRule>().is_err());
        assert!("x=IQ2_XXS".parse::<TypeRule>().is_err());
        // Q6_K on 576-wide rows falls back to Q8_0, with a note; Q4_K to Q5_0.
        let rule: TypeRule = "attn_q=Q6_K".parse().unwrap();
        let (t, fb) = tensor_type(&mut m, &[rule], "blk.0.attn_q.weight", 576).unwrap();
        assert_eq!(t, GgmlType::Q8_0);
        let note = fb
            .unwrap()
            .note(&["blk.0.attn_q.weight", "blk.1.attn_q.weight"]);
        assert!(
            note.contains(
                "'blk.0.attn_q.weight' (and 1 more): rows of 576 values are no multiple of 256"
            ),
            "{note}"
        );
        let mut m = mix(Preset::Q4KM, &["blk.0.attn_q.weight"]);
        let (t, _) = tensor_type(&mut m, &[], "blk.0.attn_q.weight", 576).unwrap();
        assert_eq!(t, GgmlType::Q5_0);
        // A 32-block type on 48-wide rows falls back to F16.
        assert_eq!(fallback(GgmlType::Q4_0, 48), GgmlType::F16);
        assert!(is_quantized_tensor("blk.0.attn_q.weight", &[576, 576]));
        assert!(!is_quantized_tensor("blk.0.attn_norm.weight", &[576]));
    }
}
