//! The bf16 kernel: one `vdpbf16ps` multiplies and adds two pairs per f32 lane, so the dot
//! products run at twice the arithmetic rate of f32 FMA. Rounding both operands to bf16 costs
//! about three significant decimal digits per product.
//!
//! Panels hold, for each pair of input positions, the [`NR`] columns' two values side by side —
//! what one kernel step loads. Each task converts its rows of `x` to bf16 pairs.

use std::ops::Range;

use rayon::prelude::*;

use super::Out;

/// Output columns per panel: two 16-lane registers.
pub(super) const NR: usize = 32;
/// Rows per task: the task's bf16 rows stay in cache while its panels pass over them.
pub(super) const MC: usize = 128;

/// Register-tile heights: full tiles take 8 rows; the last one of a block the next power of two
/// above what is left, so a decoding step's single row does not pay for eight.
fn tile_rows(left: usize) -> usize {
    left.min(8).next_power_of_two()
}

/// The register tiles of a block of `count` rows: (first row, real rows, kernel height).
fn tiles(count: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let mut r0 = 0;
    std::iter::from_fn(move || {
        (r0 < count).then(|| {
            let height = tile_rows(count - r0);
            let real = height.min(count - r0);
            r0 += real;
            (r0 - real, real, height)
        })
    })
}

/// f32 → bf16, rounding to nearest even (NaN stays NaN).
#[inline(always)]
pub fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) | 0x40) as u16;
    if v.is_nan() {
        quiet_nan
    } else {
        rounded
    }
}

/// Converts one row to bf16, zero-padding `dst` past the row.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn row_to_bf16(src: &[f32], dst: &mut [u16]) {
    let (head, pad) = dst.split_at_mut(src.len());
    for (d, &v) in head.iter_mut().zip(src) {
        *d = to_bf16(v);
    }
    pad.fill(0);
}

/// bf16 → f32 (exact).
#[inline(always)]
pub fn from_bf16(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

/// Panels of ⌈K / 2⌉ pairs × [`NR`] columns × 2.
pub(super) fn pack(w: &[f32], n: usize, k: usize) -> Vec<u16> {
    let pairs = k.div_ceil(2);
    let mut data = vec![0u16; n.div_ceil(NR) * pairs * NR * 2];
    data.par_chunks_mut(pairs * NR * 2).enumerate().for_each(|(panel, out)| {
        for c in 0..NR.min(n - panel * NR) {
            let row = &w[(panel * NR + c) * k..(panel * NR + c + 1) * k];
            for (i, &v) in row.iter().enumerate() {
                out[(i / 2) * NR * 2 + c * 2 + i % 2] = to_bf16(v);
            }
        }
    });
    data
}

/// Rows × panels of the output.
///
/// # Safety
/// No other task may write the same rectangle of `out` concurrently; `rows` and `panels` lie
/// inside the output.
pub(super) unsafe fn task(
    x: &[f32],
    panels_data: &[u16],
    k: usize,
    pairs: usize,
    rows: Range<usize>,
    panels: Range<usize>,
    out: &Out,
) {
    // The rows in bf16, each padded to whole pairs, and to a whole last register tile.
    let count = rows.len();
    let mut a = vec![0u32; (count + 7) * pairs];
    {
        // SAFETY: the same memory as u16 values, twice as many; u32 alignment satisfies u16's.
        // Little-endian (the kernel runs on x86_64 only): u16 pair (lo, hi) reads as lo | hi << 16.
        let a16 = unsafe { std::slice::from_raw_parts_mut(a.as_mut_ptr().cast::<u16>(), a.len() * 2) };
        for (r, dst) in a16.chunks_mut(2 * pairs).take(count).enumerate() {
            row_to_bf16(&x[(rows.start + r) * k..(rows.start + r + 1) * k], dst);
        }
    }
    let mut tile = [0f32; 8 * NR];
    for panel in panels {
        let b = &panels_data[panel * pairs * NR * 2..(panel + 1) * pairs * NR * 2];
        let cols = NR.min(out.n - panel * NR);
        for (r0, real, height) in tiles(count) {
            let a = &a[r0 * pairs..(r0 + height) * pairs];
            // SAFETY: `Precision::Bf16.available()` was checked by `matmul`; `a` holds height ×
            // pairs values (zero past the block's rows) and `b` pairs × NR × 2, as the kernel reads.
            unsafe {
                match height {
                    8 => kernel::<8>(a, b, pairs, &mut tile),
                    4 => kernel::<4>(a, b, pairs, &mut tile),
                    2 => kernel::<2>(a, b, pairs, &mut tile),
                    _ => kernel::<1>(a, b, pairs, &mut tile),
                }
            }
            // SAFETY: inside this task's rectangle.
            unsafe { out.store(&tile, NR, real, (rows.start + r0, panel * NR), cols) };
        }
    }
}

/// One R × NR tile over all `pairs`: `a` is R rows of `pairs` bf16 pairs, `b` one panel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const R: usize>(a: &[u32], b: &[u16], pairs: usize, tile: &mut [f32; 8 * NR]) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= R * pairs && b.len() >= pairs * NR * 2);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..pairs {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR * 2) as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR * 2 + 32) as *const _));
        for (r, acc) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * pairs + p) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR), acc[0]);
        _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR + 16), acc[1]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel<const R: usize>(_: &[u32], _: &[u16], _: usize, _: &mut [f32; 8 * NR]) {
    unreachable!("Precision::Bf16.available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0); // a tie rounds to the even 1.0
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0); // a tie rounds up to even
        assert_eq!(from_bf16(to_bf16(1.0 + 1.5 / 256.0)), 1.0 + 2.0 / 256.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn tile_heights() {
        assert_eq!([1, 2, 3, 5, 8, 9].map(tile_rows), [1, 2, 4, 8, 8, 8]);
        assert_eq!(tiles(19).collect::<Vec<_>>(), [(0, 8, 8), (8, 8, 8), (16, 3, 4)]);
        assert_eq!(tiles(1).collect::<Vec<_>>(), [(0, 1, 1)]);
        assert_eq!(tiles(0).count(), 0);
    }
}
