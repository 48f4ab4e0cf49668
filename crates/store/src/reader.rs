//! Opening a dataset, checking it against a student, and reading its sequences.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::shard::{read_lengths, read_shard, Sequence, ShardCoding};

/// What rows of `seq_len` tokens keep of a dataset: sequences longer than a row are cut to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truncation {
    pub seq_len: usize,
    pub sequences: usize,
    /// Sequences longer than `seq_len`.
    pub truncated: usize,
    /// Completion tokens in the dataset, and how many of them rows of `seq_len` keep.
    pub target_tokens: usize,
    pub kept_tokens: usize,
    /// The longest sequence and the longest prompt, in tokens.
    pub longest: usize,
    pub longest_prompt: usize,
}

impl Truncation {
    /// Target tokens the truncation drops.
    pub fn dropped(&self) -> usize {
        self.target_tokens - self.kept_tokens
    }
}

/// An opened dataset: its directory and manifest (cheap to clone; shards are read on demand).
#[derive(Debug, Clone)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::read(dir)?.ok_or_else(|| {
            Error::Invalid(format!(
                "{} is not a distill dataset (no manifest.json)\nHINT: create one with `distill generate --dataset {} --prompts-file PROMPTS.jsonl`",
                dir.display(),
                dir.display()
            ))
        })?;
        for shard in &manifest.shards {
            let path = dir.join(&shard.file);
            if !path.is_file() {
                return Err(Error::corrupt(&path, "listed in the manifest but missing"));
            }
        }
        Ok(Self { dir: dir.to_path_buf(), manifest })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn num_shards(&self) -> usize {
        self.manifest.shards.len()
    }

    /// Refuses a student whose tokenizer or output layer does not match the teacher's.
    pub fn check_student(&self, tokenizer_hash: &str, tokenizer_vocab: usize, model_vocab: usize) -> Result<()> {
        let spec = &self.manifest.spec;
        if tokenizer_hash != spec.tokenizer_hash || tokenizer_vocab != spec.tokenizer_vocab {
            return Err(Error::Mismatch(format!(
                "the student's tokenizer ({tokenizer_vocab} tokens, {}) is not the one this dataset was made with ({} tokens, {}, teacher {})\nHINT: was the dataset made with another teacher? Use a student with the teacher's tokenizer, re-run `distill generate` with a matching teacher, or train across tokenizers with a [cross_tokenizer] section (`distill align TEACHER STUDENT` says which mode suits the pair)",
                &tokenizer_hash[..tokenizer_hash.len().min(12)],
                spec.tokenizer_vocab,
                &spec.tokenizer_hash[..spec.tokenizer_hash.len().min(12)],
                spec.teacher
            )));
        }
        if model_vocab != spec.model_vocab {
            return Err(Error::Mismatch(format!(
                "the student's vocabulary has {model_vocab} rows but the teacher's had {} (same tokenizer, differently padded embedding tables)\nHINT: give the student vocab_size = {} so token ids and top-k ids line up",
                spec.model_vocab, spec.model_vocab
            )));
        }
        Ok(())
    }

    /// What packing into rows of `seq_len` tokens keeps of the dataset's target tokens (reads only
    /// the sequences' lengths).
    pub fn truncation(&self, seq_len: usize) -> Result<Truncation> {
        let mut t = Truncation { seq_len, ..Truncation::default() };
        for info in &self.manifest.shards {
            for (tokens, prompt) in read_lengths(&self.dir.join(&info.file))? {
                t.sequences += 1;
                t.target_tokens += tokens.saturating_sub(prompt);
                // Position i of a row predicts token i + 1: a row of L tokens keeps the completion
                // tokens before position L.
                t.kept_tokens += tokens.min(seq_len).saturating_sub(prompt);
                t.truncated += usize::from(tokens > seq_len);
                t.longest = t.longest.max(tokens);
                t.longest_prompt = t.longest_prompt.max(prompt);
            }
        }
        Ok(t)
    }

    /// All sequences of shard `index`, log-probabilities reconstructed.
    pub fn read_shard(&self, index: usize) -> Result<Vec<Sequence>> {
        let info = self.manifest.shards.get(index).ok_or_else(|| Error::Invalid(format!("no shard {index}")))?;
        let sequences = read_shard(&self.dir.join(&info.file), &ShardCoding::of(&self.manifest.spec))?;
        if sequences.len() != info.sequences {
            return Err(Error::corrupt(
                &self.dir.join(&info.file),
                format!("holds {} sequences, the manifest says {}", sequences.len(), info.sequences),
            ));
        }
        Ok(sequences)
    }

    /// Every sequence, shard by shard, streaming (one shard in memory at a time).
    pub fn sequences(&self) -> impl Iterator<Item = Result<Sequence>> + '_ {
        (0..self.num_shards()).flat_map(move |i| match self.read_shard(i) {
            Ok(seqs) => seqs.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
    }
}

/// Entropy (nats) of one position's stored distribution: the top-K plus the tail as one bucket,
/// a lower bound of the teacher's full entropy.
pub fn topk_entropy(logprobs: &[f32], tail_logprob: f32) -> f64 {
    let term = |lp: f32| {
        if lp.is_finite() {
            -(lp as f64).exp() * lp as f64
        } else {
            0.0
        }
    };
    logprobs.iter().map(|&lp| term(lp)).sum::<f64>() + term(tail_logprob)
}
