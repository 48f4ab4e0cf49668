//! Distillation from Rust, without the `distill` binary: the default teacher writes a small
//! teacher-signal dataset, a student cut from it trains on it, and the student is evaluated
//! against the teacher on held-out prompts.
//!
//!     cargo run --release -p distill-train --example train_and_evaluate [-- TEACHER.gguf]
//!
//! (Run from the repository root; the teacher defaults to the one `scripts/fetch-teacher.sh`
//! fetches.) Everything lands in `runs/from-rust/`.

use std::path::Path;

use candle_core::Device;
use distill_eval::{evaluate, EvalOptions, PromptSet};
use distill_models::SamplingParams;
use distill_teacher::{create_dataset, read_prompt_file, DatasetOptions, LocalTeacher};
use distill_train::config::{StudentConfig, TrainConfig};
use distill_train::Trainer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let teacher_path = match std::env::args().nth(1) {
        Some(path) => path,
        None => {
            distill_models::teacher::default_teacher().ok_or(distill_models::teacher::FETCH_HINT)?.display().to_string()
        }
    };
    let out = Path::new("runs/from-rust");

    // 1. The teacher's completions and top-32 log-probabilities for 16 support prompts.
    let teacher = LocalTeacher::new(distill_models::load(&teacher_path, &Device::Cpu)?);
    let options = DatasetOptions {
        sampling: SamplingParams { temperature: 0.7, top_p: 0.95, max_tokens: 32, ..Default::default() },
        ..Default::default()
    };
    let prompts = Path::new("examples/support/train.jsonl");
    let subset = out.join("prompts.jsonl");
    std::fs::create_dir_all(out)?;
    let text = std::fs::read_to_string(prompts)?;
    std::fs::write(&subset, text.lines().take(16).collect::<Vec<_>>().join("\n") + "\n")?;
    let summary = create_dataset(&teacher, &subset, &out.join("data"), &options, &mut |_| {})?;
    println!("dataset: {} sequences, {} tokens", summary.manifest.sequences(), summary.manifest.tokens());

    // 2. A student of every third teacher layer, trained 10 steps (the config's other fields keep
    //    their defaults: forward KL on the teacher's top-k, AdamW, cosine schedule).
    let cfg: TrainConfig = toml::from_str(&format!(
        "dataset = {:?}\noutput = {:?}\nsteps = 10\nbatch_size = 4\nseq_len = 128\n[student]\ntype = \"prune\"\nfrom = {:?}\nkeep_every = 3\n",
        out.join("data"),
        out.join("train"),
        teacher_path
    ))?;
    assert!(matches!(cfg.student, StudentConfig::Prune { .. }));
    let outcome = Trainer::new(cfg, &mut ())?.run(&mut ())?;
    println!(
        "trained {} steps on {} tokens; student in {}",
        outcome.steps,
        outcome.tokens,
        outcome.final_dir.display()
    );

    // 3. What the student kept: KL, top-1 agreement, perplexity and ROUGE-L against the teacher.
    let student = distill_models::load(&outcome.final_dir.display().to_string(), &Device::Cpu)?;
    let heldout: Vec<_> = read_prompt_file(Path::new("examples/support/heldout.jsonl"))?.into_iter().take(8).collect();
    let sets = [PromptSet { name: "in_domain", records: &heldout }];
    let opts = EvalOptions { max_tokens: 24, batch_size: 8 };
    let report = evaluate(&teacher.model, &student, &sets, &opts, None, &mut |_, _, _| {})?;
    let r = &report.in_domain;
    println!(
        "held-out: KL(teacher‖student) {:.3} nats, top-1 agreement {:.1}%, ROUGE-L vs teacher {:.3}",
        r.tokens.kl_forward, r.retention.top1_agreement_pct, r.rouge_l
    );
    Ok(())
}
