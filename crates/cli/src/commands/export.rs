//! `distill export MODEL -o OUT`: a model (usually a trained student) for deployment, as a GGUF
//! file for llama.cpp-based runtimes or as a Hugging Face directory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use distill_models::export::{export, parse_hf_dtype, ExportFormat, ExportOptions, GgufType};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  distill export runs/support/final -o support-student.q8_0.gguf --type q8_0
  distill export runs/support/final -o exported/support-student     # HF directory (safetensors, f32)
  distill export runs/support/final -o exported/support-bf16 --type bf16")]
pub struct ExportArgs {
    /// Model to export: a training run's `final/` directory, any HF model directory, a GGUF file
    /// or a Hub id (or give it as `-m/--model`, as `distill generate` takes it).
    #[arg(required_unless_present = "model_flag", conflicts_with = "model_flag")]
    pub(crate) model: Option<String>,

    #[arg(short = 'm', long = "model", value_name = "MODEL", hide = true)]
    pub(crate) model_flag: Option<String>,

    /// Output: a `.gguf` file, or a directory for the Hugging Face layout (config.json,
    /// model.safetensors, tokenizer.json, generation_config.json).
    #[arg(short, long)]
    pub(crate) output: PathBuf,

    /// Element type of the weights. GGUF: f32, f16 (default), q8_0, q6_k, q5_k_m, q4_k_m or q4_0
    /// for the matrices, mixed as llama.cpp's quantiser mixes them (the output head at 6 bits;
    /// norms stay f32). HF directory: f32 (default), f16 or bf16.
    #[arg(long = "type", value_name = "TYPE")]
    pub(crate) ty: Option<String>,

    /// Name recorded in the GGUF metadata (default: the output file's stem).
    #[arg(long)]
    pub(crate) name: Option<String>,

    /// Replace the output if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let model = args.model.clone().or(args.model_flag.clone()).context("give the model to export")?;
    let format = ExportFormat::of(&args.output)?;
    let mut options = ExportOptions { name: args.name.clone(), force: args.force, ..Default::default() };
    match (format, args.ty.as_deref()) {
        (_, None) => {}
        (ExportFormat::Gguf, Some(ty)) => {
            options.gguf_type =
                GgufType::parse(ty).with_context(|| format!("unknown GGUF --type `{ty}` ({})", GgufType::NAMES))?;
        }
        (ExportFormat::HfDir, Some(ty)) => {
            options.hf_dtype = parse_hf_dtype(ty).with_context(|| {
                format!(
                    "unknown --type `{ty}` for an HF directory (f32, f16, bf16; quantised types are for .gguf files)"
                )
            })?;
        }
    }
    if args.output.exists() && !args.force {
        bail!("{} already exists\nHINT: pass --force to replace it, or choose another --output", args.output.display());
    }
    let started = Instant::now();
    let loaded = distill_models::load(&model, &Device::Cpu).with_context(|| format!("loading `{model}`"))?;
    let summary = export(&loaded, &args.output, &options)?;
    if !summary.fallbacks.is_empty() {
        // Entries read "blk.0.attn_q.weight (Q5_0)": counted by the type they took.
        let mut by_type: std::collections::BTreeMap<&str, usize> = Default::default();
        for f in &summary.fallbacks {
            *by_type.entry(f.rsplit_once(" (").map_or("?", |(_, t)| t.trim_end_matches(')'))).or_default() += 1;
        }
        let counts: Vec<String> = by_type.iter().map(|(t, n)| format!("{n} as {t}")).collect();
        eprintln!(
            "note: {} matrices have rows that do not fill whole blocks of {} and were written in the nearest type that fits, as llama.cpp's quantiser does: {} (e.g. {})",
            summary.fallbacks.len(),
            options.gguf_type.name(),
            counts.join(", "),
            summary.fallbacks.iter().take(2).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let what = match format {
        ExportFormat::Gguf => format!("{}, {} tensors", options.gguf_type.name(), summary.tensors.unwrap_or(0)),
        ExportFormat::HfDir => format!("HF layout, {}", format!("{:?}", options.hf_dtype).to_lowercase()),
    };
    eprintln!(
        "wrote {} ({what}, {:.1} MB, {:.1}M parameters) in {:.1} s",
        args.output.display(),
        summary.bytes as f64 / 1e6,
        summary.parameters as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
