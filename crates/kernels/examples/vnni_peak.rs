//! The ceiling of the quantised kernel on this CPU: how many AVX-512 VNNI `vpdpbusd` (64 byte
//! products each) one core issues per second with nothing else to do, from 16 independent
//! accumulators. The kernel multiplies each weight by two bytes of its input (the value and the
//! rest of its rounding, see `distill_kernels::quant`), so its multiply-adds per second cannot
//! pass 32 × this rate per core; `quant_matmul`'s GMAC/s at large M read against it.
//!
//! Usage: vnni_peak

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni")) {
            println!("this CPU lacks AVX-512 VNNI");
            return;
        }
        let rounds = 100_000_000usize;
        let started = std::time::Instant::now();
        // SAFETY: the CPU has AVX-512F and VNNI (checked above).
        let sum = unsafe { issue(rounds) };
        let per_s = (rounds * 16) as f64 / started.elapsed().as_secs_f64();
        println!(
            "{:.2} G vpdpbusd/s on one core (checksum {sum}): {:.0} G byte products/s, a two-byte-input ceiling of {:.0} GMAC/s",
            per_s / 1e9,
            per_s * 64.0 / 1e9,
            per_s * 32.0 / 1e9
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("no AVX-512 VNNI off x86_64");
}

/// `rounds` × 16 `vpdpbusd` into 16 independent accumulators.
///
/// # Safety
/// The CPU has AVX-512F and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn issue(rounds: usize) -> i32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_epi8(std::hint::black_box(3));
    let b = _mm512_set1_epi8(std::hint::black_box(5));
    let mut acc = [_mm512_setzero_si512(); 16];
    for _ in 0..rounds {
        for r in acc.iter_mut() {
            *r = _mm512_dpbusd_epi32(*r, a, b);
        }
    }
    _mm512_reduce_add_epi32(acc.into_iter().fold(_mm512_setzero_si512(), |s, r| _mm512_add_epi32(s, r)))
}
