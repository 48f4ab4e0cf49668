//! The f32 kernel: tiles of up to 8 rows × [`NR`] columns, 24 AVX-512 accumulators.

use std::ops::Range;

use rayon::prelude::*;

use super::Out;

/// Rows per register tile.
const TILE: usize = 8;
/// Output columns per panel: three 16-lane registers.
pub(super) const NR: usize = 48;
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
                true => (out.at(r0, panel * NR), out.n),
                false => (tile_out.as_mut_ptr(), NR),
            };
            // SAFETY: `Precision::F32.available()` was checked by `matmul`; `a` holds `real`
            // rows of k values and `b` k × NR, as the kernel reads; `dst` takes `real` rows of
            // NR values `dst_rs` apart: inside this task's rectangle of the output when direct,
            // inside `tile_out` otherwise.
            unsafe {
                match real {
                    8 => kernel::<8>(a, b, k, dst, dst_rs),
                    7 => kernel::<7>(a, b, k, dst, dst_rs),
                    6 => kernel::<6>(a, b, k, dst, dst_rs),
                    5 => kernel::<5>(a, b, k, dst, dst_rs),
                    4 => kernel::<4>(a, b, k, dst, dst_rs),
                    3 => kernel::<3>(a, b, k, dst, dst_rs),
                    2 => kernel::<2>(a, b, k, dst, dst_rs),
                    _ => kernel::<1>(a, b, k, dst, dst_rs),
                }
            }
            if !direct {
                // SAFETY: inside this task's rectangle.
                unsafe { out.store(&tile_out, NR, real, (r0, panel * NR), cols) };
            }
        }
    }
}

/// One R × NR tile over all K: `a` is R rows of K values, `b` one panel; the tile's rows go to
/// `dst`, `dst_rs` apart.
///
/// # Safety
/// The CPU has AVX-512F; `dst` can take R rows of NR values `dst_rs` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize>(a: &[f32], b: &[f32], k: usize, dst: *mut f32, dst_rs: usize) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= R * k && b.len() >= k * NR);
    let mut acc = [[_mm512_setzero_ps(); 3]; R];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..k {
        // SAFETY (the loads): inside `a` and `b`, as asserted above.
        let b0 = unsafe { _mm512_loadu_ps(b.add(p * NR)) };
        let b1 = unsafe { _mm512_loadu_ps(b.add(p * NR + 16)) };
        let b2 = unsafe { _mm512_loadu_ps(b.add(p * NR + 32)) };
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(unsafe { *a.add(r * k + p) });
            acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            acc[2] = _mm512_fmadd_ps(av, b2, acc[2]);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (j, v) in acc.iter().enumerate() {
            // SAFETY: row r < R of `dst`, 16 values at column 16·j < NR (the caller's bounds).
            unsafe { _mm512_storeu_ps(dst.add(r * dst_rs + 16 * j), *v) };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel<const R: usize>(_: &[f32], _: &[f32], _: usize, _: *mut f32, _: usize) {
    unreachable!("Precision::F32.available() is false off x86_64")
}
