//! `distill run CONFIG`: the whole pipeline from one TOML — teacher signal → train → eval →
//! export → eval of each exported file → report. Each finished stage leaves a marker in
//! `OUTPUT/stages/` and is skipped on a re-run; an interrupted stage resumes by its own means
//! (datasets and training checkpoints are resumable).
//!
//! ```toml
//! output = "runs/quickstart"
//! [teacher]
//! model = "…gguf"                 # default: the fetched default teacher
//! [data]
//! train_prompts = "examples/support/train.jsonl"
//! heldout_prompts = "examples/support/heldout.jsonl"
//! ood_prompts = "examples/ood.jsonl"   # optional
//! max_train_prompts = 96              # optional: the first N lines
//! k = 32
//! max_tokens = 48
//! [train]                             # a `distill train` config without dataset/eval_dataset/output
//! steps = 30
//! [student] …                         # as in `distill train`
//! [eval]
//! max_tokens = 32
//! [export]
//! types = ["q8_0", "q4_0"]
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use distill_models::SamplingParams;

use super::eval::percent;
use super::pipeline::Pipeline;

#[derive(Args, Debug)]
#[command(
    after_help = "Example: distill run examples/quickstart.toml  (re-run it to resume; finished stages are skipped)"
)]
pub struct RunArgs {
    /// Pipeline configuration (TOML); see examples/quickstart.toml.
    config: PathBuf,
}

/// Skips `stage` when its marker exists; runs it and writes the marker otherwise.
fn stage(out: &Path, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let marker = out.join("stages").join(format!("{name}.done"));
    if marker.exists() {
        eprintln!("== {name}: done earlier, skipped");
        return Ok(());
    }
    eprintln!("== {name}");
    let started = Instant::now();
    f().with_context(|| format!("stage `{name}` failed; fix the cause and re-run the same command to continue"))?;
    std::fs::create_dir_all(marker.parent().expect("marker has a parent"))?;
    std::fs::write(&marker, format!("{:.1} s\n", started.elapsed().as_secs_f64()))?;
    eprintln!("== {name}: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The first `n` non-empty lines of a prompt file, copied into the run (so the run's prompt file
/// hash is stable), or the file itself.
fn prompt_subset(src: &Path, n: Option<usize>, dest: &Path) -> Result<PathBuf> {
    let Some(n) = n else { return Ok(src.to_path_buf()) };
    let text = std::fs::read_to_string(src).with_context(|| format!("cannot read {}", src.display()))?;
    let lines: String = text.lines().filter(|l| !l.trim().is_empty()).take(n).map(|l| format!("{l}\n")).collect();
    std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
    std::fs::write(dest, lines)?;
    Ok(dest.to_path_buf())
}

pub fn run(args: RunArgs) -> Result<()> {
    let cfg = Pipeline::load(&args.config)?;
    let out = cfg.output.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join("pipeline.toml"), toml::to_string(&cfg)?)
        .with_context(|| format!("cannot write {}", out.join("pipeline.toml").display()))?;
    let started = Instant::now();
    let teacher = &cfg.teacher;
    let train_dir = cfg.train_dir();
    let (data_train, data_heldout) = (out.join("data/train"), out.join("data/heldout"));

    let d = &cfg.data;
    let sampling = SamplingParams {
        temperature: d.temperature,
        top_p: d.top_p,
        seed: d.seed,
        max_tokens: d.max_tokens,
        ..SamplingParams::default()
    };
    for (name, src, n, dest) in [
        ("teacher-signal-train", &d.train_prompts, d.max_train_prompts, &data_train),
        ("teacher-signal-heldout", &d.heldout_prompts, d.max_heldout_prompts, &data_heldout),
    ] {
        stage(&out, name, || {
            let prompts = prompt_subset(src, n, &out.join(format!("data/{name}.jsonl")))?;
            let options = distill_teacher::DatasetOptions {
                sampling: sampling.clone(),
                k: d.k,
                prompts_per_shard: 32,
                ..Default::default()
            };
            super::dataset::run(dest, &prompts, Some(teacher), distill_teacher::Precision::F32, None, options)
        })?;
    }
    stage(&out, "train", || super::train::train(cfg.train.clone()))?;

    let student = train_dir.join("final");
    let heldout = prompt_subset(&d.heldout_prompts, cfg.eval.max_prompts, &out.join("data/eval-heldout.jsonl"))?;
    let ood = d
        .ood_prompts
        .as_ref()
        .map(|p| prompt_subset(p, cfg.eval.max_prompts, &out.join("data/eval-ood.jsonl")))
        .transpose()?;
    let eval = |model: &Path, json: &Path| {
        super::eval::run(super::eval::EvalArgs {
            student: model.display().to_string(),
            teacher: Some(teacher.clone()),
            prompts: heldout.clone(),
            ood_prompts: ood.clone(),
            max_tokens: cfg.eval.max_tokens,
            batch_size: 8,
            no_speed: false,
            out: Some(json.to_path_buf()),
        })
        .map(|_| ())
    };
    stage(&out, "eval", || eval(&student, &train_dir.join("eval.json")))?;
    for ty in &cfg.export.types {
        let file = out.join("export").join(format!("student.{ty}.gguf"));
        stage(&out, &format!("export-{ty}"), || {
            super::export::run(super::export::ExportArgs {
                model: student.display().to_string(),
                output: file.clone(),
                ty: ty.clone(),
                name: Some(format!("distill-student-{ty}")),
                force: true,
            })?;
            // The deployed file is the one that counts: retention is measured again on it.
            eval(&file, &train_dir.join(format!("eval-{ty}.json")))
        })?;
    }
    let report = super::report::run(super::report::ReportArgs { run: train_dir.clone(), baseline: None })?;
    summary(&report, started);
    Ok(())
}

/// The retention figures of every evaluated file and where the report is.
fn summary(report: &distill_eval::Report, started: Instant) {
    println!(
        "\npipeline finished in {:.1} min; report: {}",
        started.elapsed().as_secs_f64() / 60.0,
        report.html.display()
    );
    for e in &report.figures.evaluations {
        for (set, r) in [("in_domain", Some(&e.in_domain)), ("out_of_domain", e.out_of_domain.as_ref())] {
            let Some(r) = r else { continue };
            println!(
                "retention {} {set}: top-1 agreement {}, perplexity {}, ROUGE-L {}, exact match {}",
                e.model,
                percent(Some(r.top1_agreement_pct)),
                percent(r.perplexity_pct),
                percent(Some(r.rouge_l_pct)),
                percent(r.exact_match_pct)
            );
        }
    }
}
