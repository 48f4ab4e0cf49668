//! Prompt collections as people have them, brought to the one shape prompt files use
//! (`{"prompt"}` or `{"messages"}`, `metadata.id`):
//! - OpenAI chat lines whose `content` is a list of parts (`{"type": "text", "text": ...}`);
//! - OpenAI Batch API request lines (`custom_id`, `body.messages` or `body.prompt`);
//! - ShareGPT records (`conversations` of `{"from": "human" | "gpt" | "system", "value"}`);
//! - Hugging Face chat datasets' rows (`messages`, often beside `prompt` — its first user turn —
//!   and `prompt_id`), as JSON lines or as Parquet;
//! - a JSON array of any of these instead of JSON lines (how ShareGPT dumps ship), read record by
//!   record so a file cut off inside its last record still gives every record before it.

use serde_json::{json, Map, Value};

/// The records of a prompt file: JSON lines, or the elements of one JSON array.
pub(crate) struct Records {
    /// (1-based line or record number, the record or why it is not JSON).
    pub items: Vec<(usize, Result<Value, String>)>,
    /// A JSON array whose last record is cut off: the byte where it starts.
    pub truncated_at: Option<usize>,
    /// Whether the file is a JSON array (its records are numbered, not lines).
    pub array: bool,
}

pub(crate) fn records(text: &str) -> Records {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return array_records(text, text.len() - trimmed.len() + 1);
    }
    let items = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| (i + 1, serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))))
        .collect();
    Records { items, truncated_at: None, array: false }
}

/// The elements of a JSON array starting at byte `start` (after its `[`), one at a time.
fn array_records(text: &str, start: usize) -> Records {
    let mut items = Vec::new();
    let mut at = start;
    loop {
        let rest = &text[at..];
        let skipped = rest.len() - rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',').len();
        at += skipped;
        if text[at..].is_empty() || text[at..].starts_with(']') {
            return Records { items, truncated_at: None, array: true };
        }
        let mut stream = serde_json::Deserializer::from_str(&text[at..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                items.push((items.len() + 1, Ok(value)));
                at += stream.byte_offset();
            }
            Some(Err(e)) if e.is_eof() => return Records { items, truncated_at: Some(at), array: true },
            Some(Err(e)) => {
                items.push((items.len() + 1, Err(format!("not valid JSON: {e}"))));
                return Records { items, truncated_at: None, array: true };
            }
            None => return Records { items, truncated_at: Some(at), array: true },
        }
    }
}

/// A record in the shape prompt files use; records already in it pass unchanged.
pub(crate) fn canonical(value: Value) -> Result<Value, String> {
    let Value::Object(mut obj) = value else { return Ok(value) };
    if let Some(body) = obj.remove("body").filter(|_| obj.contains_key("custom_id") || obj.contains_key("url")) {
        return batch_request(obj, body);
    }
    if let Some(conversations) = obj.remove("conversations") {
        let messages = sharegpt_messages(&conversations)?;
        let mut out = Map::new();
        out.insert("messages".into(), Value::Array(messages));
        if let Some(id) = obj.remove("id") {
            out.insert("metadata".into(), json!({ "id": id }));
        }
        return Ok(Value::Object(out));
    }
    if let Some(Value::Array(messages)) = obj.get("messages") {
        // A Hugging Face row: `prompt` repeats the first user turn of `messages`, `prompt_id`
        // (or `id`) names it.
        let first_user = messages.iter().find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
        let first_user = first_user.and_then(|m| m.get("content")).and_then(Value::as_str);
        if obj.get("prompt").and_then(Value::as_str).is_some_and(|p| Some(p) == first_user) {
            obj.remove("prompt");
        }
        if !obj.contains_key("metadata") {
            if let Some(id) = obj.get("prompt_id").or_else(|| obj.get("id")).filter(|v| v.is_string() || v.is_number())
            {
                obj.insert("metadata".into(), json!({ "id": id.clone() }));
            }
        }
    }
    if let Some(Value::Array(messages)) = obj.get_mut("messages") {
        for (j, message) in messages.iter_mut().enumerate() {
            if let Some(parts) = message.get("content").and_then(Value::as_array) {
                let text = text_parts(parts).map_err(|e| format!("`messages[{j}].content`: {e}"))?;
                message["content"] = Value::String(text);
            }
        }
    }
    Ok(Value::Object(obj))
}

/// An OpenAI Batch API line: the request's body is the prompt, `custom_id` its name.
fn batch_request(mut obj: Map<String, Value>, body: Value) -> Result<Value, String> {
    if let Some(url) = obj.get("url").and_then(Value::as_str) {
        if !matches!(url, "/v1/chat/completions" | "/v1/completions") {
            return Err(format!(
                "is a batch request to `{url}`; only /v1/chat/completions and /v1/completions hold prompts"
            ));
        }
    }
    let Value::Object(body) = body else { return Err("`body` must be a JSON object".into()) };
    let mut out = Map::new();
    for key in ["messages", "prompt"] {
        if let Some(v) = body.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(id) = obj.remove("custom_id") {
        out.insert("metadata".into(), json!({ "id": id }));
    }
    canonical(Value::Object(out))
}

/// ShareGPT turns as chat messages.
fn sharegpt_messages(conversations: &Value) -> Result<Vec<Value>, String> {
    let turns = conversations.as_array().ok_or("`conversations` must be an array")?;
    turns
        .iter()
        .enumerate()
        .map(|(j, turn)| {
            let from =
                turn.get("from").and_then(Value::as_str).ok_or(format!("`conversations[{j}].from` is missing"))?;
            let value =
                turn.get("value").and_then(Value::as_str).ok_or(format!("`conversations[{j}].value` is missing"))?;
            let role = match from {
                "human" | "user" => "user",
                "gpt" | "assistant" | "chatgpt" | "bard" | "bing" | "model" => "assistant",
                "system" => "system",
                other => return Err(format!("`conversations[{j}].from` is `{other}`; expected human, gpt or system")),
            };
            Ok(json!({ "role": role, "content": value }))
        })
        .collect()
}

/// The text of OpenAI content parts, joined by newlines; other parts (images, audio) are refused.
fn text_parts(parts: &[Value]) -> Result<String, String> {
    let texts = parts
        .iter()
        .enumerate()
        .map(|(k, part)| match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(text)) => Ok(text),
            (Some(kind), _) => Err(format!("part {k} is `{kind}`; only text parts are supported")),
            (None, _) => Err(format!("part {k} has no `type`")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(texts.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_array_cut_off_in_its_last_record_gives_the_records_before_it() {
        let text = "[\n {\"id\": \"a\", \"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}]},\n {\"prompt\": \"two\"},\n {\"id\": \"c\", \"conversa";
        let r = records(text);
        assert!(r.array);
        assert_eq!(r.items.len(), 2);
        assert_eq!(r.truncated_at, Some(text.find("{\"id\": \"c\"").unwrap()));
        let whole = records("[{\"prompt\": \"one\"}, {\"prompt\": \"two\"}]");
        assert_eq!((whole.items.len(), whole.truncated_at), (2, None));
    }

    #[test]
    fn batch_lines_sharegpt_records_and_content_parts_become_prompt_records() {
        let batch = json!({"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "x", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}});
        assert_eq!(
            canonical(batch).unwrap(),
            json!({"messages": [{"role": "user", "content": "a\nb"}], "metadata": {"id": "req-1"}})
        );
        let sharegpt = json!({"id": "s1", "conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]});
        assert_eq!(
            canonical(sharegpt).unwrap()["messages"],
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
        );
        let embeddings = json!({"custom_id": "e", "url": "/v1/embeddings", "body": {"input": "x"}});
        assert!(canonical(embeddings).unwrap_err().contains("/v1/embeddings"));
        let image =
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]});
        assert!(canonical(image).unwrap_err().contains("image_url"));
        let odd = json!({"conversations": [{"from": "narrator", "value": "x"}]});
        assert!(canonical(odd).unwrap_err().contains("narrator"));
    }

    #[test]
    fn a_hugging_face_row_keeps_its_conversation_and_is_named_by_prompt_id() {
        let row = json!({"prompt": "hi", "prompt_id": "p7", "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]});
        let c = canonical(row).unwrap();
        assert!(c.get("prompt").is_none(), "{c}");
        assert_eq!(c["metadata"], json!({"id": "p7"}));
        // A `prompt` that is not the first user turn is the user's own: both stay (and the
        // reader refuses the record as ambiguous).
        let other = json!({"prompt": "something else", "messages": [{"role": "user", "content": "hi"}]});
        assert!(canonical(other).unwrap().get("prompt").is_some());
    }
}
