//! `distill serve` over real HTTP on loopback: the OpenAI endpoints, keys and limits, capture,
//! validation, continuous batching and cancellation.

mod common;
use common::server::{create_key, Server};
use common::{distill, text};

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use distill_models::fixtures::tiny_gguf;
use serde_json::{json, Value};

fn tiny(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    tiny_gguf(&path, 31).unwrap();
    path
}

fn chat(content: &str, extra: Value) -> String {
    let mut body = json!({"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 12});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body.to_string()
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

#[test]
fn keys_guard_every_route_but_health_and_admin_keys_cannot_generate() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let user = create_key(&db, "user", &[]);
    let admin = create_key(&db, "ops", &["--admin"]);
    let server = Server::start(&tiny(dir.path()), &db, &[]);

    assert_eq!(server.get("/health", None).0, 200);
    let (status, body, _) = server.get("/v1/models", None);
    assert_eq!(status, 401, "{body}");
    assert!(parse(&body)["error"]["message"].as_str().unwrap().contains("distill keys create"));
    assert_eq!(server.post("/v1/chat/completions", "dk-not-a-key", &chat("hi", json!({}))).0, 401);
    let (status, body, _) = server.get("/v1/models", Some(&user));
    assert_eq!((status, parse(&body)["data"][0]["id"].as_str()), (200, Some("tiny")));
    let (status, body, _) = server.post("/v1/chat/completions", &admin, &chat("hi", json!({})));
    assert_eq!(status, 403, "{body}");
    assert_eq!(server.get("/v1/admin/keys", Some(&user)).0, 403);

    // Admin over HTTP: create a key, use it, revoke it, and it stops working at once.
    let (status, body, _) = server.post("/v1/admin/keys", &admin, r#"{"name": "temp", "rpm": 100}"#);
    assert_eq!(status, 201, "{body}");
    let temp = parse(&body)["secret"].as_str().unwrap().to_string();
    assert_eq!(server.post("/v1/chat/completions", &temp, &chat("hi", json!({}))).0, 200);
    let listed = parse(&server.get("/v1/admin/keys", Some(&admin)).1);
    let stored = serde_json::to_string(&listed).unwrap();
    assert!(!stored.contains(&temp) && !stored.contains(&user), "secrets never leave the server");
    let out = distill(&["keys", "revoke", "--db", db.to_str().unwrap(), "temp"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(server.post("/v1/chat/completions", &temp, &chat("hi", json!({}))).0, 401);
    let db_bytes = std::fs::read(&db).unwrap();
    assert!(!db_bytes.windows(user.len()).any(|w| w == user.as_bytes()), "only hashes are stored");
}

#[test]
fn chat_and_completions_follow_the_openai_format_and_seeds_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let key = create_key(&db, "user", &[]);
    let server = Server::start(&tiny(dir.path()), &db, &[]);

    let request =
        chat("hello there", json!({"n": 3, "seed": 7, "temperature": 0.9, "logprobs": true, "top_logprobs": 4}));
    let (status, body, _) = server.post("/v1/chat/completions", &key, &request);
    assert_eq!(status, 200, "{body}");
    let r = parse(&body);
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"].as_array().unwrap().len(), 3);
    let mut completion_tokens = 0;
    for (i, c) in r["choices"].as_array().unwrap().iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["role"], "assistant");
        let content = c["logprobs"]["content"].as_array().unwrap();
        completion_tokens += content.len() as u64;
        for t in content {
            let top = t["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 4);
            assert!(top[0]["logprob"].as_f64().unwrap() >= t["logprob"].as_f64().unwrap() - 1e-6);
        }
        let joined: Vec<u8> = content
            .iter()
            .flat_map(|t| t["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8))
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&joined),
            c["message"]["content"].as_str().unwrap(),
            "token bytes spell the text"
        );
    }
    assert_eq!(r["usage"]["completion_tokens"], completion_tokens);
    assert_eq!(r["usage"]["total_tokens"], r["usage"]["prompt_tokens"].as_u64().unwrap() + completion_tokens);
    let again = parse(&server.post("/v1/chat/completions", &key, &request).1);
    assert_eq!(again["choices"], r["choices"], "the same seed gives the same completions");

    let (status, body, _) = server.post(
        "/v1/completions",
        &key,
        r#"{"model": "tiny", "prompt": "the hello", "max_tokens": 5, "logprobs": 2, "temperature": 0}"#,
    );
    assert_eq!(status, 200, "{body}");
    let r = parse(&body);
    assert_eq!(r["object"], "text_completion");
    let lp = &r["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), lp["token_logprobs"].as_array().unwrap().len());
    assert_eq!(lp["text_offset"][0], 0);
    assert_eq!(
        lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect::<String>(),
        r["choices"][0]["text"].as_str().unwrap()
    );
}

#[test]
fn a_stream_carries_the_same_text_as_the_complete_response() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let key = create_key(&db, "user", &[]);
    let server = Server::start(&tiny(dir.path()), &db, &[]);
    let whole = parse(
        &server.post("/v1/chat/completions", &key, &chat("hello", json!({"seed": 3, "n": 2, "max_tokens": 20}))).1,
    );
    let (status, body, _) = server.post(
        "/v1/chat/completions",
        &key,
        &chat("hello", json!({"seed": 3, "n": 2, "max_tokens": 20, "stream": true, "stream_options": {"include_usage": true}, "logprobs": true})),
    );
    assert_eq!(status, 200, "{body}");
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let mut texts = [String::new(), String::new()];
    let mut reasons = [None, None];
    let mut usage = None;
    let mut streamed_tokens = 0;
    for chunk in &data[..data.len() - 1] {
        let c = parse(chunk);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], data.first().map(|d| parse(d)["id"].clone()).unwrap());
        if !c["usage"].is_null() {
            usage = Some(c["usage"].clone());
        }
        for choice in c["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            texts[i] += choice["delta"]["content"].as_str().unwrap_or("");
            if let Some(content) = choice["logprobs"]["content"].as_array() {
                streamed_tokens += content.len();
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                reasons[i] = Some(r.to_string());
            }
        }
    }
    for i in 0..2 {
        assert_eq!(texts[i], whole["choices"][i]["message"]["content"].as_str().unwrap(), "choice {i}");
        assert_eq!(reasons[i].as_deref(), whole["choices"][i]["finish_reason"].as_str());
    }
    assert_eq!(usage.unwrap(), whole["usage"]);
    assert_eq!(
        streamed_tokens as u64,
        whole["usage"]["completion_tokens"].as_u64().unwrap(),
        "every token's logprob is streamed once"
    );
}

#[test]
fn concurrent_requests_batched_together_match_each_served_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let key = create_key(&db, "user", &[]);
    let server = Server::start(&tiny(dir.path()), &db, &["--max-batch", "8"]);
    let prompts: Vec<String> = (0..12).map(|i| format!("hello {}", "the ".repeat(i % 5))).collect();
    let body = |p: &str, i: usize| chat(p, json!({"seed": i, "temperature": 0.7, "max_tokens": 16 + i}));
    let alone: Vec<Value> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| parse(&server.post("/v1/chat/completions", &key, &body(p, i)).1))
        .collect();
    let together: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (server, key, body) = (&server, &key, body(p, i));
                s.spawn(move || parse(&server.post("/v1/chat/completions", key, &body).1))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"], "request {i}");
    }
}

#[test]
fn bad_requests_get_a_4xx_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let key = create_key(&db, "user", &[]);
    let server = Server::start(&tiny(dir.path()), &db, &["--max-body-bytes", "4096"]);
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("/v1/chat/completions", chat("hi", json!({"max_tokens": 100000})), 400, Some("max_tokens")),
        (
            "/v1/chat/completions",
            chat("hi", json!({"max_completion_tokens": 100000})),
            400,
            Some("max_completion_tokens"),
        ),
        ("/v1/chat/completions", chat("hi", json!({"n": -2})), 400, Some("n")),
        ("/v1/chat/completions", chat("hi", json!({"n": 1_000_000_000})), 400, Some("n")),
        ("/v1/chat/completions", chat("hi", json!({"logprobs": true, "top_logprobs": 50})), 400, Some("top_logprobs")),
        ("/v1/chat/completions", chat("hi", json!({"stop": ["x", ""]})), 400, Some("stop")),
        ("/v1/chat/completions", chat("hi", json!({"temperature": "hot"})), 400, Some("temperature")),
        ("/v1/chat/completions", chat("hi", json!({"model": "gpt-5"})), 404, Some("model")),
        ("/v1/chat/completions", chat("", json!({})), 400, Some("messages")),
        ("/v1/chat/completions", chat(&"the ".repeat(200), json!({})), 400, Some("messages")),
        ("/v1/completions", r#"{"model": "tiny", "prompt": ""}"#.into(), 400, Some("prompt")),
        ("/v1/completions", r#"{"model": "tiny"}"#.into(), 400, None),
        ("/v1/completions", "{not json".into(), 400, None),
        ("/v1/chat/completions", chat(&"x".repeat(5000), json!({})), 413, None),
        // Fields of the API this server does not implement are refused, not ignored.
        (
            "/v1/chat/completions",
            chat("hi", json!({"response_format": {"type": "json_object"}})),
            400,
            Some("response_format"),
        ),
        ("/v1/chat/completions", chat("hi", json!({"tool_choice": "auto"})), 400, Some("tool_choice")),
        ("/v1/chat/completions", chat("hi", json!({"functions": []})), 400, Some("functions")),
        ("/v1/chat/completions", chat("hi", json!({"parallel_tool_calls": false})), 400, Some("parallel_tool_calls")),
        ("/v1/chat/completions", chat("hi", json!({"top_k": -5})), 400, Some("top_k")),
        ("/v1/completions", r#"{"model": "tiny", "prompt": "hi", "min_p": 0.1}"#.into(), 400, Some("min_p")),
        ("/v1/chat/completions", chat("hi", json!({"repetition_penalty": 1.1})), 400, Some("repetition_penalty")),
        (
            "/v1/chat/completions",
            chat("hi", json!({"stream_options": {"include_usage": true}})),
            400,
            Some("stream_options"),
        ),
        ("/v1/chat/completions", chat("hi", json!({"logit_bias": {"99999999": 5}})), 400, Some("logit_bias")),
    ];
    for (path, body, status, param) in cases {
        let (got, response, _) = server.post(path, &key, &body);
        assert_eq!(got, status, "{path} {body:.80}: {response}");
        let error = &parse(&response)["error"];
        assert!(!error["message"].as_str().unwrap().is_empty());
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{response}");
        }
    }
    // Invalid UTF-8, sent raw.
    let mut stream = std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    let payload = b"{\"model\": \"tiny\", \"prompt\": \"\xff\xfe\"}";
    write!(stream, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", payload.len()).unwrap();
    stream.write_all(payload).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("UTF-8"), "{reply}");
    assert_eq!(server.get("/v1/nothing", Some(&key)).0, 404);
    assert_eq!(server.get("/health", None).0, 200, "the server is still up");
    // vLLM's `top_k` is honoured: top_k = 1 samples the argmax, whatever the temperature.
    let text_of = |extra: Value| {
        let (status, body, _) = server.post("/v1/chat/completions", &key, &chat("hello the", extra));
        assert_eq!(status, 200, "{body}");
        parse(&body)["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    };
    let greedy = text_of(json!({"temperature": 0}));
    // The tiny model's top token leads by 8 nats or more, so at T 2 about one text in 30 leaves
    // the greedy path: 64 seeds make that near certain (2 of them do).
    let sampled = (1..=64).any(|seed| text_of(json!({"temperature": 2, "seed": seed})) != greedy);
    assert!(sampled, "without top_k these seeds sample away from the greedy text");
    for seed in 1..=8 {
        assert_eq!(text_of(json!({"temperature": 2, "top_k": 1, "seed": seed})), greedy, "seed {seed}");
    }
    // `response_format: text` asks for what the server does anyway.
    let (status, body, _) =
        server.post("/v1/chat/completions", &key, &chat("hi", json!({"response_format": {"type": "text"}})));
    assert_eq!(status, 200, "{body}");
    // The admin routes answer bad input with the same JSON errors.
    let admin = create_key(&db, "ops", &["--admin"]);
    let (status, body, _) = server.get("/v1/admin/usage?since=abc", Some(&admin));
    assert_eq!((status, parse(&body)["error"]["param"].as_str()), (400, Some("since")), "{body}");
    let (status, body, _) = server.post("/v1/admin/keys", &admin, &json!({"name": "n".repeat(300)}).to_string());
    assert_eq!((status, parse(&body)["error"]["param"].as_str()), (400, Some("name")), "{body}");
}

#[test]
fn rate_limits_and_the_concurrency_cap_answer_429_and_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let slow = create_key(&db, "slow", &["--rpm", "2"]);
    let frugal = create_key(&db, "frugal", &["--tpm", "40"]);
    let server = Server::start(&tiny(dir.path()), &db, &[]);
    for _ in 0..2 {
        assert_eq!(server.post("/v1/chat/completions", &slow, &chat("hi", json!({}))).0, 200);
    }
    let (status, body, retry) = server.post("/v1/chat/completions", &slow, &chat("hi", json!({})));
    assert_eq!(status, 429, "{body}");
    let retry: u64 = retry.expect("Retry-After is set").parse().unwrap();
    assert!((1..=61).contains(&retry), "{retry}");
    assert!(parse(&body)["error"]["message"].as_str().unwrap().contains("2 requests per minute"));

    // ~20 prompt tokens + 12 generated each: the second request no longer fits 40 tokens/min.
    assert_eq!(server.post("/v1/chat/completions", &frugal, &chat("hi", json!({}))).0, 200);
    let (status, body, retry) = server.post("/v1/chat/completions", &frugal, &chat("hi", json!({})));
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some() && body.contains("tokens per minute"), "{body}");

    // Every token a request may generate counts at admission: 16 choices of 8 tokens do not
    // fit 50 tokens/min, and without max_tokens the choices share what the minute has left.
    let bulk = create_key(&db, "bulk", &["--tpm", "50"]);
    let (status, body, _) = server.post("/v1/chat/completions", &bulk, &chat("hi", json!({"n": 16, "max_tokens": 8})));
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("max_tokens ≤"), "{body}");
    let (status, body, _) =
        server.post("/v1/chat/completions", &bulk, &chat("hi", json!({"n": 4, "max_tokens": null})));
    assert_eq!(status, 200, "{body}");
    let total = parse(&body)["usage"]["total_tokens"].as_u64().unwrap();
    assert!(total <= 50, "a 50 tokens/min key was served {total} tokens: {body}");

    let usage = distill(&["keys", "usage", "--db", db.to_str().unwrap()]);
    assert!(usage.status.success());
    let listing = text(&usage.stdout);
    assert_eq!(listing.lines().count(), 4, "a header and one line per key that was served:\n{listing}");
}

#[test]
fn a_disconnected_stream_frees_its_slot_and_its_usage_is_recorded() {
    let Some(teacher) = distill_models::teacher::default_teacher() else {
        panic!("the default teacher is needed: {}", distill_models::teacher::FETCH_HINT);
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let key = create_key(&db, "user", &[]);
    let other = create_key(&db, "other", &[]);
    let third = create_key(&db, "third", &[]);
    let server = Server::start(&teacher, &db, &["--max-concurrent", "2", "--max-concurrent-per-key", "1"]);
    // Ban end-of-sequence so the stream would run for 4,000 tokens (minutes) if not cancelled.
    let eos = json!({"0": -100, "2": -100});
    let long = chat(
        "Tell me a very long story.",
        json!({"max_tokens": 4000, "stream": true, "logit_bias": eos, "temperature": 0}),
    );
    let open_stream = |key: &str| {
        let mut stream = std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}",
            long.len()
        )
        .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut chunks = 0;
        let mut line = String::new();
        while chunks < 5 {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended early");
            if line.starts_with("data: ") {
                chunks += 1;
            }
        }
        (stream, reader)
    };
    let first = open_stream(&key);
    // The key has its one request in flight: another from it is turned away, another key's is served.
    let (status, body, retry) = server.post("/v1/chat/completions", &key, &chat("hi", json!({"max_tokens": 2})));
    assert_eq!((status, retry.as_deref()), (429, Some("1")), "{body}");
    assert!(body.contains("in flight"), "{body}");
    let (status, body, _) = server.post("/v1/chat/completions", &other, &chat("hi", json!({"max_tokens": 2})));
    assert_eq!(status, 200, "{body}");
    // Both slots taken: a request of any key is turned away.
    let second = open_stream(&other);
    let (status, body, retry) = server.post("/v1/chat/completions", &third, &chat("hi", json!({"max_tokens": 2})));
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    for (stream, reader) in [first, second] {
        drop(reader);
        stream.shutdown(std::net::Shutdown::Both).unwrap();
    }
    // The slots come back within a few decoding steps of the disconnects.
    let started = Instant::now();
    loop {
        let (status, body, _) = server.post("/v1/chat/completions", &key, &chat("hi", json!({"max_tokens": 2})));
        if status == 200 {
            break;
        }
        assert!(status == 503 || status == 429, "{body}");
        assert!(started.elapsed() < Duration::from_secs(20), "the slot was not freed");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300)); // the aborted request's usage row is written in the background
    let usage = distill(&["keys", "usage", "--db", db.to_str().unwrap()]);
    let listing = text(&usage.stdout);
    // Two keys were served (the third was only turned away), each with one aborted stream and
    // one short request.
    let rows: Vec<Vec<&str>> = listing.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{listing}");
    for row in rows {
        let (requests, completion, aborted): (u64, u64, u64) =
            (row[1].parse().unwrap(), row[3].parse().unwrap(), row[4].parse().unwrap());
        assert_eq!((requests, aborted), (2, 1), "{listing}");
        assert!(
            (5..400).contains(&completion),
            "tokens of the aborted stream are counted, and it stopped early: {listing}"
        );
    }
}

#[test]
fn slow_and_numerous_connections_are_closed_and_health_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let key = create_key(&db, "user", &[]);
    let flags = ["--header-timeout", "1", "--body-timeout", "1", "--max-connections-per-address", "8"];
    let server = Server::start(&tiny(dir.path()), &db, &flags);
    let addr = server.url.trim_start_matches("http://").to_string();
    let connect = || {
        let s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    // Closed by the server: the read ends (EOF, or a reset), neither answered nor timed out.
    let closed = |s: &mut std::net::TcpStream| match s.read(&mut [0u8; 256]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };

    // Eight half-sent requests fill the address's connections; a ninth is closed at once.
    let mut slow: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect();
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut ninth = connect();
    let _ = ninth.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(closed(&mut ninth), "a ninth connection from one address was served");
    // The header deadline closes the half-sent ones, and the server answers again.
    let started = Instant::now();
    for s in &mut slow {
        assert!(closed(s), "a connection without whole headers was kept");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(server.get("/health", None).0, 200);

    // Headers sent, the body not: 408 after the body deadline.
    let mut s = connect();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\""
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = BufReader::new(&mut s).read_line(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    // A whole request on time is served as before.
    assert_eq!(server.post("/v1/chat/completions", &key, &chat("hi", json!({}))).0, 200);
}

#[test]
fn the_official_openai_python_client_works_against_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let key = create_key(&db, "user", &[]);
    let limited = create_key(&db, "limited", &["--rpm", "1"]);
    let server = Server::start(&tiny(dir.path()), &db, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/openai_client.py");
    let out = std::process::Command::new("python3")
        .args([script, &server.url, &key, &limited])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success() && text(&out.stdout).trim() == "ok",
        "{}{}\n(the `openai` package comes from tests/requirements.txt)",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn an_exported_student_directory_serves_the_same_text_as_its_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let key = create_key(&db, "user", &[]);
    let gguf = tiny(dir.path());
    let hf = dir.path().join("student");
    let out = distill(&["export", gguf.to_str().unwrap(), "-o", hf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let request = r#"{"model": "tiny", "prompt": "the hello", "max_tokens": 10, "temperature": 0}"#;
    let from_gguf = parse(&Server::start(&gguf, &db, &[]).post("/v1/completions", &key, request).1);
    let from_dir = parse(&Server::start(&hf, &db, &[]).post("/v1/completions", &key, request).1);
    assert_eq!(from_gguf["choices"][0]["text"], from_dir["choices"][0]["text"]);
    assert_eq!(from_gguf["usage"], from_dir["usage"]);
}

#[test]
fn a_busy_port_is_refused_before_loading_and_an_api_key_serves_a_single_user() {
    let dir = tempfile::tempdir().unwrap();
    let (model, db) = (tiny(dir.path()), dir.path().join("serve.db"));
    // A port someone else holds: refused at once, with the way out.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let out = common::command()
        .args(["serve", model.to_str().unwrap(), "--db", db.to_str().unwrap(), "--port", &port])
        .output()
        .unwrap();
    let stderr = common::text(&out.stderr);
    assert!(!out.status.success() && stderr.contains("cannot listen") && stderr.contains("--port"), "{stderr}");
    assert!(!stderr.contains("loaded "), "the model was loaded before the port was checked: {stderr}");
    drop(holder);

    // --api-key: no `distill keys create` needed; other secrets are still refused.
    let secret = "sk-local-single-user";
    let server = Server::start(&model, &db, &["--api-key", secret]);
    let (status, body, _) = server.post("/v1/chat/completions", secret, &chat("hi", json!({})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.post("/v1/chat/completions", "sk-local-other-user", &chat("hi", json!({}))).0, 401);
    server.kill();
    // The same key again finds its row; a short one is refused.
    let server = Server::start(&model, &db, &["--api-key", secret]);
    assert_eq!(server.post("/v1/chat/completions", secret, &chat("hi", json!({}))).0, 200);
    server.kill();
    let out = common::command()
        .args(["serve", model.to_str().unwrap(), "--db", db.to_str().unwrap(), "--port", "0", "--api-key", "short"])
        .output()
        .unwrap();
    let stderr = common::text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("at least 8 characters") && !stderr.contains("loaded "),
        "{stderr}"
    );
}
