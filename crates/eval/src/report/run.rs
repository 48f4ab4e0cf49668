//! What a report says about how its run was made: the teacher, the dataset, the resolved config
//! and, for a `distill run` pipeline, how long each stage took.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::esc;

/// A run's provenance, as `report.json` holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The resolved training config (`RUN/config.toml`) as written.
    pub config: Option<String>,
    /// The teacher as the dataset's manifest names it.
    pub teacher: Option<String>,
    pub dataset: Option<String>,
    /// Prompts, completions and tokens of the dataset, and its top-k.
    pub dataset_summary: Option<String>,
    /// A pipeline's stages (`OUTPUT/stages/*.done` beside the run) and their seconds, in order.
    pub stages: Vec<(String, f64)>,
}

/// The stages `distill run` goes through, in order; others (new ones) follow by name.
const STAGE_ORDER: &[&str] = &["teacher-signal-train", "teacher-signal-heldout", "train", "eval"];

impl RunInfo {
    pub fn read(run: &Path) -> Self {
        let config = std::fs::read_to_string(run.join("config.toml")).ok();
        let table: Option<toml::Table> = config.as_deref().and_then(|t| toml::from_str(t).ok());
        let dataset = table.as_ref().and_then(|t| t.get("dataset")?.as_str().map(str::to_string));
        let manifest: Option<serde_json::Value> = dataset
            .as_ref()
            .and_then(|d| std::fs::read_to_string(Path::new(d).join("manifest.json")).ok())
            .and_then(|t| serde_json::from_str(&t).ok());
        let teacher = manifest.as_ref().and_then(|m| m["spec"]["teacher"].as_str().map(str::to_string));
        let dataset_summary = manifest.as_ref().map(|m| {
            let shards = m["shards"].as_array().cloned().unwrap_or_default();
            let sum = |key: &str| shards.iter().filter_map(|s| s[key].as_u64()).sum::<u64>();
            format!(
                "{} prompts, {} completions, {} completion tokens, top-{} log-probabilities",
                m["spec"]["prompts"],
                sum("sequences"),
                sum("tokens"),
                m["spec"]["k"]
            )
        });
        let mut stages: Vec<(String, f64)> = run
            .parent()
            .map(|p| p.join("stages"))
            .and_then(|dir| std::fs::read_dir(dir).ok())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().strip_suffix(".done")?.to_string();
                let marker: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(entry.path()).ok()?).ok()?;
                Some((name, marker["seconds"].as_f64()?))
            })
            .collect();
        let rank = |name: &str| STAGE_ORDER.iter().position(|s| *s == name).unwrap_or(STAGE_ORDER.len());
        stages.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then(a.0.cmp(&b.0)));
        Self { config, teacher, dataset, dataset_summary, stages }
    }

    /// The report's "Run" section.
    pub fn html(&self) -> String {
        let mut html = String::from("<h2>Run</h2><table>");
        for (label, value) in
            [("teacher", &self.teacher), ("dataset", &self.dataset), ("teacher signal", &self.dataset_summary)]
        {
            if let Some(v) = value {
                let _ = write!(html, "<tr><td>{label}</td><td style=\"text-align:left\">{}</td></tr>", esc(v));
            }
        }
        html += "</table>";
        if !self.stages.is_empty() {
            html += "<table><tr><th>stage</th><th>seconds</th></tr>";
            for (name, seconds) in &self.stages {
                let _ = write!(html, "<tr><td>{}</td><td>{seconds:.1}</td></tr>", esc(name));
            }
            let total: f64 = self.stages.iter().map(|s| s.1).sum();
            let _ = write!(html, "<tr><td>total</td><td>{total:.1}</td></tr></table>");
        }
        if let Some(config) = &self.config {
            let _ = write!(
                html,
                "<details><summary>training config (config.toml)</summary><pre>{}</pre></details>",
                esc(config)
            );
        }
        html
    }
}
