//! `distill run CONFIG`: the whole pipeline from one TOML — teacher signal → train → eval →
//! export → eval of each exported file → report. Each finished stage leaves a marker in
//! `OUTPUT/stages/` with the settings and inputs it ran from; a re-run skips it when they are
//! unchanged and refuses, listing the differences, when they are not. An interrupted stage resumes
//! by its own means (datasets and training checkpoints are resumable).
//!
//! ```toml
//! output = "runs/quickstart"
//! [teacher]
//! model = "…gguf"                 # default: the fetched default teacher
//! matmuls = "bf16"                # optional: as `--matmuls`, while it writes the teacher signal
//! [data]
//! train_prompts = "examples/support/train.jsonl"   # or a list of files, read one after another
//! heldout_prompts = "examples/support/heldout.jsonl"
//! ood_prompts = "examples/ood.jsonl"   # optional
//! max_train_prompts = 96              # optional: the first N lines
//! k = 32
//! batch_size = 8                    # prompts the teacher answers as one batch
//! max_tokens = 48
//! stop = ["\ndef"]                   # optional: strings that end a teacher completion
//! system_prompts = "system.txt"      # optional: system messages, one per line, given to a share
//! system_share = 0.5                 #   of the training prompts
//! [train]                             # a `distill train` config without dataset/eval_dataset/output
//! steps = 30
//! [student] …                         # as in `distill train`
//! [eval]
//! max_tokens = 32
//! code_tasks = "~/.cache/distill/data/HumanEval.jsonl.gz"   # optional: executed pass@1
//! [export]
//! types = ["q8_0", "q4_0"]
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use distill_models::SamplingParams;
use distill_teacher::DatasetOptions;
use serde_json::{json, Value};

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

/// A finished stage's marker: how long it took and what it ran from.
#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    seconds: f64,
    inputs: Value,
}

/// Runs stage `name` unless its marker says it ran from the same `inputs` (its settings and,
/// nested, those of the stages it reads); refuses when it ran from others, listing them. `made`
/// is what the stage writes, for the hint.
fn stage(out: &Path, name: &str, inputs: &Value, made: &Path, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let marker = out.join("stages").join(format!("{name}.done"));
    if let Ok(text) = std::fs::read_to_string(&marker) {
        match serde_json::from_str::<Marker>(&text) {
            Ok(done) if done.inputs == *inputs => eprintln!("== {name}: done earlier, skipped"),
            Ok(done) => bail!(
                "stage `{name}` was done with other settings or inputs:\n  {}\nHINT: give the pipeline a new \
                 `output`, or delete {} and {} (and the markers of the stages after it) to redo it",
                distill_train::config::differences(&done.inputs, inputs).join("\n  "),
                marker.display(),
                made.display()
            ),
            // Markers of older versions recorded no inputs.
            Err(_) => eprintln!("== {name}: done earlier, skipped (its settings were not recorded)"),
        }
        return Ok(());
    }
    eprintln!("== {name}");
    let started = Instant::now();
    f().with_context(|| format!("stage `{name}` failed; fix the cause and re-run the same command to continue"))?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::create_dir_all(out.join("stages"))?;
    std::fs::write(&marker, serde_json::to_string_pretty(&Marker { seconds, inputs: inputs.clone() })?)?;
    eprintln!("== {name}: {seconds:.1} s");
    Ok(())
}

/// A prompt file as a stage's input: its path, the lines taken and its content's hash.
fn prompt_input(path: &Path, lines: Option<usize>) -> Result<Value> {
    let hash = distill_store::sha256_file(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(json!({"path": path, "lines": lines, "sha256": hash}))
}

/// Prompt files read one after another, as a stage's input: one file as [`prompt_input`] gives it.
fn prompt_inputs(paths: &[PathBuf], lines: Option<usize>) -> Result<Value> {
    match paths {
        [one] => prompt_input(one, lines),
        many => {
            let files = many.iter().map(|p| prompt_input(p, None)).collect::<Result<Vec<_>>>()?;
            Ok(json!({"files": files, "lines": lines}))
        }
    }
}

/// The first `n` records of a prompt file (non-empty JSONL lines, or a JSON array's elements),
/// copied into the run as JSON lines (so the run's prompt file hash is stable), or the file itself.
fn prompt_subset(src: &Path, n: Option<usize>, dest: &Path) -> Result<PathBuf> {
    prompts_subset(std::slice::from_ref(&src.to_path_buf()), n, dest)
}

/// [`prompt_subset`] of several files read one after another; they are always copied into `dest`.
fn prompts_subset(srcs: &[PathBuf], n: Option<usize>, dest: &Path) -> Result<PathBuf> {
    if let ([src], None) = (srcs, n) {
        return Ok(src.clone());
    }
    let lines = distill_teacher::prompts::first_records_across(srcs, n)?;
    std::fs::create_dir_all(dest.parent().expect("dest is a file under the run's data/"))?;
    std::fs::write(dest, lines).with_context(|| format!("cannot write {}", dest.display()))?;
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
        stop: d.stop.clone(),
        ..SamplingParams::default()
    };
    let mut data_inputs = Vec::new();
    for (name, srcs, n, dest) in [
        ("teacher-signal-train", d.train_prompts.paths(), d.max_train_prompts, &data_train),
        ("teacher-signal-heldout", std::slice::from_ref(&d.heldout_prompts), d.max_heldout_prompts, &data_heldout),
    ] {
        let mut inputs = serde_json::to_value(d)?;
        inputs["teacher"] = json!(teacher);
        if let Some(matmuls) = cfg.teacher_matmuls {
            inputs["teacher_matmuls"] = json!(matmuls);
        }
        inputs["prompts"] = prompt_inputs(srcs, n)?;
        // System messages go to the training prompts only: the held-out stage does not record them.
        let system = d.system_prompts.as_deref().filter(|_| name == "teacher-signal-train");
        match system {
            Some(path) => inputs["system_prompts"] = prompt_input(path, None)?,
            None => {
                let data = inputs.as_object_mut().expect("[data] is a table");
                data.remove("system_prompts");
                data.remove("system_share");
            }
        }
        data_inputs.push(inputs.clone());
        stage(&out, name, &inputs, dest, || {
            let prompts = prompts_subset(srcs, n, &out.join(format!("data/{name}.jsonl")))?;
            let share = d.system_share.unwrap_or(distill_teacher::SystemMessages::DEFAULT_SHARE);
            let options = DatasetOptions {
                system_messages: system
                    .map(|path| distill_teacher::SystemMessages::from_file(path, share))
                    .transpose()?,
                sampling: sampling.clone(),
                k: d.k,
                // Held-out prompts are scored once: their curve needs no second sample.
                completions: if name == "teacher-signal-train" { d.completions } else { 1 },
                prompts_per_shard: 32,
                batch_size: d.batch_size.unwrap_or(DatasetOptions::default().batch_size),
                ..Default::default()
            };
            super::dataset::run(dest, &prompts, Some(teacher), cfg.train.device, cfg.teacher_matmuls, None, options)
        })?;
    }
    let train_inputs = json!({"config": cfg.train, "data": data_inputs});
    stage(&out, "train", &train_inputs, &train_dir, || super::train::train(cfg.train.clone()))?;

    let student = train_dir.join("final");
    let heldout = prompt_subset(&d.heldout_prompts, cfg.eval.max_prompts, &out.join("data/eval-heldout.jsonl"))?;
    let ood = d
        .ood_prompts
        .as_ref()
        .map(|p| prompt_subset(p, cfg.eval.max_prompts, &out.join("data/eval-ood.jsonl")))
        .transpose()?;
    // Code tasks are scored on the trained student only: the exports' figures are text ones.
    let eval = |model: &Path, json: &Path, code: bool| {
        super::eval::run(super::eval::EvalArgs {
            student: model.display().to_string(),
            teacher: Some(teacher.clone()),
            prompts: heldout.clone(),
            ood_prompts: ood.clone(),
            max_tokens: cfg.eval.max_tokens,
            batch_size: 8,
            no_speed: false,
            allow_same: false,
            device: cfg.train.device,
            code_tasks: cfg.eval.code_tasks.clone().filter(|_| code),
            code_limit: cfg.eval.code_limit,
            code_max_tokens: cfg.eval.code_max_tokens.unwrap_or(distill_eval::code::MAX_TOKENS),
            out: Some(json.to_path_buf()),
        })
        .map(|_| ())
    };
    let mut eval_inputs = json!({
        "student": train_inputs,
        "teacher": teacher,
        "eval": cfg.eval,
        "heldout": prompt_input(&d.heldout_prompts, cfg.eval.max_prompts)?,
        "ood": d.ood_prompts.as_deref().map(|p| prompt_input(p, cfg.eval.max_prompts)).transpose()?,
    });
    if let Some(tasks) = &cfg.eval.code_tasks {
        eval_inputs["code_tasks"] = prompt_input(tasks, cfg.eval.code_limit)?;
    }
    stage(&out, "eval", &eval_inputs, &train_dir.join("eval.json"), || {
        eval(&student, &train_dir.join("eval.json"), true)
    })?;
    for ty in &cfg.export.types {
        let file = out.join("export").join(format!("student.{ty}.gguf"));
        let inputs = json!({"student": train_inputs, "type": ty, "eval": eval_inputs});
        stage(&out, &format!("export-{ty}"), &inputs, &file, || {
            super::export::run(super::export::ExportArgs {
                model: Some(student.display().to_string()),
                model_flag: None,
                output: file.clone(),
                ty: Some(ty.clone()),
                name: Some(format!("distill-student-{ty}")),
                force: true,
            })?;
            // The deployed file is the one that counts: retention is measured again on it.
            eval(&file, &train_dir.join(format!("eval-{ty}.json")), false)
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
        if let Some(c) = e.code {
            println!(
                "code tasks {} ({} tasks): pass@1 teacher {:.3}, student {:.3}, retention {}",
                e.model,
                c.tasks,
                c.teacher_pass_at_1,
                c.student_pass_at_1,
                percent(c.retention_pct)
            );
        }
    }
}
