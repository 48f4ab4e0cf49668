//! The key/value cache of [`crate::Llama::step`]: per layer, the keys and values of the rows
//! being decoded, with each row's left padding, so sequences can join and leave a running batch.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::llama_config::LlamaConfig;

/// Per-layer keys and values of the sequences being decoded, plus the left padding of each row.
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>, // each (B, KVH, S, D)
    pub(crate) left_pad: Vec<usize>,
    pub(crate) len: usize,
}

impl KvCache {
    /// A cache for a batch whose rows are left-padded by `left_pad[b]` tokens.
    pub fn new(cfg: &LlamaConfig, left_pad: Vec<usize>) -> Self {
        Self { layers: (0..cfg.num_hidden_layers).map(|_| None).collect(), left_pad, len: 0 }
    }

    /// Positions held so far, padding included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch_size(&self) -> usize {
        self.left_pad.len()
    }

    /// Keeps the rows `rows`, in that order; a row listed twice is forked (for `n` completions
    /// of one prompt). Padding that every remaining row shares is dropped.
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.batch_size()) {
            return Err(Error::Input(format!("row {bad} is not in a cache of {} rows", self.batch_size())));
        }
        if rows.is_empty() {
            self.layers.iter_mut().for_each(|l| *l = None);
            self.left_pad.clear();
            self.len = 0;
            return Ok(());
        }
        let device = self.layers.iter().flatten().next().map(|(k, _)| k.device().clone());
        if let Some(device) = device {
            let index = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), &device)?;
            for (k, v) in self.layers.iter_mut().flatten() {
                *k = k.index_select(&index, 0)?; // (B', KVH, S, D)
                *v = v.index_select(&index, 0)?;
            }
        }
        self.left_pad = rows.iter().map(|&r| self.left_pad[r]).collect();
        self.trim_shared_padding()
    }

    /// Adds the rows of `other` after this cache's rows. The shorter cache is left-padded so
    /// that every row's last position lines up: this is how a new sequence joins a running batch.
    pub fn append(&mut self, other: KvCache) -> Result<()> {
        if self.layers.len() != other.layers.len() {
            return Err(Error::Input(format!(
                "cannot join caches of {} and {} layers",
                self.layers.len(),
                other.layers.len()
            )));
        }
        if self.batch_size() == 0 {
            *self = other;
            return Ok(());
        }
        if other.batch_size() == 0 {
            return Ok(());
        }
        let len = self.len.max(other.len);
        let (mine, theirs) = (len - self.len, len - other.len);
        for (slot, theirs_slot) in self.layers.iter_mut().zip(other.layers) {
            let (Some((k, v)), Some((ok, ov))) = (slot.take(), theirs_slot) else {
                return Err(Error::Input("cannot join a cache that has not been filled yet".into()));
            };
            let k = Tensor::cat(&[&left_pad_positions(&k, mine)?, &left_pad_positions(&ok, theirs)?], 0)?; // (B+B', KVH, S, D)
            let v = Tensor::cat(&[&left_pad_positions(&v, mine)?, &left_pad_positions(&ov, theirs)?], 0)?;
            *slot = Some((k, v));
        }
        self.left_pad.iter_mut().for_each(|p| *p += mine);
        self.left_pad.extend(other.left_pad.iter().map(|p| p + theirs));
        self.len = len;
        self.trim_shared_padding()
    }

    fn trim_shared_padding(&mut self) -> Result<()> {
        let shared = self.left_pad.iter().copied().min().unwrap_or(0);
        if shared == 0 {
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, shared, self.len - shared)?.contiguous()?; // (B, KVH, S - shared, D)
            *v = v.narrow(2, shared, self.len - shared)?.contiguous()?;
        }
        self.left_pad.iter_mut().for_each(|p| *p -= shared);
        self.len -= shared;
        Ok(())
    }
}

/// `t` (B, KVH, S, D) with `pad` zero positions in front: (B, KVH, pad + S, D).
fn left_pad_positions(t: &Tensor, pad: usize) -> Result<Tensor> {
    if pad == 0 {
        return Ok(t.clone());
    }
    let (b, kvh, _, d) = t.dims4()?;
    let zeros = Tensor::zeros((b, kvh, pad, d), t.dtype(), t.device())?;
    Ok(Tensor::cat(&[&zeros, t], 2)?)
}
