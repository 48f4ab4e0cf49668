//! The order in which a run sees its data: epochs of packed batches, each epoch shuffled with
//! `seed + epoch`, positioned anywhere (for resume) and skipping batches without a teacher signal.

use distill_store::{Batch, Dataset, Error, PackOptions, Packer, Result};

/// Endless stream of training batches over a dataset.
pub struct BatchStream<'a> {
    dataset: &'a Dataset,
    seq_len: usize,
    batch_size: usize,
    seed: u64,
    packer: Packer,
    /// Epochs finished so far.
    pub epoch: u64,
    /// Batches taken from the current epoch (including skipped ones).
    pub batches_in_epoch: u64,
}

impl<'a> BatchStream<'a> {
    /// A stream positioned after `batches_in_epoch` batches of epoch `epoch`.
    pub fn new(
        dataset: &'a Dataset,
        seq_len: usize,
        batch_size: usize,
        seed: u64,
        epoch: u64,
        batches_in_epoch: u64,
    ) -> Result<Self> {
        let packer = Packer::new(dataset, options(seq_len, batch_size, seed, epoch));
        let mut stream = Self { dataset, seq_len, batch_size, seed, packer, epoch, batches_in_epoch: 0 };
        for _ in 0..batches_in_epoch {
            stream.packer.next_batch()?;
            stream.batches_in_epoch += 1;
        }
        Ok(stream)
    }

    /// The next batch that carries a teacher signal, starting a new epoch when one ends.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let mut fresh_epoch = false;
        loop {
            match self.packer.next_batch()? {
                Some(b) => {
                    self.batches_in_epoch += 1;
                    if b.target_tokens() > 0 {
                        return Ok(b);
                    }
                }
                None if fresh_epoch => {
                    return Err(Error::Invalid(format!(
                        "{} holds no completion tokens to train on",
                        self.dataset.dir().display()
                    )))
                }
                None => {
                    self.epoch += 1;
                    self.batches_in_epoch = 0;
                    self.packer =
                        Packer::new(self.dataset, options(self.seq_len, self.batch_size, self.seed, self.epoch));
                    fresh_epoch = true;
                }
            }
        }
    }
}

/// One pass over a dataset in a fixed order (seed 0): what held-out evaluation, its reference
/// export and width-pruning calibration read, so all of them see the same batches.
pub fn fixed_order(dataset: &Dataset, seq_len: usize, batch_size: usize) -> Packer {
    Packer::new(dataset, options(seq_len, batch_size, 0, 0))
}

fn options(seq_len: usize, batch_size: usize, seed: u64, epoch: u64) -> PackOptions {
    PackOptions { seq_len, batch_size, seed: seed.wrapping_add(epoch), pad_id: 0 }
}
