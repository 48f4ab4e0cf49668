//! `source/` inside a dataset: what made its sequences besides the teacher's weights — a copy of
//! the prompt file, the teacher's tokenizer (`tokenizer.json`) and how prompts were rendered.
//! A student with another tokenizer reads the teacher's text back and renders the prompts its
//! own way from these; same-tokenizer training never reads them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const SOURCE_DIR: &str = "source";
pub const PROMPTS_FILE: &str = "prompts.jsonl";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const RENDER_FILE: &str = "render.json";

/// How the teacher's prompts were rendered (`render.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderSettings {
    /// Text prompts were wrapped as a user message in the chat template.
    pub chat: bool,
    /// The system message given to wrapped text prompts.
    pub system: Option<String>,
}

/// The files of a dataset's `source/` folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub prompts: PathBuf,
    pub tokenizer: PathBuf,
    pub render: PathBuf,
}

impl Source {
    pub fn of(dataset_dir: &Path) -> Self {
        let dir = dataset_dir.join(SOURCE_DIR);
        Self { prompts: dir.join(PROMPTS_FILE), tokenizer: dir.join(TOKENIZER_FILE), render: dir.join(RENDER_FILE) }
    }

    /// Writes the three files (each atomically: a killed run leaves the old one or the new one):
    /// `prompts` is the prompt file's content as the teacher read it.
    pub fn write(&self, prompts: &[u8], tokenizer_json: &str, settings: &RenderSettings) -> Result<()> {
        if let Some(dir) = self.prompts.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        write_atomic(&self.prompts, prompts)?;
        write_atomic(&self.tokenizer, tokenizer_json.as_bytes())?;
        let render = serde_json::to_vec_pretty(settings).map_err(|e| Error::Invalid(e.to_string()))?;
        write_atomic(&self.render, &render)
    }

    pub fn render_settings(&self) -> Result<RenderSettings> {
        let text = std::fs::read_to_string(&self.render).map_err(|e| Error::io(&self.render, e))?;
        serde_json::from_str(&text).map_err(|e| Error::corrupt(&self.render, e.to_string()))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
