//! `distill eval --student S --prompts F`: what the student kept of its teacher, and what it costs.
//!
//! Per prompt set: both models decode greedily; on the teacher's own text both score every
//! position over the full vocabulary (KL both ways, top-1 agreement, perplexity); ROUGE-L of the
//! student's output against the teacher's; exact match against `reference` answers when the file
//! has them. Cost: parameters, file size, and — each model measured alone in a child process —
//! peak memory and prefill/decode tokens/s. Retention is the student's figure as % of the teacher's.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use distill_eval::{exact_match, rouge_l, speed, TokenStats};
use distill_models::{generate, LoadedModel, SamplingParams};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::generate::{load_model, render};
use crate::prompts::{read_prompt_file, PromptRecord};

#[derive(Args, Debug)]
#[command(after_help = "Example:
  distill eval --student runs/support/final --prompts examples/support/heldout.jsonl \\
      --ood-prompts examples/ood.jsonl --out runs/support/eval.json")]
pub struct EvalArgs {
    /// The student: a run's final/ directory, a GGUF file (e.g. an exported q4_0), HF dir or Hub id.
    #[arg(long)]
    pub(crate) student: String,
    /// The teacher (default: the fetched default teacher).
    #[arg(long, env = "DISTILL_MODEL")]
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
    /// Write the results (and a few samples) as JSON here.
    #[arg(long)]
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
    // 128 prompt tokens and 32 decoded, or less when the context is shorter.
    let ctx = loaded.model.config().max_position_embeddings;
    let prompt = 128.min(ctx / 2).max(1);
    let s = speed::measure(&loaded.model, prompt, 32.min(ctx - prompt - 1), 2)?;
    println!("{}", json!({"speed": s, "peak_rss_bytes": speed::peak_rss_bytes()}));
    Ok(())
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.batch_size == 0 || args.max_tokens == 0 {
        bail!("--batch-size and --max-tokens must be at least 1");
    }
    let teacher = load_model(args.teacher.as_deref())?;
    let student = load_model(Some(&args.student))?;
    if teacher.tokenizer.fingerprint() != student.tokenizer.fingerprint()
        || teacher.model.config().vocab_size != student.model.config().vocab_size
    {
        bail!(
            "the student's tokenizer or vocabulary ({} rows) differs from the teacher's ({} rows): token-level comparison needs the same ids\nHINT: evaluate a student distilled from this teacher",
            student.model.config().vocab_size,
            teacher.model.config().vocab_size
        );
    }
    let mut sets = vec![("in_domain", args.prompts.clone())];
    if let Some(ood) = &args.ood_prompts {
        sets.push(("out_of_domain", ood.clone()));
    }
    let mut report = serde_json::Map::new();
    for (name, path) in &sets {
        let records = read_prompt_file(path)?;
        let result = evaluate_set(&teacher, &student, &records, &args, name)?;
        print_set(name, path, &result);
        report.insert(name.to_string(), result);
    }
    let cost = cost(&teacher, &student, &args)?;
    print_cost(&cost);
    report.insert("cost".into(), cost);
    report.insert("teacher".into(), json!(teacher.source));
    report.insert("student".into(), json!(student.source));
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&Value::Object(report))?)
            .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("results written to {}", out.display());
    }
    Ok(())
}

fn greedy_all(
    model: &LoadedModel,
    prompts: &[Vec<u32>],
    args: &EvalArgs,
    bar: &ProgressBar,
) -> Result<Vec<(Vec<u32>, String)>> {
    let params = SamplingParams { max_tokens: args.max_tokens, ..SamplingParams::default() };
    let mut out = Vec::new();
    for batch in prompts.chunks(args.batch_size) {
        for c in generate(&model.model, &model.tokenizer, batch, &params, &model.stop_ids, |_, _| {})? {
            out.push((c.token_ids, c.text));
        }
        bar.inc(batch.len() as u64);
    }
    Ok(out)
}

/// Logits (T−1 rows predicting tokens 1..T) of `ids` under `model`, flat.
fn position_logits(model: &LoadedModel, ids: &[u32], from: usize) -> Result<Vec<f32>> {
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu)?;
    let logits = model.model.forward(&input)?.squeeze(0)?; // (T, V)
    Ok(logits.narrow(0, from, ids.len() - 1 - from)?.flatten_all()?.to_vec1::<f32>()?)
}

fn evaluate_set(
    teacher: &LoadedModel,
    student: &LoadedModel,
    records: &[PromptRecord],
    args: &EvalArgs,
    name: &str,
) -> Result<Value> {
    let encode = |m: &LoadedModel| -> Result<Vec<Vec<u32>>> {
        records
            .iter()
            .map(|r| Ok(m.tokenizer.encode(&render(m, &r.prompt, m.chat_template.is_some(), None)?, true)?))
            .collect()
    };
    let (teacher_prompts, student_prompts) = (encode(teacher)?, encode(student)?);
    let bar = ProgressBar::new(2 * records.len() as u64 + records.len() as u64).with_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} eval {name}: {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}]"
        ))
        .expect("static template is valid"),
    );
    let teacher_out = greedy_all(teacher, &teacher_prompts, args, &bar)?;
    let student_out = greedy_all(student, &student_prompts, args, &bar)?;
    let vocab = teacher.model.config().vocab_size;
    // Token metrics on a text: teacher and student logits at every completion position.
    let on_text =
        |prompts: &[Vec<u32>], outs: &[(Vec<u32>, String)], bar: Option<&ProgressBar>| -> Result<TokenStats> {
            let mut stats = TokenStats::default();
            for (prompt, (completion, _)) in prompts.iter().zip(outs) {
                if let Some(bar) = bar {
                    bar.inc(1);
                }
                if completion.is_empty() {
                    continue;
                }
                let ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
                let from = prompt.len() - 1;
                let t = position_logits(teacher, &ids, from)?;
                let s = position_logits(student, &ids, from)?;
                stats.add(&t, &s, completion, vocab);
            }
            Ok(stats)
        };
    let tokens = on_text(&teacher_prompts, &teacher_out, Some(&bar))?.summary();
    // The same on the student's own (greedy) text: the text it will actually produce, where
    // on-policy training aims (reverse KL is an expectation under the student).
    let on_student_text = on_text(&student_prompts, &student_out, None)?.summary();
    bar.finish_and_clear();
    let rouge: f64 =
        teacher_out.iter().zip(&student_out).map(|((_, t), (_, s))| rouge_l(s, t)).sum::<f64>() / records.len() as f64;
    let with_ref: Vec<(usize, &String)> =
        records.iter().enumerate().filter_map(|(i, r)| r.reference.as_ref().map(|x| (i, x))).collect();
    let exact = (!with_ref.is_empty()).then(|| {
        let rate = |outs: &[(Vec<u32>, String)]| {
            with_ref.iter().filter(|(i, r)| exact_match(&outs[*i].1, r)).count() as f64 / with_ref.len() as f64
        };
        (rate(&teacher_out), rate(&student_out))
    });
    let pct = |a: f64, b: f64| if b > 0.0 { Some(100.0 * a / b) } else { None };
    let samples: Vec<Value> = records
        .iter()
        .zip(teacher_out.iter().zip(&student_out))
        .take(4)
        .map(|(r, ((_, t), (_, s)))| json!({"prompt": prompt_text(r), "teacher": t, "student": s}))
        .collect();
    Ok(json!({
        "prompts": records.len(),
        "tokens": tokens,
        "tokens_on_student_text": on_student_text,
        "rouge_l": rouge,
        "exact_match": exact.map(|(t, s)| json!({"teacher": t, "student": s, "with_reference": with_ref.len()})),
        "retention": {
            "top1_agreement_pct": 100.0 * tokens.top1_agreement,
            "perplexity_pct": pct(tokens.teacher_perplexity, tokens.student_perplexity),
            "rouge_l_pct": 100.0 * rouge,
            "exact_match_pct": exact.and_then(|(t, s)| pct(s, t)),
        },
        "samples": samples,
    }))
}

fn prompt_text(r: &PromptRecord) -> String {
    match &r.prompt {
        crate::prompts::Prompt::Text(t) => t.clone(),
        crate::prompts::Prompt::Chat(m) => m.last().map(|m| m.content.clone()).unwrap_or_default(),
    }
}

/// Bytes on disk of a model given as a file or a directory (its weight files).
fn model_bytes(source: &str) -> Option<u64> {
    let path = Path::new(source);
    if path.is_file() {
        return path.metadata().ok().map(|m| m.len());
    }
    let entries = std::fs::read_dir(path).ok()?;
    Some(
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors" || x == "gguf"))
            .filter_map(|e| e.metadata().ok().map(|m| m.len()))
            .sum(),
    )
}

fn measure_in_child(source: &str) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe).args(["__measure", source]).output().context("starting the speed measurement")?;
    if !out.status.success() {
        bail!("measuring {source} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn cost(teacher: &LoadedModel, student: &LoadedModel, args: &EvalArgs) -> Result<Value> {
    let side = |m: &LoadedModel| -> Result<Value> {
        let mut v = json!({
            "parameters": m.model.config().num_parameters(),
            "file_bytes": model_bytes(&m.source),
        });
        if !args.no_speed {
            let measured = measure_in_child(&m.source)?;
            v["peak_rss_bytes"] = measured["peak_rss_bytes"].clone();
            v["speed"] = measured["speed"].clone();
        }
        Ok(v)
    };
    let (t, s) = (side(teacher)?, side(student)?);
    let ratio = |path: &[&str]| -> Option<f64> {
        let get = |v: &Value| path.iter().try_fold(v, |v, k| v.get(*k)).and_then(Value::as_f64);
        Some(get(&s)? / get(&t)?)
    };
    Ok(json!({
        "teacher": t,
        "student": s,
        "student_vs_teacher": {
            "parameters": ratio(&["parameters"]),
            "file_bytes": ratio(&["file_bytes"]),
            "peak_rss": ratio(&["peak_rss_bytes"]),
            "prefill_speedup": ratio(&["speed", "prefill_tok_s"]),
            "decode_speedup": ratio(&["speed", "decode_tok_s"]),
        }
    }))
}

fn print_set(name: &str, path: &Path, r: &Value) {
    let f = |v: &Value| v.as_f64().map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into());
    let p = |v: &Value| percent(v);
    let t = &r["tokens"];
    println!("{name} ({}, {} prompts, {} teacher tokens):", path.display(), r["prompts"], t["positions"]);
    println!("  KL(teacher‖student) {}  KL(student‖teacher) {}", f(&t["kl_forward"]), f(&t["kl_reverse"]));
    println!(
        "  perplexity on teacher text: teacher {}  student {}",
        f(&t["teacher_perplexity"]),
        f(&t["student_perplexity"])
    );
    let own = &r["tokens_on_student_text"];
    println!(
        "  on the student's own text ({} tokens): KL(teacher‖student) {}  KL(student‖teacher) {}",
        own["positions"],
        f(&own["kl_forward"]),
        f(&own["kl_reverse"])
    );
    if let Some(em) = r["exact_match"].as_object() {
        println!("  exact match: teacher {}  student {}", f(&em["teacher"]), f(&em["student"]));
    }
    let ret = &r["retention"];
    println!(
        "  retention: top-1 agreement {}  perplexity {}  ROUGE-L vs teacher {}  exact match {}",
        p(&ret["top1_agreement_pct"]),
        p(&ret["perplexity_pct"]),
        p(&ret["rouge_l_pct"]),
        p(&ret["exact_match_pct"])
    );
}

fn print_cost(c: &Value) {
    let mb = |v: &Value| v.as_f64().map(|x| format!("{:.1} MB", x / 1e6)).unwrap_or_else(|| "–".into());
    let num = |v: &Value| v.as_f64().map(|x| format!("{x:.1}")).unwrap_or_else(|| "–".into());
    for who in ["teacher", "student"] {
        let s = &c[who];
        println!(
            "{who}: {:.1}M parameters, file {}, peak memory {}, prefill {} tok/s, decode {} tok/s",
            s["parameters"].as_f64().unwrap_or(0.0) / 1e6,
            mb(&s["file_bytes"]),
            mb(&s["peak_rss_bytes"]),
            num(&s["speed"]["prefill_tok_s"]),
            num(&s["speed"]["decode_tok_s"])
        );
    }
    let r = &c["student_vs_teacher"];
    let x = |v: &Value| v.as_f64().map(|x| format!("{x:.2}×")).unwrap_or_else(|| "–".into());
    println!(
        "student/teacher: parameters {}, file {}, memory {}, prefill speed {}, decode speed {}",
        x(&r["parameters"]),
        x(&r["file_bytes"]),
        x(&r["peak_rss"]),
        x(&r["prefill_speedup"]),
        x(&r["decode_speedup"])
    );
}

/// A percentage for people: one decimal, or two significant digits below 1%; "–" when absent.
pub(crate) fn percent(v: &Value) -> String {
    match v.as_f64() {
        None => "–".into(),
        Some(x) if x != 0.0 && x.abs() < 1.0 => format!("{x:.2}%"),
        Some(x) => format!("{x:.1}%"),
    }
}
