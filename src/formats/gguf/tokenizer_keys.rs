//! A GGUF file's `tokenizer.*` keys: built from a Hugging Face
//! `tokenizer.json` (as llama.cpp's `convert_hf_to_gguf.py` does for BPE
//! vocabularies: byte-level "gpt2" with a named pre-tokenizer, or
//! SentencePiece-style "llama" with byte fallback), or typed back from the
//! JSON copy of a GGUF source's keys that llmq folders keep. Either way the
//! result is checked by tokenizing a probe text with the tokenizer llmq-gpu
//! (and llama.cpp) will build from the keys: a vocabulary that would
//! tokenize differently is refused, not written.

use super::GgufValue;
use crate::error::{Error, Result};
use crate::model::tokenizer::{Tokenizer, LLAMA3_PATTERN};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// llama.cpp `llama_token_type`.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// Text that exercises digits, spaces, newlines, non-ASCII and a special token.
const PROBE: &str =
    "Hello world! It's 2024: 12345 apples, naïve café\n\n  indented\tand 'quoted' — ok? \
                     ünïcödé 日本語 🙂";

/// The keys for the tokenizer of a Hugging Face folder (`tokenizer.json`,
/// with `tokenizer_config.json` and `config.json` when present); the
/// vocabulary is padded to `vocab_size` with unused tokens as llama.cpp pads it.
pub fn from_hf_files(
    tokenizer_json: &Path,
    tokenizer_config: Option<&Path>,
    config: Option<&Path>,
    vocab_size: usize,
) -> Result<Vec<(String, GgufValue)>> {
    let j = read_json(tokenizer_json)?;
    let cfg = tokenizer_config.map(read_json).transpose()?;
    let bad = |msg: String| Error::unsupported(tokenizer_json, msg);
    let model = &j["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(bad(format!(
            "tokenizer model {} (GGUF output supports BPE tokenizers: byte-level or \
             SentencePiece-style with byte fallback)",
            model["type"]
        )));
    }
    let kind = if mentions(&j["pre_tokenizer"], "ByteLevel") {
        "gpt2"
    } else if model["byte_fallback"].as_bool() == Some(true) {
        "llama"
    } else {
        return Err(bad(
            "a BPE tokenizer that is neither byte-level nor SentencePiece-style".into(),
        ));
    };

    // Ids → strings: the model's vocabulary, then added tokens over it.
    let mut tokens: Vec<Option<String>> = Vec::new();
    let mut put = |id: usize, s: &str| {
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some(s.to_string());
    };
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("tokenizer.json has no model.vocab object".into()))?;
    for (s, id) in vocab {
        put(id_of(tokenizer_json, id)?, s);
    }
    let mut types: HashMap<usize, i32> = HashMap::new();
    for t in j["added_tokens"].as_array().into_iter().flatten() {
        let id = id_of(tokenizer_json, &t["id"])?;
        let content = t["content"].as_str().unwrap_or_default();
        put(id, content);
        let special = t["special"].as_bool().unwrap_or(false);
        types.insert(id, if special { CONTROL } else { USER_DEFINED });
    }
    let unk = model["unk_token"].as_str();
    let n = tokens.len().max(vocab_size);
    let (mut strings, mut type_ids) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for id in 0..n {
        let (s, ty) = match tokens.get(id).cloned().flatten() {
            None => (format!("[PAD{id}]"), UNUSED),
            Some(s) => {
                let ty = match types.get(&id) {
                    Some(&t) => t,
                    None if kind == "llama" && Some(s.as_str()) == unk => UNKNOWN,
                    None if kind == "llama" && is_byte_token(&s) => BYTE,
                    None => NORMAL,
                };
                (s, ty)
            }
        };
        strings.push(s);
        type_ids.push(ty);
    }
    let merges = merges(tokenizer_json, &model["merges"])?;

    let mut keys: Vec<(String, GgufValue)> = vec![("tokenizer.ggml.model".into(), s(kind))];
    match kind {
        "gpt2" => keys.push((
            "tokenizer.ggml.pre".into(),
            s(pre_name(tokenizer_json, &j)?),
        )),
        _ => {
            keys.push(("tokenizer.ggml.pre".into(), s("default")));
            keys.push((
                "tokenizer.ggml.add_space_prefix".into(),
                GgufValue::Bool(space_prefix(&j)),
            ));
        }
    }
    let scores = (kind == "llama").then(|| merge_scores(&strings, &merges));
    keys.push(("tokenizer.ggml.tokens".into(), strings_value(&strings)));
    if let Some(scores) = scores {
        let v = scores.into_iter().map(GgufValue::F32).collect();
        keys.push(("tokenizer.ggml.scores".into(), GgufValue::Array(v)));
    }
    let v = type_ids.into_iter().map(GgufValue::I32).collect();
    keys.push(("tokenizer.ggml.token_type".into(), GgufValue::Array(v)));
    if kind == "gpt2" {
        keys.push(("tokenizer.ggml.merges".into(), strings_value(&merges)));
    }

    // BOS/EOS and whether to add BOS as llmq-gpu reads them from these files.
    let hf = Tokenizer::from_hf_files(tokenizer_json, tokenizer_json, tokenizer_config, config)?;
    let find = |name: &str| -> Option<u32> {
        let v = cfg.as_ref()?.get(name)?;
        let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
        strings.iter().position(|t| t == text).map(|i| i as u32)
    };
    let ids = [
        ("bos", hf.bos_id()),
        ("eos", hf.eos_id()),
        ("unknown", find("unk_token")),
        ("padding", find("pad_token")),
    ];
    for (what, id) in ids {
        if let Some(id) = id {
            keys.push((
                format!("tokenizer.ggml.{what}_token_id"),
                GgufValue::U32(id),
            ));
        }
    }
    keys.push((
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(hf.add_bos_default()),
    ));
    if let Some(b) = cfg.as_ref().and_then(|c| c["add_eos_token"].as_bool()) {
        keys.push(("tokenizer.ggml.add_eos_token".into(), GgufValue::Bool(b)));
    }
    if let Some(t) = cfg.as_ref().and_then(chat_template) {
        keys.push(("tokenizer.chat_template".into(), s(&t)));
    }
    check_same_tokens(tokenizer_json, &hf, &keys)?;
    Ok(keys)
}

/// The `tokenizer.*` keys among `meta` (a GGUF source's keys as JSON, as
/// llmq folders keep them) typed as llama.cpp expects them.
pub fn from_json_metadata(
    path: &Path,
    meta: &[(String, Value)],
) -> Result<Vec<(String, GgufValue)>> {
    let mut keys = Vec::new();
    for (k, v) in meta.iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
        keys.push((k.clone(), typed(path, k, v)?));
    }
    if !keys.iter().any(|(k, _)| k == "tokenizer.ggml.tokens") {
        return Err(Error::format(
            path,
            "no tokenizer to write: neither a tokenizer.json beside the model nor GGUF \
             tokenizer keys in its source metadata",
        ));
    }
    // Keys llmq-gpu cannot read back are refused here, not in a later run.
    Tokenizer::from_gguf_metadata(path, &as_json(&keys))?;
    Ok(keys)
}

/// A JSON value as the GGUF type llama.cpp reads key `key` as.
fn typed(path: &Path, key: &str, v: &Value) -> Result<GgufValue> {
    let elem = match key {
        "tokenizer.ggml.token_type" => "i32",
        "tokenizer.ggml.scores" => "f32",
        k if k.ends_with("_token_id") => "u32",
        _ => "",
    };
    let bad = || {
        Error::format(
            path,
            format!("source metadata '{key}' = {v} cannot be stored in GGUF"),
        )
    };
    let scalar = |v: &Value| -> Result<GgufValue> {
        Ok(match (elem, v) {
            ("i32", Value::Number(n)) => GgufValue::I32(
                n.as_i64()
                    .and_then(|x| i32::try_from(x).ok())
                    .ok_or_else(bad)?,
            ),
            ("u32", Value::Number(n)) => GgufValue::U32(
                n.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(bad)?,
            ),
            ("f32", Value::Number(n)) => GgufValue::F32(n.as_f64().ok_or_else(bad)? as f32),
            (_, Value::Number(n)) if n.is_u64() => GgufValue::U32(
                n.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(bad)?,
            ),
            (_, Value::Number(n)) => GgufValue::F32(n.as_f64().ok_or_else(bad)? as f32),
            (_, Value::Bool(b)) => GgufValue::Bool(*b),
            (_, Value::String(s)) => GgufValue::String(s.clone()),
            _ => return Err(bad()),
        })
    };
    match v {
        Value::Array(items) => Ok(GgufValue::Array(
            items.iter().map(scalar).collect::<Result<_>>()?,
        )),
        v => scalar(v),
    }
}

fn as_json(keys: &[(String, GgufValue)]) -> HashMap<String, Value> {
    keys.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
}

/// Refuses keys whose tokenizer tokenizes [`PROBE`] (and a special token)
/// differently from `want`.
fn check_same_tokens(path: &Path, want: &Tokenizer, keys: &[(String, GgufValue)]) -> Result<()> {
    let got = Tokenizer::from_gguf_metadata(path, &as_json(keys))?;
    let special = (0..want.vocab_size().min(64) as u32)
        .filter_map(|i| want.token_str(i))
        .find(|t| t.starts_with('<') && t.ends_with('>') && t.len() > 2);
    let text = format!("{PROBE}{}", special.unwrap_or_default());
    let (a, b) = (want.encode(&text, false)?, got.encode(&text, false)?);
    if a != b {
        let at = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        return Err(Error::unsupported(
            path,
            format!(
                "the GGUF tokenizer built from this vocabulary would tokenize differently \
                 (first at token {at}: {:?} vs {:?}); convert it with llama.cpp's \
                 convert_hf_to_gguf.py",
                a.get(at),
                b.get(at)
            ),
        ));
    }
    Ok(())
}

/// llama.cpp's `tokenizer.ggml.pre` for a byte-level tokenizer's
/// pre-tokenizer, recognised by its structure (llama.cpp hashes a
/// tokenization instead); the ones llmq-gpu's reader implements.
fn pre_name(path: &Path, j: &Value) -> Result<&'static str> {
    let p = &j["pre_tokenizer"];
    let parts: Vec<&Value> = match p["type"].as_str() {
        Some("Sequence") => p["pretokenizers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect(),
        _ => vec![p],
    };
    let kind = |v: &Value| v["type"].as_str().unwrap_or_default().to_string();
    let kinds: Vec<String> = parts.iter().map(|v| kind(v)).collect();
    let byte_level_regex = |v: &Value| v["use_regex"].as_bool().unwrap_or(true);
    let normalizer_free = j["normalizer"].is_null();
    let name = match kinds.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["ByteLevel"] if byte_level_regex(parts[0]) => Some("gpt-2"),
        ["Digits", "ByteLevel"]
            if parts[0]["individual_digits"].as_bool() == Some(true)
                && byte_level_regex(parts[1]) =>
        {
            Some("smollm")
        }
        ["Split", "ByteLevel"]
            if parts[0]["pattern"]["Regex"].as_str() == Some(LLAMA3_PATTERN)
                && !byte_level_regex(parts[1]) =>
        {
            Some("llama-bpe")
        }
        _ => None,
    };
    match name {
        Some(n) if normalizer_free => Ok(n),
        _ => Err(Error::unsupported(
            path,
            format!(
                "byte-level pre-tokenizer {kinds:?}{} has no GGUF name llmq-gpu knows (it \
                 writes GPT-2, SmolLM/StarCoder digit splitting and Llama 3's); convert it \
                 with llama.cpp's convert_hf_to_gguf.py",
                if normalizer_free {
                    ""
                } else {
                    " with a normalizer"
                }
            ),
        )),
    }
}

/// Whether a SentencePiece-style tokenizer prefixes a space: a `Prepend`
/// normalizer, or a Metaspace pre-tokenizer that prepends.
fn space_prefix(j: &Value) -> bool {
    let meta = find_type(&j["pre_tokenizer"], "Metaspace");
    mentions(&j["normalizer"], "Prepend")
        || meta.is_some_and(|m| {
            m["prepend_scheme"]
                .as_str()
                .map_or(m["add_prefix_space"].as_bool().unwrap_or(true), |s| {
                    s != "never"
                })
        })
}

/// Scores whose ranking gives back the merges: the piece a merge of rank
/// `r` forms scores `-r`; other pieces (characters, bytes, controls) 0, as
/// SentencePiece scores its unmergeable pieces.
fn merge_scores(tokens: &[String], merges: &[String]) -> Vec<f32> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut scores = vec![0f32; tokens.len()];
    let mut seen = vec![false; tokens.len()];
    for (rank, m) in merges.iter().enumerate() {
        let piece: String = m.split(' ').collect();
        if let Some(&i) = index.get(piece.as_str()) {
            if !seen[i] {
                (scores[i], seen[i]) = (-(rank as f32) - 1.0, true);
            }
        }
    }
    scores
}

/// `model.merges` as `"a b"` strings (tokenizers writes either strings or pairs).
fn merges(path: &Path, v: &Value) -> Result<Vec<String>> {
    let Some(items) = v.as_array() else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            )),
            other => Err(Error::format(
                path,
                format!("merge {other} is not a pair of tokens"),
            )),
        })
        .collect()
}

fn chat_template(cfg: &Value) -> Option<String> {
    match &cfg["chat_template"] {
        Value::String(s) => Some(s.clone()),
        // A list of named templates: the default one.
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn is_byte_token(s: &str) -> bool {
    s.len() == 6
        && s.starts_with("<0x")
        && s.ends_with('>')
        && u8::from_str_radix(&s[3..5], 16).is_ok()
}

/// True when `v` or anything inside it has `"type": ty`.
fn mentions(v: &Value, ty: &str) -> bool {
    find_type(v, ty).is_some()
}

fn find_type<'a>(v: &'a Value, ty: &str) -> Option<&'a Value> {
    match v {
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some(ty) => Some(v),
        Value::Object(o) => o.values().find_map(|x| find_type(x, ty)),
        Value::Array(a) => a.iter().find_map(|x| find_type(x, ty)),
        _ => None,
    }
}

fn id_of(path: &Path, v: &Value) -> Result<usize> {
    v.as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .filter(|&x| x < 1 << 24)
        .ok_or_else(|| Error::format(path, format!("token id {v} is not a plausible id")))
}

fn s(x: &str) -> GgufValue {
    GgufValue::String(x.to_string())
}

fn strings_value(v: &[String]) -> GgufValue {
    GgufValue::Array(v.iter().map(|x| s(x)).collect())
}

fn read_json(path: &Path) -> Result<Value> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_reader(std::io::BufReader::new(f))
        .map_err(|e| Error::format(path, format!("bad JSON: {e}")))
}
