//! Fetching a model directory from the Hugging Face Hub (or its local cache).

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};

use crate::error::{Error, Result};

const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
const OPTIONAL: [&str; 3] = ["tokenizer_config.json", "generation_config.json", "chat_template.jinja"];

/// Returns a local directory holding `id`'s config, tokenizer and safetensors weights, using the
/// Hub cache first and the network only for what is missing.
pub fn download(id: &str) -> Result<PathBuf> {
    let fail = |reason: String| Error::Hub { id: id.to_string(), reason };
    let cache = Cache::from_env().repo(Repo::model(id.to_string()));
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1");
    let api = if offline {
        None
    } else {
        Some(ApiBuilder::from_env().build().map_err(|e| fail(e.to_string()))?.model(id.to_string()))
    };
    let get = |file: &str| -> Result<PathBuf> {
        if let Some(path) = cache.get(file) {
            return Ok(path);
        }
        match &api {
            Some(api) => api.get(file).map_err(|e| fail(format!("{file}: {e}"))),
            None => Err(fail(format!("{file} is not in the local cache and HF_HUB_OFFLINE=1"))),
        }
    };
    let mut dir = None;
    for file in REQUIRED {
        let path = get(file)?;
        dir = path.parent().map(PathBuf::from);
    }
    for file in OPTIONAL {
        let _ = get(file);
    }
    let weights: Vec<String> = match get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail(format!("index: {e}")))?;
            let mut files: Vec<String> = json["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            files.sort();
            files.dedup();
            files
        }
        Err(_) => vec!["model.safetensors".to_string()],
    };
    for file in weights {
        get(&file)?;
    }
    dir.ok_or_else(|| fail("no files".into()))
}
