//! Exporting a model for deployment: a GGUF file for llama.cpp-based runtimes ([`gguf`]) or a
//! Hugging Face directory ([`crate::checkpoint::save_hf_dir`]). [`export`] is what
//! `distill export` and the Python package's `distill.export` call.

mod card;
mod gguf;
mod mix;

use std::path::Path;

use candle_core::DType;

pub use card::model_card;
pub use gguf::{write_gguf, GgufSummary, GgufTokenizer, GgufType};

use crate::error::{Error, Result};
use crate::loader::LoadedModel;

/// What an export writes, decided by the output's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A `.gguf` file.
    Gguf,
    /// A directory in the Hugging Face layout (config.json, model.safetensors, tokenizer files).
    HfDir,
}

impl ExportFormat {
    /// The format `output` names: a `.gguf` file, or a directory (a name without an extension,
    /// or an existing directory).
    pub fn of(output: &Path) -> Result<Self> {
        match output.extension() {
            Some(ext) if ext.eq_ignore_ascii_case("gguf") => Ok(Self::Gguf),
            Some(ext) if !output.is_dir() => Err(Error::Input(format!(
                "{}: an export is a .gguf file or an HF directory, and `.{}` is neither\nHINT: name the file *.gguf, or give a directory name without an extension",
                output.display(),
                ext.to_string_lossy()
            ))),
            _ => Ok(Self::HfDir),
        }
    }
}

/// How to export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// Element type of the GGUF weight matrices.
    pub gguf_type: GgufType,
    /// Element type of an HF directory's safetensors weights: f32, f16 or bf16.
    pub hf_dtype: DType,
    /// `general.name` in the GGUF metadata (default: the output file's stem).
    pub name: Option<String>,
    /// Replace an existing output.
    pub force: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self { gguf_type: GgufType::F16, hf_dtype: DType::F32, name: None, force: false }
    }
}

/// The safetensors element type named `s` (`f32`, `f16`, `bf16`).
pub fn parse_hf_dtype(s: &str) -> Option<DType> {
    Some(match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        _ => return None,
    })
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    pub format: ExportFormat,
    /// Bytes of the GGUF file, or of the directory's files.
    pub bytes: u64,
    /// Tensors in the GGUF file (`None` for an HF directory).
    pub tensors: Option<usize>,
    /// GGUF matrices written in another type (named) because their rows do not fill whole blocks
    /// of the file's type.
    pub fallbacks: Vec<String>,
    pub parameters: usize,
}

/// Writes `model` to `output` as the format its name asks for ([`ExportFormat::of`]). An existing
/// output is refused unless `options.force`; files appear whole or not at all.
pub fn export(model: &LoadedModel, output: &Path, options: &ExportOptions) -> Result<ExportSummary> {
    let format = ExportFormat::of(output)?;
    if output.exists() && !options.force {
        return Err(Error::Input(format!(
            "{} already exists\nHINT: pass --force (force=True) to replace it, or choose another output",
            output.display()
        )));
    }
    let cfg = model.model.config();
    let template = model.chat_template.as_ref().map(|t| t.source().to_string());
    let summary = match format {
        ExportFormat::Gguf => {
            let tokenizer = GgufTokenizer::from_tokenizer(&model.tokenizer, cfg.vocab_size)?;
            let name = options.name.clone().unwrap_or_else(|| {
                output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "distill".into())
            });
            let weights = model.model.named_parameters().into_iter().collect();
            if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            let written = write_gguf(output, &name, cfg, &weights, &tokenizer, template.as_deref(), options.gguf_type)?;
            ExportSummary {
                format,
                bytes: written.bytes,
                tensors: Some(written.tensors),
                fallbacks: written.fallbacks,
                parameters: cfg.num_parameters(),
            }
        }
        ExportFormat::HfDir => {
            if options.force && output.is_dir() {
                std::fs::remove_dir_all(output).map_err(|e| Error::io(output, e))?;
            }
            crate::checkpoint::save_hf_dir_as(
                output,
                &model.model,
                &model.tokenizer,
                template.as_deref(),
                options.hf_dtype,
            )?;
            let name = options.name.clone().unwrap_or_else(|| {
                output.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "distill".into())
            });
            let weights = format!("{} safetensors", format!("{:?}", options.hf_dtype).to_lowercase());
            crate::checkpoint::write_atomic(&output.join("README.md"), &model_card(model, &name, &weights))?;
            ExportSummary {
                format,
                bytes: dir_bytes(output),
                tensors: None,
                fallbacks: vec![],
                parameters: cfg.num_parameters(),
            }
        }
    };
    Ok(summary)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}
