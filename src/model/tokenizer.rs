//! [`Tokenizer`]: text <-> token ids for a [`ModelView`], from the model's
//! `tokenizer.json` when it has one, else rebuilt from GGUF metadata.

use super::view::ModelView;
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::NormalizerWrapper;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// GGUF token types (llama.cpp `llama_token_type`) that must never be split:
/// control tokens (`<|im_start|>`) and user-defined ones.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// SentencePiece's stand-in for a space.
const SPACE: &str = "\u{2581}";

/// Llama 3's split pattern (llama.cpp `llama-bpe`, HF Llama 3 `tokenizer.json`).
pub(crate) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A model's Hugging Face tokenizer files among its companions.
pub struct HfTokenizerFiles {
    pub tokenizer_json: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

impl HfTokenizerFiles {
    /// `None` when the model has no `tokenizer.json` beside it.
    pub fn of(src: &dyn crate::formats::source::TensorSource) -> Option<Self> {
        let companions = src.companion_files();
        let named = |name: &str| {
            companions
                .iter()
                .find(|p| p.file_name().is_some_and(|n| n == name))
                .cloned()
        };
        Some(Self {
            tokenizer_json: named("tokenizer.json")?,
            tokenizer_config: named("tokenizer_config.json"),
            config: named("config.json"),
        })
    }
}

/// A ready tokenizer plus the model's BOS/EOS conventions.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The model this came from, named in errors.
    path: PathBuf,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// The model's tokenizer: its `tokenizer.json` companion if present (HF
    /// folders, llmq folders made from them), else the GGUF `tokenizer.ggml.*`
    /// metadata (GGUF files, llmq folders made from them).
    pub fn from_model(model: &ModelView) -> Result<Self> {
        if let Some(f) = HfTokenizerFiles::of(model.source()) {
            return Self::from_hf_files(
                model.path(),
                &f.tokenizer_json,
                f.tokenizer_config.as_deref(),
                f.config.as_deref(),
            );
        }
        let meta: HashMap<String, Value> = model
            .metadata()
            .into_iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .collect();
        Self::from_gguf_metadata(model.path(), &meta)
    }

    /// Builds from GGUF-style `tokenizer.ggml.*` keys; `path` is only named in errors.
    pub fn from_gguf_metadata(path: &Path, meta: &HashMap<String, Value>) -> Result<Self> {
        contained(path, "building the tokenizer from GGUF metadata", || {
            Self::build_from_gguf_metadata(path, meta)
        })
    }

    fn build_from_gguf_metadata(path: &Path, meta: &HashMap<String, Value>) -> Result<Self> {
        let missing = |key: &str| {
            Error::format(
                path,
                format!(
                    "no tokenizer: metadata key '{key}' is missing and there is no tokenizer.json beside the model"
                ),
            )
        };
        let kind = meta
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or_else(|| missing("tokenizer.ggml.model"))?;
        if kind != "gpt2" && kind != "llama" {
            return Err(Error::unsupported(
                path,
                format!(
                    "tokenizer model '{kind}' (GGUF metadata supports 'gpt2' byte-level BPE and \
                     'llama' SentencePiece; put the model's tokenizer.json beside it instead)"
                ),
            ));
        }
        let tokens = string_array(path, meta, "tokenizer.ggml.tokens")?
            .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
        let types: Vec<i64> = match meta.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            _ => Vec::new(),
        };
        // Ids are positions; on a duplicated string keep the first id, as llama.cpp does.
        let mut vocab = Vocab::default();
        for (id, tok) in tokens.iter().enumerate() {
            let id = u32::try_from(id)
                .map_err(|_| Error::format(path, "tokenizer vocabulary exceeds u32 ids"))?;
            vocab.entry(tok.clone()).or_insert(id);
        }
        let (mut inner, add_bos_default) = if kind == "llama" {
            (Self::gguf_spm(path, meta, &tokens, vocab)?, true)
        } else {
            (Self::gguf_bpe(path, meta, vocab)?, false)
        };
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter())
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .map(|(tok, _)| AddedToken::from(tok.clone(), true))
            .collect();
        inner.add_special_tokens(&specials);

        let id = |key: &str| {
            meta.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            // llama.cpp's defaults when the key is absent: BOS for
            // SentencePiece vocabularies, none for BPE ones.
            add_bos: meta
                .get("tokenizer.ggml.add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(add_bos_default),
        })
    }

    /// GPT-2 style byte-level BPE from `tokenizer.ggml.merges`.
    fn gguf_bpe(
        path: &Path,
        meta: &HashMap<String, Value>,
        vocab: Vocab,
    ) -> Result<tokenizers::Tokenizer> {
        let merges = string_array(path, meta, "tokenizer.ggml.merges")?.ok_or_else(|| {
            Error::format(
                path,
                "no tokenizer: metadata key 'tokenizer.ggml.merges' is missing",
            )
        })?;
        let mut merge_pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                Error::format(
                    path,
                    format!(
                        "tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space"
                    ),
                )
            })?;
            merge_pairs.push((a.to_string(), b.to_string()));
        }

        let pre = meta
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        // Llama 3 skips merging words already in the vocabulary (HF `ignore_merges`).
        let ignore_merges = pre == "llama-bpe";
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merge_pairs)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| Error::format(path, format!("building BPE tokenizer: {e}")))?;
        let pre_tokenizer = pre_tokenizer_for(path, pre)?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        Ok(inner)
    }

    /// SentencePiece vocabularies (llama.cpp's "llama" model: Llama 1/2,
    /// Mistral): pieces with scores, `▁` for spaces, `<0xXX>` byte tokens for
    /// characters outside the vocabulary. llama.cpp merges the adjacent pair
    /// whose concatenation scores best; a BPE whose merge ranks follow those
    /// scores does the same, which is how Hugging Face converts these
    /// tokenizers (`SentencePieceExtractor`).
    fn gguf_spm(
        path: &Path,
        meta: &HashMap<String, Value>,
        tokens: &[String],
        vocab: Vocab,
    ) -> Result<tokenizers::Tokenizer> {
        let scores: Vec<f64> = match meta.get("tokenizer.ggml.scores") {
            Some(Value::Array(a)) if a.len() == tokens.len() => {
                a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect()
            }
            Some(_) => {
                return Err(Error::format(
                    path,
                    format!(
                        "metadata 'tokenizer.ggml.scores' must be {} numbers, one per token",
                        tokens.len()
                    ),
                ))
            }
            None => {
                return Err(Error::format(
                    path,
                    "no tokenizer: metadata key 'tokenizer.ggml.scores' is missing",
                ))
            }
        };
        // Every split of a piece into two pieces is a merge ranked by the
        // piece's score (best first); ties keep the pieces' id order.
        let mut ranked: Vec<(f64, u32, u32, String, String)> = Vec::new();
        for (id, piece) in tokens.iter().enumerate() {
            if vocab.get(piece) != Some(&(id as u32)) {
                continue;
            }
            for (cut, _) in piece.char_indices().skip(1) {
                let (l, r) = piece.split_at(cut);
                if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                    ranked.push((scores[id], li, ri, l.to_string(), r.to_string()));
                }
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        let merges = ranked.into_iter().map(|(_, _, _, l, r)| (l, r)).collect();
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab.clone(), merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if vocab.contains_key("<unk>") {
            builder = builder.unk_token("<unk>".into());
        }
        let bpe = builder
            .build()
            .map_err(|e| Error::format(path, format!("building SentencePiece tokenizer: {e}")))?;
        let space_prefix = meta
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let bad = |e: tokenizers::Error| Error::format(path, format!("SentencePiece set-up: {e}"));
        let mut norm: Vec<NormalizerWrapper> = Vec::new();
        if space_prefix {
            norm.push(Prepend::new(SPACE.into()).into());
        }
        norm.push(Replace::new(" ", SPACE).map_err(bad)?.into());
        let mut dec: Vec<DecoderWrapper> = vec![
            Replace::new(SPACE, " ").map_err(bad)?.into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if space_prefix {
            dec.push(Strip::new(' ', 1, 0).into());
        }
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_normalizer(Some(NormalizerSequence::new(norm)));
        inner.with_decoder(Some(DecoderSequence::new(dec)));
        Ok(inner)
    }

    /// Loads a Hugging Face `tokenizer.json`; BOS/EOS come from
    /// `tokenizer_config.json`, then `config.json`, when given.
    pub fn from_hf_files(
        model_path: &Path,
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        config: Option<&Path>,
    ) -> Result<Self> {
        contained(tokenizer_json, "reading tokenizer", || {
            Self::build_from_hf_files(model_path, tokenizer_json, tokenizer_config, config)
        })
    }

    fn build_from_hf_files(
        model_path: &Path,
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        config: Option<&Path>,
    ) -> Result<Self> {
        let len = std::fs::metadata(tokenizer_json)
            .map_err(|e| Error::io(tokenizer_json, e))?
            .len();
        if len > MAX_TOKENIZER_JSON_BYTES {
            return Err(Error::format(
                tokenizer_json,
                format!(
                    "{len} bytes: larger than any tokenizer ({MAX_TOKENIZER_JSON_BYTES} at most; \
                     real ones are tens of MB)"
                ),
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| Error::format(tokenizer_json, format!("reading tokenizer: {e}")))?;
        let tok_cfg = tokenizer_config.map(read_json).transpose()?;
        let cfg = config.map(read_json).transpose()?;

        // `bos_token` is a string or an AddedToken object with `content`.
        let special = |name: &str| -> Option<u32> {
            let v = tok_cfg.as_ref()?.get(name)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(s)
        };
        // `eos_token_id` may be a list (Llama 3.1); the first is the main one.
        let config_id = |name: &str| -> Option<u32> {
            let v = cfg.as_ref()?.get(name)?;
            let n = v.as_u64().or_else(|| v.as_array()?.first()?.as_u64())?;
            u32::try_from(n).ok()
        };
        let bos = special("bos_token").or_else(|| config_id("bos_token_id"));
        let eos = special("eos_token").or_else(|| config_id("eos_token_id"));
        let add_bos = match tok_cfg
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(Value::as_bool)
        {
            Some(b) => b,
            // No explicit flag: the post-processor decides (Llama 3 prepends BOS there).
            None => match (bos, inner.encode("a", true)) {
                (Some(b), Ok(enc)) => enc.get_ids().first() == Some(&b),
                _ => false,
            },
        };
        Ok(Self {
            inner,
            path: model_path.to_path_buf(),
            bos,
            eos,
            add_bos,
        })
    }

    /// Token ids for `text`; special tokens written in the text (`<|im_start|>`)
    /// map to their ids. BOS is prepended only when `add_bos` is set, whatever
    /// the tokenizer's own post-processor would do.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = contained(&self.path, "tokenizing", || {
            self.inner
                .encode_fast(text, false)
                .map_err(|e| Error::format(&self.path, format!("tokenizing: {e}")))
        })?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            let bos = self.bos.ok_or_else(|| {
                Error::format(
                    &self.path,
                    "BOS requested but the tokenizer has no BOS token",
                )
            })?;
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text for `ids`, special tokens included as written.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(Error::format(
                &self.path,
                format!(
                    "token id {bad} is outside the vocabulary ({} tokens)",
                    self.vocab_size()
                ),
            ));
        }
        contained(&self.path, "detokenizing", || {
            self.inner
                .decode(ids, false)
                .map_err(|e| Error::format(&self.path, format!("detokenizing: {e}")))
        })
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    /// Whether the model expects BOS at the start of a prompt.
    pub fn add_bos_default(&self) -> bool {
        self.add_bos
    }
    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    /// The vocabulary string of `id` (byte-level form, e.g. `Ġthe`).
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// The `tokenizers` crate panics on some malformed tokenizers (a merge
/// longer than its token while building a BPE, a decoder that fails to
/// deserialize inside its helper): those become errors naming the file
/// rather than ending the process. The panic message still reaches the
/// process's panic hook (stderr by default).
fn contained<T>(path: &Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(Error::format(
            path,
            format!("{what}: the tokenizers library failed on this tokenizer ({msg})"),
        ))
    })
}

/// Pre-tokenizer for llama.cpp's `tokenizer.ggml.pre` name.
fn pre_tokenizer_for(path: &Path, pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = |use_regex: bool| ByteLevel::new(false, true, use_regex);
    Ok(match pre {
        // GPT-2 regex inside ByteLevel.
        "default" | "gpt2" | "gpt-2" => byte_level(true).into(),
        // SmolLM2 / StarCoder: every digit on its own, then GPT-2 byte-level
        // (llama.cpp splits `\p{N}` first; HF: Digits(individual) + ByteLevel).
        "smollm" | "starcoder" | "refact" => Sequence::new(vec![
            Digits::new(true).into(),
            byte_level(true).into(),
        ])
        .into(),
        "llama-bpe" | "llama3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_PATTERN.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::format(path, format!("Llama 3 split pattern: {e}")))?;
            Sequence::new(vec![split.into(), byte_level(false).into()]).into()
        }
        other => {
            return Err(Error::unsupported(
                path,
                format!("GGUF pre-tokenizer '{other}' (supported: default, gpt2, smollm, starcoder, refact, llama-bpe)"),
            ))
        }
    })
}

/// Vocabulary and merges lists longer than this are refused before the
/// tokenizer's maps are built from them.
const MAX_TOKENIZER_ENTRIES: usize = 1 << 24;
/// The largest `tokenizer.json` read (the largest real ones are ~30 MB).
const MAX_TOKENIZER_JSON_BYTES: u64 = 1 << 30;

fn string_array(
    path: &Path,
    meta: &HashMap<String, Value>,
    key: &str,
) -> Result<Option<Vec<String>>> {
    let Some(v) = meta.get(key) else {
        return Ok(None);
    };
    let arr = v
        .as_array()
        .ok_or_else(|| Error::format(path, format!("metadata '{key}' is not an array")))?;
    if arr.len() > MAX_TOKENIZER_ENTRIES {
        return Err(Error::format(
            path,
            format!(
                "metadata '{key}' has {} entries, more than any tokenizer ({MAX_TOKENIZER_ENTRIES} \
                 at most; the largest vocabularies have about 256k): the file is corrupt",
                arr.len()
            ),
        ));
    }
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().map(str::to_string).ok_or_else(|| {
                Error::format(path, format!("metadata '{key}'[{i}] is not a string"))
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn read_json(path: &Path) -> Result<Value> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_reader(std::io::BufReader::new(f))
        .map_err(|e| Error::format(path, format!("bad JSON: {e}")))
}

impl Tokenizer {
    /// `tokenizer.json` (the `tokenizers` serialization, which Hugging Face
    /// and every tool built on it read) and the `tokenizer_config.json`
    /// keys that carry this tokenizer's BOS/EOS conventions (read back by
    /// [`Tokenizer::from_model`]), plus `chat_template` when given.
    pub fn hf_files(&self, chat_template: Option<&str>) -> Result<(String, String)> {
        let json = self.inner.to_string(true).map_err(|e| {
            Error::format(&self.path, format!("cannot serialize the tokenizer: {e}"))
        })?;
        let token = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let mut cfg = serde_json::Map::new();
        cfg.insert("add_bos_token".into(), Value::Bool(self.add_bos));
        cfg.insert("add_eos_token".into(), Value::Bool(false));
        if let Some(t) = token(self.bos) {
            cfg.insert("bos_token".into(), Value::String(t));
        }
        if let Some(t) = token(self.eos) {
            cfg.insert("eos_token".into(), Value::String(t));
        }
        if let Some(t) = chat_template {
            cfg.insert("chat_template".into(), Value::String(t.to_string()));
        }
        cfg.insert(
            "tokenizer_class".into(),
            Value::String("PreTrainedTokenizerFast".into()),
        );
        let cfg = serde_json::to_string_pretty(&Value::Object(cfg))
            .map_err(|e| Error::format(&self.path, e.to_string()))?;
        Ok((json, cfg))
    }
}
