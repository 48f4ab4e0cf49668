//! `y = x · Wᵀ` against a weight packed once, for inference: the teacher's and the served model's
//! projections and output head. Two precisions, each an AVX-512 kernel:
//! - [`Precision::F32`]: f32 products, f32 sums (AVX-512F). It returns what a plain f32 matmul
//!   returns, up to the order of the sums.
//! - [`Precision::Bf16`]: operands rounded to bf16, f32 sums (AVX-512 BF16), twice the arithmetic
//!   rate at the cost of about three significant digits per product.
//!
//! Packing lays the (N, K) weight out as panels of a few output columns, in the order the kernel
//! reads them, so no call repacks it (a general GEMM repacks its right operand on every call).
//! Each call computes tiles of up to 8 rows × one panel in registers over the whole K. The f32
//! kernel reads its rows of `x` where they lie; the bf16 one first rounds them to bf16 pairs in
//! register-tile order.
//!
//! Every output is one sum over K in a fixed order, the same whatever the other rows are: a
//! sequence gets bit-for-bit the same projections alone as in a batch, so a served model and a
//! local teacher agree however their requests were batched.
//!
//! A GGUF file's quantised weights pack as they are ([`PackedWeight::quantized`]): the tiles of
//! [`crate::quant`], [`Precision::Int8`], through the same tasks and fused steps.

pub mod bf16;
mod fused;
mod single;

pub use fused::{matmul_rope, matmul_swiglu, products};

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use crate::quant::{self, QuantMatrix, Rows};

/// The arithmetic of a model's matmuls: the one precision type of the workspace (the packed
/// kernels, the CLI's `--matmuls`, a dataset manifest's `teacher_matmuls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// bf16 operands, f32 sums (CPUs with AVX-512 BF16).
    Bf16,
    /// A GGUF file's quantised weights as they are, inputs rounded to 8-bit integers per block
    /// of 32, integer dot products (AVX-512 VNNI): see [`crate::quant`].
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            other => Err(format!("unknown precision `{other}` (known: f32, bf16, int8)")),
        }
    }
}

impl PartialEq<&str> for Precision {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Precision {
    /// Whether this CPU runs the kernel.
    pub fn available(self) -> bool {
        // The f32 kernel is the register-tile kernel; bf16 needs AVX-512 BF16 on top.
        match self {
            Precision::F32 => crate::tile::available(),
            Precision::Bf16 => crate::tile::available() && bf16_instructions(),
            Precision::Int8 => crate::quant::available(),
        }
    }
}

/// Whether the CPU has AVX-512 BF16's dot products.
fn bf16_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight (N, K) in a kernel's panel layout.
#[derive(Clone, Debug)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    panels: Panels,
}

#[derive(Clone, Debug)]
enum Panels {
    /// ⌈N / NR⌉ panels of K × [`single::NR`] values.
    F32(Vec<f32>),
    /// ⌈N / NR⌉ panels of `pairs` × [`bf16::NR`] × 2 values; `pairs` = ⌈K / 2⌉.
    Bf16 { pairs: usize, data: Vec<u16> },
    /// GGUF blocks in [`crate::quant`]'s layout, shared with whoever else holds the matrix (a
    /// tied embedding).
    Quant(Arc<QuantMatrix>),
}

/// A product's input as its kernel reads it: the f32 rows, or rows rounded for the quantised
/// kernel (once per product, shared by its tasks and by both weights of a fused SwiGLU).
pub(crate) enum Input<'a> {
    F32(&'a [f32]),
    Q8(Rows),
}

impl PackedWeight {
    /// Packs the row-major (N, K) weight `w` for `precision`'s kernel. Columns past N (and, for
    /// bf16, the pair past an odd K) are zero. Int8 rounds the weights to Q8_0 blocks first
    /// (f32 stays where K is not a multiple of 32: [`Self::precision`] tells).
    pub fn pack(w: &[f32], n: usize, k: usize, precision: Precision) -> Self {
        assert_eq!(w.len(), n * k, "pack: weight of {} values is not {n}×{k}", w.len());
        let panels = match precision {
            Precision::F32 => Panels::F32(single::pack(w, n, k)),
            Precision::Bf16 => Panels::Bf16 { pairs: k.div_ceil(2), data: bf16::pack(w, n, k) },
            // f32 weights rounded to Q8_0 blocks, as llama.cpp's quantiser does; rows that are
            // not whole blocks stay f32.
            Precision::Int8 if k.is_multiple_of(32) => {
                let blocks = quant::quantize_q8_0(w);
                let matrix = QuantMatrix::from_blocks(quant::BlockType::Q8_0, n, k, &blocks)
                    .expect("Q8_0 blocks of finite weights decode");
                Panels::Quant(Arc::new(matrix))
            }
            Precision::Int8 => Panels::F32(single::pack(w, n, k)),
        };
        Self { n, k, panels }
    }

    /// A GGUF matrix's quantised blocks, for [`Precision::Int8`]'s kernel.
    pub fn quantized(matrix: Arc<QuantMatrix>) -> Self {
        Self { n: matrix.rows(), k: matrix.cols(), panels: Panels::Quant(matrix) }
    }

    /// Output columns N.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Input positions K.
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// The row-major (N, K) weight back: exact from an f32 packing, the values the kernel
    /// multiplies from a quantised one; None for bf16, whose packing rounded it.
    pub fn unpack(&self) -> Option<Vec<f32>> {
        match &self.panels {
            Panels::F32(data) => Some(single::unpack(data, self.n, self.k)),
            Panels::Bf16 { .. } => None,
            Panels::Quant(m) => Some(m.dequantize()),
        }
    }

    /// `x` as this packing's kernel reads it.
    fn prepare<'a>(&self, x: &'a [f32]) -> Input<'a> {
        match self.panels {
            Panels::Quant(_) => Input::Q8(Rows::quantize(x, self.k)),
            _ => Input::F32(x),
        }
    }

    /// Rows M of an input `x` (M, K); panics when the CPU lacks the kernel or `x` is not whole
    /// rows.
    fn rows_of(&self, x: &[f32]) -> usize {
        let precision = self.precision();
        assert!(
            precision.available(),
            "the {precision:?} packed matmul needs AVX-512; check Precision::available() first"
        );
        let k = self.k;
        assert!(k > 0 && x.len().is_multiple_of(k), "packed matmul: input of {} values is not (M, {k})", x.len());
        x.len() / k
    }

    /// The kernel's panel width and rows per task.
    fn tiling(&self) -> (usize, usize) {
        match self.panels {
            Panels::F32(_) => (single::NR, single::MC),
            Panels::Bf16 { .. } => (bf16::NR, bf16::MC),
            Panels::Quant(_) => (quant::NR, QUANT_MC),
        }
    }

    /// The product's rectangle `rows` × `panels` into `out`, through the kernel of the packing.
    ///
    /// # Safety
    /// The CPU has the kernel ([`Self::rows_of`] checked it); `out` can take the rectangle, and
    /// no other task writes it concurrently.
    unsafe fn task(&self, x: &Input, rows: Range<usize>, panels: Range<usize>, out: &Out) {
        match (&self.panels, x) {
            // SAFETY (all arms): the caller's.
            (Panels::F32(data), Input::F32(x)) => unsafe { single::task(x, data, self.k, rows, panels, out) },
            (Panels::Bf16 { pairs, data }, Input::F32(x)) => unsafe {
                bf16::task(x, data, self.k, *pairs, rows, panels, out)
            },
            (Panels::Quant(m), Input::Q8(x)) => unsafe { quant_task(m, x, rows, panels, out) },
            _ => unreachable!("an input prepared for another packing"),
        }
    }

    /// Whether a product of `m` rows splits the columns among tasks, as for the few rows of a
    /// decoding step: then each product is short, and [`products`] of several weights in one
    /// parallel loop saves the most.
    pub fn splits_columns(&self, m: usize) -> bool {
        !fused::whole_rows(self, m)
    }

    pub fn precision(&self) -> Precision {
        match self.panels {
            Panels::F32(_) => Precision::F32,
            Panels::Bf16 { .. } => Precision::Bf16,
            Panels::Quant(_) => Precision::Int8,
        }
    }
}

/// Rows per task of the quantised kernel.
const QUANT_MC: usize = 48;

/// Rows × panels (pairs of lane groups) of a quantised product.
///
/// # Safety
/// As [`PackedWeight::task`].
unsafe fn quant_task(m: &QuantMatrix, x: &Rows, rows: Range<usize>, panels: Range<usize>, out: &Out) {
    let nr = quant::NR;
    let kernel = quant::Kernel::detected().expect("`rows_of` checked that a quantised kernel runs here");
    let mut tile_out = [0f32; quant::MAX_ROWS * quant::NR];
    for panel in panels {
        let cols = nr.min(out.n - panel * nr);
        for r0 in rows.clone().step_by(quant::MAX_ROWS) {
            let real = quant::MAX_ROWS.min(rows.end - r0);
            let direct = cols == nr;
            let (dst, dst_rs) = match direct {
                true => (out.at(r0, panel * nr), out.stride),
                false => (tile_out.as_mut_ptr(), nr),
            };
            // SAFETY: the kernel runs here (`rows_of` checked); rows r0.. < M of `x`, groups
            // 2·panel and 2·panel + 1 of the matrix (whole pairs), and `dst` inside this task's
            // rectangle when direct, inside `tile_out` otherwise.
            unsafe { quant::run_tile(kernel, m, 2 * panel, x, r0, real, dst, dst_rs) };
            if !direct {
                // SAFETY: inside this task's rectangle.
                unsafe { out.store(&tile_out, nr, real, (r0, panel * nr), cols) };
            }
        }
    }
}

/// `y` (M, N) = `x` (M, K) · Wᵀ. Panics when the CPU lacks the weight's kernel (check
/// [`Precision::available`]) or the sizes disagree.
pub fn matmul(x: &[f32], w: &PackedWeight, y: &mut [f32]) {
    // SAFETY: `MaybeUninit<f32>` has f32's layout, and `matmul_uninit` only writes initialised
    // values.
    let y = unsafe { &mut *(y as *mut [f32] as *mut [MaybeUninit<f32>]) };
    matmul_uninit(x, w, y);
}

/// [`matmul`] into memory not yet initialised (a fresh output need not be zeroed first): every
/// element of `y` is written.
fn matmul_uninit(x: &[f32], w: &PackedWeight, y: &mut [MaybeUninit<f32>]) {
    run(x, w, None, y);
}

/// `x` (M, K) · Wᵀ as a new (M, N) vector, never zeroed first.
pub fn product(x: &[f32], w: &PackedWeight) -> Vec<f32> {
    // SAFETY: `matmul_uninit` writes every value of the (M, N) output.
    unsafe { output(w.rows_of(x) * w.n, |y| matmul_uninit(x, w, y)) }
}

/// `residual` + `x` · Wᵀ as a new (M, N) vector: a residual connection added as each task's block
/// of the product is still in cache, instead of a pass of its own. Each value is
/// `residual + sum`, rounded once, as the separate addition would give.
pub fn matmul_residual(x: &[f32], w: &PackedWeight, residual: &[f32]) -> Vec<f32> {
    let len = w.rows_of(x) * w.n;
    assert_eq!(residual.len(), len, "packed matmul: the residual is not the output's size");
    // SAFETY: `run` writes every value of the (M, N) output.
    unsafe { output(len, |y| run(x, w, Some(residual), y)) }
}

/// A new vector of `len` values written by `fill`, without zeroing them first.
///
/// # Safety
/// `fill` must write every value it is given.
unsafe fn output(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut y = Vec::with_capacity(len);
    fill(&mut y.spare_capacity_mut()[..len]);
    // SAFETY: all `len` values were written (the caller's promise).
    unsafe { y.set_len(len) };
    y
}

fn run(x: &[f32], w: &PackedWeight, residual: Option<&[f32]>, y: &mut [MaybeUninit<f32>]) {
    let m = w.rows_of(x);
    let n = w.n;
    assert_eq!(y.len(), m * n, "packed matmul: output is not ({m}, {n})");
    let out = Out::new(y, n);
    let (nr, mc) = w.tiling();
    let x = w.prepare(x);
    grid(m, n, nr, mc, |rows, panels| {
        let cols = panels.start * nr..(panels.end * nr).min(n);
        // SAFETY: `grid` hands each task a disjoint rectangle of `y`, which outlives it.
        unsafe { w.task(&x, rows.clone(), panels, &out) };
        if let Some(residual) = residual {
            // SAFETY: the task's own rectangle, which it has just written.
            unsafe { out.add(residual, rows, cols) };
        }
    });
}

/// Runs `task` over a grid of blocks of `mc` rows × groups of `nr`-column panels: enough groups
/// that a few rows (one chunk of a sequence's positions, one decoding step) still keep every
/// thread busy.
fn grid(m: usize, n: usize, nr: usize, mc: usize, task: impl Fn(Range<usize>, Range<usize>) + Sync) {
    let (row_blocks, panels) = (m.div_ceil(mc), n.div_ceil(nr));
    let groups = panel_groups(m, n, nr, mc);
    let per_group = panels.div_ceil(groups);
    (0..row_blocks * groups).into_par_iter().for_each(|t| {
        let (block, group) = (t / groups, t % groups);
        let rows = block * mc..(block * mc + mc).min(m);
        let panels = group * per_group..(group * per_group + per_group).min(panels);
        if !panels.is_empty() {
            task(rows, panels);
        }
    });
}

/// How many groups [`grid`] splits the panels into: 1 (every task has whole rows) once there are
/// enough blocks of rows to keep every thread busy.
fn panel_groups(m: usize, n: usize, nr: usize, mc: usize) -> usize {
    (4 * rayon::current_num_threads()).div_ceil(m.div_ceil(mc).max(1)).clamp(1, n.div_ceil(nr).max(1))
}

/// The (M, N) output, shared by tasks that write disjoint rectangles of it: rows `stride`
/// values apart (N for the whole output; a task's scratch block holds fewer columns).
struct Out {
    ptr: *mut f32,
    n: usize,
    stride: usize,
}
// SAFETY: only the tasks of one product use it, and their writes never overlap.
unsafe impl Sync for Out {}

impl Out {
    fn new(y: &mut [MaybeUninit<f32>], n: usize) -> Self {
        Self { ptr: y.as_mut_ptr().cast::<f32>(), n, stride: n }
    }

    /// The rectangle `rows` × `cols` of an (M, N) output, held in `block` (`stride` values per
    /// row): a task writes it at the output's coordinates.
    fn block(block: &mut [f32], stride: usize, rows: &Range<usize>, cols: &Range<usize>, n: usize) -> Self {
        assert!(block.len() >= rows.len() * stride && cols.len() <= stride, "the block does not hold the rectangle");
        // Addresses only: `at` brings them back inside `block` for the rectangle's elements.
        let ptr = block.as_mut_ptr().wrapping_sub(rows.start * stride + cols.start);
        Self { ptr, n, stride }
    }

    /// The address of output element (row, col).
    fn at(&self, row: usize, col: usize) -> *mut f32 {
        self.ptr.wrapping_add(row * self.stride + col)
    }

    /// Adds `residual` ((M, N), row-major) to the rectangle `rows` × `cols`.
    ///
    /// # Safety
    /// The rectangle must lie inside the output, be written already, and belong to the calling
    /// task alone.
    unsafe fn add(&self, residual: &[f32], rows: Range<usize>, cols: Range<usize>) {
        for row in rows {
            // SAFETY: the caller's rectangle, initialised.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.at(row, cols.start), cols.len()) };
            for (d, &r) in dst.iter_mut().zip(&residual[row * self.n + cols.start..row * self.n + cols.end]) {
                *d += r;
            }
        }
    }

    /// Writes the first `rows` rows of a register tile (`nr` values per row) at output row `row`,
    /// column `col`, `cols` values each.
    ///
    /// # Safety
    /// The rectangle must lie inside the output and belong to the calling task alone.
    unsafe fn store(&self, tile: &[f32], nr: usize, rows: usize, (row, col): (usize, usize), cols: usize) {
        for (r, src) in tile.chunks(nr).take(rows).enumerate() {
            // SAFETY: the caller's rectangle.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.at(row + r, col), cols) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An (M, K) input and an (N, K) weight of small mixed-sign values.
    pub(super) fn case(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.13).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 11 % 23) as f32 - 11.0) * 0.07).collect();
        (x, w)
    }

    /// The product in f64 of the operands as the kernel sees them (`round` per operand).
    fn reference(x: &[f32], w: &[f32], (m, n, k): (usize, usize, usize), round: fn(f32) -> f32) -> Vec<f64> {
        (0..m * n)
            .map(|i| (0..k).map(|j| round(x[i / n * k + j]) as f64 * round(w[i % n * k + j]) as f64).sum())
            .collect()
    }

    /// Odd K, N not a multiple of either panel width, M not a multiple of the tile height or of
    /// either block, a single row: against the f64 product. Skipped, with a note, on CPUs without
    /// the kernel.
    #[test]
    fn both_precisions_match_the_product_for_ragged_sizes() {
        let cases = [
            (1, 1, 1),
            (13, 45, 7),
            (3, 100, 9),
            (bf16::MC + 9, 70, 64),
            (2 * single::MC + 5, 97, 33),
            (64, 40 * 48 + 3, 20),
        ];
        for (precision, round, tol) in [
            (Precision::F32, (|v| v) as fn(f32) -> f32, 1e-5),
            (Precision::Bf16, |v| bf16::from_bf16(bf16::to_bf16(v)), 1e-4),
        ] {
            if !precision.available() {
                eprintln!("this CPU lacks the {precision:?} packed kernel: not exercised here");
                continue;
            }
            for (m, n, k) in cases {
                let (x, w) = case(m, n, k);
                let packed = PackedWeight::pack(&w, n, k, precision);
                let mut y = vec![f32::NAN; m * n];
                matmul(&x, &packed, &mut y);
                for (i, (a, b)) in y.iter().zip(reference(&x, &w, (m, n, k), round)).enumerate() {
                    assert!(
                        (*a as f64 - b).abs() < tol * b.abs().max(1.0),
                        "{precision:?} ({m}, {n}, {k}) y[{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// A row's outputs are bit-for-bit the same computed alone, in a short batch (a smaller
    /// register tile) and anywhere in a long one (other blocks, other tasks).
    #[test]
    fn a_row_gets_the_same_bits_in_any_batch() {
        let (m, n, k) = (150, 130, 77);
        let (x, w) = case(m, n, k);
        for precision in [Precision::F32, Precision::Bf16] {
            if !precision.available() {
                continue;
            }
            let packed = PackedWeight::pack(&w, n, k, precision);
            let mut all = vec![0f32; m * n];
            matmul(&x, &packed, &mut all);
            for (start, len) in [(0, 1), (7, 1), (70, 3), (140, 10), (149, 1)] {
                let mut part = vec![0f32; len * n];
                matmul(&x[start * k..(start + len) * k], &packed, &mut part);
                assert!(
                    part == all[start * n..(start + len) * n],
                    "{precision:?} rows {start}..+{len} differ from the batch"
                );
            }
        }
    }

    /// The residual variant gives, bit for bit, the product plus the residual added after it.
    #[test]
    fn the_residual_is_added_to_the_product_as_a_separate_addition_would() {
        let (m, n, k) = (2 * single::MC + 3, 2 * single::NR + 7, 19);
        let (x, w) = case(m, n, k);
        let residual: Vec<f32> = (0..m * n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.31).collect();
        for precision in [Precision::F32, Precision::Bf16] {
            if !precision.available() {
                continue;
            }
            let packed = PackedWeight::pack(&w, n, k, precision);
            let mut product = vec![0f32; m * n];
            matmul(&x, &packed, &mut product);
            let y = matmul_residual(&x, &packed, &residual);
            for (i, (y, (p, r))) in y.iter().zip(product.iter().zip(&residual)).enumerate() {
                assert!(y.to_bits() == (r + p).to_bits(), "{precision:?} y[{i}]: {y} vs {r} + {p}");
            }
        }
    }

    #[test]
    fn an_f32_packing_unpacks_to_the_weight() {
        let (n, k) = (single::NR + 5, 7);
        let (_, w) = case(1, n, k);
        assert_eq!(PackedWeight::pack(&w, n, k, Precision::F32).unpack(), Some(w.clone()));
        assert_eq!(PackedWeight::pack(&w, n, k, Precision::Bf16).unpack(), None);
    }
}
