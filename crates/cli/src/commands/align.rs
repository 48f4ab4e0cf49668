//! `distill align TEACHER STUDENT`: how well a student's tokenizer fits a teacher's, and which
//! training modes make sense for the pair.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args;
use distill_teacher::prompts::{read_prompt_file, Prompt};
use distill_teacher::LocalTeacher;
use distill_train::cross::align::{measure, AlignReport};
use distill_train::cross::VocabMap;

use crate::progress;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  distill align ~/.cache/distill/models/gemma-3-270m-q4_k_m.gguf ./SmolLM2-135M-Instruct.Q4_1.gguf
  distill align TEACHER.gguf STUDENT_DIR --prompts examples/support/prompts.jsonl --limit 50 --json")]
pub struct AlignArgs {
    /// Teacher: a .gguf file, a Hugging Face model directory or a Hub id.
    teacher: String,
    /// Student: a .gguf file, a Hugging Face model directory or a Hub id.
    student: String,
    /// JSONL prompts whose text (message contents, given completions) is measured; the teacher
    /// scores each text once. Without it only the vocabularies are compared.
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// Texts of the prompt file to measure (its first N).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Teacher top-k entries per position whose mass is checked.
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: AlignArgs) -> Result<()> {
    let student = distill_models::load(&args.student, &Device::Cpu)
        .with_context(|| format!("loading the student {}", args.student))?
        .into_text();
    let report = match &args.prompts {
        Some(path) => {
            let records = read_prompt_file(path)?;
            let texts: Vec<String> =
                records.iter().take(args.limit).map(|r| text_of(&r.prompt, r.completion.as_deref())).collect();
            let teacher = distill_models::load(&args.teacher, &Device::Cpu)
                .with_context(|| format!("loading the teacher {}", args.teacher))?;
            let teacher = LocalTeacher::new(teacher);
            let bar = progress::bar(texts.len() as u64, "scoring texts");
            let report =
                measure(&teacher, &student.tokenizer, &texts, args.k, &mut |done| bar.set_position(done as u64))?;
            bar.finish_and_clear();
            report
        }
        None => {
            // The teacher's tokenizer only: no weights are needed.
            let teacher = distill_models::load(&args.teacher, &Device::Cpu)
                .with_context(|| format!("loading the teacher {}", args.teacher))?
                .into_text();
            let map = VocabMap::new(&teacher.tokenizer, &student.tokenizer);
            AlignReport::vocabularies(&teacher.tokenizer, &student.tokenizer, &map)
        }
    };
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["advice"] = serde_json::json!(report.advice());
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    print(&args, &report);
    Ok(())
}

/// The text of a prompt as a teacher would write it: message contents, then a given completion.
fn text_of(prompt: &Prompt, completion: Option<&str>) -> String {
    let mut parts: Vec<&str> = match prompt {
        Prompt::Text(text) => vec![text.as_str()],
        Prompt::Chat(messages) => messages.iter().map(|m| m.content.as_str()).collect(),
    };
    parts.extend(completion);
    parts.join("\n")
}

fn print(args: &AlignArgs, r: &AlignReport) {
    println!("teacher      {} ({} tokens)", args.teacher, r.teacher_vocab);
    println!("student      {} ({} tokens)", args.student, r.student_vocab);
    if r.identical {
        println!("tokenizers   identical");
    }
    println!(
        "shared       {} teacher tokens ({:.1}%) have a student twin (same bytes, or the same special name)",
        r.shared_tokens,
        100.0 * r.shared_tokens as f64 / r.teacher_vocab.max(1) as f64
    );
    if r.texts > 0 {
        println!(
            "measured     {} texts, {} bytes: {} teacher tokens, {} student tokens ({:.2} bytes/token vs {:.2})",
            r.texts,
            r.bytes,
            r.teacher_tokens,
            r.student_tokens,
            r.bytes as f64 / r.teacher_tokens.max(1) as f64,
            r.bytes as f64 / r.student_tokens.max(1) as f64
        );
        println!(
            "boundaries   {:.1}% of the teacher's token boundaries are the student's too",
            100.0 * r.boundary_agreement
        );
        println!(
            "top-{} mass   {:.1}% of it on tokens the student has ({:.1}% of the whole distribution), over {} positions",
            args.k,
            100.0 * r.mapped_topk_share,
            100.0 * r.mapped_mass,
            r.scored_positions
        );
    }
    println!("modes");
    for line in r.advice() {
        println!("  {line}");
    }
}
