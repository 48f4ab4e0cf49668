//! RMSNorm over the last dimension and its backward, one pass per row: `y = x · r · w` with
//! `r = 1 / sqrt(mean(x²) + eps)`. The composed form costs seven element-wise ops forward and
//! about twice that backward, each a full pass over the (R, C) activations.
//!
//! Shapes: `x`, `out`, `grad`, `dx`: (R, C) row-major; `w`, `dw`: (C).

use std::mem::MaybeUninit;

use crate::reduce::dot;
use crate::VALUES_PER_TASK;
use rayon::prelude::*;

fn rows_per_task(c: usize) -> usize {
    (VALUES_PER_TASK / c.max(1)).max(1)
}

#[inline(always)]
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    1.0 / (dot(row, row) / row.len() as f32 + eps).sqrt()
}

fn check(x: usize, w: usize, other: usize, what: &str) {
    assert!(w > 0 && x.is_multiple_of(w), "RMSNorm rows of {w} do not tile {x} values");
    assert_eq!(x, other, "RMSNorm {what} differs in size from its input");
}

/// Row `r` of the result is `x[r] · r_r · w`; a new vector.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let c = w.len();
    check(x.len(), c, x.len(), "input");
    let chunk = c * rows_per_task(c);
    let fill = |i: usize, out: &mut [MaybeUninit<f32>]| {
        for (o, row) in out.chunks_mut(c).zip(x[i * chunk..].chunks(c)) {
            rms_norm_row(row, w, eps, o);
        }
    };
    // SAFETY: the chunk is whole rows of `x`, and `rms_norm_row` writes each value of a row.
    unsafe { crate::written(x.len(), chunk, fill) }
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn rms_norm_row(row: &[f32], w: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
    let r = inv_rms(row, eps);
    for ((o, &v), &g) in out.iter_mut().zip(row).zip(w) {
        o.write(v * r * g);
    }
}

/// Gradients of [`rms_norm`] from its input and the gradient of the loss with respect to its
/// output: `dx = r · (g ⊙ w) − x · r³ · Σ(g ⊙ w ⊙ x) / C` per row, and `dw = Σ_rows g ⊙ x · r`.
///
/// `dw` is summed per fixed block of rows and then over the blocks in order, so the result does
/// not depend on how rayon schedules the blocks.
pub fn rms_norm_backward(x: &[f32], w: &[f32], grad: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32]) {
    let c = w.len();
    check(x.len(), c, grad.len(), "gradient");
    check(x.len(), c, dx.len(), "input gradient");
    assert_eq!(dw.len(), c, "RMSNorm weight gradient differs in size from the weight");
    let chunk = c * rows_per_task(c);
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(grad.par_chunks(chunk)))
        .map(|(dx, (x, grad))| {
            let mut dw = vec![0f32; c];
            let mut gw = vec![0f32; c];
            for ((dx, row), g) in dx.chunks_mut(c).zip(x.chunks(c)).zip(grad.chunks(c)) {
                rms_norm_backward_row(row, w, g, eps, &mut gw, dx, &mut dw);
            }
            dw
        })
        .collect();
    dw.fill(0.0);
    for part in &partials {
        dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
}

/// One row of [`rms_norm_backward`]: writes `dx`, adds to `dw`; `gw` is scratch of C values.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn rms_norm_backward_row(row: &[f32], w: &[f32], g: &[f32], eps: f32, gw: &mut [f32], dx: &mut [f32], dw: &mut [f32]) {
    let c = w.len();
    let r = inv_rms(row, eps);
    for ((gw, &g), &wi) in gw.iter_mut().zip(g).zip(w) {
        *gw = g * wi;
    }
    let k = r * r * r * dot(gw, row) / c as f32;
    for (((d, &gw), &v), (dw, &g)) in dx.iter_mut().zip(gw.iter()).zip(row).zip(dw.iter_mut().zip(g)) {
        *d = r * gw - k * v;
        *dw += g * v * r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], eps: f64) -> Vec<f64> {
        let c = w.len();
        x.chunks(c)
            .flat_map(|row| {
                let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / c as f64;
                let r = 1.0 / (ms + eps).sqrt();
                row.iter().zip(w).map(move |(v, g)| *v as f64 * r * *g as f64).collect::<Vec<_>>()
            })
            .collect()
    }

    /// Forward against float64; both gradients against central differences of a weighted sum
    /// of the outputs, in float64 through the reference.
    #[test]
    fn forward_matches_f64_and_backward_matches_finite_differences() {
        let (rows, c, eps) = (6usize, 13usize, 1e-5f32);
        let x: Vec<f32> = (0..rows * c).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13).collect();
        let w: Vec<f32> = (0..c).map(|i| 0.5 + (i * 7 % 5) as f32 * 0.3).collect();
        let y = rms_norm(&x, &w, eps);
        for (i, (a, b)) in y.iter().zip(reference(&x, &w, eps as f64)).enumerate() {
            assert!((*a as f64 - b).abs() < 1e-5, "y[{i}]: {a} vs {b}");
        }
        let g: Vec<f32> = (0..rows * c).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.5).collect();
        let (mut dx, mut dw) = (vec![0f32; rows * c], vec![0f32; c]);
        rms_norm_backward(&x, &w, &g, eps, &mut dx, &mut dw);
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            reference(x, w, eps as f64).iter().zip(&g).map(|(a, b)| a * *b as f64).sum()
        };
        let h = 1e-3f32;
        for i in 0..rows * c {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (loss(&up, &w) - loss(&down, &w)) / (up[i] - down[i]) as f64;
            assert!((numeric - dx[i] as f64).abs() < 1e-3, "dx[{i}]: numeric {numeric} vs {}", dx[i]);
        }
        for i in 0..c {
            let (mut up, mut down) = (w.clone(), w.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (loss(&x, &up) - loss(&x, &down)) / (up[i] - down[i]) as f64;
            assert!((numeric - dw[i] as f64).abs() < 1e-3, "dw[{i}]: numeric {numeric} vs {}", dw[i]);
        }
    }

    /// Many blocks of rows: the weight gradient's block partials add up to the serial sum.
    #[test]
    fn weight_gradient_sums_every_block() {
        let (rows, c) = (3 * rows_per_task(8) + 5, 8usize);
        let x: Vec<f32> = (0..rows * c).map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.1).collect();
        let w = vec![1.5f32; c];
        let g = vec![1f32; rows * c];
        let (mut dx, mut dw) = (vec![0f32; rows * c], vec![0f32; c]);
        rms_norm_backward(&x, &w, &g, 1e-6, &mut dx, &mut dw);
        let mut want = vec![0f64; c];
        for row in x.chunks(c) {
            let r = 1.0 / (row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / c as f64 + 1e-6).sqrt();
            want.iter_mut().zip(row).for_each(|(a, v)| *a += *v as f64 * r);
        }
        for (i, (a, b)) in dw.iter().zip(&want).enumerate() {
            assert!((*a as f64 - b).abs() < 1e-3 * b.abs().max(1.0), "dw[{i}]: {a} vs {b}");
        }
    }
}
