//! What every layer of one forward pass shares: the RoPE tables at the pass's positions and
//! the additive attention masks, for the global layers and (when some layers slide) the
//! sliding ones.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::family::LayerAttention;
use crate::llama::LlamaConfig;
use crate::ops;

/// cos and sin, (P, D/2) each, for every position of the context.
type Table = (Tensor, Tensor);

/// The decoder's RoPE tables: the global layers', longrope's second one, the sliding layers' own.
pub(crate) struct RopeTables {
    global: Table,
    /// longrope: the long factors' table, used by passes over more positions than the second.
    long: Option<(Table, usize)>,
    /// Gemma 3's sliding layers (`rope_local_base_freq`).
    local: Option<Table>,
    half: usize,
}

impl RopeTables {
    pub(crate) fn new(cfg: &LlamaConfig, device: &Device, dtype: DType) -> Result<Self> {
        let scale = cfg.rope_attention_factor();
        let table = |freqs: &[f64]| rope_table(freqs, cfg.max_position_embeddings, scale, device, dtype);
        let long = match cfg.long_inv_freq() {
            Some((freqs, from)) => Some((table(&freqs)?, from)),
            None => None,
        };
        let local = match cfg.local_inv_freq() {
            Some(freqs) => Some(rope_table(&freqs, cfg.max_position_embeddings, 1.0, device, dtype)?),
            None => None,
        };
        Ok(Self { global: table(&cfg.inv_freq())?, long, local, half: cfg.head_dim() / 2 })
    }

    /// The global and local tables of a pass that reaches `len` positions.
    fn for_pass(&self, len: usize) -> (&Table, &Table) {
        let global = match &self.long {
            Some((long, original)) if len > *original => long,
            _ => &self.global,
        };
        (global, self.local.as_ref().unwrap_or(global))
    }
}

/// One attention kind's share of a [`Frame`].
pub(crate) struct Attend {
    pub cos: Tensor,
    pub sin: Tensor,
    pub mask: Tensor,
}

/// The RoPE angles and masks of one pass: `local` for the sliding layers, when any slide.
pub(crate) struct Frame {
    global: Attend,
    local: Option<Attend>,
}

impl Frame {
    /// What a layer attends with.
    pub(crate) fn for_layer(&self, layer: LayerAttention) -> &Attend {
        match (&self.local, layer.window.is_some() || layer.local_rope) {
            (Some(local), true) => local,
            _ => &self.global,
        }
    }

    /// Positions 0..t of one sequence per row, causal.
    pub(crate) fn causal(rope: &RopeTables, sliding: Option<LayerAttention>, t: usize, dtype: DType) -> Result<Self> {
        let (global, local) = rope.for_pass(t);
        let device = global.0.device();
        let narrow =
            |(cos, sin): &Table| -> Result<(Tensor, Tensor)> { Ok((cos.narrow(0, 0, t)?, sin.narrow(0, 0, t)?)) };
        let (cos, sin) = narrow(global)?;
        let mask = ops::causal_mask(t, 0, dtype, device)?; // (1, 1, T, T)
        let local = match sliding {
            None => None,
            Some(layer) => {
                let (cos, sin) = if layer.local_rope { narrow(local)? } else { (cos.clone(), sin.clone()) };
                let mask = match layer.window.filter(|&w| w < t) {
                    Some(w) => mask_tensor(1, t, t, |_, q, k| k <= q && q - k < w, dtype, device)?,
                    None => mask.clone(),
                };
                Some(Attend { cos, sin, mask })
            }
        };
        Ok(Self { global: Attend { cos, sin, mask }, local })
    }

    /// A decoding step: `t` new tokens per row after `past` cached ones, rows left-padded by
    /// `left_pad` (padding is never attended to; a padding query sees itself only).
    pub(crate) fn step(
        rope: &RopeTables,
        sliding: Option<LayerAttention>,
        left_pad: &[usize],
        past: usize,
        t: usize,
        dtype: DType,
    ) -> Result<Self> {
        let b = left_pad.len();
        let positions: Vec<u32> =
            left_pad.iter().flat_map(|&pad| (0..t).map(move |q| (past + q).saturating_sub(pad) as u32)).collect();
        let open = |row: usize, q: usize, k: usize| {
            let abs = past + q;
            (k >= left_pad[row] && k <= abs) || k == abs
        };
        // An open key is at most the query's position, so `k + w > past + q` says it is fewer
        // than `w` positions back.
        let window = |w: usize| move |row: usize, q: usize, k: usize| open(row, q, k) && k + w > past + q;
        Self::gathered(rope, sliding, &positions, (b, t, past + t), open, window, dtype)
    }

    /// Packed rows: several sequences one after another per row, positions restarting at 0 for
    /// each and `segment_ids` telling them apart; attention never crosses a segment.
    pub(crate) fn packed(
        rope: &RopeTables,
        sliding: Option<LayerAttention>,
        (b, t): (usize, usize),
        position_ids: &[u32],
        segment_ids: &[u32],
        dtype: DType,
    ) -> Result<Self> {
        let open = |row: usize, q: usize, k: usize| k <= q && segment_ids[row * t + k] == segment_ids[row * t + q];
        let window = |w: usize| {
            move |row: usize, q: usize, k: usize| {
                open(row, q, k) && ((position_ids[row * t + q] - position_ids[row * t + k]) as usize) < w
            }
        };
        Self::gathered(rope, sliding, position_ids, (b, t, t), open, window, dtype)
    }

    /// Tables gathered at per-token positions, and per-row masks (B, 1, T, S).
    fn gathered<F: Fn(usize, usize, usize) -> bool, W: Fn(usize, usize, usize) -> bool>(
        rope: &RopeTables,
        sliding: Option<LayerAttention>,
        positions: &[u32],
        (b, t, s): (usize, usize, usize),
        open: F,
        window: impl Fn(usize) -> W,
        dtype: DType,
    ) -> Result<Self> {
        let len = positions.iter().max().map_or(0, |&p| p as usize + 1);
        let (global, local) = rope.for_pass(len);
        let device = global.0.device().clone();
        let index = Tensor::from_vec(positions.to_vec(), b * t, &device)?;
        let gather = |(cos, sin): &Table| -> Result<(Tensor, Tensor)> {
            let shape = (b, 1, t, rope.half);
            Ok((cos.index_select(&index, 0)?.reshape(shape)?, sin.index_select(&index, 0)?.reshape(shape)?))
        };
        let (cos, sin) = gather(global)?;
        let mask = mask_tensor(b, t, s, &open, dtype, &device)?;
        let local = match sliding {
            None => None,
            Some(layer) => {
                let (cos, sin) = if layer.local_rope { gather(local)? } else { (cos.clone(), sin.clone()) };
                let mask = match layer.window {
                    Some(w) => mask_tensor(b, t, s, window(w), dtype, &device)?,
                    None => mask.clone(),
                };
                Some(Attend { cos, sin, mask })
            }
        };
        Ok(Self { global: Attend { cos, sin, mask }, local })
    }
}

/// An additive mask (B, 1, T, S): 0 where `open(row, query, key)`, [`ops::MASKED`] elsewhere.
fn mask_tensor(
    b: usize,
    t: usize,
    s: usize,
    open: impl Fn(usize, usize, usize) -> bool,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut mask = Vec::with_capacity(b * t * s);
    for row in 0..b {
        for q in 0..t {
            mask.extend((0..s).map(|k| if open(row, q, k) { 0.0f32 } else { ops::MASKED }));
        }
    }
    Ok(Tensor::from_vec(mask, (b, 1, t, s), device)?.to_dtype(dtype)?)
}

/// cos and sin of `position · frequency` for every position, times `scale`.
fn rope_table(inv_freq: &[f64], positions: usize, scale: f64, device: &Device, dtype: DType) -> Result<Table> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for f in inv_freq {
            let angle = p as f64 * f;
            cos.push((angle.cos() * scale) as f32);
            sin.push((angle.sin() * scale) as f32);
        }
    }
    let cos = Tensor::from_vec(cos, (positions, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (positions, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}
