//! Causal (or any additively masked) attention by tiles of queries, with its backward pass.
//!
//! Each tile of [`QUERY_TILE`] queries of one head multiplies only the keys its mask leaves
//! open — for a causal mask, the keys up to the tile's last query — so about half of the
//! (T, S) score matrix is never computed. The tile's scores, probabilities and their gradients
//! live in a small scratch buffer rather than a (B, N, T, S) tensor; the backward recomputes
//! them instead of keeping them. Grouped-query heads read their shared key/value head in place,
//! and the output is written straight into the (B, T, N·D) layout of the output projection.
//!
//! Shapes: `q` (B, N, T, D); `k`, `v` (B, G, S, D) with G key/value heads dividing N; the
//! additive mask one (T, S) plane per batch row or one for all; output (B, T, N·D).
//!
//! A masked entry is one at or below [`MASKED_BELOW`]. A query whose keys are all masked (a
//! padding position) attends over every key with the mask's finite values, as the composed ops
//! do, so its tile is not narrowed.

use crate::matmul::{gemm_into, Operand, Threads};
use crate::softmax::{softmax_backward_row, softmax_rows, Row};
use crate::tile;
use rayon::prelude::*;

/// Queries per tile: small enough that the causal staircase wastes little, large enough for
/// the products to run near the matmul kernel's speed.
pub const QUERY_TILE: usize = 16;

/// Mask values at or below this are treated as closed when narrowing a tile's keys.
pub const MASKED_BELOW: f32 = -1e8;

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub queries: usize,
    pub keys: usize,
    pub head_dim: usize,
}

impl Dims {
    fn check(&self, q: &[f32], k: &[f32], v: &[f32], mask: &Mask) {
        let Dims { batch: b, heads: n, kv_heads: g, queries: t, keys: s, head_dim: d } = *self;
        assert!(g > 0 && n.is_multiple_of(g), "{n} heads do not share {g} key/value heads evenly");
        assert_eq!(q.len(), b * n * t * d, "queries are not (B, N, T, D)");
        assert_eq!(k.len(), b * g * s * d, "keys are not (B, G, S, D)");
        assert_eq!(v.len(), k.len(), "values and keys differ in size");
        let planes = if mask.per_batch { b } else { 1 };
        assert_eq!(mask.data.len(), planes * t * s, "the mask is not (B or 1, T, S)");
    }

    fn tiles(&self) -> usize {
        self.queries.div_ceil(QUERY_TILE)
    }
}

/// An additive mask: one (T, S) plane per batch row (`per_batch`) or one for all.
#[derive(Clone, Copy)]
pub struct Mask<'a> {
    pub data: &'a [f32],
    pub per_batch: bool,
}

/// The keys each query sees, from the mask: per (mask plane, query) its open keys
/// `[first, end)` (all keys where none is open), and per (mask plane, query tile) the union over
/// the tile's queries — what the tile's products cover.
struct KeyRanges {
    rows: Vec<(usize, usize)>,
    tiles: Vec<(usize, usize)>,
}

impl KeyRanges {
    fn new(dims: &Dims, mask: &Mask) -> Self {
        let (t, s) = (dims.queries, dims.keys);
        let planes = if mask.per_batch { dims.batch } else { 1 };
        let rows: Vec<(usize, usize)> = mask
            .data
            .chunks(s)
            .map(|m| match (m.iter().position(|&x| x > MASKED_BELOW), m.iter().rposition(|&x| x > MASKED_BELOW)) {
                (Some(first), Some(last)) => (first, last + 1),
                _ => (0, s),
            })
            .collect();
        let tiles = (0..planes * dims.tiles())
            .map(|i| {
                let (plane, tile) = (i / dims.tiles(), i % dims.tiles());
                let queries = plane * t + tile * QUERY_TILE..plane * t + ((tile + 1) * QUERY_TILE).min(t);
                rows[queries].iter().fold((s, 0), |(a, e), &(first, end)| (a.min(first), e.max(end)))
            })
            .collect();
        Self { rows, tiles }
    }
}

/// One (batch row, head, query tile): where its operands lie.
struct Tile<'a> {
    dims: &'a Dims,
    b: usize,
    head: usize,
    tile: usize,
    /// The tile's keys: the union of its queries' `row_keys`.
    keys: (usize, usize),
    /// Each of the tile's queries' own keys.
    row_keys: &'a [(usize, usize)],
}

impl Tile<'_> {
    fn rows(&self) -> std::ops::Range<usize> {
        self.tile * QUERY_TILE..((self.tile + 1) * QUERY_TILE).min(self.dims.queries)
    }

    /// Offset of the tile's first query row in `q` (B, N, T, D).
    fn q_offset(&self) -> usize {
        let d = self.dims;
        ((self.b * d.heads + self.head) * d.queries + self.rows().start) * d.head_dim
    }

    /// Offset of the tile's first key row in `k`/`v` (B, G, S, D).
    fn kv_offset(&self) -> usize {
        let d = self.dims;
        let group = self.head / (d.heads / d.kv_heads);
        ((self.b * d.kv_heads + group) * d.keys + self.keys.0) * d.head_dim
    }

    /// Where query `i` of the tile reads its keys within a row of the tile's scores.
    fn own_keys(&self, i: usize) -> std::ops::Range<usize> {
        let (first, end) = self.row_keys[i];
        first - self.keys.0..end - self.keys.0
    }

    /// `p` (rows, L) = softmax(q kᵀ · scale + mask) over the tile's keys; `scores` is scratch.
    /// Each query's softmax runs over its own keys only (the rest of its row is 0), so its
    /// figures do not depend on which other queries share the tile: a sequence scores the same
    /// alone as beside longer ones in a padded batch.
    fn probabilities(&self, q: &[f32], keys: Keys, mask: &Mask, scale: f32, scores: &mut [f32], p: &mut [f32]) {
        let (dims, dh) = (self.dims, self.dims.head_dim);
        let (m, l) = (self.rows().len(), self.keys.1 - self.keys.0);
        let q_tile = &q[self.q_offset()..];
        // Row stride of `scores`.
        let ls = match keys {
            Keys::Rows(k) => {
                let k_t = Operand::transposed(&k[self.kv_offset()..], dh);
                gemm_into(scores, l, (m, l, dh), Operand::rows(q_tile, dh), k_t, false, Threads::Caller);
                l
            }
            Keys::Transposed(kt) => {
                // Whole registers of keys: the columns past L are the next keys or padding,
                // computed and ignored.
                let ls = l.next_multiple_of(tile::LANES);
                let group = self.head / (dims.heads / dims.kv_heads);
                let at = (self.b * dims.kv_heads + group) * dh * kt.stride + self.keys.0;
                tile::product(q_tile, dh, &kt.data[at..], kt.stride, (m, ls, dh), scores, ls);
                ls
            }
        };
        let plane = if mask.per_batch { self.b } else { 0 };
        let mut rows: Vec<Row> = Vec::with_capacity(m);
        for ((i, row), p_row) in self.rows().enumerate().zip(p.chunks_mut(l)) {
            let at = (plane * dims.queries + row) * dims.keys + self.keys.0;
            let own = self.own_keys(i);
            // Zero outside the query's own keys.
            p_row[..own.start].fill(0.0);
            p_row[own.end..].fill(0.0);
            let mask = &mask.data[at + own.start..at + own.end];
            rows.push(Row { x: &scores[i * ls..][own.clone()], mask, out: &mut p_row[own] });
        }
        softmax_rows(&mut rows, scale);
    }
}

/// Where a tile's products read the keys.
#[derive(Clone, Copy)]
enum Keys<'a> {
    /// `k` as given, (B, G, S, D).
    Rows(&'a [f32]),
    /// Transposed for the register-tile kernel.
    Transposed(&'a TransposedKeys),
}

/// The keys as (B, G, D, stride): each key/value head's keys side by side for each of the D
/// dimensions, so a row of query tiles' scores is a product of row-major operands. `stride`
/// leaves room for a whole register past any tile's last key (zeros).
struct TransposedKeys {
    data: Vec<f32>,
    stride: usize,
}

impl TransposedKeys {
    fn new(dims: &Dims, k: &[f32]) -> Self {
        let (s, dh) = (dims.keys, dims.head_dim);
        let stride = (s + tile::LANES - 1).next_multiple_of(tile::LANES);
        let mut data = vec![0f32; dims.batch * dims.kv_heads * dh * stride];
        data.par_chunks_mut(dh * stride).zip(k.par_chunks(s * dh)).for_each(|(out, keys)| {
            for (j, key) in keys.chunks(dh).enumerate() {
                for (x, &value) in key.iter().enumerate() {
                    out[x * stride + j] = value;
                }
            }
        });
        Self { data, stride }
    }
}

/// `out` (B, T, N·D) = softmax(q kᵀ · scale + mask) v, head by head.
pub fn forward(dims: &Dims, q: &[f32], k: &[f32], v: &[f32], mask: Mask, scale: f32, out: &mut [f32]) {
    dims.check(q, k, v, &mask);
    let Dims { heads: n, queries: t, head_dim: dh, .. } = *dims;
    assert_eq!(out.len(), dims.batch * t * n * dh, "the output is not (B, T, N·D)");
    if out.is_empty() {
        return;
    }
    let ranges = KeyRanges::new(dims, &mask);
    let tiles = dims.tiles();
    // The register-tile kernel where the CPU has it and the head dimension is whole registers;
    // `gemm` otherwise.
    let transposed = (tile::available() && dh.is_multiple_of(tile::LANES)).then(|| TransposedKeys::new(dims, k));
    let keys_at = match &transposed {
        Some(kt) => Keys::Transposed(kt),
        None => Keys::Rows(k),
    };
    // One task per (batch row, query tile): its rows of `out` are contiguous.
    let tasks: Vec<(usize, usize, &mut [f32])> = out
        .chunks_mut(t * n * dh)
        .enumerate()
        .flat_map(|(b, rows)| rows.chunks_mut(QUERY_TILE * n * dh).enumerate().map(move |(tile, o)| (b, tile, o)))
        .collect();
    tasks.into_par_iter().for_each(|(b, tile, out_rows)| {
        let plane = if mask.per_batch { b } else { 0 };
        let keys = ranges.tiles[plane * tiles + tile];
        let row_keys = &ranges.rows[plane * t + tile * QUERY_TILE..];
        let l = keys.1 - keys.0;
        let mut scratch = vec![0f32; QUERY_TILE * (2 * l + tile::LANES)];
        let (scores, p) = scratch.split_at_mut(QUERY_TILE * (l + tile::LANES));
        for head in 0..n {
            let at = Tile { dims, b, head, tile, keys, row_keys };
            let m = at.rows().len();
            at.probabilities(q, keys_at, &mask, scale, scores, p);
            let v_tile = &v[at.kv_offset()..];
            let out_head = &mut out_rows[head * dh..];
            match keys_at {
                Keys::Transposed(_) => tile::product(p, l, v_tile, dh, (m, dh, l), out_head, n * dh),
                Keys::Rows(_) => gemm_into(
                    out_head,
                    n * dh,
                    (m, dh, l),
                    Operand::rows(p, l),
                    Operand::rows(v_tile, dh),
                    false,
                    Threads::Caller,
                ),
            }
        }
    });
}

/// Gradients of [`forward`] for the output's gradient `grad` (B, T, N·D): `dq` (B, N, T, D),
/// `dk`, `dv` (B, G, S, D), all overwritten.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dims: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Mask,
    scale: f32,
    grad: &[f32],
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) {
    dims.check(q, k, v, &mask);
    let Dims { heads: n, kv_heads: g, queries: t, keys: s, head_dim: dh, .. } = *dims;
    assert_eq!(grad.len(), dims.batch * t * n * dh, "the output's gradient is not (B, T, N·D)");
    assert!(dq.len() == q.len() && dk.len() == k.len() && dv.len() == v.len(), "gradients differ from inputs in size");
    if q.is_empty() || k.is_empty() {
        dq.fill(0.0);
        dk.fill(0.0);
        dv.fill(0.0);
        return;
    }
    let ranges = KeyRanges::new(dims, &mask);
    let tiles = dims.tiles();
    let per_group = n / g;
    // One task per (batch row, key/value head): it owns that head's dk, dv and its query heads' dq.
    dq.par_chunks_mut(per_group * t * dh)
        .zip(dk.par_chunks_mut(s * dh).zip(dv.par_chunks_mut(s * dh)))
        .enumerate()
        .for_each(|(task, (dq_group, (dk_head, dv_head)))| {
            let b = task / g;
            let plane = if mask.per_batch { b } else { 0 };
            dk_head.fill(0.0);
            dv_head.fill(0.0);
            let longest = (0..tiles).map(|i| ranges.tiles[plane * tiles + i]).map(|(a, e)| e - a).max().unwrap_or(0);
            let mut scratch = vec![0f32; 3 * QUERY_TILE * longest];
            for head in task % g * per_group..(task % g + 1) * per_group {
                for tile in 0..tiles {
                    let keys = ranges.tiles[plane * tiles + tile];
                    let row_keys = &ranges.rows[plane * t + tile * QUERY_TILE..];
                    let at = Tile { dims, b, head, tile, keys, row_keys };
                    let (m, l) = (at.rows().len(), keys.1 - keys.0);
                    let (scores, rest) = scratch.split_at_mut(QUERY_TILE * longest);
                    let (p, dp) = rest.split_at_mut(QUERY_TILE * longest);
                    at.probabilities(q, Keys::Rows(k), &mask, scale, scores, p);
                    let (p, dp, ds) = (&p[..m * l], &mut dp[..m * l], &mut scores[..m * l]);
                    let grad_tile = Operand::rows(&grad[(b * t + at.rows().start) * n * dh + head * dh..], n * dh);
                    let q_tile = Operand::rows(&q[at.q_offset()..], dh);
                    let kv_at = (keys.0 * dh, keys.1 * dh);
                    let (k_keys, v_keys) = (&k[at.kv_offset()..][..l * dh], &v[at.kv_offset()..][..l * dh]);
                    // dv += pᵀ · grad; dp = grad · vᵀ.
                    let dv_keys = &mut dv_head[kv_at.0..kv_at.1];
                    gemm_into(dv_keys, dh, (l, dh, m), Operand::transposed(p, l), grad_tile, true, Threads::Caller);
                    gemm_into(dp, l, (m, l, dh), grad_tile, Operand::transposed(v_keys, dh), false, Threads::Caller);
                    // ds: the scores' gradient, scale included.
                    for i in 0..m {
                        let own = at.own_keys(i);
                        let (row, ds_row) = (i * l + own.start..i * l + own.end, &mut ds[i * l..(i + 1) * l]);
                        ds_row.fill(0.0);
                        softmax_backward_row(&p[row.clone()], &dp[row], scale, &mut ds_row[own]);
                    }
                    // dq = ds · k (each tile's rows once); dk += dsᵀ · q.
                    let dq_rows = &mut dq_group[((head % per_group) * t + at.rows().start) * dh..][..m * dh];
                    gemm_into(
                        dq_rows,
                        dh,
                        (m, dh, l),
                        Operand::rows(ds, l),
                        Operand::rows(k_keys, dh),
                        false,
                        Threads::Caller,
                    );
                    let dk_keys = &mut dk_head[kv_at.0..kv_at.1];
                    gemm_into(dk_keys, dh, (l, dh, m), Operand::transposed(ds, l), q_tile, true, Threads::Caller);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention written out in float64 per (batch row, head, query) over every key: the
    /// reference for the tiled kernel. Returns (B, T, N·D).
    fn reference(dims: &Dims, q: &[f32], k: &[f32], v: &[f32], mask: &Mask, scale: f32) -> Vec<f64> {
        let Dims { batch, heads: n, kv_heads: g, queries: t, keys: s, head_dim: d } = *dims;
        let mut out = vec![0f64; batch * t * n * d];
        for b in 0..batch {
            for h in 0..n {
                let kv = (b * g + h / (n / g)) * s * d;
                for i in 0..t {
                    let qi = &q[((b * n + h) * t + i) * d..][..d];
                    let plane = if mask.per_batch { b } else { 0 };
                    let z: Vec<f64> = (0..s)
                        .map(|j| {
                            let dot: f64 = (0..d).map(|x| qi[x] as f64 * k[kv + j * d + x] as f64).sum();
                            // The mask is added in f32, as the model adds it.
                            (dot as f32 * scale + mask.data[(plane * t + i) * s + j]) as f64
                        })
                        .collect();
                    let top = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let total: f64 = z.iter().map(|x| (x - top).exp()).sum();
                    for j in 0..s {
                        let p = (z[j] - top).exp() / total;
                        for x in 0..d {
                            out[((b * t + i) * n + h) * d + x] += p * v[kv + j * d + x] as f64;
                        }
                    }
                }
            }
        }
        out
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| (((i + seed) * 2654435761usize % 1000) as f32 / 1000.0 - 0.5) * 1.6).collect()
    }

    /// A causal mask after `past` cached keys, and a per-row packed mask: two segments and
    /// trailing padding queries that see nothing (fully masked rows).
    fn masks(b: usize, t: usize, past: usize) -> (Vec<f32>, Vec<f32>) {
        let s = past + t;
        let causal = (0..t).flat_map(|i| (0..s).map(move |j| if j <= past + i { 0.0 } else { -1e9 })).collect();
        let mut packed = Vec::new();
        for row in 0..b {
            let seg = |p: usize| {
                if p < t / 3 + row {
                    1
                } else if p < t - 2 {
                    2
                } else {
                    0
                }
            };
            for i in 0..t {
                packed.extend((0..s).map(|j| {
                    let open = j >= past && j - past <= i && seg(j - past) == seg(i) && seg(i) > 0;
                    if open || (j < past && seg(i) > 0) {
                        0.0
                    } else {
                        -1e9
                    }
                }));
            }
        }
        (causal, packed)
    }

    /// Several tiles with a ragged last one, grouped-query heads, cached keys, and both mask
    /// shapes, against the float64 reference.
    #[test]
    fn forward_matches_float64() {
        // Head dimension 8 runs `gemm`; 16 the register-tile kernel where the CPU has AVX-512F.
        for (t, past, d) in
            [(QUERY_TILE * 2 + 5, 0, 8), (7, 3, 8), (QUERY_TILE, 0, 8), (QUERY_TILE * 2 + 5, 0, 16), (7, 3, 16)]
        {
            let dims = Dims { batch: 2, heads: 4, kv_heads: 2, queries: t, keys: past + t, head_dim: d };
            let q = values(2 * 4 * t * d, 1);
            let k = values(2 * 2 * (past + t) * d, 2);
            let v = values(k.len(), 3);
            let (causal, packed) = masks(2, t, past);
            for mask in [Mask { data: &causal, per_batch: false }, Mask { data: &packed, per_batch: true }] {
                let mut out = vec![f32::NAN; 2 * t * 4 * d];
                forward(&dims, &q, &k, &v, mask, 0.35, &mut out);
                let want = reference(&dims, &q, &k, &v, &mask, 0.35);
                for (i, (a, w)) in out.iter().zip(&want).enumerate() {
                    assert!((*a as f64 - w).abs() < 2e-5, "T={t} past={past} D={d} out[{i}]: {a} vs {w}");
                }
            }
        }
    }

    /// A sequence scores the same alone as after right padding to a longer batch-mate's length:
    /// the teacher's figures must not depend on what it was batched with. Bit for bit with the
    /// AVX-512 register tiles (one sum in key order whatever the tile's length); without them the
    /// probabilities × values product goes through `gemm`, whose blocking follows the tile's key
    /// count, so padding can move the last bits (seen: 3e-8 on an AVX2-only EPYC).
    #[test]
    fn padding_leaves_a_sequence_unchanged() {
        let (short, long, d) = (QUERY_TILE + 9, QUERY_TILE * 2 + 3, 16);
        let run = |t: usize| {
            let dims = Dims { batch: 1, heads: 2, kv_heads: 1, queries: t, keys: t, head_dim: d };
            // The same values for the first `short` positions whatever `t` is.
            let seq = |seed: usize, heads: usize| -> Vec<f32> {
                (0..heads).flat_map(|h| values(t * d, seed + h * 1000).into_iter().take(t * d)).collect()
            };
            let (q, k, v) = (seq(1, 2), seq(2, 1), seq(3, 1));
            let (mask, _) = masks(1, t, 0);
            let mut out = vec![0f32; t * 2 * d];
            forward(&dims, &q, &k, &v, Mask { data: &mask, per_batch: false }, 0.25, &mut out);
            out.truncate(short * 2 * d);
            out
        };
        let (alone, padded) = (run(short), run(long));
        if tile::available() {
            assert_eq!(alone, padded);
        } else {
            for (i, (a, b)) in alone.iter().zip(&padded).enumerate() {
                assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "out[{i}]: {a} alone, {b} padded");
            }
        }
    }

    /// Every gradient against central differences of `Σ out ⊙ w`, in float64 through the
    /// reference (so the check does not lean on the kernel's own forward).
    #[test]
    fn backward_matches_finite_differences() {
        let t = QUERY_TILE + 3;
        let dims = Dims { batch: 2, heads: 4, kv_heads: 2, queries: t, keys: t, head_dim: 4 };
        let q = values(2 * 4 * t * 4, 5);
        let k = values(2 * 2 * t * 4, 6);
        let v = values(k.len(), 7);
        // The last two queries are padding in the packed mask: their outputs are left out of the
        // loss, as the trainer leaves them out (their flat f32 scores give differences nothing).
        let mut w = values(2 * t * 4 * 4, 8);
        w.iter_mut().enumerate().filter(|(i, _)| (i / 16) % t >= t - 2).for_each(|(_, x)| *x = 0.0);
        let (causal, packed) = masks(2, t, 0);
        for mask in [Mask { data: &causal, per_batch: false }, Mask { data: &packed, per_batch: true }] {
            let (mut dq, mut dk, mut dv) = (vec![f32::NAN; q.len()], vec![f32::NAN; k.len()], vec![f32::NAN; v.len()]);
            backward(&dims, &q, &k, &v, mask, 0.5, &w, (&mut dq, &mut dk, &mut dv));
            let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
                reference(&dims, q, k, v, &mask, 0.5).iter().zip(&w).map(|(o, w)| o * *w as f64).sum()
            };
            let h = 1e-2f32;
            for (which, analytic) in [(0, &dq), (1, &dk), (2, &dv)] {
                for i in (0..analytic.len()).step_by(7) {
                    let nudge = |delta: f32| {
                        let (mut q2, mut k2, mut v2) = (q.clone(), k.clone(), v.clone());
                        [&mut q2, &mut k2, &mut v2][which][i] += delta;
                        loss(&q2, &k2, &v2)
                    };
                    let numeric = (nudge(h) - nudge(-h)) / (2.0 * h as f64);
                    let got = analytic[i] as f64;
                    assert!((numeric - got).abs() < 2e-3 * numeric.abs().max(1.0), "{which}[{i}]: {got} vs {numeric}");
                }
            }
        }
    }

    /// Narrowing: a causal tile sees exactly the keys up to its last query; a tile with a fully
    /// masked row sees them all.
    #[test]
    fn key_ranges_follow_the_mask() {
        let t = QUERY_TILE * 2;
        let dims = Dims { batch: 1, heads: 1, kv_heads: 1, queries: t, keys: t, head_dim: 1 };
        let (causal, _) = masks(1, t, 0);
        let ranges = KeyRanges::new(&dims, &Mask { data: &causal, per_batch: false });
        assert_eq!(ranges.tiles, vec![(0, QUERY_TILE), (0, t)]);
        assert_eq!(ranges.rows[..3], [(0, 1), (0, 2), (0, 3)]);
        let mut closed = causal.clone();
        closed[..t].fill(-1e9); // query 0 sees nothing
        let ranges = KeyRanges::new(&dims, &Mask { data: &closed, per_batch: false });
        assert_eq!((ranges.rows[0], ranges.tiles[0]), ((0, t), (0, t)));
    }
}
