//! The teacher-signal dataset a student trains on.
//!
//! A dataset is a directory: `manifest.json` plus Parquet shards (`shard-00000.parquet`, …, zstd).
//! Each shard row is one sequence (prompt + completion) with, for every completion token, the
//! teacher's top-K token ids, their log-probabilities (quantised, see [`quant`]) and the tail mass,
//! range-coded ([`codec`]) or as plain lists ([`shard`] describes both layouts). Shards cover fixed, consecutive ranges of prompts and are written atomically, so a killed run
//! resumes exactly where it stopped. `source/` keeps the prompt file and the teacher's
//! tokenizer, for students with another tokenizer ([`source`]).
//!
//! Shape letters: `T` sequence tokens, `Tc` completion tokens, `K` top-k entries, `B` batch rows,
//! `L` packed row length.

pub mod codec;
pub mod error;
pub mod manifest;
pub mod pack;
pub mod quant;
pub mod reader;
pub mod shard;
pub mod source;
pub mod table;
pub mod writer;

pub use error::{Error, Result};
pub use manifest::{DatasetSpec, Manifest, ShardInfo, SystemMessagesSpec};
pub use pack::{pack_sequences, Batch, PackOptions, Packer};
pub use quant::Layout;
pub use reader::{Dataset, Truncation};
pub use shard::Sequence;
pub use source::{RenderSettings, Source};
pub use writer::DatasetWriter;

/// Hex SHA-256 of bytes, the fingerprint used throughout the manifest.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a file's contents, streamed.
pub fn sha256_file(path: &std::path::Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
