//! Attention softmax rows for [`crate::attention`]: scale, additive mask and softmax in one pass
//! over a row, and its backward.

use crate::exp::exp;
use crate::reduce::{dot, max, sum};

/// `out = softmax(x·scale + mask)` over one row.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub(crate) fn softmax_row(x: &[f32], scale: f32, mask: &[f32], out: &mut [f32]) {
    for ((o, &v), &a) in out.iter_mut().zip(x).zip(mask) {
        *o = v * scale + a;
    }
    let top = max(out);
    out.iter_mut().for_each(|o| *o = exp(*o - top));
    let inv = 1.0 / sum(out);
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Gradient with respect to `x` of [`softmax_row`] given its output `p` and the gradient of the
/// loss with respect to it: `dx = scale · p ⊙ (grad − Σ_j grad_j p_j)`.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub(crate) fn softmax_backward_row(p: &[f32], grad: &[f32], scale: f32, dx: &mut [f32]) {
    let dot = dot(p, grad);
    for ((d, &pj), &gj) in dx.iter_mut().zip(p).zip(grad) {
        *d = scale * pj * (gj - dot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a float64 softmax written out per row, with a broadcast mask and a fully masked
    /// row; the backward against central differences of a weighted sum of the outputs.
    #[test]
    fn forward_matches_f64_and_backward_matches_finite_differences() {
        let (rows, s, scale) = (5usize, 7usize, 0.37f32);
        let x: Vec<f32> = (0..rows * s).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3).collect();
        // Two mask rows: causal-like and all masked; rows alternate between them.
        let mut mask = vec![0f32; 2 * s];
        mask[4..s].iter_mut().for_each(|m| *m = -1e9);
        mask[s..].iter_mut().for_each(|m| *m = -1e9);
        let mask_row = |r: usize| r % 2;
        let softmax = |x: &[f32], out: &mut [f32]| {
            for (r, row_out) in out.chunks_mut(s).enumerate() {
                let m = mask_row(r);
                softmax_row(&x[r * s..(r + 1) * s], scale, &mask[m * s..(m + 1) * s], row_out);
            }
        };
        let mut p = vec![0f32; rows * s];
        softmax(&x, &mut p);
        for r in 0..rows {
            // The masked sum in f32, as the model forms it (a fully masked row is uniform there).
            let z: Vec<f64> = (0..s).map(|j| (x[r * s + j] * scale + mask[(r % 2) * s + j]) as f64).collect();
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = z.iter().map(|v| (v - max).exp()).sum();
            for j in 0..s {
                let want = (z[j] - max).exp() / total;
                assert!((p[r * s + j] as f64 - want).abs() < 1e-6, "row {r} col {j}: {} vs {want}", p[r * s + j]);
            }
        }
        let w: Vec<f32> = (0..rows * s).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.5).collect();
        let mut dx = vec![0f32; rows * s];
        for (r, row_dx) in dx.chunks_mut(s).enumerate() {
            softmax_backward_row(&p[r * s..(r + 1) * s], &w[r * s..(r + 1) * s], scale, row_dx);
        }
        let loss = |x: &[f32]| -> f64 {
            let mut out = vec![0f32; rows * s];
            softmax(x, &mut out);
            out.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let h = 1e-2f32;
        // Fully masked rows (padding queries) are flat in f32, so differences see nothing there;
        // the analytic gradient is the composed autograd's, which the model tests compare.
        for i in (0..rows * s).filter(|i| (i / s) % 2 == 0) {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * h as f64);
            assert!((numeric - dx[i] as f64).abs() < 2e-3, "x[{i}]: numeric {numeric} vs {}", dx[i]);
        }
    }
}
