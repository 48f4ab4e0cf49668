//! Prompt files: JSONL with `{"prompt": "..."}` or OpenAI chat `{"messages": [...]}` per line,
//! optionally `"completion": "..."` (or a final assistant message) to have the teacher score a
//! given reply instead of generating one, and `"metadata": {"id": ...}` to name the prompt.
//! [`render`] turns a prompt into the text a model reads.

use std::path::Path;

use distill_models::{ChatMessage, ChatTemplate};
use serde_json::Value;

use crate::{Error, Result};

/// Why a line is not a prompt (the caller adds the file and line).
type LineResult<T> = std::result::Result<T, String>;

macro_rules! bail {
    ($($arg:tt)*) => { return Err(format!($($arg)*)) };
}

/// The roles of OpenAI chat messages.
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "developer", "tool"];

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
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Input(format!("cannot read prompt file {}: {e}", path.display())))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut prompt =
            parse_line(line).map_err(|message| Error::Prompt { path: path.to_path_buf(), line: line_no, message })?;
        prompt.line = line_no;
        prompts.push(prompt);
    }
    if prompts.is_empty() {
        return Err(Error::Input(format!("{} holds no prompts", path.display())));
    }
    Ok(prompts)
}

fn parse_line(line: &str) -> LineResult<PromptRecord> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = value.as_object().ok_or("expected a JSON object with `prompt` or `messages`")?;
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
            let Some(last) = messages.pop() else { bail!("`messages` is empty") };
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

fn parse_prompt(obj: &serde_json::Map<String, Value>) -> LineResult<Prompt> {
    match (obj.get("prompt"), obj.get("messages")) {
        (Some(_), Some(_)) => bail!("has both `prompt` and `messages`; keep one"),
        (Some(p), None) => {
            let text = p.as_str().ok_or("`prompt` must be a string")?;
            if text.is_empty() {
                bail!("`prompt` is empty");
            }
            Ok(Prompt::Text(text.to_string()))
        }
        (None, Some(m)) => {
            let list = m.as_array().ok_or("`messages` must be an array")?;
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
                        (Some(r), Some(_)) if !ROLES.contains(&r) => {
                            bail!("`messages[{j}].role` is `{r}`; expected one of {}", ROLES.join(", "))
                        }
                        (Some(r), Some(c)) => Ok(ChatMessage::new(r, c)),
                        (None, _) => bail!("`messages[{j}].role` is missing or not a string"),
                        (_, None) => bail!("`messages[{j}].content` is missing or not a string"),
                    }
                })
                .collect::<LineResult<Vec<_>>>()?;
            Ok(Prompt::Chat(messages))
        }
        (None, None) => bail!("needs a `prompt` string or a `messages` array"),
    }
}

/// The conversation a prompt stands for: its messages, or text wrapped as a user message (after
/// `system`) when `chat` is set. `None` for raw text, which is fed to the model as it is.
pub fn conversation(prompt: &Prompt, chat: bool, system: Option<&str>) -> Option<Vec<ChatMessage>> {
    match prompt {
        Prompt::Text(_) if !chat => None,
        Prompt::Text(text) => {
            let mut m: Vec<ChatMessage> = system.map(|s| ChatMessage::new("system", s)).into_iter().collect();
            m.push(ChatMessage::new("user", text.as_str()));
            Some(m)
        }
        Prompt::Chat(messages) => Some(messages.clone()),
    }
}

/// The text a model reads for `prompt`: raw text as it is, a conversation through `template`,
/// the chat template of the model named `name`.
pub fn render(
    template: Option<&ChatTemplate>,
    name: &str,
    prompt: &Prompt,
    chat: bool,
    system: Option<&str>,
) -> Result<String> {
    if let (Prompt::Text(text), false) = (prompt, chat) {
        return Ok(text.clone());
    }
    let messages = conversation(prompt, chat, system).unwrap_or_default(); // Some for everything else
    let template = template.ok_or_else(|| {
        Error::Input(format!(
            "model `{name}` has no chat template; drop --chat and `messages` prompts, or use a chat model"
        ))
    })?;
    Ok(template.render(&messages, true)?)
}

impl PromptRecord {
    /// `metadata.id`, else `line-N`.
    pub fn name(&self) -> String {
        self.id.clone().unwrap_or_else(|| format!("line-{}", self.line))
    }

    /// The prompt's last message (or its text), as a report shows it.
    pub fn display_text(&self) -> String {
        match &self.prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Chat(m) => m.last().map(|m| m.content.clone()).unwrap_or_default(),
        }
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

        std::fs::write(&path, "{\"messages\": [{\"role\": \"usr\", \"content\": \"hi\"}]}\n").unwrap();
        let err = format!("{:#}", read_prompt_file(&path).unwrap_err());
        assert!(err.contains("p.jsonl:1") && err.contains("`messages[0].role` is `usr`"), "{err}");

        std::fs::write(&path, "not json\n").unwrap();
        let err = format!("{:#}", read_prompt_file(&path).unwrap_err());
        assert!(err.contains("p.jsonl:1") && err.contains("not valid JSON"), "{err}");
    }
}
