//! The TOML run configuration of `distill train`. Every field has the default a user would want;
//! the resolved configuration is written into the run directory before training starts.

use std::path::PathBuf;

use distill_models::DeviceSpec;
use serde::{Deserialize, Serialize};

use crate::cross::CrossConfig;
use crate::error::Error;
use crate::loss::{LossConfig, TailModel};
use crate::optim::AdamWConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Teacher-signal dataset to train on (made by `distill generate --dataset`). May be left out
    /// only for pure online or on-policy training (`[on_policy]` with `fraction = 1` and
    /// `start_step = 0`), where every batch comes from the teacher inside the loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<PathBuf>,
    /// Optional held-out dataset (same teacher) for periodic evaluation.
    #[serde(default)]
    pub eval_dataset: Option<PathBuf>,
    /// Run directory: resolved config, metrics.jsonl, checkpoints.
    #[serde(alias = "output_dir")]
    pub output: PathBuf,
    pub student: StudentConfig,
    #[serde(default)]
    pub loss: LossConfig,
    #[serde(default)]
    pub optimizer: AdamWConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Optimiser steps.
    #[serde(default = "default_steps", alias = "max_steps")]
    pub steps: u64,
    /// Packed rows per step.
    #[serde(default = "default_batch_size", alias = "per_device_train_batch_size")]
    pub batch_size: usize,
    /// Micro-batches whose gradients are averaged into one optimiser step.
    #[serde(default = "default_grad_accum", alias = "gradient_accumulation_steps")]
    pub grad_accum: u64,
    /// Tokens per packed row.
    #[serde(default = "default_seq_len", alias = "max_length", alias = "max_seq_length")]
    pub seq_len: usize,
    /// Clip the global gradient norm to this value (none when absent).
    #[serde(default = "default_clip", alias = "max_grad_norm")]
    pub clip_grad_norm: Option<f64>,
    /// Seed of the data order.
    #[serde(default)]
    pub seed: u64,
    /// Evaluate on `eval_dataset` every this many steps (and at the end).
    #[serde(default = "default_eval_every", alias = "eval_steps")]
    pub eval_every: u64,
    /// Save a resumable checkpoint every this many steps (and at the end). Re-running the same
    /// config after an interruption continues from the last one, bit for bit on CPU.
    #[serde(default = "default_checkpoint_every", alias = "save_steps")]
    pub checkpoint_every: u64,
    /// On-policy distillation (GKD): a share of the micro-batches are the student's own
    /// completions, scored by a teacher inside the loop (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_policy: Option<OnPolicyConfig>,
    /// A student whose tokenizer is not the teacher's: the teacher's completions re-tokenised
    /// and lined up by bytes, trained with GOLD, ULD or sequence-level KD (none when absent:
    /// the student must share the teacher's tokenizer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_tokenizer: Option<CrossConfig>,
    /// Where the student trains: `cpu`, or `cuda` / `cuda:N` on a binary built with the `cuda`
    /// feature. Resuming a run on another device is refused (the saved config differs).
    #[serde(default, skip_serializing_if = "DeviceSpec::is_cpu")]
    pub device: DeviceSpec,
    /// Arithmetic of the student's forward and backward: `f32`, or `bf16` (mixed precision:
    /// weights, activations and gradients in bfloat16, master weights and AdamW state in f32,
    /// norms, softmax and the loss in f32). bf16 is for GPUs; on a CPU it runs the generic ops,
    /// slower than f32's fused kernels.
    #[serde(default, skip_serializing_if = "Compute::is_f32")]
    pub precision: Compute,
}

/// `precision`: the student's compute type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compute {
    #[default]
    F32,
    Bf16,
}

impl Compute {
    pub fn is_f32(&self) -> bool {
        *self == Compute::F32
    }

    /// The candle dtype of the forward and backward.
    pub fn dtype(&self) -> candle_core::DType {
        match self {
            Compute::F32 => candle_core::DType::F32,
            Compute::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// `[on_policy]`: the student samples completions of `prompts`, the teacher scores every token of
/// them, and the student is trained towards the teacher on its own text with the generalized
/// JSD(β) (Agarwal et al., GKD), so it learns from the mistakes it actually makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnPolicyConfig {
    /// Teacher that scores the rollouts: GGUF, HF directory or Hub id, or the URL of an
    /// OpenAI-compatible server offering `prompt_logprobs` (vLLM, `distill serve`), whose key
    /// comes from DISTILL_TEACHER_API_KEY or OPENAI_API_KEY. Its tokenizer must be the student's.
    pub teacher: String,
    /// With a teacher URL: the model name to send (default: the first the server lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_model: Option<String>,
    /// With a teacher URL: requests in flight at once (a rollout's completions are scored in
    /// parallel).
    #[serde(default = "default_teacher_concurrency")]
    pub teacher_concurrency: usize,
    /// Prompt file (JSONL, as for `distill generate`) the student completes.
    pub prompts: PathBuf,
    /// Share λ of micro-batches that are rollouts, in [0, 1].
    #[serde(default = "default_half", alias = "lmbda")]
    pub fraction: f64,
    /// Steps trained offline only before rollouts start (a warm-up: a fresh student's own
    /// samples teach little).
    #[serde(default)]
    pub start_step: u64,
    /// β of the generalized JSD on rollouts: 0 is forward KL, 1 reverse KL.
    #[serde(default = "default_half")]
    pub beta: f64,
    /// With β = 1: the teacher's tail as one bucket ("bucket"), or spread evenly over the tokens
    /// outside its top-K ("uniform"), which penalises the student for piling mass on tokens the
    /// teacher did not rank — the mistakes its own samples make.
    #[serde(default, skip_serializing_if = "TailModel::is_bucket")]
    pub tail: TailModel,
    /// Completions sampled per rollout micro-batch.
    #[serde(default = "default_rollouts")]
    pub rollouts: usize,
    /// New tokens per completion.
    #[serde(default = "default_rollout_tokens", alias = "max_new_tokens")]
    pub max_tokens: usize,
    /// Sampling temperature of the student's completions.
    #[serde(default = "default_one")]
    pub temperature: f64,
    /// Wrap text prompts as a user message in the chat template.
    #[serde(default = "default_true")]
    pub chat: bool,
    /// Who writes the completions: the student (on-policy, GKD) or the teacher (online
    /// distillation: teacher signal made inside the loop instead of read from a store).
    #[serde(default)]
    pub sampler: Sampler,
    /// Teacher alternatives kept per rollout token (default: the dataset's k; 20 without a
    /// dataset, the most an OpenAI-compatible server returns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    #[default]
    Student,
    Teacher,
}

fn default_half() -> f64 {
    0.5
}

fn default_teacher_concurrency() -> usize {
    4
}

fn default_rollouts() -> usize {
    8
}

fn default_rollout_tokens() -> usize {
    64
}

fn default_one() -> f64 {
    1.0
}

fn default_true() -> bool {
    true
}

/// Where the student comes from (`type = "prune" | "preset" | "config" | "pretrained"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StudentConfig {
    /// Cut from a model (usually the teacher) by keeping some of its layers.
    Prune {
        /// Model to cut: GGUF, HF directory or Hub id.
        from: String,
        /// Keep layers 0, n, 2n, … (DistilBERT-style).
        #[serde(default)]
        keep_every: Option<usize>,
        /// Or list the layers to keep explicitly.
        #[serde(default)]
        keep_layers: Option<Vec<usize>>,
        /// Or keep this many layers: the ones that change the hidden state most on calibration
        /// batches of the run's dataset (ShortGPT's block influence, 1 − cos(input, output)).
        #[serde(default)]
        num_layers: Option<usize>,
        /// Minitron-style width: keep this many MLP channels per layer, the ones with the largest
        /// activations on calibration batches of the run's dataset (default: all).
        #[serde(default)]
        intermediate_size: Option<usize>,
        /// Keep this many attention heads per layer, dropping whole groups of query heads with
        /// their key/value head, least active first (default: all).
        #[serde(default)]
        num_attention_heads: Option<usize>,
        /// Batches (of batch_size × seq_len) the importance is measured on.
        #[serde(default = "default_calibration_batches")]
        calibration_batches: usize,
    },
    /// A named preset (e.g. `smollm2-135m`) with fresh weights; the tokenizer comes from `tokenizer_from`.
    Preset {
        name: String,
        tokenizer_from: String,
        #[serde(default)]
        init_seed: u64,
    },
    /// An explicit architecture: an HF `config.json` (the same format as the teacher's) with fresh
    /// weights; the tokenizer comes from `tokenizer_from`.
    Config {
        config: String,
        tokenizer_from: String,
        #[serde(default)]
        init_seed: u64,
    },
    /// A smaller pretrained model: one that shares the teacher's tokenizer, or any with
    /// `[cross_tokenizer]`.
    Pretrained { from: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Linear warmup steps.
    #[serde(default = "default_warmup", alias = "warmup_steps")]
    pub warmup: u64,
    /// Final learning rate as a fraction of the peak (cosine decay).
    #[serde(default = "default_min_ratio")]
    pub min_lr_ratio: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { warmup: default_warmup(), min_lr_ratio: default_min_ratio() }
    }
}

fn default_calibration_batches() -> usize {
    4
}
fn default_steps() -> u64 {
    200
}
fn default_batch_size() -> usize {
    8
}
fn default_seq_len() -> usize {
    256
}
fn default_clip() -> Option<f64> {
    Some(1.0)
}
fn default_grad_accum() -> u64 {
    1
}
fn default_checkpoint_every() -> u64 {
    50
}
fn default_eval_every() -> u64 {
    50
}
fn default_warmup() -> u64 {
    10
}
fn default_min_ratio() -> f64 {
    0.1
}

/// Settings Hugging Face `TrainingArguments` (and TRL's configs built on it) keep at the top
/// level, and the section and key where a run config keeps the same setting.
pub const FLAT_HF_KEYS: &[(&str, &str, &str)] = &[
    ("learning_rate", "optimizer", "lr"),
    ("weight_decay", "optimizer", "weight_decay"),
    ("adam_beta1", "optimizer", "beta1"),
    ("adam_beta2", "optimizer", "beta2"),
    ("adam_epsilon", "optimizer", "eps"),
    ("warmup_steps", "schedule", "warmup"),
];

impl TrainConfig {
    /// Reads a run config from TOML text. Besides distill's own keys it takes the names
    /// Hugging Face and TRL users type where the meaning is the same (`max_steps`,
    /// `learning_rate`, `gradient_accumulation_steps`, `max_grad_norm`, `warmup_steps`,
    /// `lmbda`, …): see [`FLAT_HF_KEYS`] and the serde aliases on the fields.
    pub fn from_toml(text: &str) -> crate::Result<Self> {
        let table: toml::Table = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        if !FLAT_HF_KEYS.iter().any(|(key, ..)| table.contains_key(*key)) {
            // Parsed from the text, so errors point at the line.
            return toml::from_str(text).map_err(|e| Error::Config(e.to_string()));
        }
        let value = serde_json::to_value(&table).map_err(|e| Error::Config(e.to_string()))?;
        Self::from_value(value)
    }

    /// Reads a run config from JSON text (the Python package's dicts), with the same aliases.
    pub fn from_json(text: &str) -> crate::Result<Self> {
        Self::from_value(serde_json::from_str(text).map_err(|e| Error::Config(e.to_string()))?)
    }

    fn from_value(mut value: serde_json::Value) -> crate::Result<Self> {
        let map = value.as_object_mut().ok_or_else(|| Error::Config("a run config is a table of settings".into()))?;
        for (flat, section, key) in FLAT_HF_KEYS {
            let Some(v) = map.remove(*flat) else { continue };
            let table = map.entry(section.to_string()).or_insert_with(|| serde_json::json!({}));
            let table = table.as_object_mut().ok_or_else(|| Error::Config(format!("`{section}` must be a table")))?;
            if table.contains_key(*key) || table.contains_key(*flat) {
                return Err(Error::Config(format!(
                    "`{flat}` and `[{section}] {key}` are the same setting: give one of them"
                )));
            }
            table.insert(key.to_string(), v);
        }
        serde_json::from_value(value).map_err(|e| Error::Config(e.to_string()))
    }

    /// Checks values a run cannot use, naming the field.
    pub fn validate(&self) -> crate::Result<()> {
        self.check().map_err(crate::Error::Config)
    }

    fn check(&self) -> Result<(), String> {
        if self.steps == 0
            || self.batch_size == 0
            || self.seq_len < 2
            || self.eval_every == 0
            || self.checkpoint_every == 0
            || self.grad_accum == 0
        {
            return Err(
                "steps, batch_size, grad_accum, eval_every, checkpoint_every must be ≥ 1 and seq_len ≥ 2".into()
            );
        }
        if !(0.0..=1.0).contains(&self.loss.kd_weight) {
            return Err(format!("loss.kd_weight must be in [0, 1], got {}", self.loss.kd_weight));
        }
        if self.loss.temperature <= 0.0 {
            return Err(format!("loss.temperature must be positive, got {}", self.loss.temperature));
        }
        self.loss.validate().map_err(|e| format!("loss: {e}"))?;
        if let Some(o) = &self.on_policy {
            if !(0.0..=1.0).contains(&o.fraction) || !(0.0..=1.0).contains(&o.beta) {
                return Err("on_policy.fraction and on_policy.beta must be in [0, 1]".into());
            }
            if o.rollouts == 0 || o.max_tokens == 0 {
                return Err("on_policy.rollouts and on_policy.max_tokens must be at least 1".into());
            }
            if o.tail == TailModel::Uniform && o.beta < 1.0 {
                return Err(format!(
                    "on_policy: tail = \"uniform\" needs beta = 1 (reverse KL), got beta = {}",
                    o.beta
                ));
            }
        }
        if let Some(c) = &self.cross_tokenizer {
            if self
                .on_policy
                .as_ref()
                .is_some_and(|o| o.teacher.starts_with("http://") || o.teacher.starts_with("https://"))
            {
                return Err("cross_tokenizer: an on_policy.teacher given by URL scores in the student's tokens; give a local teacher (GGUF, HF directory or Hub id) to score across tokenizers".into());
            }
            let weights = [c.ce_weight, c.kd_weight, c.matched_weight, c.unmatched_weight];
            if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
                return Err("cross_tokenizer: weights must be finite and ≥ 0".into());
            }
        }
        if self.optimizer.lr <= 0.0 {
            return Err(format!("optimizer.lr must be positive, got {}", self.optimizer.lr));
        }
        if let StudentConfig::Prune { keep_every, keep_layers, num_layers, .. } = &self.student {
            if [keep_every.is_some(), keep_layers.is_some(), num_layers.is_some()].iter().filter(|&&b| b).count() != 1 {
                return Err("student: give exactly one of keep_every, keep_layers or num_layers".into());
            }
        }
        Ok(())
    }
}

/// `key: old → new` for every value that differs between two configs (as JSON; keys dotted through
/// nested sections), for refusals that say what changed.
pub fn differences(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    use std::collections::BTreeMap;
    fn leaves(prefix: String, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    leaves(if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                }
            }
            other => {
                out.insert(prefix, other.to_string());
            }
        }
    }
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    leaves(String::new(), old, &mut a);
    leaves(String::new(), new, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = "(none)".to_string();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} → {}", a.get(k).unwrap_or(&none), b.get(k).unwrap_or(&none)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "dataset = \"d\"\n[student]\ntype = \"prune\"\nfrom = \"m\"\nkeep_every = 2\n";

    #[test]
    fn hugging_face_names_mean_the_same_settings() {
        let hf = TrainConfig::from_toml(&format!(
            "output_dir = \"o\"\nmax_steps = 30\nper_device_train_batch_size = 4\ngradient_accumulation_steps = 2\n\
             max_length = 128\nmax_grad_norm = 0.5\nlearning_rate = 3e-4\nweight_decay = 0.1\nadam_beta2 = 0.95\n\
             warmup_steps = 5\neval_steps = 10\nsave_steps = 15\n{MINIMAL}"
        ))
        .unwrap();
        let ours = TrainConfig::from_toml(&format!(
            "output = \"o\"\nsteps = 30\nbatch_size = 4\ngrad_accum = 2\nseq_len = 128\nclip_grad_norm = 0.5\n\
             eval_every = 10\ncheckpoint_every = 15\n{MINIMAL}[optimizer]\nlr = 3e-4\nweight_decay = 0.1\nbeta2 = 0.95\n\
             [schedule]\nwarmup = 5\n"
        ))
        .unwrap();
        assert_eq!(hf, ours);
        let json = TrainConfig::from_json(
            r#"{"output_dir": "o", "max_steps": 30, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                "max_length": 128, "max_grad_norm": 0.5, "learning_rate": 3e-4, "weight_decay": 0.1, "adam_beta2": 0.95,
                "warmup_steps": 5, "eval_steps": 10, "save_steps": 15, "dataset": "d",
                "student": {"type": "prune", "from": "m", "keep_every": 2}}"#,
        )
        .unwrap();
        assert_eq!(json, ours);
    }

    #[test]
    fn a_setting_given_under_both_names_is_refused() {
        let err =
            TrainConfig::from_toml(&format!("output = \"o\"\nlearning_rate = 1e-3\n{MINIMAL}[optimizer]\nlr = 2e-3\n"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("`learning_rate` and `[optimizer] lr` are the same setting"), "{err}");
        let err = TrainConfig::from_toml(&format!("output = \"o\"\nsteps = 3\nmax_steps = 4\n{MINIMAL}")).unwrap_err();
        assert!(err.to_string().contains("steps"), "{err}");
        let err = TrainConfig::from_toml(&format!("output = \"o\"\nstepz = 3\n{MINIMAL}")).unwrap_err();
        assert!(err.to_string().contains("stepz"), "{err}");
    }
}
