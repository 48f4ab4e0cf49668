//! GFLOP/s of the f32 matmul through `gemm` (which repacks the weight on every call) vs the
//! packed f32 and bf16 kernels, on teacher-scoring shapes of SmolLM2-135M: 2,048 positions
//! through each projection, and 64 or 256 positions through the 49,152-row output head. Two
//! rounds each; the largest difference between gemm's and the packed f32 product is printed too.
//!
//! Usage: cargo run --release -p distill-kernels --example matmul_speed

use distill_kernels::matmul::{gemm_into, Operand, Threads};
use distill_kernels::packed::{self, PackedWeight, Precision};
use std::time::Instant;
fn main() {
    if !Precision::Bf16.available() {
        eprintln!("this CPU lacks AVX-512 BF16: nothing to compare");
        return;
    }
    for (m, n, k) in [
        (2048usize, 576usize, 576usize),
        (2048, 192, 576),
        (2048, 1536, 576),
        (2048, 576, 1536),
        (64, 49152, 576),
        (256, 49152, 576),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.013).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 11 % 23) as f32 - 11.0) * 0.007).collect();
        let mut y1 = vec![0f32; m * n];
        let mut y2 = vec![0f32; m * n];
        let mut y3 = vec![0f32; m * n];
        let p = PackedWeight::pack(&w, n, k, Precision::F32);
        let pb = PackedWeight::pack(&w, n, k, Precision::Bf16);
        let flops = 2.0 * (m * n * k) as f64;
        let reps = (4e10 / flops).max(3.0) as usize;
        for _ in 0..2 {
            let t = Instant::now();
            for _ in 0..reps {
                gemm_into(
                    &mut y1,
                    n,
                    (m, n, k),
                    Operand::rows(&x, k),
                    Operand::transposed(&w, k),
                    false,
                    Threads::Pool,
                );
            }
            let g = flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9;
            let t = Instant::now();
            for _ in 0..reps {
                packed::matmul(&x, &p, &mut y2);
            }
            let f = flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9;
            let t = Instant::now();
            for _ in 0..reps {
                packed::matmul(&x, &pb, &mut y3);
            }
            let b = flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9;
            let err = y1.iter().zip(&y2).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            println!("{m}x{n}x{k}: gemm {g:.0} packed {f:.0} bf16 {b:.0} GFLOP/s  maxdiff {err:e}");
        }
    }
}
