//! `distill export MODEL -o OUT`: a model (usually a trained student) for deployment, as a GGUF
//! file for llama.cpp-based runtimes or as a Hugging Face directory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use distill_models::checkpoint;
use distill_models::export::{write_gguf, GgufTokenizer, GgufType};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  distill export runs/support/final -o support-student.q8_0.gguf --type q8_0
  distill export runs/support/final -o exported/support-student     # HF directory (safetensors)")]
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

    /// GGUF element type of the weight matrices: f32, f16, q8_0 or q4_0 (norms stay f32).
    #[arg(long = "type", default_value = "f16", value_name = "TYPE")]
    pub(crate) ty: String,

    /// Name recorded in the GGUF metadata (default: the output file's stem).
    #[arg(long)]
    pub(crate) name: Option<String>,

    /// Replace the output if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let model = args.model.clone().or(args.model_flag.clone()).context("give the model to export")?;
    let gguf = args.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if let (false, Some(ext)) = (gguf, args.output.extension()) {
        if !args.output.is_dir() {
            bail!(
                "{}: an export is a .gguf file or an HF directory, and `.{}` is neither\nHINT: name the file *.gguf, or give a directory name without an extension",
                args.output.display(),
                ext.to_string_lossy()
            );
        }
    }
    let ty =
        GgufType::parse(&args.ty).with_context(|| format!("unknown --type `{}` (f32, f16, q8_0, q4_0)", args.ty))?;
    if args.output.exists() && !args.force {
        bail!("{} already exists\nHINT: pass --force to replace it, or choose another --output", args.output.display());
    }
    let started = Instant::now();
    let loaded = distill_models::load(&model, &Device::Cpu).with_context(|| format!("loading `{model}`"))?;
    let cfg = loaded.model.config();
    let template = loaded.chat_template.as_ref().map(|t| t.source().to_string());
    if gguf {
        let tokenizer = GgufTokenizer::from_tokenizer(&loaded.tokenizer, cfg.vocab_size)?;
        let name = args.name.clone().unwrap_or_else(|| {
            args.output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "distill".into())
        });
        let weights = loaded.model.named_parameters().into_iter().collect();
        if let Some(parent) = args.output.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let summary = write_gguf(&args.output, &name, cfg, &weights, &tokenizer, template.as_deref(), ty)?;
        if !summary.fallbacks.is_empty() {
            eprintln!(
                "note: {} matrices have rows that are not a multiple of 32 and were kept in f16: {}",
                summary.fallbacks.len(),
                summary.fallbacks.join(", ")
            );
        }
        eprintln!(
            "wrote {} ({:?}, {} tensors, {:.1} MB, {:.1}M parameters) in {:.1} s",
            args.output.display(),
            ty,
            summary.tensors,
            summary.bytes as f64 / 1e6,
            cfg.num_parameters() as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    } else {
        if args.ty != "f16" {
            eprintln!("note: --type applies to GGUF; the HF directory is written in f32");
        }
        if args.force && args.output.is_dir() {
            std::fs::remove_dir_all(&args.output)
                .with_context(|| format!("cannot replace {}", args.output.display()))?;
        }
        checkpoint::save_hf_dir(&args.output, &loaded.model, &loaded.tokenizer, template.as_deref())?;
        eprintln!(
            "wrote {} (HF layout, f32, {:.1}M parameters) in {:.1} s",
            args.output.display(),
            cfg.num_parameters() as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
