//! Mutations: raw bytes, the numeric fields a binary seed recorded (counts,
//! lengths, types, dims, offsets, values), and JSON trees.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};

/// A numeric field of a binary seed: `width` little-endian bytes at `at`.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub at: usize,
    pub width: usize,
}

/// Values that break size arithmetic: zero, small, powers of two and their
/// neighbours, sign bits, all-ones.
pub fn interesting(rng: &mut StdRng, orig: u64, width: usize) -> u64 {
    let bits = (width * 8) as u32;
    let max = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let v = match rng.gen_range(0..12) {
        0 => 0,
        1 => rng.gen_range(1..=16),
        2 => 1u64 << rng.gen_range(0..bits),
        3 => (1u64 << rng.gen_range(0..bits)).wrapping_sub(1),
        4 => (1u64 << rng.gen_range(0..bits)).wrapping_add(1),
        5 => max,
        6 => max >> 1,
        7 => (max >> 1) + 1,
        8 => orig.wrapping_add(rng.gen_range(1..=4)),
        9 => orig.wrapping_sub(rng.gen_range(1..=4)),
        10 => orig.wrapping_mul(2).wrapping_add(rng.gen_range(0..2)),
        _ => rng.gen(),
    };
    v & max
}

fn read_le(bytes: &[u8], f: Field) -> u64 {
    let mut b = [0u8; 8];
    b[..f.width].copy_from_slice(&bytes[f.at..f.at + f.width]);
    u64::from_le_bytes(b)
}

/// Overwrites one recorded field with an interesting value.
pub fn field(rng: &mut StdRng, bytes: &mut [u8], fields: &[Field]) {
    let Some(&f) = fields.choose(rng) else { return };
    if f.at + f.width > bytes.len() {
        return;
    }
    let v = interesting(rng, read_le(bytes, f), f.width);
    bytes[f.at..f.at + f.width].copy_from_slice(&v.to_le_bytes()[..f.width]);
}

/// Raw byte damage, biased to the first `hot` bytes (the header).
pub fn bytes(rng: &mut StdRng, data: &mut Vec<u8>, hot: usize) {
    if data.is_empty() {
        data.push(rng.gen());
        return;
    }
    let hot = hot.clamp(1, data.len());
    let pos = |rng: &mut StdRng, len: usize| {
        if rng.gen_bool(0.8) {
            rng.gen_range(0..hot.min(len))
        } else {
            rng.gen_range(0..len)
        }
    };
    match rng.gen_range(0..7) {
        0 => {
            let i = pos(rng, data.len());
            data[i] ^= 1 << rng.gen_range(0..8);
        }
        1 => {
            let i = pos(rng, data.len());
            data[i] = [0, 0xff, 0x7f, 0x80, 1][rng.gen_range(0..5)];
        }
        2 => {
            let cut = pos(rng, data.len());
            data.truncate(cut);
        }
        3 => {
            let i = pos(rng, data.len());
            let n = rng.gen_range(1..=64).min(data.len() - i);
            data.drain(i..i + n);
        }
        4 => {
            let i = pos(rng, data.len());
            let n = rng.gen_range(1..=64);
            let junk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            data.splice(i..i, junk);
        }
        5 => {
            // Duplicate a chunk elsewhere (repeated records, shifted fields).
            let i = pos(rng, data.len());
            let n = rng.gen_range(1..=64).min(data.len() - i);
            let chunk = data[i..i + n].to_vec();
            let j = pos(rng, data.len());
            data.splice(j..j, chunk);
        }
        _ => {
            let i = pos(rng, data.len());
            let w = [2usize, 4, 8][rng.gen_range(0..3)].min(data.len() - i);
            if w > 0 {
                let v = interesting(rng, 0, w);
                data[i..i + w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
        }
    }
}

/// A JSON value that type- or size-confuses a reader.
pub fn hostile_value(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..16) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(u64::MAX),
        5 => json!(1u64 << 40),
        6 => json!(i64::MIN),
        7 => json!(1e300),
        8 => json!(-0.5),
        9 => json!(""),
        10 => json!("../../etc/passwd"),
        11 => json!([]),
        12 => json!({}),
        13 => json!([1u64 << 62, 1u64 << 62]),
        14 => json!("F8_E4M3"),
        _ => json!(rng.gen_range(0..100_000u32)),
    }
}

fn nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(nodes).sum(),
        Value::Object(o) => o.values().map(nodes).sum(),
        _ => 0,
    }
}

fn node_mut(v: &mut Value, mut k: usize) -> Option<&mut Value> {
    if k == 0 {
        return Some(v);
    }
    k -= 1;
    let children: Vec<&mut Value> = match v {
        Value::Array(a) => a.iter_mut().collect(),
        Value::Object(o) => o.values_mut().collect(),
        _ => return None,
    };
    for c in children {
        let n = nodes(c);
        if k < n {
            return node_mut(c, k);
        }
        k -= n;
    }
    None
}

/// One structural edit at a random node: replace it, tweak a number or a
/// string, drop or duplicate a member, or grow an array.
pub fn json(rng: &mut StdRng, root: &mut Value) {
    let k = rng.gen_range(0..nodes(root));
    let Some(node) = node_mut(root, k) else {
        return;
    };
    match (rng.gen_range(0..6), &mut *node) {
        (0, _) => *node = hostile_value(rng),
        (1, Value::Number(n)) => {
            // Edge values of each width: a u32 field takes 2³¹ but not 2⁶³.
            let orig = n.as_u64().unwrap_or(0);
            let width = [1, 2, 4, 4, 8][rng.gen_range(0..5)];
            *node = json!(interesting(rng, orig, width));
        }
        (1, Value::String(s)) => {
            if s.is_empty() || rng.gen_bool(0.5) {
                s.push_str(["x", "/", "..", "\u{0}", "é", " "][rng.gen_range(0..6)]);
            } else {
                let cut = (0..=s.len())
                    .filter(|&i| s.is_char_boundary(i))
                    .collect::<Vec<_>>();
                s.truncate(*cut.choose(rng).unwrap_or(&0));
            }
        }
        (2, Value::Object(o)) if !o.is_empty() => {
            let key = o.keys().nth(rng.gen_range(0..o.len())).cloned();
            if let Some(key) = key {
                o.remove(&key);
            }
        }
        (3, Value::Object(o)) if !o.is_empty() => {
            // Same value under a new key (a second tensor or shard entry).
            let (key, val) = o
                .iter()
                .nth(rng.gen_range(0..o.len()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .unwrap();
            o.insert(format!("{key}{}", rng.gen_range(0..3)), val);
        }
        (4, Value::Array(a)) if !a.is_empty() => {
            let i = rng.gen_range(0..a.len());
            if rng.gen_bool(0.5) {
                let v = a[i].clone();
                a.insert(i, v);
            } else {
                a.remove(i);
            }
        }
        (5, Value::Array(a)) => a.push(hostile_value(rng)),
        _ => *node = hostile_value(rng),
    }
}
