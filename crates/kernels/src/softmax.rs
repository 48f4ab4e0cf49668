//! Attention softmax rows for [`crate::attention`]: scale, additive mask and softmax in one pass
//! over a row, and its backward.

use crate::exp::exp;
#[cfg(target_arch = "x86_64")]
use crate::exp::exp16;
use crate::reduce::{dot, max, sum};

/// One row of [`softmax_rows`]: its scores, its additive mask and its output, one length.
pub(crate) struct Row<'a> {
    pub x: &'a [f32],
    pub mask: &'a [f32],
    pub out: &'a mut [f32],
}

/// `out = softmax(x·scale + mask)` over one row.
#[cfg(test)]
pub(crate) fn softmax_row(x: &[f32], scale: f32, mask: &[f32], out: &mut [f32]) {
    softmax_rows(&mut [Row { x, mask, out }], scale);
}

/// [`softmax_row`] for each of `rows`. Each row's result depends on that row alone.
pub(crate) fn softmax_rows(rows: &mut [Row], scale: f32) {
    for row in rows.iter() {
        assert!(
            row.x.len() == row.out.len() && row.mask.len() == row.out.len(),
            "softmax row operands differ in length"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if crate::tile::available() {
        for group in rows.chunks_mut(GROUP) {
            // SAFETY: AVX-512F is present; each row's three slices have one length (asserted).
            unsafe { softmax_rows_avx512(group, scale) };
        }
        return;
    }
    for row in rows {
        softmax_row_lanes(row.x, scale, row.mask, row.out);
    }
}

/// Rows whose passes [`softmax_rows_avx512`] interleaves.
const GROUP: usize = 32;

/// [`softmax_rows`] in whole registers, the last, partial one of a row under a lane mask (the
/// autovectorised loops fall back to a scalar `exp` per value there, and attention rows are
/// short). Each pass runs over all the rows before the next starts: a short row's passes are
/// chains of dependent steps, and the rows' chains overlap only side by side. The scaled, masked
/// scores are formed twice, for the maximum and for the exponentials, rather than stored and
/// read back.
///
/// # Safety
/// The CPU has AVX-512F; each row's `x`, `mask` and `out` have one length; at most [`GROUP`]
/// rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_rows_avx512(rows: &mut [Row], scale: f32) {
    use std::arch::x86_64::*;
    let lanes = |n: usize, i: usize| -> __mmask16 {
        match n - i {
            left if left >= 16 => 0xFFFF,
            left => (1u16 << left) - 1,
        }
    };
    // SAFETY (all loads and stores below): lanes i.. under `lanes(n, i)` lie inside a row of n.
    let scores = |row: &Row, i: usize, m: __mmask16| {
        let scaled = _mm512_mul_ps(unsafe { _mm512_maskz_loadu_ps(m, row.x.as_ptr().add(i)) }, _mm512_set1_ps(scale));
        _mm512_add_ps(scaled, unsafe { _mm512_maskz_loadu_ps(m, row.mask.as_ptr().add(i)) })
    };
    let store = |out: &mut [f32], i: usize, m: __mmask16, v: __m512| match m {
        0xFFFF => unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(i), v) },
        _ => unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, v) },
    };
    let mut factor = [0f32; GROUP];
    for (row, top) in rows.iter().zip(&mut factor) {
        let (n, mut acc) = (row.out.len(), _mm512_set1_ps(f32::NEG_INFINITY));
        for i in (0..n).step_by(16) {
            let m = lanes(n, i);
            acc = _mm512_mask_max_ps(acc, m, acc, scores(row, i, m));
        }
        *top = _mm512_reduce_max_ps(acc);
    }
    for (row, factor) in rows.iter_mut().zip(&mut factor) {
        let (n, top, mut total) = (row.out.len(), _mm512_set1_ps(*factor), _mm512_setzero_ps());
        for i in (0..n).step_by(16) {
            let m = lanes(n, i);
            // SAFETY: AVX-512F, as this function's.
            let e = unsafe { exp16(_mm512_sub_ps(scores(row, i, m), top)) };
            store(row.out, i, m, e);
            total = _mm512_mask_add_ps(total, m, total, e);
        }
        *factor = 1.0 / _mm512_reduce_add_ps(total);
    }
    for (row, inv) in rows.iter_mut().zip(factor) {
        let n = row.out.len();
        for i in (0..n).step_by(16) {
            let m = lanes(n, i);
            let e = unsafe { _mm512_maskz_loadu_ps(m, row.out.as_ptr().add(i)) };
            store(row.out, i, m, _mm512_mul_ps(e, _mm512_set1_ps(inv)));
        }
    }
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn softmax_row_lanes(x: &[f32], scale: f32, mask: &[f32], out: &mut [f32]) {
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
