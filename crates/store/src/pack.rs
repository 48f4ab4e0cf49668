//! Packing sequences into fixed-length training batches.
//!
//! Whole sequences are placed one after another in rows of length L (first fit, in shuffled
//! order); the rest of a row is padding. Every row position carries the input token, its position
//! inside its own sequence, a segment id (0 = padding, 1.. = sequence within the row; attention
//! must not cross segments), and — where the next token is a completion token — the teacher's
//! top-K for predicting it, with the loss mask set.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::Result;
use crate::reader::Dataset;
use crate::shard::Sequence;

#[derive(Debug, Clone, PartialEq)]
pub struct PackOptions {
    /// Row length L.
    pub seq_len: usize,
    /// Rows per batch B.
    pub batch_size: usize,
    /// Shuffle seed; the same seed gives the same batches.
    pub seed: u64,
    pub pad_id: u32,
}

/// One training batch; all arrays are row-major (B, L) or (B, L, K).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub k: usize,
    pub input_ids: Vec<u32>,
    pub position_ids: Vec<u32>,
    pub segment_ids: Vec<u32>,
    /// The actual next token (for cross-entropy); `pad_id` where there is none.
    pub target_ids: Vec<u32>,
    /// 1.0 where the next token is a completion token with a stored teacher signal.
    pub loss_mask: Vec<f32>,
    pub topk_ids: Vec<u32>,
    pub topk_logprobs: Vec<f32>,
    pub tail_logprobs: Vec<f32>,
}

impl Batch {
    fn empty(b: usize, l: usize, k: usize, pad_id: u32) -> Self {
        Self {
            batch_size: b,
            seq_len: l,
            k,
            input_ids: vec![pad_id; b * l],
            position_ids: vec![0; b * l],
            segment_ids: vec![0; b * l],
            target_ids: vec![pad_id; b * l],
            loss_mask: vec![0.0; b * l],
            topk_ids: vec![0; b * l * k],
            topk_logprobs: vec![f32::NEG_INFINITY; b * l * k],
            tail_logprobs: vec![0.0; b * l],
        }
    }

    /// Positions that carry a teacher signal.
    pub fn target_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m > 0.0).count()
    }
}

/// Streams batches over a dataset for one epoch: shard order and sequence order within each shard
/// are shuffled with the seed; one shard is in memory at a time.
pub struct Packer {
    dataset: Dataset,
    options: PackOptions,
    shard_order: Vec<usize>,
    next_shard: usize,
    pending: Vec<Sequence>,
    rng: StdRng,
    /// Sequences longer than L, cut to L.
    pub truncated: usize,
}

impl Packer {
    pub fn new(dataset: &Dataset, options: PackOptions) -> Self {
        let mut rng = StdRng::seed_from_u64(options.seed);
        let mut shard_order: Vec<usize> = (0..dataset.num_shards()).collect();
        shard_order.shuffle(&mut rng);
        Self { dataset: dataset.clone(), options, shard_order, next_shard: 0, pending: Vec::new(), rng, truncated: 0 }
    }

    fn refill(&mut self) -> Result<bool> {
        while self.pending.is_empty() {
            let Some(&shard) = self.shard_order.get(self.next_shard) else {
                return Ok(false);
            };
            self.next_shard += 1;
            let mut seqs = self.dataset.read_shard(shard)?;
            seqs.shuffle(&mut self.rng);
            seqs.reverse(); // popped from the back
            self.pending = seqs;
        }
        Ok(true)
    }

    /// The next batch, or `None` at the end of the epoch. The last batch may have padding rows.
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        let k = self.dataset.manifest().spec.k;
        let options = self.options.clone();
        let mut truncated = 0;
        let batch = fill_batch(&options, k, &mut truncated, |back| match back {
            Some(seq) => {
                self.pending.push(seq);
                Ok(None)
            }
            None => {
                self.refill()?;
                Ok(self.pending.pop())
            }
        })?;
        self.truncated += truncated;
        Ok(batch)
    }
}

/// Packs sequences held in memory (e.g. fresh student rollouts) into batches, in the order given.
pub fn pack_sequences(sequences: Vec<Sequence>, k: usize, options: &PackOptions) -> Result<Vec<Batch>> {
    let mut pending: Vec<Sequence> = sequences.into_iter().rev().collect();
    let mut batches = Vec::new();
    let mut truncated = 0;
    loop {
        let batch = fill_batch(options, k, &mut truncated, |back| match back {
            Some(seq) => {
                pending.push(seq);
                Ok(None)
            }
            None => Ok(pending.pop()),
        })?;
        match batch {
            Some(b) => batches.push(b),
            None => return Ok(batches),
        }
    }
}

/// First-fit packing of one batch. `take(None)` yields the next sequence (None when there is
/// no more); `take(Some(seq))` hands back the one that did not fit the batch's last row.
fn fill_batch(
    options: &PackOptions,
    k: usize,
    truncated: &mut usize,
    mut take: impl FnMut(Option<Sequence>) -> Result<Option<Sequence>>,
) -> Result<Option<Batch>> {
    let (b, l) = (options.batch_size, options.seq_len);
    let mut batch = Batch::empty(b, l, k, options.pad_id);
    let mut row = 0;
    let mut used = 0;
    let mut segment = 0u32;
    let mut any = false;
    let mut candidate = take(None)?;
    while row < b {
        let Some(seq) = candidate.take() else { break };
        let len = seq.token_ids.len().min(l);
        if used + len > l {
            candidate = Some(seq);
            row += 1;
            used = 0;
            segment = 0;
            continue;
        }
        if seq.token_ids.len() > l {
            *truncated += 1;
        }
        segment += 1;
        place(&mut batch, row, used, segment, &seq, len);
        used += len;
        any = true;
        if row < b {
            candidate = take(None)?;
        }
    }
    // A sequence that did not fit this batch waits for the next one.
    if let Some(seq) = candidate {
        take(Some(seq))?;
    }
    Ok(any.then_some(batch))
}

fn place(batch: &mut Batch, row: usize, offset: usize, segment: u32, seq: &Sequence, len: usize) {
    let (l, k) = (batch.seq_len, batch.k);
    let prompt_len = seq.prompt_len as usize;
    for i in 0..len {
        let at = row * l + offset + i;
        batch.input_ids[at] = seq.token_ids[i];
        batch.position_ids[at] = i as u32;
        batch.segment_ids[at] = segment;
        // Position i predicts token i + 1; completion token j sits at prompt_len + j.
        if i + 1 < len {
            batch.target_ids[at] = seq.token_ids[i + 1];
            if i + 1 >= prompt_len {
                let j = i + 1 - prompt_len;
                batch.loss_mask[at] = 1.0;
                batch.topk_ids[at * k..(at + 1) * k].copy_from_slice(&seq.topk_ids[j * k..(j + 1) * k]);
                batch.topk_logprobs[at * k..(at + 1) * k].copy_from_slice(&seq.topk_logprobs[j * k..(j + 1) * k]);
                batch.tail_logprobs[at] = seq.tail_logprobs[j];
            }
        }
    }
}
