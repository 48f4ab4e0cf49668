//! What the reference tests share: reading fixture arrays, comparing token ids.
#![allow(dead_code)] // each test binary uses part of it

use distill_models::TextTokenizer;
use serde_json::Value;

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// Asserts `got` equals `want` (the ids `reference` gave), showing the tokens around the first
/// difference.
pub fn assert_same_ids(what: &str, reference: &str, tok: &TextTokenizer, got: &[u32], want: &[u32]) {
    if let Some(i) = (0..want.len().min(got.len())).find(|&i| want[i] != got[i]) {
        let window = |v: &[u32]| {
            v[i.saturating_sub(3)..(i + 3).min(v.len())].iter().map(|&id| tok.id_to_token(id)).collect::<Vec<_>>()
        };
        panic!("{what}: first mismatch at token {i}: {reference} {:?}, ours {:?}", window(want), window(got));
    }
    assert_eq!(got.len(), want.len(), "{what}");
}
