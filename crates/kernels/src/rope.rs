//! Rotary position embedding in the Hugging Face ("rotate half") layout, fused with the move from
//! the projection's (B, T, N, D) layout to attention's (B, N, T, D): one pass writes the rotated
//! heads where the attention matmuls read them. The composed form narrows, multiplies four
//! times, adds, subtracts and concatenates, then copies again for the transpose.
//!
//! For each half-pair `(x1, x2)` at frequency `i`: `y1 = x1·cos − x2·sin`, `y2 = x2·cos + x1·sin`.
//! The backward is the inverse rotation (`sin` negated) and the inverse move.

use std::mem::MaybeUninit;

/// Dimensions of one RoPE application. `cos` and `sin` are (B or 1, T, D/2) row-major: one row of
/// half-dimension angles per (batch row, position), or one for every batch row.
#[derive(Clone, Copy, Debug)]
pub struct RopeShape {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub per_batch_angles: bool,
}

impl RopeShape {
    fn len(&self) -> usize {
        self.batch * self.tokens * self.heads * self.head_dim
    }

    fn angle_row(&self, b: usize, t: usize) -> usize {
        if self.per_batch_angles {
            b * self.tokens + t
        } else {
            t
        }
    }

    pub(crate) fn check(&self, x: usize, cos: &[f32], sin: &[f32]) {
        let half = self.head_dim / 2;
        let rows = if self.per_batch_angles { self.batch * self.tokens } else { self.tokens };
        assert!(self.head_dim.is_multiple_of(2), "RoPE head dimension {} is odd", self.head_dim);
        assert!(x == self.len(), "RoPE operand differs in size from {self:?}");
        assert!(cos.len() == rows * half && sin.len() == rows * half, "RoPE tables do not fit {self:?}");
    }
}

/// Rotates one head vector: `sign` +1 forward, −1 for the inverse rotation.
#[inline(always)]
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], sign: f32, out: &mut [MaybeUninit<f32>]) {
    let half = cos.len();
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for i in 0..half {
        let (c, s) = (cos[i], sign * sin[i]);
        o1[i].write(x1[i] * c - x2[i] * s);
        o2[i].write(x2[i] * c + x1[i] * s);
    }
}

/// `x`: (B, T, N, D) → (B, N, T, D), rotated; a new vector.
pub fn rope_to_heads(x: &[f32], shape: RopeShape, cos: &[f32], sin: &[f32]) -> Vec<f32> {
    shape.check(x.len(), cos, sin);
    let (t, d) = (shape.tokens, shape.head_dim);
    // One task per (batch row, head) plane of the output.
    // SAFETY: `rope_plane` writes each of the plane's T rows of D values.
    unsafe { crate::written(x.len(), t * d, |plane, out| rope_plane(x, shape, cos, sin, plane, out)) }
}

/// One (batch row, head) plane of [`rope_to_heads`]'s output.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn rope_plane(x: &[f32], shape: RopeShape, cos: &[f32], sin: &[f32], plane: usize, out: &mut [MaybeUninit<f32>]) {
    let RopeShape { tokens: t, heads: n, head_dim: d, .. } = shape;
    let (half, b, h) = (d / 2, plane / n, plane % n);
    for (ti, o) in out.chunks_mut(d).enumerate() {
        let src = ((b * t + ti) * n + h) * d;
        let a = shape.angle_row(b, ti) * half;
        rotate(&x[src..src + d], &cos[a..a + half], &sin[a..a + half], 1.0, o);
    }
}

/// Row `row` (= b·T + t) of a (B, T, N·D) projection, rotated into its N places of the
/// (B, N, T, D) output at `out`: the values [`rope_to_heads`] writes there.
///
/// # Safety
/// `out` is the start of a (B, N, T, D) buffer of `shape`, whose places for this row no other
/// thread writes concurrently; `src` holds the row's N·D values; the tables fit `shape` (as
/// [`RopeShape::check`] asserts).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub(crate) unsafe fn rotate_row(src: &[f32], shape: RopeShape, row: usize, cos: &[f32], sin: &[f32], out: *mut f32) {
    let RopeShape { tokens: t, heads: n, head_dim: d, .. } = shape;
    let (half, b, ti) = (d / 2, row / t, row % t);
    let a = shape.angle_row(b, ti) * half;
    for (h, x) in src.chunks_exact(d).take(n).enumerate() {
        // SAFETY: the caller's: this row's place for head h, D values inside the output.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.add(((b * n + h) * t + ti) * d).cast(), d) };
        rotate(x, &cos[a..a + half], &sin[a..a + half], 1.0, dst);
    }
}

/// Gradient of [`rope_to_heads`]: `grad` (B, N, T, D) → `dx` (B, T, N, D), a new vector.
pub fn rope_to_heads_backward(grad: &[f32], shape: RopeShape, cos: &[f32], sin: &[f32]) -> Vec<f32> {
    shape.check(grad.len(), cos, sin);
    let (n, d) = (shape.heads, shape.head_dim);
    // One task per (batch row, position) row of the input.
    // SAFETY: `rope_backward_row` writes each of the row's N heads of D values.
    unsafe { crate::written(grad.len(), n * d, |row, dx| rope_backward_row(grad, shape, cos, sin, row, dx)) }
}

/// One (batch row, position) row of [`rope_to_heads_backward`]'s output.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn rope_backward_row(
    grad: &[f32],
    shape: RopeShape,
    cos: &[f32],
    sin: &[f32],
    row: usize,
    dx: &mut [MaybeUninit<f32>],
) {
    let RopeShape { tokens: t, heads: n, head_dim: d, .. } = shape;
    let (half, b, ti) = (d / 2, row / t, row % t);
    let a = shape.angle_row(b, ti) * half;
    for (h, d_out) in dx.chunks_mut(d).enumerate() {
        let src = ((b * n + h) * t + ti) * d;
        rotate(&grad[src..src + d], &cos[a..a + half], &sin[a..a + half], -1.0, d_out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the rotation written out in float64 with explicit indices, for per-batch and shared
    /// angle tables; the backward against central differences of a weighted sum of the outputs.
    #[test]
    fn forward_matches_f64_and_backward_matches_finite_differences() {
        let (b, t, n, d) = (2usize, 3usize, 2usize, 6usize);
        let half = d / 2;
        let x: Vec<f32> = (0..b * t * n * d).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13).collect();
        for per_batch_angles in [true, false] {
            let rows = if per_batch_angles { b * t } else { t };
            let angles: Vec<f64> = (0..rows * half).map(|i| 0.3 * i as f64 + 0.1).collect();
            let cos: Vec<f32> = angles.iter().map(|a| a.cos() as f32).collect();
            let sin: Vec<f32> = angles.iter().map(|a| a.sin() as f32).collect();
            let shape = RopeShape { batch: b, tokens: t, heads: n, head_dim: d, per_batch_angles };
            let reference = |x: &[f32]| -> Vec<f64> {
                let mut y = vec![0f64; x.len()];
                for (bi, hi, ti, i) in
                    (0..b * n * t * half).map(|k| (k / (n * t * half), k / (t * half) % n, k / half % t, k % half))
                {
                    let a = angles[(if per_batch_angles { bi * t + ti } else { ti }) * half + i];
                    let src = ((bi * t + ti) * n + hi) * d;
                    let (x1, x2) = (x[src + i] as f64, x[src + half + i] as f64);
                    let dst = ((bi * n + hi) * t + ti) * d;
                    y[dst + i] = x1 * a.cos() - x2 * a.sin();
                    y[dst + half + i] = x2 * a.cos() + x1 * a.sin();
                }
                y
            };
            let y = rope_to_heads(&x, shape, &cos, &sin);
            for (i, (a, e)) in y.iter().zip(reference(&x)).enumerate() {
                assert!((*a as f64 - e).abs() < 1e-5, "y[{i}]: {a} vs {e}");
            }
            let g: Vec<f32> = (0..x.len()).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.5).collect();
            let dx = rope_to_heads_backward(&g, shape, &cos, &sin);
            let loss = |x: &[f32]| -> f64 { reference(x).iter().zip(&g).map(|(a, b)| a * *b as f64).sum() };
            let h = 1e-3f32;
            for i in 0..x.len() {
                let (mut up, mut down) = (x.clone(), x.clone());
                up[i] += h;
                down[i] -= h;
                let numeric = (loss(&up) - loss(&down)) / (up[i] - down[i]) as f64;
                assert!((numeric - dx[i] as f64).abs() < 1e-3, "dx[{i}]: numeric {numeric} vs {}", dx[i]);
            }
        }
    }
}
