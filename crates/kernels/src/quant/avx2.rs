//! The AVX2 tile, for CPUs without AVX-512 VNNI (AMD before Zen 4, Intel's client cores): the
//! same panels, inputs and order of f32 operations as the AVX-512 tile, the integer dot products
//! made of `vpmaddubsw` (pairs of u8 × i8 products summed to i16) and `vpmaddwd`.
//!
//! Each 64-byte vector of a chunk holds 16 lanes; a 256-bit register takes one half of it, an
//! "octet" of 8 lanes. The pair sums are added in 16 bits for as many quads as cannot overflow
//! (a pair is at most (2^BITS − 1)·127·2, and inputs are within ±127), then widened: one
//! `vpmaddwd` by 256 for the values and one by 1 for their rests gives `256·q + lo` in i32, the
//! integer the AVX-512 tile forms. Q8_0's unsigned values (q + 128) would overflow a pair, so
//! they are turned back into signed ones and multiplied by sign (`vpsignb`), the offset dropped.

use super::ty::*;
use super::{BlockType, QuantMatrix, Rows, CHUNK, LANES, PREFETCH};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Input rows per tile, a lane group at a time: per row, each octet's 16-bit sums of the values
/// and of their rests and its unit sum (6 registers), and the row's inputs (2). Measured here
/// (Zen, 1,024 × 512 Q4_K, 64 rows, one thread): 9.0 GMAC/s at 1 row, 11.4 at 2, 9.0 at 3 (spills).
/// Larger row counts run as several tiles.
const ROWS: usize = 2;
const _: () = assert!(ROWS == 2, "run_rows dispatches tiles of 1 and 2 rows");
/// Lanes of one 256-bit register of weights.
const OCTET: usize = 8;

/// Rows `r0 .. r0 + rows` of `x` against lane groups `g0`, `g0 + 1` of `w`, written to `dst`:
/// `rows` rows of [`super::NR`] values, `dst_rs` apart.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C ([`super::Kernel::Avx2`]); `rows` ≥ 1, the rows exist in `x`,
/// `g0 + 1` is a group of `w`, `x` and `w` have the same K, and `dst` can take the rectangle.
pub(crate) unsafe fn run_tile(
    w: &QuantMatrix,
    g0: usize,
    x: &Rows,
    r0: usize,
    rows: usize,
    dst: *mut f32,
    dst_rs: usize,
) {
    let mut done = 0;
    while done < rows {
        let now = ROWS.min(rows - done);
        // SAFETY: the caller's, for the rows `done .. done + now` of its rectangle.
        unsafe { run_rows(w, g0, x, r0 + done, now, dst.add(done * dst_rs), dst_rs) };
        done += now;
    }
}

/// [`run_tile`] for 1..=[`ROWS`] rows.
unsafe fn run_rows(w: &QuantMatrix, g0: usize, x: &Rows, r0: usize, rows: usize, dst: *mut f32, dst_rs: usize) {
    // SAFETY: the caller's.
    unsafe { dispatch_tile!(tile, w.ty, rows, [1, 2], (w, g0, x, r0, dst, dst_rs)) }
}

/// Quads whose pair sums add up in 16 bits without overflow: (2^BITS − 1)·127·2 per pair for the
/// unsigned values (3,810 for 4 bits, 7,874 for 5, 16,002 for 6), 128·127·2 for Q8_0's signed ones.
const fn span(bits: usize) -> usize {
    match bits {
        4 => 8,
        5 => 4,
        6 => 2,
        _ => 1,
    }
}

/// The unsigned values of quad `quad` (values 4·quad .. 4·quad + 3 of the chunk) of the 8 lanes
/// of `octet`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn quad_of<const BITS: usize>(chunk: *const u8, quad: usize, octet: usize) -> __m256i {
    // SAFETY (all loads): inside the chunk's `chunk_bytes` (the caller's): each 64-byte vector's
    // half for the octet.
    unsafe {
        let at = |offset: usize| _mm256_loadu_si256(chunk.add(offset + 4 * OCTET * octet).cast());
        if BITS == 8 {
            return at(64 * quad);
        }
        let low4 = _mm256_set1_epi8(0x0F);
        let v = at(64 * (quad / 2));
        let mut w = match quad % 2 {
            0 => _mm256_and_si256(v, low4),
            _ => _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4),
        };
        if BITS == 5 {
            let h = at(256);
            let bit = _mm256_and_si256(_mm256_srl_epi32(h, _mm_cvtsi32_si128(quad as i32)), _mm256_set1_epi8(1));
            w = _mm256_or_si256(w, _mm256_slli_epi32::<4>(bit));
        }
        if BITS == 6 {
            let h = at(256 + 64 * (quad / 4));
            let shift = _mm_cvtsi32_si128(2 * (quad % 4) as i32);
            let bits = _mm256_and_si256(_mm256_srl_epi32(h, shift), _mm256_set1_epi8(3));
            w = _mm256_or_si256(w, _mm256_slli_epi32::<4>(bits));
        }
        w
    }
}

/// `s` and `b` of the 8 lanes of `octet` for one unit, as the AVX-512 tile computes them (Q8_0:
/// `b` is zero, its values being multiplied signed).
///
/// # Safety
/// `unit` and `block` point at the group's records for the unit (the caller's).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn affine<const TY: u8>(unit: *const u8, block: *const u8, octet: usize) -> (__m256, __m256) {
    // SAFETY (all loads): inside the records, whose sizes `unit_record` and `block_record` give:
    // each field holds 16 lanes, the octet's 8 at 8·width bytes in.
    unsafe {
        let f16s = |at: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(at.add(2 * OCTET * octet).cast()));
        let bytes = |at: *const u8| _mm_loadl_epi64(at.add(OCTET * octet).cast());
        match TY {
            Q4_0 | Q5_0 => {
                let d = f16s(unit);
                let c = if TY == Q4_0 { -8.0 } else { -16.0 };
                (d, _mm256_mul_ps(_mm256_set1_ps(c), d))
            }
            Q8_0 => (f16s(unit), _mm256_setzero_ps()),
            Q4_1 | Q5_1 => (f16s(unit), f16s(unit.add(2 * LANES))),
            Q4K | Q5K => {
                let sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes(unit)));
                let m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes(unit.add(LANES))));
                let (d, dmin) = (f16s(block), f16s(block.add(2 * LANES)));
                (_mm256_mul_ps(d, sc), _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(dmin, m)))
            }
            _ => {
                let sc = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes(unit)));
                let s = _mm256_mul_ps(f16s(block), sc);
                (s, _mm256_mul_ps(_mm256_set1_ps(-32.0), s))
            }
        }
    }
}

/// [`run_tile`] for `R` rows of block type `TY`: `BITS`-bit values in units of `UNIT`.
///
/// # Safety
/// As [`run_tile`], with `R` ≤ [`ROWS`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
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
    let span = span(BITS);
    let (ones, by256) = (_mm256_set1_epi16(1), _mm256_set1_epi16(256));
    let bytes = w.chunk_bytes;
    // The panel's streams: chunk c of group g0 + gi at `values + (2c + gi)·bytes`, the scales of
    // unit u at `units + (2u + gi)·unit_record`, of its block of 256 at `blocks + (2·(u·UNIT/256)
    // + gi)·block_record` (see `QuantMatrix::chunk_at`, `unit_at`, `block_at`).
    let values = w.chunk(g0, 0);
    let (unit_bytes, block_bytes) = (super::unit_record(w.ty), super::block_record(w.ty));
    let units = w.unit_scales[w.unit_at(g0, 0)..].as_ptr();
    let blocks = w.block_scales[w.block_at(g0, 0)..].as_ptr();
    // SAFETY (the row pointers): rows r0 .. r0 + R exist (the caller's).
    let (xq, xlo) = unsafe { (x.q.as_ptr().add(r0 * k), x.lo.as_ptr().add(r0 * k)) };
    let (xd, xsums) = unsafe { (x.d.as_ptr().add(r0 * chunks), x.sums.as_ptr().add(r0 * 2 * chunks)) };
    // Per row, the 32 outputs as 4 octets: group g0's two, then group g0 + 1's.
    let mut acc = [[_mm256_setzero_ps(); 4]; R];
    for c in 0..chunks {
        // SAFETY: chunk c of both groups.
        let chunk = unsafe { values.add(2 * c * bytes) };
        // As the AVX-512 tile: the panel is one stream; ask for a few chunks ahead.
        for line in (0..2 * bytes).step_by(64) {
            // A prefetch never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_T0>(chunk.wrapping_add(PREFETCH * 2 * bytes + line).cast());
        }
        for half in 0..CHUNK / UNIT {
            let unit = c * (CHUNK / UNIT) + half;
            let mut dx = [_mm256_setzero_ps(); R];
            let mut sums = [_mm256_setzero_ps(); R];
            for r in 0..R {
                // SAFETY: chunk c of row r0 + r: one scale, two sums of 16.
                unsafe {
                    dx[r] = _mm256_set1_ps(*xd.add(r * chunks + c) / 256.0);
                    let at = xsums.add(r * 2 * chunks + 2 * c);
                    sums[r] = _mm256_set1_ps(match UNIT {
                        16 => *at.add(half),
                        _ => *at + *at.add(1),
                    });
                }
            }
            // One group at a time: its two octets' accumulators for every row stay in registers.
            for gi in 0..2 {
                // SAFETY: chunk c of group g0 + gi.
                let chunk = unsafe { chunk.add(gi * bytes) };
                // Per row and octet, the unit's exact sums 256·Σ q·w + Σ lo·w.
                let mut whole = [[_mm256_setzero_si256(); 2]; R];
                for first in (0..UNIT / 4).step_by(span) {
                    let mut hi = [[_mm256_setzero_si256(); 2]; R];
                    let mut lo = [[_mm256_setzero_si256(); 2]; R];
                    for quad in half * UNIT / 4 + first..half * UNIT / 4 + first + span {
                        // Each row's 4 inputs, loaded once for both octets.
                        let mut inputs = [(_mm256_setzero_si256(), _mm256_setzero_si256()); R];
                        for (r, input) in inputs.iter_mut().enumerate() {
                            let at = r * k + c * CHUNK + 4 * quad;
                            // SAFETY: row r0 + r holds k ≥ (c + 1)·32 values.
                            *input = unsafe {
                                (
                                    _mm256_set1_epi32(xq.add(at).cast::<i32>().read_unaligned()),
                                    _mm256_set1_epi32(xlo.add(at).cast::<i32>().read_unaligned()),
                                )
                            };
                        }
                        for octet in 0..2 {
                            // SAFETY: chunk c of the group.
                            let v = unsafe { quad_of::<BITS>(chunk, quad, octet) };
                            // Q8_0: |q| unsigned, its sign moved onto the inputs.
                            let signed = _mm256_xor_si256(v, _mm256_set1_epi8(-128));
                            let v = if BITS == 8 { _mm256_abs_epi8(signed) } else { v };
                            for (r, &(q, rest)) in inputs.iter().enumerate() {
                                let (q, rest) = match BITS {
                                    8 => (_mm256_sign_epi8(q, signed), _mm256_sign_epi8(rest, signed)),
                                    _ => (q, rest),
                                };
                                hi[r][octet] = _mm256_add_epi16(hi[r][octet], _mm256_maddubs_epi16(v, q));
                                lo[r][octet] = _mm256_add_epi16(lo[r][octet], _mm256_maddubs_epi16(v, rest));
                            }
                        }
                    }
                    for r in 0..R {
                        for octet in 0..2 {
                            let (hi, lo) = (hi[r][octet], lo[r][octet]);
                            let sum = _mm256_add_epi32(_mm256_madd_epi16(hi, by256), _mm256_madd_epi16(lo, ones));
                            whole[r][octet] = _mm256_add_epi32(whole[r][octet], sum);
                        }
                    }
                }
                for octet in 0..2 {
                    // SAFETY: the group's records for `unit` and for its block of 256.
                    let (s, b) = unsafe {
                        let unit_record = units.add((2 * unit + gi) * unit_bytes);
                        let block_record = blocks.add((2 * (unit * UNIT / 256) + gi) * block_bytes);
                        affine::<TY>(unit_record, block_record, octet)
                    };
                    for r in 0..R {
                        let acc = &mut acc[r][2 * gi + octet];
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(whole[r][octet]), _mm256_mul_ps(s, dx[r]), *acc);
                        if TY != Q8_0 {
                            *acc = _mm256_fmadd_ps(b, sums[r], *acc);
                        }
                    }
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (j, acc) in acc.iter().enumerate() {
            // SAFETY: row r of the caller's rectangle, NR values.
            unsafe { _mm256_storeu_ps(dst.add(r * dst_rs + OCTET * j), *acc) };
        }
    }
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
