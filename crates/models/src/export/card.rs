//! The model card (`README.md`) an exported HF directory carries: what the model is, and — when it
//! is a training run's student — how it was distilled and what it kept of its teacher.
//!
//! A run's student lives in `RUN/final`; beside it the run keeps `config.toml` (the resolved
//! training config), `metrics.jsonl`, and, after `distill run` evaluated it, `eval.json`. The
//! teacher is named in the training dataset's `manifest.json`. Whatever is missing is left out of
//! the card rather than guessed.

use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

use crate::loader::LoadedModel;

/// A model card for `model`, exported as `name` with its weights in `weights` (e.g. "bf16
/// safetensors").
pub fn model_card(model: &LoadedModel, name: &str, weights: &str) -> String {
    let cfg = model.model.config();
    let run = Path::new(&model.source).parent().filter(|dir| dir.join("config.toml").is_file());
    let config: Option<toml::Table> =
        run.and_then(|dir| std::fs::read_to_string(dir.join("config.toml")).ok()).and_then(|t| toml::from_str(&t).ok());
    let manifest: Option<Value> = config
        .as_ref()
        .and_then(|c| c.get("dataset")?.as_str().map(|d| Path::new(d).join("manifest.json")))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok());
    // A local teacher by its file name: the card travels, the path of this machine does not.
    let teacher = manifest.as_ref().and_then(|m| m["spec"]["teacher"].as_str()).map(|t| match Path::new(t) {
        p if p.exists() => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| t.to_string()),
        _ => t.to_string(),
    });
    let eval: Option<Value> = run
        .and_then(|dir| std::fs::read_to_string(dir.join("eval.json")).ok())
        .and_then(|t| serde_json::from_str(&t).ok());

    let mut card = String::from("---\n");
    if let Some(t) = teacher.as_deref().and_then(hub_id) {
        let _ = writeln!(card, "base_model: {t}");
    }
    card.push_str("tags:\n- distill\n- knowledge-distillation\n---\n\n");
    let _ = writeln!(card, "# {name}\n");
    match &teacher {
        Some(t) => {
            let _ = writeln!(
                card,
                "A student model distilled from `{t}` with distill (knowledge distillation of language models).\n"
            );
        }
        None => card.push_str("A model exported by distill.\n\n"),
    }
    card.push_str("| | |\n|---|---|\n");
    let _ = writeln!(
        card,
        "| architecture | {} ({}): layers {}, hidden size {}, attention heads {} ({} key/value) |",
        crate::hf_config::architecture(&cfg.model_type),
        cfg.model_type,
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_kv_heads()
    );
    let _ = writeln!(card, "| parameters | {:.1}M |", cfg.num_parameters() as f64 / 1e6);
    let _ = writeln!(card, "| weights | {weights} |");
    let _ = writeln!(card, "| vocabulary | {} tokens; context {} |", cfg.vocab_size, cfg.max_position_embeddings);
    if let Some(c) = &config {
        distillation(&mut card, c, manifest.as_ref(), run.map(|r| r.join("metrics.jsonl")).as_deref());
    }
    if let Some(e) = &eval {
        retention(&mut card, e);
    }
    card.push_str(
        "\n## Use\n\nWith transformers: `AutoModelForCausalLM.from_pretrained(\"<this directory>\")`. \
         With llama.cpp: `distill export <this directory> -o model.gguf --type q8_0`, then load the GGUF file. \
         With distill: `distill serve <this directory>`.\n",
    );
    card
}

/// A name that looks like a Hub id (`org/name`) rather than a local path.
fn hub_id(teacher: &str) -> Option<&str> {
    let parts: Vec<&str> = teacher.split('/').collect();
    (parts.len() == 2 && !teacher.starts_with('.') && !Path::new(teacher).exists()).then_some(teacher)
}

fn distillation(card: &mut String, config: &toml::Table, manifest: Option<&Value>, metrics: Option<&Path>) {
    card.push_str("\n## How it was distilled\n\n");
    let get = |key: &str| config.get(key).map(|v| v.to_string().trim_matches('"').to_string());
    if let Some(student) = config.get("student").and_then(|s| s.as_table()) {
        let kind = student.get("type").and_then(|t| t.as_str()).unwrap_or("?");
        let detail: Vec<String> =
            ["keep_every", "keep_layers", "num_layers", "intermediate_size", "num_attention_heads"]
                .iter()
                .filter_map(|k| student.get(*k).map(|v| format!("{k} = {v}")))
                .collect();
        let _ = writeln!(card, "- student: `{kind}` ({})", detail.join(", "));
    }
    if let Some(m) = manifest {
        let spec = &m["spec"];
        let sequences: u64 =
            m["shards"].as_array().map(|s| s.iter().filter_map(|x| x["sequences"].as_u64()).sum()).unwrap_or(0);
        let tokens: u64 =
            m["shards"].as_array().map(|s| s.iter().filter_map(|x| x["tokens"].as_u64()).sum()).unwrap_or(0);
        let _ = writeln!(
            card,
            "- teacher signal: {} prompts, {sequences} completions, {tokens} completion tokens with the teacher's top-{} log-probabilities",
            spec["prompts"], spec["k"]
        );
    }
    let loss = config.get("loss").and_then(|l| l.as_table());
    let divergence = loss
        .and_then(|l| l.get("divergence"))
        .map(|d| match d.as_table() {
            Some(t) => {
                let kind = t.get("type").and_then(|k| k.as_str()).unwrap_or("?").to_string();
                let params: Vec<String> =
                    t.iter().filter(|(k, _)| k.as_str() != "type").map(|(k, v)| format!("{k} {v}")).collect();
                if params.is_empty() {
                    kind
                } else {
                    format!("{kind} ({})", params.join(", "))
                }
            }
            None => d.to_string(),
        })
        .unwrap_or_else(|| "forward_kl".into());
    let _ = writeln!(card, "- loss: {divergence}");
    let lr = config.get("optimizer").and_then(|o| o.get("lr")).map(|v| v.to_string());
    let _ = writeln!(
        card,
        "- {} steps of {} rows × {} tokens, AdamW{}",
        get("steps").unwrap_or_else(|| "?".into()),
        get("batch_size").unwrap_or_else(|| "?".into()),
        get("seq_len").unwrap_or_else(|| "?".into()),
        lr.map(|lr| format!(" at lr {lr}")).unwrap_or_default()
    );
    let last = metrics.and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| {
        t.lines().rev().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v.get("loss").is_some())
    });
    if let Some(last) = last {
        let _ = writeln!(
            card,
            "- trained on {} target tokens; final training loss {:.4}",
            last["tokens"],
            last["loss"].as_f64().unwrap_or(f64::NAN)
        );
    }
}

fn retention(card: &mut String, eval: &Value) {
    let set = &eval["in_domain"];
    let t = &set["tokens"];
    let Some(kl) = t["kl_forward"].as_f64() else { return };
    card.push_str("\n## What it kept of its teacher\n\n");
    let _ = writeln!(card, "Measured by `distill eval` on {} held-out prompts (greedy decoding):\n", set["prompts"]);
    card.push_str("| metric | value |\n|---|---|\n");
    let _ = writeln!(card, "| KL(teacher ‖ student), nats per token | {kl:.3} |");
    if let Some(top1) = t["top1_agreement"].as_f64() {
        let _ = writeln!(card, "| top-1 agreement with the teacher | {:.1}% |", top1 * 100.0);
    }
    if let (Some(s), Some(te)) = (t["student_perplexity"].as_f64(), t["teacher_perplexity"].as_f64()) {
        let _ = writeln!(card, "| perplexity on the teacher's text | {s:.2} (teacher {te:.2}) |");
    }
    if let Some(r) = set["rouge_l"].as_f64() {
        let _ = writeln!(card, "| ROUGE-L against the teacher's answers | {r:.3} |");
    }
}
