//! Prompt files: JSONL with `{"prompt": "..."}` or OpenAI chat `{"messages": [...]}` per line,
//! optionally `"completion": "..."` (or a final assistant message) to have the teacher score a
//! given reply instead of generating one, and `"metadata": {"id": ...}` to name the prompt.

use std::path::Path;

use anyhow::{bail, Context, Result};
use distill_models::ChatMessage;
use serde_json::Value;

/// One prompt as the user wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text, fed to the model as it is (or wrapped by the chat template with `--chat`).
    Text(String),
    /// A conversation, always rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
}

/// One line of a prompt file.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRecord {
    pub prompt: Prompt,
    /// A given completion to score instead of generating.
    pub completion: Option<String>,
    /// `metadata.id`, when the line has one.
    pub id: Option<String>,
    /// `reference`: the expected answer, for exact-match evaluation.
    pub reference: Option<String>,
    /// 1-based line in the file.
    pub line: usize,
}

/// Reads a JSONL prompt file; errors name the line and the field.
pub fn read_prompt_file(path: &Path) -> Result<Vec<PromptRecord>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read prompt file {}", path.display()))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut prompt = parse_line(line).with_context(|| format!("{}:{line_no}", path.display()))?;
        prompt.line = line_no;
        prompts.push(prompt);
    }
    if prompts.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(prompts)
}

fn parse_line(line: &str) -> Result<PromptRecord> {
    let value: Value = serde_json::from_str(line).context("not valid JSON")?;
    let obj = value.as_object().context("expected a JSON object with `prompt` or `messages`")?;
    let id = match obj.get("metadata").and_then(|m| m.get("id")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => bail!("`metadata.id` must be a string or a number"),
    };
    let mut completion = match obj.get("completion") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => bail!("`completion` must be a non-empty string"),
    };
    let mut prompt = parse_prompt(obj)?;
    if let Prompt::Chat(messages) = &mut prompt {
        if messages.last().is_some_and(|m| m.role == "assistant") {
            if completion.is_some() {
                bail!("has both `completion` and a final assistant message; keep one");
            }
            let last = messages.pop().expect("checked non-empty");
            if messages.is_empty() {
                bail!("`messages` holds only an assistant reply; a prompt needs a message before it");
            }
            completion = Some(last.content);
        }
    }
    let reference = match obj.get("reference") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => bail!("`reference` must be a string or a number"),
    };
    Ok(PromptRecord { prompt, completion, id, reference, line: 0 })
}

fn parse_prompt(obj: &serde_json::Map<String, Value>) -> Result<Prompt> {
    match (obj.get("prompt"), obj.get("messages")) {
        (Some(_), Some(_)) => bail!("has both `prompt` and `messages`; keep one"),
        (Some(p), None) => {
            let text = p.as_str().context("`prompt` must be a string")?;
            if text.is_empty() {
                bail!("`prompt` is empty");
            }
            Ok(Prompt::Text(text.to_string()))
        }
        (None, Some(m)) => {
            let list = m.as_array().context("`messages` must be an array")?;
            if list.is_empty() {
                bail!("`messages` is empty");
            }
            let messages = list
                .iter()
                .enumerate()
                .map(|(j, msg)| {
                    let role = msg.get("role").and_then(Value::as_str);
                    let content = msg.get("content").and_then(Value::as_str);
                    match (role, content) {
                        (Some(r), Some(c)) => Ok(ChatMessage::new(r, c)),
                        (None, _) => bail!("`messages[{j}].role` is missing or not a string"),
                        (_, None) => bail!("`messages[{j}].content` is missing or not a string"),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Prompt::Chat(messages))
        }
        (None, None) => bail!("needs a `prompt` string or a `messages` array"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_shapes_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"hello\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
        )
        .unwrap();
        let prompts = read_prompt_file(&path).unwrap();
        assert_eq!(prompts[0].prompt, Prompt::Text("hello".into()));
        assert_eq!((prompts[0].line, prompts[1].line), (1, 3));
        assert_eq!(prompts[1].prompt, Prompt::Chat(vec![ChatMessage::new("user", "hi")]));

        std::fs::write(
            &path,
            "{\"prompt\": \"q\", \"completion\": \"a\", \"metadata\": {\"id\": 7}}\n{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n",
        )
        .unwrap();
        let prompts = read_prompt_file(&path).unwrap();
        assert_eq!((prompts[0].completion.as_deref(), prompts[0].id.as_deref()), (Some("a"), Some("7")));
        assert_eq!(prompts[1].prompt, Prompt::Chat(vec![ChatMessage::new("user", "q")]));
        assert_eq!(prompts[1].completion.as_deref(), Some("a"));

        std::fs::write(&path, "{\"prompt\": \"ok\"}\n{\"messages\": [{\"role\": \"user\"}]}\n").unwrap();
        let err = format!("{:#}", read_prompt_file(&path).unwrap_err());
        assert!(err.contains("p.jsonl:2") && err.contains("messages[0].content"), "{err}");

        std::fs::write(&path, "not json\n").unwrap();
        let err = format!("{:#}", read_prompt_file(&path).unwrap_err());
        assert!(err.contains("p.jsonl:1") && err.contains("not valid JSON"), "{err}");
    }
}
