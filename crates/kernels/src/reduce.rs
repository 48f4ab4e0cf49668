//! Row reductions the compiler vectorises: independent partial sums (or maxima) per lane instead
//! of one serial chain — floating-point addition is not associative, so a plain `.sum()` or
//! `fold(max)` stays scalar. Inlined into the callers, which are compiled for AVX2 + FMA where the
//! CPU has them.

const LANES: usize = 16;

/// `Σ a_i · b_i` over the common length.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (a_lanes, b_lanes) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_lanes.remainder().iter().zip(b_lanes.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_lanes.zip(b_lanes) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ a_i`.
#[inline(always)]
pub fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let lanes = a.chunks_exact(LANES);
    let tail: f32 = lanes.remainder().iter().sum();
    for x in lanes {
        for l in 0..LANES {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest value; `-inf` for an empty slice. NaN is ignored unless every value is NaN.
#[inline(always)]
pub fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let lanes = a.chunks_exact(LANES);
    let tail = lanes.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for x in lanes {
        for l in 0..LANES {
            acc[l] = if x[l] > acc[l] { x[l] } else { acc[l] };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dot_sum_and_max_match_f64_for_lengths_around_the_lane_count() {
        for n in [0usize, 1, 7, 15, 16, 17, 31, 256, 577] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.25).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.5).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((super::dot(&a, &b) as f64 - want).abs() < 1e-4, "dot, n = {n}");
            let want_sum: f64 = a.iter().map(|x| *x as f64).sum();
            assert!((super::sum(&a) as f64 - want_sum).abs() < 1e-4, "sum, n = {n}");
            let want_max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(super::max(&b), want_max, "max, n = {n}");
        }
    }
}
