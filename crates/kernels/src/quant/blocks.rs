//! GGUF's quantised block types as llama.cpp lays them out: the reference dequantisation of each
//! (its formulas, in its order of operations), and their decoding into one affine form the
//! matmul kernel reads, `w = s·q + b` with an unsigned integer `q` and `s`, `b` per run of
//! [`BlockType::unit`] values.

use half::f16;

/// A GGUF block type the quantised kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl BlockType {
    pub const ALL: [BlockType; 8] = [
        BlockType::Q4_0,
        BlockType::Q4_1,
        BlockType::Q5_0,
        BlockType::Q5_1,
        BlockType::Q8_0,
        BlockType::Q4K,
        BlockType::Q5K,
        BlockType::Q6K,
    ];

    /// llama.cpp's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            BlockType::Q4_0 => "Q4_0",
            BlockType::Q4_1 => "Q4_1",
            BlockType::Q5_0 => "Q5_0",
            BlockType::Q5_1 => "Q5_1",
            BlockType::Q8_0 => "Q8_0",
            BlockType::Q4K => "Q4_K",
            BlockType::Q5K => "Q5_K",
            BlockType::Q6K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn values(self) -> usize {
        match self {
            BlockType::Q4K | BlockType::Q5K | BlockType::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn bytes(self) -> usize {
        match self {
            BlockType::Q4_0 => 18,
            BlockType::Q4_1 => 20,
            BlockType::Q5_0 => 22,
            BlockType::Q5_1 => 24,
            BlockType::Q8_0 => 34,
            BlockType::Q4K => 144,
            BlockType::Q5K => 176,
            BlockType::Q6K => 210,
        }
    }

    /// Bits of the unsigned integer `q` in the affine form.
    pub fn bits(self) -> usize {
        match self {
            BlockType::Q4_0 | BlockType::Q4_1 | BlockType::Q4K => 4,
            BlockType::Q5_0 | BlockType::Q5_1 | BlockType::Q5K => 5,
            BlockType::Q6K => 6,
            BlockType::Q8_0 => 8,
        }
    }

    /// Values sharing one scale `s` and offset `b` in the affine form.
    pub fn unit(self) -> usize {
        match self {
            BlockType::Q6K => 16,
            _ => 32,
        }
    }
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K or Q5_K block's 12 scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Dequantises whole blocks of `ty` into `out` (`values` per block), as llama.cpp's
/// `dequantize_row_*` computes them.
pub fn dequantize(ty: BlockType, blocks: &[u8], out: &mut [f32]) {
    let (n, bytes) = (ty.values(), ty.bytes());
    assert!(
        blocks.len().is_multiple_of(bytes) && out.len() == blocks.len() / bytes * n,
        "dequantize: {} bytes of {} blocks do not fill {} values",
        blocks.len(),
        ty.name(),
        out.len()
    );
    for (b, y) in blocks.chunks_exact(bytes).zip(out.chunks_exact_mut(n)) {
        match ty {
            BlockType::Q4_0 => {
                let d = half_at(b, 0);
                for j in 0..16 {
                    y[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
                    y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
            BlockType::Q4_1 => {
                let (d, m) = (half_at(b, 0), half_at(b, 2));
                for j in 0..16 {
                    y[j] = (b[4 + j] & 0xF) as f32 * d + m;
                    y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
            BlockType::Q5_0 | BlockType::Q5_1 => {
                let q5_1 = ty == BlockType::Q5_1;
                let d = half_at(b, 0);
                let m = if q5_1 { half_at(b, 2) } else { 0.0 };
                let at = if q5_1 { 4 } else { 2 };
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                for j in 0..16 {
                    let h0 = (((qh >> j) << 4) & 0x10) as u8;
                    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                    let (x0, x1) = ((b[at + 4 + j] & 0xF) | h0, (b[at + 4 + j] >> 4) | h1);
                    if q5_1 {
                        y[j] = x0 as f32 * d + m;
                        y[j + 16] = x1 as f32 * d + m;
                    } else {
                        y[j] = (x0 as i32 - 16) as f32 * d;
                        y[j + 16] = (x1 as i32 - 16) as f32 * d;
                    }
                }
            }
            BlockType::Q8_0 => {
                let d = half_at(b, 0);
                for j in 0..32 {
                    y[j] = b[2 + j] as i8 as f32 * d;
                }
            }
            BlockType::Q4K | BlockType::Q5K => {
                let (d, min) = (half_at(b, 0), half_at(b, 2));
                let scales = &b[4..16];
                let q5 = ty == BlockType::Q5K;
                let (qh, qs) = if q5 { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
                for (c, y) in y.chunks_exact_mut(64).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * c, scales);
                    let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
                    let q = &qs[32 * c..32 * c + 32];
                    for l in 0..32 {
                        let (h1, h2) = match q5 {
                            true => ((qh[l] >> (2 * c)) & 1, (qh[l] >> (2 * c + 1)) & 1),
                            false => (0, 0),
                        };
                        y[l] = d1 * ((q[l] & 0xF) + 16 * h1) as f32 - m1;
                        y[l + 32] = d2 * ((q[l] >> 4) + 16 * h2) as f32 - m2;
                    }
                }
            }
            BlockType::Q6K => {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = half_at(b, 208);
                for half in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
                    let y = &mut y[128 * half..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * sc[is] as i8 as f32 * q1 as f32;
                        y[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                        y[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                        y[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
                    }
                }
            }
        }
    }
}

/// f32 values (a multiple of 32) as Q8_0 blocks, as llama.cpp's `quantize_row_q8_0` rounds them:
/// per block `d = max|x| / 127` (as f16) and `q = round(x / d)`.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    assert!(x.len().is_multiple_of(32), "Q8_0 takes whole blocks of 32 values, not {}", x.len());
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * inv).round() as i8 as u8));
    }
    out
}

/// A block's scales as stored: per unit of [`BlockType::unit`] values two fields, and for the
/// k-quants two per block of 256 (f16 bits, or small integers).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Scales {
    /// Q4_0, Q5_0, Q8_0: `d`; Q4_1, Q5_1: `d`, `m`; Q4_K, Q5_K: the 6-bit scale and min; Q6_K: the
    /// 8-bit signed scale.
    pub unit: [u16; 2],
    /// Q4_K, Q5_K: `d`, `dmin`; Q6_K: `d`.
    pub block: [u16; 2],
}

fn f16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// `s` and `b` of one unit's affine form `w = s·q + b` from its scales, computed as llama.cpp
/// computes the dequantised weight's factors (`d·scale` and `dmin·min` for the k-quants).
pub(crate) fn affine(ty: BlockType, scales: Scales) -> (f32, f32) {
    let h = |bits: u16| f16::from_bits(bits).to_f32();
    let [u0, u1] = scales.unit;
    match ty {
        BlockType::Q4_0 => (h(u0), -8.0 * h(u0)),
        BlockType::Q5_0 => (h(u0), -16.0 * h(u0)),
        BlockType::Q8_0 => (h(u0), -128.0 * h(u0)),
        BlockType::Q4_1 | BlockType::Q5_1 => (h(u0), h(u1)),
        BlockType::Q4K | BlockType::Q5K => (h(scales.block[0]) * u0 as f32, -(h(scales.block[1]) * u1 as f32)),
        BlockType::Q6K => {
            let s = h(scales.block[0]) * (u0 as u8 as i8) as f32;
            (s, -32.0 * s)
        }
    }
}

/// One block decoded into the affine form: `q` (`values` unsigned integers of
/// [`BlockType::bits`]) and the scales of each unit (`units`, one per [`BlockType::unit`] values).
pub(crate) fn decode(ty: BlockType, b: &[u8], q: &mut [u8], units: &mut [Scales]) {
    match ty {
        BlockType::Q4_0 | BlockType::Q4_1 => {
            let q4_1 = ty == BlockType::Q4_1;
            let qs = &b[if q4_1 { 4 } else { 2 }..];
            for j in 0..16 {
                q[j] = qs[j] & 0xF;
                q[j + 16] = qs[j] >> 4;
            }
            units[0].unit = [f16_at(b, 0), if q4_1 { f16_at(b, 2) } else { 0 }];
        }
        BlockType::Q5_0 | BlockType::Q5_1 => {
            let q5_1 = ty == BlockType::Q5_1;
            let at = if q5_1 { 4 } else { 2 };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            for j in 0..16 {
                q[j] = (b[at + 4 + j] & 0xF) | (((qh >> j) << 4) & 0x10) as u8;
                q[j + 16] = (b[at + 4 + j] >> 4) | ((qh >> (j + 12)) & 0x10) as u8;
            }
            units[0].unit = [f16_at(b, 0), if q5_1 { f16_at(b, 2) } else { 0 }];
        }
        BlockType::Q8_0 => {
            for j in 0..32 {
                q[j] = (b[2 + j] as i8 as i16 + 128) as u8;
            }
            units[0].unit = [f16_at(b, 0), 0];
        }
        BlockType::Q4K | BlockType::Q5K => {
            let block = [f16_at(b, 0), f16_at(b, 2)];
            let scales = &b[4..16];
            let q5 = ty == BlockType::Q5K;
            let (qh, qs) = if q5 { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
            for c in 0..4 {
                for (u, high) in [(2 * c, false), (2 * c + 1, true)] {
                    let (sc, m) = scale_min_k4(u, scales);
                    units[u] = Scales { unit: [sc as u16, m as u16], block };
                    for l in 0..32 {
                        let low = if high { qs[32 * c + l] >> 4 } else { qs[32 * c + l] & 0xF };
                        let h = if q5 { (qh[l] >> u) & 1 } else { 0 };
                        q[32 * u + l] = low + 16 * h;
                    }
                }
            }
        }
        BlockType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            for half in 0..2 {
                let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                let q = &mut q[128 * half..];
                for l in 0..32 {
                    q[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    q[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
            for (u, units) in units.iter_mut().enumerate() {
                *units = Scales { unit: [sc[u] as u16, 0], block: [f16_at(b, 208), 0] };
            }
        }
    }
}

/// `count` random blocks of `ty` with finite scales of a weight's size (xorshift: the same bytes
/// for the same seed), for tests and benchmarks of the kernel.
pub fn random_blocks(ty: BlockType, count: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes: Vec<u8> = (0..count * ty.bytes())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    // Scales of a plausible size: f16 values in ±[2^-10, 2^-6).
    let scale_at: &[usize] = match ty {
        BlockType::Q4_1 | BlockType::Q5_1 | BlockType::Q4K | BlockType::Q5K => &[0, 2],
        BlockType::Q6K => &[208],
        _ => &[0],
    };
    for block in bytes.chunks_exact_mut(ty.bytes()) {
        for &at in scale_at {
            let v = f16::from_f32((1.0 + block[at] as f32 / 256.0) * 2f32.powi(-(block[at + 1] as i32 % 5) - 6));
            block[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The affine form gives llama.cpp's values: exactly for the k-quants (the same products in
    /// the same order) and Q4_1, Q5_1; to f32 rounding where llama.cpp subtracts the offset
    /// before scaling.
    #[test]
    fn the_affine_form_gives_the_dequantised_values() {
        for ty in BlockType::ALL {
            let blocks = random_blocks(ty, 3, 7);
            let mut want = vec![0f32; 3 * ty.values()];
            dequantize(ty, &blocks, &mut want);
            let units = ty.values() / ty.unit();
            for (i, b) in blocks.chunks_exact(ty.bytes()).enumerate() {
                let (mut q, mut scales) = (vec![0u8; ty.values()], vec![Scales::default(); units]);
                decode(ty, b, &mut q, &mut scales);
                for (j, &q) in q.iter().enumerate() {
                    assert!((q as u32) < 1 << ty.bits(), "{ty:?}: q {q} has more than {} bits", ty.bits());
                    let (s, o) = affine(ty, scales[j / ty.unit()]);
                    let got = s * q as f32 + o;
                    let w = want[i * ty.values() + j];
                    let exact = matches!(ty, BlockType::Q4_1 | BlockType::Q5_1 | BlockType::Q4K | BlockType::Q5K);
                    let tol = if exact { 0.0 } else { 8e-6 * w.abs().max(s.abs()) };
                    assert!((got - w).abs() <= tol, "{ty:?} [{i}, {j}]: {got} vs {w}");
                }
            }
        }
    }
}
