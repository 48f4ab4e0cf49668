//! `e^x` in f32 without a branch or a library call, so loops over it vectorise. libm's `expf` is
//! a scalar call per value, and takes a slow path for every underflowing input — as each masked
//! attention score is.
//!
//! Range reduction `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `e^r`
//! (Cephes' `expf` coefficients), and `2^n` assembled in the exponent bits.

/// Below this, `e^x` is under f32's smallest normal: the result is 0.
const MIN_ARG: f32 = -87.336_54;
/// Above this, the result is clamped to `e^MAX_ARG` (≈ 1.65e38): `2^n` must stay a normal f32.
const MAX_ARG: f32 = 88.0;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n · LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2^23: adding it rounds an f32 of magnitude < 2^22 to an integer, held in the low bits.
const ROUND: f32 = 12_582_912.0;

/// `e^x`, within 2 ulp of the exact value for `x` in [−87.3, 88]; 0 below, `e^88` above, and NaN
/// stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let clamped = x.clamp(MIN_ARG, MAX_ARG);
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND; // round(x · log2 e)
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // n sits in the low mantissa bits of `shifted` (offset by 2^22); move it to the exponent.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let y = e_r * two_n;
    if x < MIN_ARG {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// [`exp`] of 16 lanes: the same operations in the same order, so each lane gets the bits the
/// scalar function returns.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let splat = _mm512_set1_ps;
    // `clamp`: the larger of MIN_ARG and x, then the smaller of that and MAX_ARG (NaN is
    // handled at the end).
    let clamped = _mm512_min_ps(_mm512_max_ps(x, splat(MIN_ARG)), splat(MAX_ARG));
    let shifted = _mm512_add_ps(_mm512_mul_ps(clamped, splat(LOG2_E)), splat(ROUND));
    let n = _mm512_sub_ps(shifted, splat(ROUND));
    let r = _mm512_sub_ps(_mm512_sub_ps(clamped, _mm512_mul_ps(n, splat(LN2_HI))), _mm512_mul_ps(n, splat(LN2_LO)));
    let step = |p: __m512, c: f32| _mm512_add_ps(_mm512_mul_ps(p, r), splat(c));
    let p = splat(1.987_569_1e-4);
    let p = step(p, 1.398_199_9e-3);
    let p = step(p, 8.333_452e-3);
    let p = step(p, 4.166_579_6e-2);
    let p = step(p, 0.166_666_65);
    let p = step(p, 0.5);
    let e_r = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r), splat(1.0));
    let n_bits = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(ROUND.to_bits() as i32));
    let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n_bits, _mm512_set1_epi32(127))));
    let y = _mm512_mul_ps(e_r, two_n);
    let y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, splat(MIN_ARG)), y, _mm512_setzero_ps());
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), y, x)
}

/// Lanes summed independently before they are added together.
const LANES: usize = 16;
/// Values summed in f32 before the partial sums move to f64: the f32 rounding stays near
/// `BLOCK · ε` relative, whatever the row's length.
const BLOCK: usize = 1024;

/// `Σ e^(z·scale − shift)` over `row`, in f32 lanes per block of values and f64 across blocks.
pub fn sum_exp(row: &[f32], scale: f32, shift: f32) -> f64 {
    sum_exp_dispatch(row, scale, shift)
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn sum_exp_dispatch(row: &[f32], scale: f32, shift: f32) -> f64 {
    let mut total = 0f64;
    for block in row.chunks(BLOCK) {
        let mut acc = [0f32; LANES];
        let lanes = block.chunks_exact(LANES);
        let tail: f32 = lanes.remainder().iter().map(|&z| exp(z * scale - shift)).sum();
        for chunk in lanes {
            for l in 0..LANES {
                acc[l] += exp(chunk[l] * scale - shift);
            }
        }
        total += acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64;
    }
    total
}

/// `Σ e^(z·scale − shift)` over the values of `row` below `floor`, and how many values equal
/// `floor`: a top-k's tail summed directly, so a tail of 1e-9 keeps its digits (1 − Σ top-k
/// would keep none).
pub fn sum_exp_below(row: &[f32], scale: f32, shift: f32, floor: f32) -> (f64, usize) {
    sum_exp_below_dispatch(row, scale, shift, floor)
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn sum_exp_below_dispatch(row: &[f32], scale: f32, shift: f32, floor: f32) -> (f64, usize) {
    let (mut total, mut equal) = (0f64, 0usize);
    for block in row.chunks(BLOCK) {
        let (mut acc, mut count) = ([0f32; LANES], [0u32; LANES]);
        let lanes = block.chunks_exact(LANES);
        for &z in lanes.remainder() {
            total += if z < floor { exp(z * scale - shift) as f64 } else { 0.0 };
            equal += usize::from(z == floor);
        }
        for chunk in lanes {
            for l in 0..LANES {
                let z = chunk[l];
                acc[l] += if z < floor { exp(z * scale - shift) } else { 0.0 };
                count[l] += u32::from(z == floor);
            }
        }
        total += acc.iter().map(|&a| a as f64).sum::<f64>();
        equal += count.iter().map(|&c| c as usize).sum::<usize>();
    }
    (total, equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error against f64 over the whole finite range (every 1/1000), the edges, zero
    /// and the special values.
    #[test]
    fn matches_f64_exp_within_two_ulp() {
        let mut worst = 0f64;
        for i in -87_336..=88_000 {
            let x = i as f32 / 1000.0;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1e9) > 1.6e38 && exp(1e9).is_finite());
    }

    /// The 16-lane version returns the scalar function's bits, special values included.
    #[test]
    fn the_vector_exp_is_the_scalar_one_lane_by_lane() {
        #[cfg(target_arch = "x86_64")]
        if crate::tile::available() {
            use std::arch::x86_64::*;
            let mut xs: Vec<f32> = (-90_000..=90_000).step_by(7).map(|i| i as f32 / 1000.0).collect();
            xs.extend([0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1e9, 1e9, MIN_ARG, MAX_ARG]);
            for chunk in xs.chunks(16) {
                let mut lanes = [0f32; 16];
                lanes[..chunk.len()].copy_from_slice(chunk);
                let mut got = [0f32; 16];
                // SAFETY: AVX-512F is present; both arrays hold 16 values.
                unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp16(_mm512_loadu_ps(lanes.as_ptr()))) };
                for (x, g) in lanes.iter().zip(got) {
                    assert!(
                        g.to_bits() == exp(*x).to_bits() || (g.is_nan() && exp(*x).is_nan()),
                        "e^{x}: {g} vs {}",
                        exp(*x)
                    );
                }
            }
        }
    }

    #[test]
    fn sum_exp_below_counts_only_the_values_under_the_floor() {
        let row: Vec<f32> = (0..3000).map(|i| ((i * 7919 % 1000) as f32 - 900.0) * 0.02).collect();
        let floor = row[17];
        let want: f64 = row.iter().filter(|&&z| z < floor).map(|&z| ((z - 2.0) as f64).exp()).sum();
        let (got, equal) = sum_exp_below(&row, 1.0, 2.0, floor);
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
        assert_eq!(equal, row.iter().filter(|&&z| z == floor).count());
        assert!(equal >= 1);
    }

    #[test]
    fn sum_exp_matches_f64_over_long_rows() {
        for n in [0usize, 5, 17, 1024, 49_153] {
            let row: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 - 900.0) * 0.02).collect();
            let want: f64 = row.iter().map(|&z| ((z * 0.5 - 1.0) as f64).exp()).sum();
            let got = sum_exp(&row, 0.5, 1.0);
            assert!((got - want).abs() <= 1e-6 * want.max(1e-30), "n = {n}: {got} vs {want}");
        }
    }
}
