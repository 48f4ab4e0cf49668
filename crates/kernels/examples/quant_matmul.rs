//! Times the quantised matmul kernel alone on random blocks: `y = x · Wᵀ` for an (N, K) weight of
//! each block type, at a few batch sizes M, printing GB/s of weight bytes and GMAC/s.
//!
//! Usage: quant_matmul [N K]    (default: 8960 1536, Qwen2.5-1.5B's MLP)

use std::sync::Arc;
use std::time::Instant;

use distill_kernels::packed::{product, PackedWeight};
use distill_kernels::quant::{random_blocks, BlockType, QuantMatrix};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (n, k) = match args.as_slice() {
        [n, k] => (*n, *k),
        _ => (8960, 1536),
    };
    for ty in [BlockType::Q4K, BlockType::Q6K, BlockType::Q4_1, BlockType::Q8_0] {
        let bytes = random_blocks(ty, n * k / ty.values(), 1);
        let matrix = Arc::new(QuantMatrix::from_blocks(ty, n, k, &bytes).unwrap());
        let size = matrix.size_bytes();
        let w = PackedWeight::quantized(matrix);
        for m in [1, 4, 64, 512] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.1).collect();
            let reps = (2_000_000_000 / (n * k * m)).clamp(3, 200);
            let _ = product(&x, &w);
            let started = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(product(&x, &w));
            }
            let secs = started.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{:>5} {n}x{k} M={m:>3}: {:8.3} ms  {:6.1} GB/s of weights  {:6.1} GMAC/s",
                ty.name(),
                secs * 1e3,
                size as f64 / secs / 1e9,
                (n * k * m) as f64 / secs / 1e9
            );
        }
    }
}
