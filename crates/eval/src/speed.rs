//! The cost side: prefill and decode throughput on this machine, batch of one, and the process's
//! peak resident memory.

use std::time::Instant;

use candle_core::Tensor;
use distill_models::{KvCache, Llama};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    /// Prompt tokens per second (one forward over `prompt_tokens`).
    pub prefill_tok_s: f64,
    /// Generated tokens per second (KV-cached steps, greedy).
    pub decode_tok_s: f64,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
}

/// Times a `prompt_tokens` prefill and `decode_tokens` decoding steps, best of `repeats`.
pub fn measure(
    model: &Llama,
    prompt_tokens: usize,
    decode_tokens: usize,
    repeats: usize,
) -> distill_models::Result<Speed> {
    let vocab = model.config().vocab_size as u32;
    let ids: Vec<u32> = (0..prompt_tokens as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let device = model.device();
    let (mut best_prefill, mut best_decode) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..repeats.max(1) {
        let mut cache = KvCache::new(model.config(), vec![0]);
        let input = Tensor::from_vec(ids.clone(), (1, prompt_tokens), device)?;
        let started = Instant::now();
        let mut logits = model.step(&input, &mut cache)?;
        let mut next = logits.argmax(1)?.to_vec1::<u32>()?[0];
        best_prefill = best_prefill.min(started.elapsed().as_secs_f64());
        let started = Instant::now();
        for _ in 0..decode_tokens {
            logits = model.step(&Tensor::from_vec(vec![next], (1, 1), device)?, &mut cache)?;
            next = logits.argmax(1)?.to_vec1::<u32>()?[0];
        }
        best_decode = best_decode.min(started.elapsed().as_secs_f64());
    }
    Ok(Speed {
        prefill_tok_s: prompt_tokens as f64 / best_prefill,
        decode_tok_s: decode_tokens as f64 / best_decode,
        prompt_tokens,
        decode_tokens,
    })
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
