//! GGUF quantised weights kept in their blocks for inference: `y = x · Wᵀ` with integer dot
//! products, as llama.cpp runs them, instead of dequantising every weight to f32 at load.
//!
//! - Every block type ([`BlockType`]) is decoded once, at load, into one affine form per weight,
//!   `w = s·q + b`: `q` an unsigned integer of 4, 5, 6 or 8 bits as the file stores it, and `s`,
//!   `b` per run of 32 values (16 for Q6_K) computed in the kernel from the file's own scales as
//!   llama.cpp computes them (`d·scale` and `dmin·min` for the k-quants). The scales are kept as
//!   the file has them, so memory is the file's: 4.625 bits per weight for Q4_K (4.5 in the file,
//!   the 6-bit scales taking a byte each), 6.56 for Q6_K.
//! - The layout interleaves 16 output rows ("lanes"): each 64-byte vector holds 4 consecutive
//!   values of each of 16 rows (two such runs as the nibbles of 4-bit values, the fifth and sixth
//!   bits in planes of their own), what one AVX-512 VNNI `vpdpbusd` multiplies against 4 values of
//!   an input row; the AVX2 kernel ([`Kernel::Avx2`]) takes each half of it as one register.
//! - Inputs are rounded per block of 32 to a f32 scale and two 8-bit integers per value, the
//!   value and the rest of its rounding ([`Rows`]): llama.cpp rounds to one (its q8 blocks), which
//!   moved SmolLM2's next-token distributions by a mean KL of 4.7e-3 nats from the f32 path; the
//!   second brings them within 1e-3 for twice the integer products. Each output sums, per unit of
//!   values, the exact integer dot products times `s·dx` plus `b·Σx`, in a fixed order: a row's
//!   outputs do not depend on the other rows of the batch.

/// `$tile::<TY, BITS, UNIT, R>($args)`: the tile of one kernel instantiated for the block type
/// `$block` (its constant, its bits and its unit) and for `$rows`, one of the row counts listed.
/// The one table from block types to the kernels' constant parameters.
macro_rules! dispatch_tile {
    ($tile:ident, $block:expr, $rows:expr, [$($r:literal),+], $args:tt) => {
        match $block {
            BlockType::Q4_0 => dispatch_tile!(@rows $tile, Q4_0, 4, 32, $rows, [$($r),+], $args),
            BlockType::Q4_1 => dispatch_tile!(@rows $tile, Q4_1, 4, 32, $rows, [$($r),+], $args),
            BlockType::Q4K => dispatch_tile!(@rows $tile, Q4K, 4, 32, $rows, [$($r),+], $args),
            BlockType::Q5_0 => dispatch_tile!(@rows $tile, Q5_0, 5, 32, $rows, [$($r),+], $args),
            BlockType::Q5_1 => dispatch_tile!(@rows $tile, Q5_1, 5, 32, $rows, [$($r),+], $args),
            BlockType::Q5K => dispatch_tile!(@rows $tile, Q5K, 5, 32, $rows, [$($r),+], $args),
            BlockType::Q6K => dispatch_tile!(@rows $tile, Q6K, 6, 16, $rows, [$($r),+], $args),
            BlockType::Q8_0 => dispatch_tile!(@rows $tile, Q8_0, 8, 32, $rows, [$($r),+], $args),
        }
    };
    (@rows $tile:ident, $ty:ident, $bits:literal, $unit:literal, $rows:expr, [$($r:literal),+], $args:tt) => {
        match $rows {
            $($r => $tile::<{ super::ty::$ty }, $bits, $unit, $r> $args,)+
            rows => unreachable!("no tile of {rows} rows"),
        }
    };
}

mod avx2;
mod avx512;
mod blocks;

pub use blocks::{dequantize, quantize_q8_0, random_blocks, BlockType};

use rayon::prelude::*;

/// Output rows per lane group.
pub(crate) const LANES: usize = 16;
/// Values per chunk: the inner dimension is walked in chunks of 32, one scale of the input each.
pub(crate) const CHUNK: usize = 32;

/// Why quantised blocks cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct QuantError(String);

/// Block types as the kernels' constant parameter.
pub(crate) mod ty {
    pub const Q4_0: u8 = 0;
    pub const Q4_1: u8 = 1;
    pub const Q5_0: u8 = 2;
    pub const Q5_1: u8 = 3;
    pub const Q8_0: u8 = 4;
    pub const Q4K: u8 = 5;
    pub const Q5K: u8 = 6;
    pub const Q6K: u8 = 7;
}

/// Input rows per tile, the most either kernel is handed at once.
pub(crate) const MAX_ROWS: usize = avx512::MAX_ROWS;
/// Outputs per tile: two lane groups.
pub(crate) const NR: usize = 2 * LANES;
/// Chunks ahead of the one multiplied whose values are prefetched.
const PREFETCH: usize = 8;

/// The instruction sets the quantised product runs on. Both compute each unit's integer dot
/// products exactly and scale them in the same order, so they agree bit for bit (Q8_0 aside: the
/// AVX2 kernel multiplies its signed values, the offset folded in exactly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AVX-512 with byte operations and VNNI: `vpdpbusd`, 16 outputs per instruction.
    Avx512,
    /// AVX2 with FMA and F16C: `vpmaddubsw` pairs summed in 16 bits, 8 outputs per instruction.
    Avx2,
}

impl Kernel {
    /// Every kernel this CPU runs, the fastest first.
    pub(crate) fn supported() -> Vec<Kernel> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let mut out = Vec::new();
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                out.push(Kernel::Avx512);
            }
            if has!("avx2") && has!("fma") && has!("f16c") {
                out.push(Kernel::Avx2);
            }
            out
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Vec::new()
        }
    }

    /// The kernel products run on: the fastest this CPU has.
    pub(crate) fn detected() -> Option<Kernel> {
        static DETECTED: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| Kernel::supported().first().copied())
    }
}

/// Whether this CPU runs a quantised kernel: AVX-512 VNNI, or AVX2 with FMA and F16C.
pub fn available() -> bool {
    Kernel::detected().is_some()
}

/// The instructions the quantised products run on here, for messages: "AVX-512 VNNI" or "AVX2".
pub fn kernel_name() -> Option<&'static str> {
    Kernel::detected().map(|kernel| match kernel {
        Kernel::Avx512 => "AVX-512 VNNI",
        Kernel::Avx2 => "AVX2",
    })
}

/// Rows `r0 .. r0 + rows` of `x` against lane groups `g0`, `g0 + 1` of `w`, written to `dst`:
/// `rows` rows of [`NR`] values, `dst_rs` apart, by `kernel`.
///
/// # Safety
/// `kernel` is one of [`Kernel::supported`]; `rows` in 1..=[`MAX_ROWS`], the rows exist in `x`,
/// `g0 + 1` is a group of `w`, `x` and `w` have the same K, and `dst` can take the rectangle.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run_tile(
    kernel: Kernel,
    w: &QuantMatrix,
    g0: usize,
    x: &Rows,
    r0: usize,
    rows: usize,
    dst: *mut f32,
    dst_rs: usize,
) {
    // SAFETY (both arms): the caller's.
    match kernel {
        Kernel::Avx512 => unsafe { avx512::run_tile(w, g0, x, r0, rows, dst, dst_rs) },
        Kernel::Avx2 => unsafe { avx2::run_tile(w, g0, x, r0, rows, dst, dst_rs) },
    }
}

/// An (N, K) weight of GGUF blocks in the kernel's layout.
#[derive(Clone, Debug)]
pub struct QuantMatrix {
    ty: BlockType,
    n: usize,
    k: usize,
    /// Bytes of one group's values in one chunk.
    chunk_bytes: usize,
    /// groups × chunks × `chunk_bytes`.
    quants: Vec<u8>,
    /// groups × units × [`unit_record`] bytes: each scale field for the 16 lanes side by side.
    unit_scales: Vec<u8>,
    /// groups × blocks of 256 × [`block_record`] bytes (the k-quants' `d`, `dmin`).
    block_scales: Vec<u8>,
}

/// Byte widths of the per-unit scale fields of `ty` (see [`blocks::Scales`]).
fn unit_fields(ty: BlockType) -> &'static [usize] {
    match ty {
        BlockType::Q4_0 | BlockType::Q5_0 | BlockType::Q8_0 => &[2],
        BlockType::Q4_1 | BlockType::Q5_1 => &[2, 2],
        BlockType::Q4K | BlockType::Q5K => &[1, 1],
        BlockType::Q6K => &[1],
    }
}

/// Byte widths of the per-block-of-256 scale fields of `ty`.
fn block_fields(ty: BlockType) -> &'static [usize] {
    match ty {
        BlockType::Q4K | BlockType::Q5K => &[2, 2],
        BlockType::Q6K => &[2],
        _ => &[],
    }
}

/// Bytes of one unit's scales for 16 lanes.
pub(crate) fn unit_record(ty: BlockType) -> usize {
    LANES * unit_fields(ty).iter().sum::<usize>()
}

/// Bytes of one block of 256's scales for 16 lanes.
pub(crate) fn block_record(ty: BlockType) -> usize {
    LANES * block_fields(ty).iter().sum::<usize>()
}

/// Writes (`put`) or reads the fields of lane `r` in a record of `fields` for 16 lanes.
fn field_at(fields: &[usize], f: usize, r: usize) -> (usize, usize) {
    let start: usize = fields[..f].iter().map(|w| w * LANES).sum();
    (start + r * fields[f], fields[f])
}

fn put_fields(record: &mut [u8], fields: &[usize], r: usize, values: [u16; 2]) {
    for (f, value) in values.iter().enumerate().take(fields.len()) {
        let (at, width) = field_at(fields, f, r);
        record[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
    }
}

fn get_fields(record: &[u8], fields: &[usize], r: usize) -> [u16; 2] {
    let mut out = [0u16; 2];
    for (f, value) in out.iter_mut().enumerate().take(fields.len()) {
        let (at, width) = field_at(fields, f, r);
        *value = if width == 2 { u16::from_le_bytes([record[at], record[at + 1]]) } else { record[at] as u16 };
    }
    out
}

impl QuantMatrix {
    /// The row-major (N, K) weight stored as `bytes` of `ty` blocks (each row K / values blocks),
    /// checked: the size must match, and every scale must be finite (also once rounded to f16).
    pub fn from_blocks(ty: BlockType, n: usize, k: usize, bytes: &[u8]) -> Result<Self, QuantError> {
        if k == 0 || !k.is_multiple_of(ty.values()) {
            return Err(QuantError(format!(
                "rows of {k} values are not whole {} blocks of {}",
                ty.name(),
                ty.values()
            )));
        }
        let row_bytes = k / ty.values() * ty.bytes();
        if Some(bytes.len()) != n.checked_mul(row_bytes) {
            return Err(QuantError(format!(
                "{} bytes do not hold {n} rows of {k} {} values ({row_bytes} bytes each)",
                bytes.len(),
                ty.name()
            )));
        }
        // Lane groups, rounded up to an even count: the kernel reads two at a time.
        let groups = n.div_ceil(LANES).next_multiple_of(2);
        let chunk_bytes = chunk_bytes(ty.bits());
        let (chunks, units, blocks) = (k / CHUNK, k / ty.unit(), k / 256);
        let mut quants = vec![0u8; groups * chunks * chunk_bytes];
        let mut unit_scales = vec![0u8; groups * units * unit_record(ty)];
        // One unused byte per group where the type has no block scales, so every group gets a slice.
        let block_len = (blocks * block_record(ty)).max(1);
        let mut block_scales = vec![0u8; groups * block_len];
        // Panel by panel (two lane groups, what one tile reads), in parallel.
        quants
            .par_chunks_mut(2 * chunks * chunk_bytes)
            .zip(unit_scales.par_chunks_mut(2 * units * unit_record(ty)))
            .zip(block_scales.par_chunks_mut(2 * block_len))
            .enumerate()
            .try_for_each(|(panel, ((quants, unit_scales), block_scales))| {
                for half in 0..2 {
                    let g = 2 * panel + half;
                    let rows = g * LANES..((g + 1) * LANES).min(n);
                    let rows = if rows.start < n { &bytes[rows.start * row_bytes..rows.end * row_bytes] } else { &[] };
                    let out = Group {
                        half,
                        quants: &mut *quants,
                        unit_scales: &mut *unit_scales,
                        block_scales: &mut *block_scales,
                    };
                    fill_group(ty, k, rows, out).map_err(|(r, block, what)| {
                        QuantError(format!("row {}, block {block}: {what}", g * LANES + r))
                    })?;
                }
                Ok(())
            })?;
        Ok(Self { ty, n, k, chunk_bytes, quants, unit_scales, block_scales })
    }

    pub fn block_type(&self) -> BlockType {
        self.ty
    }

    /// Output rows N.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Input positions K.
    pub fn cols(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.quants.len() + self.unit_scales.len() + self.block_scales.len()
    }

    /// Row `row` as f32 values `s·q + b` (the weights the kernel multiplies).
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.n && out.len() == self.k, "row {row} of {}×{} into {} values", self.n, self.k, out.len());
        let (g, r) = (row / LANES, row % LANES);
        let (chunks, unit) = (self.k / CHUNK, self.ty.unit());
        for c in 0..chunks {
            let chunk = &self.quants[self.chunk_at(g, c)..][..self.chunk_bytes];
            for (u, values) in out[c * CHUNK..(c + 1) * CHUNK].chunks_exact_mut(unit).enumerate() {
                let (s, b) = blocks::affine(self.ty, self.scales_of(g, r, c * CHUNK / unit + u));
                for (j, v) in values.iter_mut().enumerate() {
                    *v = s * q_at(self.ty.bits(), chunk, r, u * unit + j) as f32 + b;
                }
            }
        }
    }

    /// The whole (N, K) weight as f32 values, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.k];
        out.par_chunks_mut(self.k).enumerate().for_each(|(row, out)| self.row_into(row, out));
        out
    }

    /// The values of one group's chunk, `chunk_bytes` of them.
    fn chunk(&self, group: usize, chunk: usize) -> *const u8 {
        self.quants[self.chunk_at(group, chunk)..].as_ptr()
    }

    /// Where one group's values of `chunk` start in `quants`. The two groups of a panel (what
    /// one tile reads) alternate chunk by chunk, and so do their scales unit by unit: a tile, and
    /// a task's run of tiles, reads one sequential stream of each, which the hardware prefetches
    /// (a stream per group, 12 KB long for K = 1,536, halved decoding's memory throughput).
    fn chunk_at(&self, group: usize, chunk: usize) -> usize {
        ((group / 2 * (self.k / CHUNK) + chunk) * 2 + group % 2) * self.chunk_bytes
    }

    /// The scales of lane `r` of `group` for `unit`.
    fn scales_of(&self, group: usize, r: usize, unit: usize) -> blocks::Scales {
        let record = &self.unit_scales[self.unit_at(group, unit)..];
        let mut scales = blocks::Scales { unit: get_fields(record, unit_fields(self.ty), r), block: [0; 2] };
        if block_record(self.ty) > 0 {
            scales.block = get_fields(&self.block_scales[self.block_at(group, unit)..], block_fields(self.ty), r);
        }
        scales
    }

    /// Where one group's scales of `unit` start in `unit_scales`.
    fn unit_at(&self, group: usize, unit: usize) -> usize {
        ((group / 2 * (self.k / self.ty.unit()) + unit) * 2 + group % 2) * unit_record(self.ty)
    }

    /// Where one group's scales of the block of 256 holding `unit` start in `block_scales`.
    fn block_at(&self, group: usize, unit: usize) -> usize {
        ((group / 2 * (self.k / 256) + unit * self.ty.unit() / 256) * 2 + group % 2) * block_record(self.ty)
    }
}

/// Bytes of 16 rows × 32 values of `bits` each: the 4 low bits as nibbles (8 bits whole), then
/// planes of the fifth and sixth.
fn chunk_bytes(bits: usize) -> usize {
    match bits {
        8 => 512,
        bits => 256 + 64 * (bits - 4),
    }
}

/// Value `i` (< 32) of lane `r` in a chunk of `bits`-bit values (the layout [`fill_group`] writes).
fn q_at(bits: usize, chunk: &[u8], r: usize, i: usize) -> u8 {
    let (quad, j) = (i / 4, i % 4);
    if bits == 8 {
        return chunk[quad * 64 + r * 4 + j];
    }
    let byte = chunk[(quad / 2) * 64 + r * 4 + j];
    let low = if quad % 2 == 0 { byte & 0xF } else { byte >> 4 };
    let high = match bits {
        5 => (chunk[256 + r * 4 + j] >> quad) & 1,
        6 => (chunk[256 + 64 * (quad / 4) + r * 4 + j] >> (2 * (quad % 4))) & 3,
        _ => 0,
    };
    low | high << 4
}

/// One lane group's place in its panel's arrays: every other chunk, unit and block of 256.
struct Group<'a> {
    half: usize,
    quants: &'a mut [u8],
    unit_scales: &'a mut [u8],
    block_scales: &'a mut [u8],
}

/// Decodes up to 16 rows of blocks (`rows`, whole rows; missing rows are zero) into one lane
/// group's chunks and scales. An error names the row in the group, the block and what is wrong.
fn fill_group(ty: BlockType, k: usize, rows: &[u8], out: Group) -> Result<(), (usize, usize, String)> {
    let Group { half, quants, unit_scales, block_scales } = out;
    let (bits, unit) = (ty.bits(), ty.unit());
    let row_bytes = k / ty.values() * ty.bytes();
    let per_block = ty.values() / unit;
    let mut q = vec![0u8; LANES * k];
    let mut scales = vec![blocks::Scales::default(); per_block];
    for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
        for (i, block) in row.chunks_exact(ty.bytes()).enumerate() {
            let at = r * k + i * ty.values();
            blocks::decode(ty, block, &mut q[at..at + ty.values()], &mut scales);
            for (j, scales) in scales.iter().enumerate() {
                let (s, b) = blocks::affine(ty, *scales);
                if !(s.is_finite() && b.is_finite()) {
                    return Err((r, i, format!("scale {s} or offset {b} is not finite (a corrupt block?)")));
                }
                let u = i * per_block + j;
                put_fields(&mut unit_scales[(u * 2 + half) * unit_record(ty)..], unit_fields(ty), r, scales.unit);
                if block_record(ty) > 0 {
                    let at = ((u * unit / 256) * 2 + half) * block_record(ty);
                    put_fields(&mut block_scales[at..], block_fields(ty), r, scales.block);
                }
            }
        }
    }
    let bytes = chunk_bytes(bits);
    for (c, out) in quants.chunks_exact_mut(bytes).skip(half).step_by(2).enumerate() {
        for r in 0..LANES {
            let value: &[u8; CHUNK] = q[r * k + c * CHUNK..][..CHUNK].try_into().expect("a chunk of 32 values");
            let lane = |plane: usize| plane + r * 4;
            for j in 0..4 {
                if bits == 8 {
                    for quad in 0..8 {
                        out[lane(quad * 64) + j] = value[4 * quad + j];
                    }
                    continue;
                }
                for v in 0..4 {
                    out[lane(v * 64) + j] = (value[8 * v + j] & 0xF) | (value[8 * v + 4 + j] & 0xF) << 4;
                }
                if bits == 5 {
                    let mut plane = 0;
                    for quad in 0..8 {
                        plane |= ((value[4 * quad + j] >> 4) & 1) << quad;
                    }
                    out[lane(256) + j] = plane;
                }
                if bits == 6 {
                    for p in 0..2 {
                        let mut plane = 0;
                        for quad in 0..4 {
                            plane |= ((value[4 * (quad + 4 * p) + j] >> 4) & 3) << (2 * quad);
                        }
                        out[lane(256 + 64 * p) + j] = plane;
                    }
                }
            }
        }
    }
    Ok(())
}

/// 1.5·2²³: adding and subtracting it rounds an f32 of magnitude below 2²² to an integer.
const MAGIC: f32 = 12_582_912.0;

/// `v` rounded to the nearest integer (ties to even) for |v| < 2²²: adding and subtracting 1.5·2²³
/// leaves no fraction bits. Vectorises, where `f32::round` is a libm call per value here.
#[inline(always)]
fn round(v: f32) -> f32 {
    (v + MAGIC) - MAGIC
}

/// One block of `x` rounded into `q` and `lo`; returns its scale `d`.
fn round_block(x: &[f32; CHUNK], q: &mut [i8; CHUNK], lo: &mut [i8; CHUNK]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for ((q, lo), &v) in q.iter_mut().zip(lo.iter_mut()).zip(x) {
        let hi = round(v * inv);
        *q = hi as i8;
        *lo = round((v * inv - hi) * 256.0).clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0
}

/// Input rows rounded for the kernel: per block of 32 values a scale `d` and two 8-bit integers
/// per value, `x ≈ d·(q + lo/256)` (an error of at most d/256, about 2⁻¹⁵ of the block's
/// largest value), and the sums of `x` per 16 for the offsets.
pub struct Rows {
    k: usize,
    q: Vec<i8>,
    lo: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<f32>,
}

impl Rows {
    /// Rounds the rows of `x` (M, K); K must be a multiple of 32.
    pub fn quantize(x: &[f32], k: usize) -> Self {
        assert!(k.is_multiple_of(CHUNK) && x.len().is_multiple_of(k), "Rows: {} values are not rows of {k}", x.len());
        let chunks = x.len() / CHUNK;
        let (mut q, mut lo) = (vec![0i8; x.len()], vec![0i8; x.len()]);
        let (mut d, mut sums) = (vec![0f32; chunks], vec![0f32; 2 * chunks]);
        let per_task = (16 * 1024 / CHUNK).max(1);
        let avx512 = Kernel::detected() == Some(Kernel::Avx512);
        q.par_chunks_mut(CHUNK * per_task)
            .zip(lo.par_chunks_mut(CHUNK * per_task))
            .zip(d.par_chunks_mut(per_task).zip(sums.par_chunks_mut(2 * per_task)))
            .zip(x.par_chunks(CHUNK * per_task))
            .for_each(|(((q, lo), (d, sums)), x)| {
                let blocks = q.chunks_mut(CHUNK).zip(lo.chunks_mut(CHUNK)).zip(d.iter_mut().zip(sums.chunks_mut(2)));
                for (((q, lo), (d, sums)), x) in blocks.zip(x.chunks(CHUNK)) {
                    let x: &[f32; CHUNK] = x.try_into().expect("whole blocks of 32");
                    let (q, lo): (&mut [i8; CHUNK], &mut [i8; CHUNK]) =
                        (q.try_into().expect("whole blocks"), lo.try_into().expect("whole blocks"));
                    // SAFETY: the CPU has AVX-512 (the kernel was detected).
                    let fast = if avx512 { unsafe { avx512::round_block(x, &mut *q, &mut *lo) } } else { None };
                    *d = fast.unwrap_or_else(|| round_block(x, q, lo));
                    sums[0] = x[..16].iter().sum();
                    sums[1] = x[16..].iter().sum();
                }
            });
        Self { k, q, lo, d, sums }
    }

    /// Rows M.
    pub fn len(&self) -> usize {
        self.q.len() / self.k
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

#[cfg(test)]
mod tests;
