//! Prompt files: JSONL with `{"prompt": "..."}` or OpenAI chat `{"messages": [...]}` per line.

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

/// Reads a JSONL prompt file; errors name the line and the field.
pub fn read_prompt_file(path: &Path) -> Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read prompt file {}", path.display()))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let prompt = parse_line(line).with_context(|| format!("{}:{line_no}", path.display()))?;
        prompts.push(prompt);
    }
    if prompts.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(prompts)
}

fn parse_line(line: &str) -> Result<Prompt> {
    let value: Value = serde_json::from_str(line).context("not valid JSON")?;
    let obj = value
        .as_object()
        .context("expected a JSON object with `prompt` or `messages`")?;
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
        assert_eq!(prompts[0], Prompt::Text("hello".into()));
        assert_eq!(
            prompts[1],
            Prompt::Chat(vec![ChatMessage::new("user", "hi")])
        );

        std::fs::write(
            &path,
            "{\"prompt\": \"ok\"}\n{\"messages\": [{\"role\": \"user\"}]}\n",
        )
        .unwrap();
        let err = format!("{:#}", read_prompt_file(&path).unwrap_err());
        assert!(
            err.contains("p.jsonl:2") && err.contains("messages[0].content"),
            "{err}"
        );

        std::fs::write(&path, "not json\n").unwrap();
        let err = format!("{:#}", read_prompt_file(&path).unwrap_err());
        assert!(
            err.contains("p.jsonl:1") && err.contains("not valid JSON"),
            "{err}"
        );
    }
}
