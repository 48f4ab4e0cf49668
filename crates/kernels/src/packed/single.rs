//! The f32 kernel: tiles of up to 8 rows × [`NR`] columns, 24 AVX-512 accumulators.

use std::ops::Range;

use rayon::prelude::*;

use super::Out;
use crate::tile;

/// Rows per register tile.
const TILE: usize = tile::max_rows(NR / tile::LANES);
/// Output columns per panel: three 16-lane registers.
pub(super) const NR: usize = 3 * tile::LANES;
/// Rows per task: with K up to a few thousand, the task's rows stay in L2 while its panels pass.
pub(super) const MC: usize = 64;

/// Panels of K × [`NR`]: for each input position, the panel's columns side by side.
pub(super) fn pack(w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut data = vec![0f32; n.div_ceil(NR) * k * NR];
    data.par_chunks_mut(k * NR).enumerate().for_each(|(panel, out)| {
        for c in 0..NR.min(n - panel * NR) {
            let row = &w[(panel * NR + c) * k..(panel * NR + c + 1) * k];
            for (i, &v) in row.iter().enumerate() {
                out[i * NR + c] = v;
            }
        }
    });
    data
}

/// The row-major (N, K) weight of [`pack`]'s panels.
pub(super) fn unpack(data: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut w = vec![0f32; n * k];
    for (row, out) in w.chunks_mut(k).enumerate() {
        let panel = &data[(row / NR) * k * NR..(row / NR + 1) * k * NR];
        for (i, v) in out.iter_mut().enumerate() {
            *v = panel[i * NR + row % NR];
        }
    }
    w
}

/// Rows × panels of the output.
///
/// # Safety
/// No other task may write the same rectangle of `out` concurrently; `rows` and `panels` lie
/// inside the output.
pub(super) unsafe fn task(
    x: &[f32],
    panels_data: &[f32],
    k: usize,
    rows: Range<usize>,
    panels: Range<usize>,
    out: &Out,
) {
    let mut tile_out = [0f32; TILE * NR];
    for panel in panels {
        let b = &panels_data[panel * k * NR..(panel + 1) * k * NR];
        let cols = NR.min(out.n - panel * NR);
        for r0 in rows.clone().step_by(TILE) {
            let real = TILE.min(rows.end - r0);
            // The tile's rows are read where they lie in `x`: a tile of `real` rows runs the
            // kernel of that height, so nothing is copied or padded.
            let a = &x[r0 * k..(r0 + real) * k];
            // A tile of all NR columns goes straight to the output; a ragged last panel's
            // through `tile_out`.
            let direct = cols == NR;
            let (dst, dst_rs) = match direct {
                true => (out.at(r0, panel * NR), out.stride),
                false => (tile_out.as_mut_ptr(), NR),
            };
            // SAFETY: `Precision::F32.available()` (AVX-512F) was checked by `matmul`; `a`
            // holds `real` ≤ 8 rows of k values and `b` k rows of NR, as the kernel reads; `dst`
            // takes `real` rows of NR values `dst_rs` apart: inside this task's rectangle of the
            // output when direct, inside `tile_out` otherwise.
            let operands = tile::Tile { a: a.as_ptr(), a_rs: k, b: b.as_ptr(), b_rs: NR, k, dst, dst_rs };
            unsafe { tile::run((real, NR / tile::LANES), operands) };
            if !direct {
                // SAFETY: inside this task's rectangle.
                unsafe { out.store(&tile_out, NR, real, (r0, panel * NR), cols) };
            }
        }
    }
}
