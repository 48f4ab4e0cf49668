//! GFLOP/s of the fused causal attention forward on teacher-scoring shapes of SmolLM2-135M:
//! 8 sequences of 256 positions, 9 query heads sharing 3 key/value heads of 64 dimensions.
//! Counts the products of the causal half only (what an exact kernel must do).
//!
//! Usage: cargo run --release -p distill-kernels --example attention_speed
use distill_kernels::attention::{forward, Dims, Mask};
use std::time::Instant;

fn main() {
    let dims = Dims { batch: 8, heads: 9, kv_heads: 3, queries: 256, keys: 256, head_dim: 64 };
    let (b, n, g, t, d) = (dims.batch, dims.heads, dims.kv_heads, dims.queries, dims.head_dim);
    let q: Vec<f32> = (0..b * n * t * d).map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.013).collect();
    let k: Vec<f32> = (0..b * g * t * d).map(|i| ((i * 11 % 23) as f32 - 11.0) * 0.017).collect();
    let v: Vec<f32> = (0..b * g * t * d).map(|i| ((i * 7 % 19) as f32 - 9.0) * 0.021).collect();
    let mask: Vec<f32> = (0..t * t).map(|i| if i % t <= i / t { 0.0 } else { -1e9 }).collect();
    let mut out = vec![0f32; b * t * n * d];
    // QKᵀ and PV over the causal half: 2 products × 2 flops × T(T+1)/2 × D per head.
    let flops = (b * n) as f64 * 2.0 * 2.0 * (t * (t + 1) / 2) as f64 * d as f64;
    for _ in 0..3 {
        let reps = 30;
        let start = Instant::now();
        for _ in 0..reps {
            forward(&dims, &q, &k, &v, Mask { data: &mask, per_batch: false }, 0.125, &mut out);
        }
        let s = start.elapsed().as_secs_f64() / reps as f64;
        println!("attention forward: {:.2} ms, {:.0} GFLOP/s (causal half)", s * 1e3, flops / s / 1e9);
    }
}
