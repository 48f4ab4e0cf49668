//! Packed products with the next step fused in: each task computes its block of the product
//! into scratch that stays in cache, and writes only what the model needs next, so the (M, N)
//! product is never stored and read back.

use std::mem::MaybeUninit;

use super::{grid, output, panel_groups, Out, PackedWeight};
use crate::rope::{self, RopeShape};

/// Runs `f` on this thread's scratch of `len` values (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        if scratch.len() < len {
            scratch.resize(len, 0.0);
        }
        f(&mut scratch[..len])
    })
}

/// Output columns per block of [`matmul_swiglu`]: whole panels of either kernel.
const SWIGLU_COLS: usize = 384;
const _: () = assert!(
    SWIGLU_COLS.is_multiple_of(super::single::NR)
        && SWIGLU_COLS.is_multiple_of(super::bf16::NR)
        && SWIGLU_COLS.is_multiple_of(crate::quant::NR)
);

/// silu(`x` · Gᵀ) ⊙ (`x` · Uᵀ), the SwiGLU of two projections of the same input, as a new
/// (M, N) vector. Each task computes a block of both products into scratch that
/// stays in cache and writes only the activation: the two (M, N) products are never stored.
/// The values are those of [`super::matmul`] twice and [`crate::swiglu::swiglu`].
pub fn matmul_swiglu(x: &[f32], gate: &PackedWeight, up: &PackedWeight) -> Vec<f32> {
    assert!(
        (gate.n, gate.k, gate.precision()) == (up.n, up.k, up.precision()),
        "packed SwiGLU: the gate and up weights differ in shape or precision"
    );
    let (m, n) = (gate.rows_of(x), gate.n);
    // SAFETY: the tasks of `grid` cover the (M, N) output, and each writes all of its rectangle.
    unsafe { output(m * n, |y| swiglu_into(x, gate, up, m, Out::new(y, n))) }
}

/// [`matmul_swiglu`] of M rows into `out`, (M, N).
fn swiglu_into(x: &[f32], gate: &PackedWeight, up: &PackedWeight, m: usize, out: Out) {
    let n = out.n;
    let (nr, mc) = gate.tiling();
    let x = gate.prepare(x);
    grid(m, n, nr, mc, |rows, panels| {
        with_scratch(2 * rows.len() * SWIGLU_COLS, |scratch| {
            let (g, u) = scratch.split_at_mut(rows.len() * SWIGLU_COLS);
            for first in panels.clone().step_by(SWIGLU_COLS / nr) {
                let block = first..(first + SWIGLU_COLS / nr).min(panels.end);
                let cols = block.start * nr..(block.end * nr).min(n);
                // SAFETY: each block is the task's own scratch, holding the rectangle.
                unsafe {
                    gate.task(&x, rows.clone(), block.clone(), &Out::block(g, SWIGLU_COLS, &rows, &cols, n));
                    up.task(&x, rows.clone(), block, &Out::block(u, SWIGLU_COLS, &rows, &cols, n));
                }
                for (r, row) in rows.clone().enumerate() {
                    let at = r * SWIGLU_COLS..r * SWIGLU_COLS + cols.len();
                    // SAFETY: the task's own rectangle of `y` (as `grid` hands out).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out.at(row, cols.start).cast::<MaybeUninit<f32>>(), cols.len())
                    };
                    crate::swiglu::swiglu_into(&g[at.clone()], &u[at], dst);
                }
            }
        })
    });
}

/// Whether [`matmul_rope`] gives each task whole rows: when [`grid`] does not split the panels.
fn whole_rows(w: &PackedWeight, m: usize) -> bool {
    let (nr, mc) = w.tiling();
    panel_groups(m, w.n, nr, mc) == 1
}

/// `y` (B, N, T, D) = RoPE(`x` · Wᵀ) for an (B·T, K) input and a weight of N·D outputs: a query or
/// key projection, rotated and moved to attention's layout, as [`super::matmul`] and then
/// [`rope::rope_to_heads`] would give, bit for bit.
///
/// With enough rows, each task computes whole rows of the product into scratch and writes them
/// rotated; with few (a decoding step), the product's columns are split among the threads as
/// [`super::matmul`] does and the rotation is a pass of its own.
pub fn matmul_rope(x: &[f32], w: &PackedWeight, shape: RopeShape, cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let m = w.rows_of(x);
    let n = w.n;
    assert!(
        m == shape.batch * shape.tokens && n == shape.heads * shape.head_dim,
        "packed RoPE: a product of ({m}, {n}) is not {shape:?}"
    );
    if !whole_rows(w, m) {
        return rope::rope_to_heads(&super::product(x, w), shape, cos, sin);
    }
    shape.check(m * n, cos, sin);
    // SAFETY: with whole rows per task, the tasks of `grid` cover every row, and each row's N
    // heads are written to their places.
    unsafe { output(m * n, |y| rope_into(x, w, shape, (cos, sin), Out::new(y, n))) }
}

/// [`matmul_rope`] into `out`, the (B, N, T, D) output of `shape`, when [`whole_rows`] holds.
fn rope_into(x: &[f32], w: &PackedWeight, shape: RopeShape, (cos, sin): (&[f32], &[f32]), out: Out) {
    let (m, n) = (shape.batch * shape.tokens, out.n);
    let (nr, mc) = w.tiling();
    let x = w.prepare(x);
    grid(m, n, nr, mc, |rows, panels| {
        let cols = 0..n;
        debug_assert_eq!(panels, 0..n.div_ceil(nr), "whole rows per task");
        with_scratch(rows.len() * n, |scratch| {
            // SAFETY: the task's own scratch holds its rows of the product.
            unsafe { w.task(&x, rows.clone(), panels, &Out::block(scratch, n, &rows, &cols, n)) };
            for (r, row) in rows.clone().enumerate() {
                // The row's heads go to N planes of (T, D); rows are disjoint across tasks, and
                // so are the places they are written to.
                // SAFETY: `out` is the (B, N, T, D) output of `shape` (checked), the row's N·D
                // values are in scratch, and the tables fit (checked).
                unsafe { rope::rotate_row(&scratch[r * n..(r + 1) * n], shape, row, cos, sin, out.at(0, 0)) };
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::super::tests::case;
    use super::super::{matmul, single, Precision};
    use super::*;

    /// The fused SwiGLU gives, bit for bit, the two products and then the activation: ragged
    /// panels, a block of columns past the first, rows past the first task.
    #[test]
    fn the_fused_swiglu_is_the_activation_of_the_two_products() {
        for (m, n, k) in [(2 * single::MC + 3, SWIGLU_COLS + 2 * single::NR + 7, 19), (1, 5, 3), (9, 100, 33)] {
            let (x, gate) = case(m, n, k);
            let up: Vec<f32> = gate.iter().rev().map(|v| v * 1.3).collect();
            for precision in [Precision::F32, Precision::Bf16] {
                if !precision.available() {
                    continue;
                }
                let (pg, pu) = (PackedWeight::pack(&gate, n, k, precision), PackedWeight::pack(&up, n, k, precision));
                let (mut g, mut u) = (vec![0f32; m * n], vec![0f32; m * n]);
                matmul(&x, &pg, &mut g);
                matmul(&x, &pu, &mut u);
                let want = crate::swiglu::swiglu(&g, &u);
                let y = matmul_swiglu(&x, &pg, &pu);
                for (i, (y, w)) in y.iter().zip(&want).enumerate() {
                    assert!(y.to_bits() == w.to_bits(), "{precision:?} ({m}, {n}, {k}) y[{i}]: {y} vs {w}");
                }
            }
        }
    }

    /// The fused RoPE gives, bit for bit, the product and then the rotation, on both paths: many
    /// rows (whole rows per task, a block across two sequences) and a few (a decoding step).
    #[test]
    fn the_fused_rope_is_the_rotation_of_the_product() {
        // Several panels of either kernel, so that a few rows have them split among the threads.
        let (heads, d, k) = (8, 16, 24);
        // Enough rows for whole rows per task with either kernel, whatever the thread count.
        let many = 4 * rayon::current_num_threads() * 128 / 2 + 37;
        for (batch, tokens, per_batch_angles) in [(2, many, true), (2, many, false), (4, 1, true), (1, 5, false)] {
            let (m, n) = (batch * tokens, heads * d);
            let (x, w) = case(m, n, k);
            let rows = if per_batch_angles { m } else { tokens };
            let angles: Vec<f32> = (0..rows * d / 2).map(|i| 0.37 * i as f32).collect();
            let (cos, sin): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
            let shape = RopeShape { batch, tokens, heads, head_dim: d, per_batch_angles };
            for precision in [Precision::F32, Precision::Bf16] {
                if !precision.available() {
                    continue;
                }
                let packed = PackedWeight::pack(&w, n, k, precision);
                assert_eq!(whole_rows(&packed, m), tokens == many, "{precision:?} {shape:?}: the path under test");
                let mut product = vec![0f32; m * n];
                matmul(&x, &packed, &mut product);
                let want = rope::rope_to_heads(&product, shape, &cos, &sin);
                let got = matmul_rope(&x, &packed, shape, &cos, &sin);
                assert!(
                    got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{precision:?} {shape:?}: fused RoPE differs"
                );
            }
        }
    }
}
