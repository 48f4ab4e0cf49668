//! Prompt files: JSONL with `{"prompt": "..."}` or OpenAI chat `{"messages": [...]}` per line,
//! optionally `"completion": "..."` (or a final assistant message) to have the teacher score a
//! given reply instead of generating one, and `"metadata": {"id": ...}` to name the prompt.
//! Collections in other shapes are read too (see `collections.rs`): OpenAI content parts, Batch
//! API request lines, ShareGPT records, and JSON arrays of records instead of lines.
//! [`render`] turns a prompt into the text a model reads.

use std::path::{Path, PathBuf};

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

/// Reads a prompt file; errors name the line and the field.
///
/// A JSON array of records (a downloaded collection, ShareGPT's dumps) is read record by record:
/// records that are not prompts are skipped and counted in a warning, and a file cut off inside
/// its last record gives every record before it (with a warning). In JSON lines every line must
/// be a prompt.
pub fn read_prompt_file(path: &Path) -> Result<Vec<PromptRecord>> {
    let text = if distill_store::table::is_parquet(path) {
        // A collection published as Parquet: its rows, as JSON lines, read like any others.
        distill_store::table::parquet_as_json_lines(path).map_err(|e| Error::Input(e.to_string()))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read prompt file {}: {e}", path.display())))?
    };
    let records = crate::collections::records(&text);
    let total = records.items.len();
    let mut prompts = Vec::new();
    let mut skipped: Vec<(usize, String)> = Vec::new();
    for (number, item) in records.items {
        let value = match item {
            Ok(value) => value,
            Err(message) if records.array => {
                return Err(Error::Input(format!("{}: record {number} is {message}", path.display())))
            }
            Err(message) => return Err(Error::Prompt { path: path.to_path_buf(), line: number, message }),
        };
        match crate::collections::canonical(value).and_then(|v| parse_record(&v)) {
            Ok(mut prompt) => {
                prompt.line = number;
                prompts.push(prompt);
            }
            Err(message) if records.array => skipped.push((number, message)),
            Err(message) => return Err(Error::Prompt { path: path.to_path_buf(), line: number, message }),
        }
    }
    if let Some(at) = records.truncated_at {
        tracing::warn!(
            "{}: the last record (from byte {at}) is cut off; read the {total} records before it",
            path.display()
        );
    }
    if let Some((number, message)) = skipped.first() {
        tracing::warn!(
            "{}: skipped {} of {total} records that are not prompts (record {number}: {message})",
            path.display(),
            skipped.len()
        );
    }
    if prompts.is_empty() {
        let why = skipped.first().map(|(n, m)| format!(" (record {n}: {m})")).unwrap_or_default();
        return Err(Error::Input(format!("{} holds no prompts{why}", path.display())));
    }
    Ok(prompts)
}

/// The first `n` records of a prompt file as JSON lines: JSONL lines as they are, a JSON array's
/// elements one per line (for a run that takes only part of a file).
pub fn first_records(path: &Path, n: usize) -> Result<String> {
    let text = if distill_store::table::is_parquet(path) {
        // A collection published as Parquet: its rows, as JSON lines, read like any others.
        distill_store::table::parquet_as_json_lines(path).map_err(|e| Error::Input(e.to_string()))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read prompt file {}: {e}", path.display())))?
    };
    let records = crate::collections::records(&text);
    if !records.array {
        return Ok(text.lines().filter(|l| !l.trim().is_empty()).take(n).map(|l| format!("{l}\n")).collect());
    }
    records
        .items
        .into_iter()
        .take(n)
        .map(|(number, item)| match item {
            Ok(value) => Ok(format!("{value}\n")),
            Err(message) => Err(Error::Input(format!("{}: record {number} is {message}", path.display()))),
        })
        .collect()
}

/// [`first_records`] of several prompt files read one after another: the first `n` records in
/// all (every record without `n`), as JSON lines.
pub fn first_records_across(paths: &[PathBuf], n: Option<usize>) -> Result<String> {
    let mut lines = String::new();
    let mut left = n.unwrap_or(usize::MAX);
    for path in paths {
        let taken = first_records(path, left)?;
        left -= taken.lines().count();
        lines.push_str(&taken);
    }
    Ok(lines)
}

/// System messages given to a share of a dataset's prompts, so that a student learns to answer
/// with the system messages real traffic carries, not only with the chat template's default.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemMessages {
    messages: Vec<String>,
    share: f64,
}

impl SystemMessages {
    /// The share of the prompts given a message when none is named.
    pub const DEFAULT_SHARE: f64 = 0.5;

    /// `messages` (at least one, none blank) for a `share` (0 to 1) of the prompts.
    pub fn new(messages: Vec<String>, share: f64) -> Result<Self> {
        if messages.is_empty() || messages.iter().any(|s| s.trim().is_empty()) {
            return Err(Error::Input("system messages must be non-empty, and at least one is needed".into()));
        }
        if !(0.0..=1.0).contains(&share) {
            return Err(Error::Input(format!(
                "the share of prompts given a system message is {share}; expected 0 to 1"
            )));
        }
        Ok(Self { messages, share })
    }

    /// The messages of a file ([`read_system_messages`]) for a `share` of the prompts.
    pub fn from_file(path: &Path, share: f64) -> Result<Self> {
        Self::new(read_system_messages(path)?, share)
    }

    pub fn messages(&self) -> &[String] {
        &self.messages
    }

    pub fn share(&self) -> f64 {
        self.share
    }

    /// Gives the drawn share of `records` a system message. Which records and which message
    /// follow from `seed` and the record's position alone. Records that already have a system (or
    /// developer) message keep theirs; text prompts become a system and a user message. Returns
    /// how many records gained a message.
    pub fn apply(&self, records: &mut [PromptRecord], seed: u64) -> usize {
        let mut added = 0;
        for (i, record) in records.iter_mut().enumerate() {
            let draw = splitmix64(seed ^ splitmix64(i as u64));
            // The top 53 bits as a uniform number in [0, 1).
            if (draw >> 11) as f64 / (1u64 << 53) as f64 >= self.share {
                continue;
            }
            let system =
                ChatMessage::new("system", &self.messages[(splitmix64(draw) % self.messages.len() as u64) as usize]);
            match &mut record.prompt {
                Prompt::Chat(m) if m.iter().any(|m| m.role == "system" || m.role == "developer") => continue,
                Prompt::Chat(m) => m.insert(0, system),
                Prompt::Text(text) => {
                    let user = ChatMessage::new("user", std::mem::take(text));
                    record.prompt = Prompt::Chat(vec![system, user]);
                }
            }
            added += 1;
        }
        added
    }
}

/// A file of system messages for [`SystemMessages`]: one per non-empty line; a line written
/// as a JSON string (in double quotes) is decoded, so a message can hold `\n`.
pub fn read_system_messages(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Input(format!("cannot read system messages {}: {e}", path.display())))?;
    let mut messages = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line = line.trim();
        let message = if line.starts_with('"') {
            serde_json::from_str::<String>(line)
                .map_err(|e| Error::Input(format!("{}:{}: not a JSON string: {e}", path.display(), i + 1)))?
        } else {
            line.to_string()
        };
        messages.push(message);
    }
    if messages.is_empty() {
        return Err(Error::Input(format!("{} holds no system messages (one per line)", path.display())));
    }
    Ok(messages)
}

/// SplitMix64's output function: a fixed, well-mixed hash of a 64-bit number.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn parse_record(value: &Value) -> LineResult<PromptRecord> {
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
    /// The record as one line of a prompt file, which reads back as the same record.
    pub fn to_json(&self) -> Value {
        let mut obj = serde_json::Map::new();
        match &self.prompt {
            Prompt::Text(text) => obj.insert("prompt".into(), text.as_str().into()),
            Prompt::Chat(messages) => obj.insert("messages".into(), serde_json::json!(messages)),
        };
        if let Some(completion) = &self.completion {
            obj.insert("completion".into(), completion.as_str().into());
        }
        if let Some(id) = &self.id {
            obj.insert("metadata".into(), serde_json::json!({ "id": id }));
        }
        if let Some(reference) = &self.reference {
            obj.insert("reference".into(), reference.as_str().into());
        }
        Value::Object(obj)
    }

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

    /// A ShareGPT-style JSON array cut off in its last record: every whole record is read, the
    /// ones that are not prompts are skipped; `first_records` takes the first ones as JSON lines.
    #[test]
    fn a_truncated_json_array_collection_gives_its_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sharegpt.json");
        std::fs::write(
            &path,
            r#"[
  {"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
  {"id": "b", "conversations": []},
  {"custom_id": "c", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me"}]}]}},
  {"id": "d", "conversations": [{"from": "human", "value": "cut o"#,
        )
        .unwrap();
        let prompts = read_prompt_file(&path).unwrap();
        assert_eq!(prompts.len(), 2, "record b has no messages; record d is cut off");
        assert_eq!(prompts[0].id.as_deref(), Some("a"));
        assert_eq!(prompts[0].prompt, Prompt::Chat(vec![ChatMessage::new("user", "Hi")]));
        assert_eq!(prompts[0].completion.as_deref(), Some("Hello!"));
        assert_eq!((prompts[1].id.as_deref(), prompts[1].line), (Some("c"), 3));
        assert_eq!(prompts[1].prompt, Prompt::Chat(vec![ChatMessage::new("user", "Tell me")]));

        let first = first_records(&path, 1).unwrap();
        let subset = dir.path().join("subset.jsonl");
        std::fs::write(&subset, &first).unwrap();
        assert_eq!(first.lines().count(), 1);
        assert_eq!(read_prompt_file(&subset).unwrap()[0].id.as_deref(), Some("a"));
        // Across files: the array's three whole records, then one line of the next file, in order.
        let more = dir.path().join("more.jsonl");
        std::fs::write(&more, "{\"prompt\": \"x\"}\n{\"prompt\": \"y\"}\n").unwrap();
        let across = first_records_across(&[path.clone(), more.clone()], Some(4)).unwrap();
        assert_eq!(across.lines().count(), 4);
        assert!(across.ends_with("{\"prompt\": \"x\"}\n"), "{across}");
        assert_eq!(first_records_across(&[path.clone(), more], None).unwrap().lines().count(), 5);

        std::fs::write(&path, "[{\"prompt\": \"ok\"}, {\"prompt\": oops}]").unwrap();
        let err = read_prompt_file(&path).unwrap_err().to_string();
        assert!(err.contains("record 2 is not valid JSON"), "{err}");
    }

    #[test]
    fn system_messages_go_to_a_share_of_the_prompts() {
        let lines = (0..400)
            .map(|i| {
                if i % 2 == 0 {
                    format!("{{\"prompt\": \"q{i}\", \"metadata\": {{\"id\": \"p{i}\"}}}}\n")
                } else {
                    format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"q{i}\"}}]}}\n")
                }
            })
            .collect::<String>();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        std::fs::write(&path, &lines).unwrap();
        let original = read_prompt_file(&path).unwrap();
        let systems = SystemMessages::new(vec!["be brief".into(), "you sell shoes".into()], 0.5).unwrap();
        let mixed = |s: &SystemMessages, seed| {
            let mut records = original.clone();
            let added = s.apply(&mut records, seed);
            (records, added)
        };
        let (records, added) = mixed(&systems, 3);
        assert!((150..250).contains(&added), "{added} of 400");
        assert_eq!(mixed(&systems, 3).0, records, "a function of seed and position");
        assert_ne!(mixed(&systems, 4).0, records);
        let with_system: Vec<&PromptRecord> =
            records.iter().filter(|r| matches!(&r.prompt, Prompt::Chat(m) if m[0].role == "system")).collect();
        assert_eq!(with_system.len(), added);
        assert!(systems
            .messages()
            .iter()
            .all(|s| with_system.iter().any(|r| matches!(&r.prompt, Prompt::Chat(m) if &m[0].content == s))));
        // A text prompt keeps its id and becomes system + user; records not drawn stay as they were.
        let text = with_system.iter().find(|r| r.id.is_some()).unwrap();
        assert!(matches!(&text.prompt, Prompt::Chat(m) if m.len() == 2 && m[1].role == "user"));
        assert_eq!(records.iter().zip(&original).filter(|(a, b)| a != b).count(), added);

        // Written back as a prompt file, the records read back the same.
        let out: String = records.iter().map(|r| format!("{}\n", r.to_json())).collect();
        std::fs::write(&path, &out).unwrap();
        assert_eq!(read_prompt_file(&path).unwrap(), records);

        let all = SystemMessages::new(systems.messages().to_vec(), 1.0).unwrap();
        let (mut twice, n) = mixed(&all, 0);
        assert_eq!(n, 400);
        assert_eq!(all.apply(&mut twice, 1), 0, "a system message is kept, not doubled");
        assert_eq!(mixed(&SystemMessages::new(vec!["x".into()], 0.0).unwrap(), 0), (original.clone(), 0));

        let err = SystemMessages::new(vec![], 0.5).unwrap_err().to_string();
        assert!(err.contains("at least one"), "{err}");
        let err = SystemMessages::new(vec!["x".into()], 1.5).unwrap_err().to_string();
        assert!(err.contains("expected 0 to 1"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("system.txt");
        std::fs::write(&path, "be brief\n\n  \"two\\nlines\"  \n").unwrap();
        assert_eq!(read_system_messages(&path).unwrap(), vec!["be brief".to_string(), "two\nlines".to_string()]);
        std::fs::write(&path, "\n").unwrap();
        assert!(read_system_messages(&path).unwrap_err().to_string().contains("holds no system messages"));
    }
}
