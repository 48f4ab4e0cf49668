//! Resumable training checkpoints: the student in HF layout, the optimizer moments, and where the
//! run stood (step, epoch, batches consumed in the epoch). A checkpoint directory is complete or
//! absent: it is written under a temporary name and renamed into place. Resuming also checks the
//! run's config against the saved one and drops metrics of steps that will be redone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use distill_models::{checkpoint::save_hf_dir, Llama, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::optim::AdamW;

pub const CHECKPOINT_DIR: &str = "checkpoint";
const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Where a run stood when its checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: u64,
    pub epoch: u64,
    /// Batches of `epoch` already consumed.
    pub batches_in_epoch: u64,
    pub tokens: u64,
    pub optimizer_steps: u64,
}

pub fn checkpoint_dir(output: &Path) -> PathBuf {
    output.join(CHECKPOINT_DIR)
}

/// Writes a checkpoint of the run into `output/checkpoint`, replacing the previous one atomically.
pub fn save(
    output: &Path,
    model: &Llama,
    tokenizer: &TextTokenizer,
    chat_template: Option<&str>,
    optimizer: &AdamW,
    state: TrainerState,
) -> Result<()> {
    let dir = checkpoint_dir(output);
    let tmp = output.join(format!("{CHECKPOINT_DIR}.tmp"));
    let old = output.join(format!("{CHECKPOINT_DIR}.old"));
    let _ = std::fs::remove_dir_all(&tmp);
    save_hf_dir(&tmp, model, tokenizer, chat_template).map_err(|e| Error::Checkpoint(e.to_string()))?;
    let (moments, _) = optimizer.state();
    distill_models::checkpoint::save_safetensors(&moments, &tmp.join(OPTIMIZER_FILE))
        .map_err(|e| Error::Checkpoint(e.to_string()))?;
    let json = serde_json::to_string_pretty(&state).map_err(|e| Error::Checkpoint(e.to_string()))?;
    distill_models::checkpoint::write_atomic(&tmp.join(STATE_FILE), &json)
        .map_err(|e| Error::Checkpoint(e.to_string()))?;
    // Swap: the previous checkpoint stays until the new one is in place.
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(&dir, &old).map_err(|e| Error::Checkpoint(format!("{}: {e}", dir.display())))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::Checkpoint(format!("{}: {e}", dir.display())))?;
    let _ = std::fs::remove_dir_all(&old);
    std::fs::File::open(output)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", output.display())))?;
    Ok(())
}

/// The checkpoint in `output`, if a complete one exists (a half-swapped one is recovered).
pub fn find(output: &Path) -> Option<PathBuf> {
    let dir = checkpoint_dir(output);
    let old = output.join(format!("{CHECKPOINT_DIR}.old"));
    if dir.join(STATE_FILE).is_file() {
        return Some(dir);
    }
    // Killed between the two renames: the previous checkpoint is intact under `.old`.
    if old.join(STATE_FILE).is_file() {
        std::fs::rename(&old, &dir).ok()?;
        return Some(dir);
    }
    None
}

/// Reads the trainer state and optimizer moments of a checkpoint.
pub fn load_state(dir: &Path) -> Result<(TrainerState, HashMap<String, Tensor>)> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE))
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", dir.display())))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", dir.join(STATE_FILE).display())))?;
    let moments = candle_core::safetensors::load(dir.join(OPTIMIZER_FILE), &candle_core::Device::Cpu)
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", dir.join(OPTIMIZER_FILE).display())))?;
    Ok((state, moments))
}

/// The steps of the run saved as `saved` when `cfg` only raises them: a finished or interrupted
/// run is extended (the learning-rate schedule then spans the new step count). Any other change is
/// refused, naming each difference.
pub fn check_extension(saved: &str, cfg: &TrainConfig, out: &Path) -> Result<u64> {
    let refusal = |what: String| {
        Error::Config(format!(
            "{} holds a checkpoint of a run with another configuration{what}\nHINT: use a new `output` directory, \
             or delete {} to start over; only `steps` may be raised to extend a run",
            out.display(),
            out.display()
        ))
    };
    let Ok(saved) = toml::from_str::<TrainConfig>(saved) else {
        return Err(refusal(String::new()));
    };
    let same_but_steps = TrainConfig { steps: cfg.steps, ..saved.clone() } == *cfg;
    if same_but_steps && cfg.steps > saved.steps {
        return Ok(saved.steps);
    }
    let as_json = |c: &TrainConfig| serde_json::to_value(c).unwrap_or_default();
    let changed = crate::config::differences(&as_json(&saved), &as_json(cfg));
    Err(refusal(format!(":\n  {}", changed.join("\n  "))))
}

/// Drops the lines of `metrics.jsonl` written after the checkpoint at `step`: they belong to
/// steps that will be redone.
pub fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let kept: String = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).map_err(|e| Error::io(path, e))
}
