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
pub(super) fn whole_rows(w: &PackedWeight, m: usize) -> bool {
    let (nr, mc) = w.tiling();
    panel_groups(m, w.n, nr, mc) == 1
}

/// `x` · Wᵢᵀ for several weights of one input and one precision (a layer's query, key and value
/// projections), each as a new (M, Nᵢ) vector: the input is prepared once (rounded once for the
/// quantised kernel), and the tasks of every product run in one parallel loop over their panels
/// side by side. Where a few rows make each product short (a decoding step), one loop instead of
/// one per product saves the waits in between. Each product is bit for bit [`super::product`]'s.
pub fn products(x: &[f32], weights: &[&PackedWeight]) -> Vec<Vec<f32>> {
    let Some(first) = weights.first() else { return Vec::new() };
    assert!(
        weights.iter().all(|w| (w.k, w.precision()) == (first.k, first.precision())),
        "packed products: the weights differ in inputs or precision"
    );
    let m = first.rows_of(x);
    let (nr, mc) = first.tiling();
    // Where each weight's panels start in the panels side by side.
    let starts: Vec<usize> = weights
        .iter()
        .scan(0, |at, w| {
            let start = *at;
            *at += w.n.div_ceil(nr);
            Some(start)
        })
        .collect();
    let panels = starts.last().map_or(0, |s| s + weights[weights.len() - 1].n.div_ceil(nr));
    let mut outs: Vec<Vec<f32>> = weights.iter().map(|w| Vec::with_capacity(m * w.n)).collect();
    let targets: Vec<Out> =
        outs.iter_mut().zip(weights).map(|(y, w)| Out::new(&mut y.spare_capacity_mut()[..m * w.n], w.n)).collect();
    let input = first.prepare(x);
    grid(m, panels * nr, nr, mc, |rows, span| {
        for ((w, &start), out) in weights.iter().zip(&starts).zip(&targets) {
            let own = span.start.max(start)..span.end.min(start + w.n.div_ceil(nr));
            if !own.is_empty() {
                // SAFETY: `grid` hands each task a disjoint span of the panels side by side, so
                // disjoint rectangles of each output, which outlives the loop.
                unsafe { w.task(&input, rows.clone(), own.start - start..own.end - start, out) };
            }
        }
    });
    drop(targets);
    for (y, w) in outs.iter_mut().zip(weights) {
        // SAFETY: the panels side by side cover every panel of every weight, for every row, and
        // a task writes all of its rectangle.
        unsafe { y.set_len(m * w.n) };
    }
    outs
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

    /// Several products in one loop give, bit for bit, each product alone: f32 and bf16 packings,
    /// ragged panels, one row and many; quantised blocks of two types side by side (a query in
    /// Q4_K beside a value in Q6_K, as Q4_K_M files mix them) where the CPU runs that kernel.
    #[test]
    fn products_side_by_side_are_each_product_alone() {
        use crate::quant::{random_blocks, BlockType, QuantMatrix};
        use std::sync::Arc;
        let k = 64;
        let shapes = [(1, [70, 5, 33]), (3, [40, 100, 1]), (2 * single::MC + 5, [97, 16, 40])];
        for (m, ns) in shapes {
            let (x, _) = case(m, 1, k);
            let mut packings: Vec<Vec<PackedWeight>> = Vec::new();
            for precision in [Precision::F32, Precision::Bf16] {
                if precision.available() {
                    let ws = ns.iter().map(|&n| PackedWeight::pack(&case(1, n, k).1, n, k, precision));
                    packings.push(ws.collect());
                }
            }
            if Precision::Int8.available() {
                let quant = |(i, &n): (usize, &usize)| {
                    let ty = [BlockType::Q4K, BlockType::Q6K, BlockType::Q8_0][i % 3];
                    let k = 256;
                    let blocks = random_blocks(ty, n * k / ty.values(), i as u64 + 1);
                    PackedWeight::quantized(Arc::new(QuantMatrix::from_blocks(ty, n, k, &blocks).unwrap()))
                };
                packings.push(ns.iter().enumerate().map(quant).collect());
            }
            for ws in &packings {
                let k = ws[0].in_features();
                let x: Vec<f32> = (0..m * k).map(|i| x[i % x.len()]).collect();
                let got = products(&x, &ws.iter().collect::<Vec<_>>());
                for (w, got) in ws.iter().zip(&got) {
                    let want = super::super::product(&x, w);
                    assert!(
                        got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{:?} ({m}, {}, {k}): the product side by side differs",
                        w.precision(),
                        w.out_features()
                    );
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
