//! `manifest.json`: what made a dataset and which shards are complete.

use std::path::Path;

use serde::{Deserialize, Serialize};

use distill_kernels::packed::Precision;

use crate::error::{Error, Result};
use crate::quant::Quantization;

/// The newest version of the shard layout and manifest this code reads; a reader refuses
/// versions it does not know. Version 1 is the `plain` layout, 2 the `coded` one (both read).
pub const FORMAT_VERSION: u32 = 2;
pub const MANIFEST_FILE: &str = "manifest.json";

/// Everything that determines a dataset's contents. A re-run into the same directory must
/// present the same spec, or it is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSpec {
    /// The teacher as the user named it.
    pub teacher: String,
    /// SHA-256 of the teacher's weight file(s).
    pub teacher_hash: String,
    /// SHA-256 of the tokenizer's id → token table.
    pub tokenizer_hash: String,
    /// Tokens the tokenizer knows.
    pub tokenizer_vocab: usize,
    /// Rows of the teacher's output layer (may exceed the tokenizer's, padded vocabularies).
    pub model_vocab: usize,
    /// Top-K entries kept per position.
    pub k: usize,
    /// Temperature of the stored distributions (softmax(logits / τ)).
    pub logprob_temperature: f32,
    /// Generation settings: temperature, top_p, top_k, seed, max_tokens, stop.
    pub sampling: serde_json::Value,
    /// Completions generated per prompt (prompts with a given completion get that one only).
    pub completions_per_prompt: usize,
    /// Whether prompts were rendered with the chat template.
    pub chat: bool,
    /// SHA-256 of the prompt file.
    pub prompts_hash: String,
    pub prompts: usize,
    /// Prompts per shard: shard i holds prompts [i·n, (i+1)·n).
    pub prompts_per_shard: usize,
    pub quantization: Quantization,
    /// The arithmetic of the teacher's matmuls: `f32`, or `bf16` (bf16 operands, f32 sums).
    /// Manifests written before this field existed were all f32.
    #[serde(default)]
    pub teacher_matmuls: Precision,
    /// System messages given to a share of the prompts; none in manifests written before this
    /// field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_messages: Option<SystemMessagesSpec>,
}

/// The system messages a dataset gave a share of its prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemMessagesSpec {
    /// How many messages there were, and the SHA-256 of their list as JSON.
    pub messages: usize,
    pub sha256: String,
    /// The share of the prompts drawn to get one.
    pub share: f64,
}

impl std::fmt::Display for SystemMessagesSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} messages ({}) for a share of {}", self.messages, short(&self.sha256), self.share)
    }
}

/// One complete shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub first_prompt: usize,
    pub prompts: usize,
    pub sequences: usize,
    /// Completion tokens, each with a stored top-K.
    pub tokens: usize,
    pub bytes: u64,
    /// Mean and worst KL(unquantised ‖ reconstructed) over the shard's positions, in nats.
    pub quant_kl_mean: f64,
    pub quant_kl_max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub created_by: String,
    pub spec: DatasetSpec,
    /// Where the prompts came from (informational; the hash is what is checked).
    pub prompts_path: String,
    pub shards: Vec<ShardInfo>,
    /// All prompts are in shards.
    pub complete: bool,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| Error::corrupt(&path, format!("not a distill manifest: {e}")))?;
        if manifest.format_version > FORMAT_VERSION || manifest.format_version == 0 {
            return Err(Error::Mismatch(format!(
                "{} has format version {}, this distill reads versions 1 to {FORMAT_VERSION}\nHINT: re-create the dataset with this version of `distill generate`, or upgrade distill",
                path.display(),
                manifest.format_version
            )));
        }
        if manifest.format_version != manifest.spec.quantization.format_version() {
            return Err(Error::corrupt(
                &path,
                format!(
                    "format version {} does not store quantisation scheme {:?}",
                    manifest.format_version, manifest.spec.quantization.scheme
                ),
            ));
        }
        Ok(Some(manifest))
    }

    /// Writes the manifest atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        use std::io::Write;
        let path = dir.join(MANIFEST_FILE);
        let tmp = dir.join("manifest.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(text.as_bytes()).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        crate::shard::sync_dir(&path)
    }

    pub fn tokens(&self) -> usize {
        self.shards.iter().map(|s| s.tokens).sum()
    }

    pub fn sequences(&self) -> usize {
        self.shards.iter().map(|s| s.sequences).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }

    pub fn prompts_done(&self) -> usize {
        self.shards.iter().map(|s| s.prompts).sum()
    }
}

impl DatasetSpec {
    /// Explains how `other` (a new run) differs from `self` (what is on disk), field by field.
    pub fn differences(&self, other: &DatasetSpec) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: dataset has {a}, this run has {b}"));
            }
        };
        check(
            "teacher",
            format!("{} ({})", self.teacher, short(&self.teacher_hash)),
            format!("{} ({})", other.teacher, short(&other.teacher_hash)),
        );
        check("tokenizer", short(&self.tokenizer_hash).into(), short(&other.tokenizer_hash).into());
        check("model vocab", self.model_vocab.to_string(), other.model_vocab.to_string());
        check("k", self.k.to_string(), other.k.to_string());
        check("logprob temperature", self.logprob_temperature.to_string(), other.logprob_temperature.to_string());
        check("sampling", self.sampling.to_string(), other.sampling.to_string());
        check(
            "completions per prompt",
            self.completions_per_prompt.to_string(),
            other.completions_per_prompt.to_string(),
        );
        check("chat", self.chat.to_string(), other.chat.to_string());
        check("prompt file", short(&self.prompts_hash).into(), short(&other.prompts_hash).into());
        check("prompts per shard", self.prompts_per_shard.to_string(), other.prompts_per_shard.to_string());
        check("quantization", format!("{:?}", self.quantization), format!("{:?}", other.quantization));
        check("teacher matmuls", self.teacher_matmuls.to_string(), other.teacher_matmuls.to_string());
        let system = |s: &Option<SystemMessagesSpec>| s.as_ref().map_or_else(|| "none".to_string(), |s| s.to_string());
        check("system messages", system(&self.system_messages), system(&other.system_messages));
        out
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
