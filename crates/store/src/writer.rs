//! Resumable, exactly-once dataset writing.
//!
//! Shard i holds the sequences of prompts `[i·n, (i+1)·n)`. A shard file is complete once it is
//! renamed into place; it counts once the manifest lists it. On open, files the manifest does not
//! list (a crash between the rename and the manifest update) are removed and redone — the teacher
//! pass is seeded per prompt, so the redo writes the same data.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::{DatasetSpec, Manifest, ShardInfo, MANIFEST_FILE};
use crate::shard::{write_shard, Sequence, ShardCoding};

pub struct DatasetWriter {
    dir: PathBuf,
    manifest: Manifest,
}

pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index:05}.parquet")
}

impl DatasetWriter {
    /// Opens `dir` for `spec`: starts a new dataset, or resumes one made with the same spec.
    pub fn open(dir: &Path, spec: DatasetSpec, prompts_path: &str) -> Result<Self> {
        if spec.k == 0 || spec.prompts_per_shard == 0 {
            return Err(Error::Invalid("k and prompts per shard must be positive".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let manifest = match Manifest::read(dir)? {
            Some(existing) => {
                let diffs = existing.spec.differences(&spec);
                if !diffs.is_empty() {
                    return Err(Error::Mismatch(format!(
                        "{} holds a dataset made with other settings, so this run cannot resume it:\n  - {}\nHINT: write to another output directory, or delete this one to start over",
                        dir.display(),
                        diffs.join("\n  - ")
                    )));
                }
                existing
            }
            None => {
                if let Some(entry) = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten().next() {
                    return Err(Error::Mismatch(format!(
                        "{} is not empty (found {}) and holds no distill manifest\nHINT: choose a new or empty output directory",
                        dir.display(),
                        entry.file_name().to_string_lossy()
                    )));
                }
                let manifest = Manifest {
                    format_version: spec.quantization.format_version(),
                    created_by: concat!("distill ", env!("CARGO_PKG_VERSION")).to_string(),
                    spec,
                    prompts_path: prompts_path.to_string(),
                    shards: Vec::new(),
                    complete: false,
                };
                manifest.write(dir)?;
                manifest
            }
        };
        let writer = Self { dir: dir.to_path_buf(), manifest };
        writer.remove_unlisted_files()?;
        Ok(writer)
    }

    fn remove_unlisted_files(&self) -> Result<()> {
        for entry in std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let listed = self.manifest.shards.iter().any(|s| s.file == name);
            let ours = name.starts_with("shard-") || name.ends_with(".tmp");
            if ours && !listed && name != MANIFEST_FILE {
                std::fs::remove_file(entry.path()).map_err(|e| Error::io(&entry.path(), e))?;
            }
        }
        Ok(())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Prompts of the next shard to produce, or `None` when the dataset is complete.
    pub fn next_shard(&self) -> Option<Range<usize>> {
        let start = self.manifest.prompts_done();
        let total = self.manifest.spec.prompts;
        (start < total).then(|| start..(start + self.manifest.spec.prompts_per_shard).min(total))
    }

    /// Writes the sequences of the prompts `range` (from [`Self::next_shard`]) as one shard and
    /// records it in the manifest.
    pub fn write_shard(&mut self, range: Range<usize>, sequences: &[Sequence]) -> Result<&ShardInfo> {
        if Some(range.clone()) != self.next_shard() {
            return Err(Error::Invalid(format!(
                "shard for prompts {range:?} is out of order (expected {:?})",
                self.next_shard()
            )));
        }
        if let Some(s) = sequences.iter().find(|s| !range.contains(&(s.prompt_index as usize))) {
            return Err(Error::Invalid(format!(
                "sequence of prompt {} does not belong to shard {range:?}",
                s.prompt_index
            )));
        }
        let file = shard_file_name(self.manifest.shards.len());
        let stats = write_shard(&self.dir.join(&file), sequences, &ShardCoding::of(&self.manifest.spec))?;
        self.manifest.shards.push(ShardInfo {
            file,
            first_prompt: range.start,
            prompts: range.len(),
            sequences: stats.sequences,
            tokens: stats.completion_tokens,
            bytes: stats.bytes,
            quant_kl_mean: if stats.completion_tokens > 0 {
                stats.kl_sum / stats.completion_tokens as f64
            } else {
                0.0
            },
            quant_kl_max: stats.kl_max,
        });
        self.manifest.complete = self.next_shard().is_none();
        self.manifest.write(&self.dir)?;
        Ok(self.manifest.shards.last().expect("just pushed"))
    }
}
