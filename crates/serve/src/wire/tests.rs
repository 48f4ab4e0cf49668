//! Request validation: every bad input is a 400 naming the field, never a panic.

use proptest::prelude::*;

use super::*;

fn chat(body: &str) -> Result<GenerationRequest, ApiError> {
    parse_request(Endpoint::Chat, body.as_bytes())
}

fn completion(body: &str) -> Result<GenerationRequest, ApiError> {
    parse_request(Endpoint::Completions, body.as_bytes())
}

const MSG: &str = r#""model": "m", "messages": [{"role": "user", "content": "hi"}]"#;

fn refused(result: Result<GenerationRequest, ApiError>, param: &str) -> String {
    let err = result.expect_err("the request must be refused");
    assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err.param.as_deref(), Some(param), "{err}");
    assert!(err.message.contains(param), "the message names `{param}`: {}", err.message);
    err.message
}

#[test]
fn a_plain_chat_request_gets_openai_defaults() {
    let r = chat(&format!("{{{MSG}}}")).unwrap();
    assert_eq!(r.n, 1);
    assert_eq!(r.sampling.temperature, 1.0);
    assert_eq!(r.max_tokens, None);
    assert_eq!(r.logprobs, None);
    assert!(!r.stream && !r.store);
    assert_eq!(r.prompt, Prompt::Chat(vec![ChatMessage::new("user", "hi")]));
}

#[test]
fn text_parts_are_joined_and_developer_means_system() {
    let r = chat(
        r#"{"model": "m", "messages": [{"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
    )
    .unwrap();
    assert_eq!(r.prompt, Prompt::Chat(vec![ChatMessage::new("system", "be brief"), ChatMessage::new("user", "ab")]));
}

#[test]
fn each_out_of_range_field_is_named() {
    refused(chat(&format!("{{{MSG}, \"n\": -1}}")), "n");
    refused(chat(&format!("{{{MSG}, \"n\": 1000000}}")), "n");
    refused(chat(&format!("{{{MSG}, \"n\": 0}}")), "n");
    refused(chat(&format!("{{{MSG}, \"max_tokens\": 0}}")), "max_tokens");
    refused(chat(&format!("{{{MSG}, \"max_tokens\": -5}}")), "max_tokens");
    refused(chat(&format!("{{{MSG}, \"max_completion_tokens\": 0}}")), "max_completion_tokens");
    refused(chat(&format!("{{{MSG}, \"temperature\": 2.5}}")), "temperature");
    refused(chat(&format!("{{{MSG}, \"top_p\": 0}}")), "top_p");
    refused(chat(&format!("{{{MSG}, \"logprobs\": true, \"top_logprobs\": 21}}")), "top_logprobs");
    refused(chat(&format!("{{{MSG}, \"logprobs\": true, \"top_logprobs\": -1}}")), "top_logprobs");
    refused(chat(&format!("{{{MSG}, \"top_logprobs\": 3}}")), "top_logprobs");
    refused(chat(&format!("{{{MSG}, \"stop\": \"\"}}")), "stop");
    refused(chat(&format!("{{{MSG}, \"stop\": [\"a\", \"\"]}}")), "stop");
    refused(chat(&format!("{{{MSG}, \"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}}")), "stop");
    refused(chat(&format!("{{{MSG}, \"stop\": 3}}")), "stop");
    refused(chat(&format!("{{{MSG}, \"logit_bias\": {{\"x\": 1}}}}")), "logit_bias");
    refused(chat(&format!("{{{MSG}, \"logit_bias\": {{\"5\": 101}}}}")), "logit_bias");
    refused(chat(&format!("{{{MSG}, \"frequency_penalty\": 0.5}}")), "frequency_penalty");
    refused(chat(&format!("{{{MSG}, \"metadata\": {{\"a\": \"b\"}}}}")), "metadata");
    let many: Vec<String> = (0..17).map(|i| format!("\"k{i}\": \"v\"")).collect();
    refused(chat(&format!("{{{MSG}, \"store\": true, \"metadata\": {{{}}}}}", many.join(","))), "metadata");
    refused(chat(r#"{"model": "", "messages": [{"role": "user", "content": "hi"}]}"#), "model");
    refused(chat(r#"{"model": "m", "messages": []}"#), "messages");
    refused(chat(r#"{"model": "m", "messages": [{"role": "user", "content": ""}]}"#), "messages");
    refused(chat(r#"{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}"#), "messages[0].role");
    refused(
        chat(r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#),
        "messages[0].content[0]",
    );
    refused(completion(r#"{"model": "m", "prompt": ""}"#), "prompt");
    refused(completion(r#"{"model": "m", "prompt": ["a", "b"]}"#), "prompt");
    refused(completion(r#"{"model": "m", "prompt": {"text": "x"}}"#), "prompt");
    refused(completion(r#"{"model": "m", "prompt": "x", "logprobs": 21}"#), "logprobs");
    refused(completion(r#"{"model": "m", "prompt": "x", "echo": true}"#), "echo");
}

#[test]
fn wrong_types_and_missing_fields_are_named() {
    refused(chat(&format!("{{{MSG}, \"n\": \"2\"}}")), "n");
    refused(chat(&format!("{{{MSG}, \"stream\": \"yes\"}}")), "stream");
    refused(chat(&format!("{{{MSG}, \"temperature\": null, \"seed\": 1.5}}")), "seed");
    let m = chat(r#"{"messages": [{"role": "user", "content": "hi"}]}"#).unwrap_err().message;
    assert!(m.contains("model"), "{m}");
    let m = chat(r#"{"model": "m"}"#).unwrap_err().message;
    assert!(m.contains("messages"), "{m}");
}

#[test]
fn bodies_that_are_not_json_objects_are_refused() {
    for body in [&b"\xff\xfe{}"[..], b"", b"   ", b"{", b"[]", b"null", b"\"text\""] {
        let err = parse_request(Endpoint::Chat, body).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST, "{body:?}: {err}");
    }
    assert!(parse_request(Endpoint::Chat, b"\xff").unwrap_err().message.contains("UTF-8"));
}

#[test]
fn a_full_completion_request_is_understood() {
    let r = completion(
        r#"{"model": "m", "prompt": ["Once"], "max_tokens": 7, "temperature": 0, "n": 3, "stop": "\n",
            "seed": 42, "logprobs": 5, "stream": true, "stream_options": {"include_usage": true},
            "logit_bias": {"17": -100}, "store": true, "metadata": {"team": "support"}, "user": "u1"}"#,
    )
    .unwrap();
    assert_eq!(r.prompt, Prompt::Text("Once".into()));
    assert_eq!((r.n, r.max_tokens, r.seed, r.logprobs), (3, Some(7), Some(42), Some(5)));
    assert_eq!(r.sampling.stop, vec!["\n".to_string()]);
    assert!(r.stream && r.include_usage && r.store);
    assert_eq!(r.logit_bias, vec![(17, -100.0)]);
    assert_eq!(r.metadata.get("team").map(String::as_str), Some("support"));
}

#[test]
fn token_id_prompts_and_prompt_logprobs_are_understood_and_checked() {
    let r = completion(r#"{"model": "m", "prompt": [1, 2, 300], "max_tokens": 1, "prompt_logprobs": 5}"#).unwrap();
    assert_eq!((r.prompt, r.prompt_logprobs), (Prompt::Tokens(vec![1, 2, 300]), Some(5)));
    let r = completion(r#"{"model": "m", "prompt": [[7, 8]]}"#).unwrap();
    assert_eq!((r.prompt, r.prompt_logprobs), (Prompt::Tokens(vec![7, 8]), None));
    for (body, field) in [
        (r#"{"model": "m", "prompt": [1, -2]}"#, "prompt"),
        (r#"{"model": "m", "prompt": [1, "a"]}"#, "prompt"),
        (r#"{"model": "m", "prompt": []}"#, "prompt"),
        (r#"{"model": "m", "prompt": [[1, 2], [3]]}"#, "prompt"),
        (r#"{"model": "m", "prompt": [1], "prompt_logprobs": 21}"#, "prompt_logprobs"),
        (r#"{"model": "m", "prompt": [1], "prompt_logprobs": 0}"#, "prompt_logprobs"),
        (r#"{"model": "m", "prompt": [1], "prompt_logprobs": 2, "stream": true}"#, "prompt_logprobs"),
        (r#"{"model": "m", "prompt": [1], "store": true}"#, "store"),
    ] {
        let e = completion(body).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(field), "{body}: {}", e.message);
    }
}

/// A JSON value of any shape, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "store",
    "metadata",
    "echo",
    "suffix",
    "best_of",
    "frequency_penalty",
    "presence_penalty",
    "user",
    "tools",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic, and a refusal is always a 400 with a message.
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        for endpoint in [Endpoint::Chat, Endpoint::Completions] {
            if let Err(e) = parse_request(endpoint, &body) {
                prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    /// Requests built from the real field names with values of any type: never a panic; an
    /// accepted request is within every documented range.
    #[test]
    fn known_fields_with_any_values_are_validated(
        fields in prop::collection::btree_map(prop::sample::select(FIELDS), json_value(), 0..8),
        base in any::<bool>(),
    ) {
        let mut body = serde_json::Map::new();
        if base {
            body.insert("model".into(), json!("m"));
            body.insert("messages".into(), json!([{"role": "user", "content": "hi"}]));
            body.insert("prompt".into(), json!("hi"));
        }
        for (k, v) in fields {
            body.insert(k.to_string(), v);
        }
        let text = Value::Object(body).to_string();
        for endpoint in [Endpoint::Chat, Endpoint::Completions] {
            match parse_request(endpoint, text.as_bytes()) {
                Ok(r) => {
                    prop_assert!(r.n >= 1 && r.n as i64 <= MAX_N);
                    prop_assert!(r.max_tokens.is_none_or(|m| m >= 1));
                    prop_assert!(r.logprobs.is_none_or(|k| k as i64 <= MAX_TOP_LOGPROBS));
                    prop_assert!(r.sampling.validate().is_ok());
                    prop_assert!(r.sampling.stop.len() <= MAX_STOP);
                    prop_assert!(r.metadata.len() <= MAX_METADATA);
                    prop_assert!(!r.model.is_empty());
                }
                Err(e) => {
                    prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
    }
}
