//! The AVX-512 VNNI tile: up to [`MAX_ROWS`] input rows × two lane groups (32 outputs), each
//! unit's integer dot products in `vpdpbusd` accumulators, scaled into f32 sums at the unit's end.

use super::ty::*;
use super::{BlockType, QuantMatrix, Rows, CHUNK, LANES, PREFETCH};

/// Input rows per tile: 4 integer accumulators per row (two groups, the values and their rests)
/// stay in registers; the f32 sums, touched once per unit, may live in memory.
pub(crate) const MAX_ROWS: usize = 6;

/// Rows `r0 .. r0 + rows` of `x` against lane groups `g0`, `g0 + 1` of `w`, written to `dst`:
/// `rows` rows of [`super::NR`] values, `dst_rs` apart.
///
/// # Safety
/// The CPU has AVX-512 VNNI ([`super::Kernel::Avx512`]); `rows` in 1..=[`MAX_ROWS`], the rows exist in
/// `x`, `g0 + 1` is a group of `w`, `x` and `w` have the same K, and `dst` can take the rectangle.
pub(crate) unsafe fn run_tile(
    w: &QuantMatrix,
    g0: usize,
    x: &Rows,
    r0: usize,
    rows: usize,
    dst: *mut f32,
    dst_rs: usize,
) {
    // SAFETY: the caller's.
    unsafe { dispatch_tile!(tile, w.ty, rows, [1, 2, 3, 4, 5, 6], (w, g0, x, r0, dst, dst_rs)) }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The unsigned values of quad `quad` (values 4·quad .. 4·quad + 3 of the chunk) of 16 lanes, as
/// the bytes `vpdpbusd` multiplies.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn quad_of<const BITS: usize>(chunk: *const u8, quad: usize) -> __m512i {
    // SAFETY (all loads): inside the chunk's `chunk_bytes` (the caller's).
    unsafe {
        if BITS == 8 {
            return _mm512_loadu_si512(chunk.add(64 * quad).cast());
        }
        let low4 = _mm512_set1_epi8(0x0F);
        let v = _mm512_loadu_si512(chunk.add(64 * (quad / 2)).cast());
        let mut w = match quad % 2 {
            0 => _mm512_and_si512(v, low4),
            _ => _mm512_and_si512(_mm512_srli_epi16::<4>(v), low4),
        };
        if BITS == 5 {
            let h = _mm512_loadu_si512(chunk.add(256).cast());
            let bit = _mm512_and_si512(_mm512_srl_epi32(h, _mm_cvtsi32_si128(quad as i32)), _mm512_set1_epi8(1));
            w = _mm512_or_si512(w, _mm512_slli_epi32::<4>(bit));
        }
        if BITS == 6 {
            let h = _mm512_loadu_si512(chunk.add(256 + 64 * (quad / 4)).cast());
            let shift = _mm_cvtsi32_si128(2 * (quad % 4) as i32);
            let bits = _mm512_and_si512(_mm512_srl_epi32(h, shift), _mm512_set1_epi8(3));
            w = _mm512_or_si512(w, _mm512_slli_epi32::<4>(bits));
        }
        w
    }
}

/// `s` and `b` of 16 lanes for one unit, as [`super::blocks::affine`] computes them.
///
/// # Safety
/// `unit` and `block` point at the group's records for the unit (the caller's).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn affine<const TY: u8>(unit: *const u8, block: *const u8) -> (__m512, __m512) {
    // SAFETY (all loads): inside the records, whose sizes `unit_record` and `block_record` give.
    unsafe {
        let f16s = |at: *const u8| _mm512_cvtph_ps(_mm256_loadu_si256(at.cast()));
        match TY {
            Q4_0 | Q5_0 | Q8_0 => {
                let d = f16s(unit);
                let c = match TY {
                    Q4_0 => -8.0,
                    Q5_0 => -16.0,
                    _ => -128.0,
                };
                (d, _mm512_mul_ps(_mm512_set1_ps(c), d))
            }
            Q4_1 | Q5_1 => (f16s(unit), f16s(unit.add(2 * LANES))),
            Q4K | Q5K => {
                let sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(unit.cast())));
                let m = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(unit.add(LANES).cast())));
                let (d, dmin) = (f16s(block), f16s(block.add(2 * LANES)));
                (_mm512_mul_ps(d, sc), _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(dmin, m)))
            }
            _ => {
                let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(unit.cast())));
                let s = _mm512_mul_ps(f16s(block), sc);
                (s, _mm512_mul_ps(_mm512_set1_ps(-32.0), s))
            }
        }
    }
}

/// [`run_tile`] for `R` rows of block type `TY`: `BITS`-bit values in units of `UNIT`.
///
/// # Safety
/// As [`run_tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const TY: u8, const BITS: usize, const UNIT: usize, const R: usize>(
    w: &QuantMatrix,
    g0: usize,
    x: &Rows,
    r0: usize,
    dst: *mut f32,
    dst_rs: usize,
) {
    let k = w.k;
    let chunks = k / CHUNK;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for c in 0..chunks {
        let (qa, qb) = (w.chunk(g0, c), w.chunk(g0 + 1, c));
        // The panel's values are one stream (the two groups alternate chunk by chunk): ask for
        // what comes a few chunks ahead, past the end of the panel into the next one.
        for line in (0..2 * w.chunk_bytes).step_by(64) {
            // A prefetch never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_T0>(qa.wrapping_add(PREFETCH * 2 * w.chunk_bytes + line).cast());
        }
        for half in 0..CHUNK / UNIT {
            // Per row and group, the products with the rounded values and with their rests.
            let mut dot = [[_mm512_setzero_si512(); 4]; R];
            for quad in half * UNIT / 4..(half + 1) * UNIT / 4 {
                // SAFETY: chunk c of both groups (the caller's).
                let (wa, wb) = unsafe { (quad_of::<BITS>(qa, quad), quad_of::<BITS>(qb, quad)) };
                for (r, dot) in dot.iter_mut().enumerate() {
                    let at = (r0 + r) * k + c * CHUNK + 4 * quad;
                    // SAFETY: row r0 + r exists (the caller's) and holds k ≥ (c + 1)·32 values.
                    let (hi, lo) = unsafe {
                        (
                            x.q.as_ptr().add(at).cast::<i32>().read_unaligned(),
                            x.lo.as_ptr().add(at).cast::<i32>().read_unaligned(),
                        )
                    };
                    let (hi, lo) = (_mm512_set1_epi32(hi), _mm512_set1_epi32(lo));
                    dot[0] = _mm512_dpbusd_epi32(dot[0], wa, hi);
                    dot[1] = _mm512_dpbusd_epi32(dot[1], wa, lo);
                    dot[2] = _mm512_dpbusd_epi32(dot[2], wb, hi);
                    dot[3] = _mm512_dpbusd_epi32(dot[3], wb, lo);
                }
            }
            let unit = c * (CHUNK / UNIT) + half;
            let scales = |g: usize| {
                let (u, b) = (w.unit_at(g, unit), w.block_at(g, unit));
                // SAFETY: the group's records for `unit` (the caller's group).
                unsafe { affine::<TY>(w.unit_scales[u..].as_ptr(), w.block_scales[b..].as_ptr()) }
            };
            let ((sa, ba), (sb, bb)) = (scales(g0), scales(g0 + 1));
            for (r, (acc, dot)) in acc.iter_mut().zip(&dot).enumerate() {
                let row = r0 + r;
                // The sums in units of d/256: 256·q + lo, exact in i32 (|Σ| < 2²¹ · 2⁸).
                let dx = _mm512_set1_ps(x.d[row * chunks + c] / 256.0);
                let sum = match UNIT {
                    16 => x.sums[row * 2 * chunks + 2 * c + half],
                    _ => x.sums[row * 2 * chunks + 2 * c] + x.sums[row * 2 * chunks + 2 * c + 1],
                };
                let sum = _mm512_set1_ps(sum);
                let whole =
                    |hi: __m512i, lo: __m512i| _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32::<8>(hi), lo));
                acc[0] = _mm512_fmadd_ps(whole(dot[0], dot[1]), _mm512_mul_ps(sa, dx), acc[0]);
                acc[0] = _mm512_fmadd_ps(ba, sum, acc[0]);
                acc[1] = _mm512_fmadd_ps(whole(dot[2], dot[3]), _mm512_mul_ps(sb, dx), acc[1]);
                acc[1] = _mm512_fmadd_ps(bb, sum, acc[1]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row r of the caller's rectangle, NR values.
        unsafe {
            _mm512_storeu_ps(dst.add(r * dst_rs), acc[0]);
            _mm512_storeu_ps(dst.add(r * dst_rs + LANES), acc[1]);
        }
    }
}

/// [`super::round_block`] on AVX-512, the same bits: the same operations per value, in the same
/// order. None, for the scalar loop, where a value is not finite (whose conversions to integers
/// differ between the two).
///
/// # Safety
/// The CPU has AVX-512F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn round_block(x: &[f32; CHUNK], q: &mut [i8; CHUNK], lo: &mut [i8; CHUNK]) -> Option<f32> {
    // SAFETY (the loads and stores): two vectors of 16 inside the arrays of 32.
    let v = unsafe { [_mm512_loadu_ps(x.as_ptr()), _mm512_loadu_ps(x.as_ptr().add(16))] };
    let finite = |v: __m512| _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, _mm512_sub_ps(v, v)) == 0xFFFF;
    if !(finite(v[0]) && finite(v[1])) {
        return None;
    }
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
    let inv = _mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    let magic = _mm512_set1_ps(super::MAGIC);
    let round = |v: __m512| _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
    let (low, high) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    for (half, v) in v.into_iter().enumerate() {
        let scaled = _mm512_mul_ps(v, inv);
        let hi = round(scaled);
        let rest = round(_mm512_mul_ps(_mm512_sub_ps(scaled, hi), _mm512_set1_ps(256.0)));
        let rest = _mm512_min_ps(_mm512_max_ps(rest, low), high);
        unsafe {
            _mm_storeu_si128(q.as_mut_ptr().add(16 * half).cast(), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(hi)));
            _mm_storeu_si128(lo.as_mut_ptr().add(16 * half).cast(), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(rest)));
        }
    }
    Some(amax / 127.0)
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn round_block(_: &[f32; CHUNK], _: &mut [i8; CHUNK], _: &mut [i8; CHUNK]) -> Option<f32> {
    None
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const TY: u8, const BITS: usize, const UNIT: usize, const R: usize>(
    _: &QuantMatrix,
    _: usize,
    _: &Rows,
    _: usize,
    _: *mut f32,
    _: usize,
) {
    unreachable!("no quantised kernel runs off x86_64")
}
