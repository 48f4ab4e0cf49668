//! Traffic capture (`store: true`): rows round-trip byte for byte, survive kill -9, and export
//! as prompts that `distill capture export --dataset` turns into the next teacher-signal dataset.

mod common;
use common::server::{create_key, Server};
use common::{distill, text};

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distill_models::fixtures::tiny_gguf;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct RawLine {
    id: String,
    metadata: BTreeMap<String, String>,
    request: String,
    response: String,
}

fn export_raw(db: &Path, dir: &Path) -> Vec<RawLine> {
    let out = dir.join("raw.jsonl");
    let run =
        distill(&["capture", "export", "--db", db.to_str().unwrap(), "--format", "raw", "-o", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    std::fs::read_to_string(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn captured_exchanges_round_trip_byte_for_byte_and_become_the_next_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 41).unwrap();
    let key = create_key(&db, "user", &[]);
    let server = Server::start(&model, &db, &[]);

    // Odd spacing, escapes and non-ASCII: what is stored must be exactly what was sent.
    let chat = "{ \"model\":\"tiny\",\n  \"messages\": [{\"role\": \"user\", \"content\": \"h\\u00e9llo ✓ the\"}],\
                \"max_tokens\": 9, \"store\": true, \"metadata\": {\"team\": \"support\", \"ticket\": \"42\"} }";
    let (status, chat_response, _) = server.post("/v1/chat/completions", &key, chat);
    assert_eq!(status, 200, "{chat_response}");
    let plain =
        r#"{"model": "tiny", "prompt": "the hello", "max_tokens": 5, "store": true, "metadata": {"team": "sales"}}"#;
    let (_, plain_response, _) = server.post("/v1/completions", &key, plain);
    let unstored = r#"{"model": "tiny", "prompt": "not kept", "max_tokens": 3}"#;
    assert_eq!(server.post("/v1/completions", &key, unstored).0, 200);
    let streamed = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 7, "n": 2,
                          "stream": true, "store": true, "metadata": {"team": "support"}})
    .to_string();
    let (status, stream_body, _) = server.post("/v1/chat/completions", &key, &streamed);
    assert_eq!(status, 200);

    let rows = export_raw(&db, dir.path());
    assert_eq!(rows.len(), 3, "three requests asked to be stored");
    let by_id: BTreeMap<&str, &RawLine> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
    for (sent, received) in [(chat, &chat_response), (plain, &plain_response)] {
        let id = serde_json::from_str::<Value>(received).unwrap()["id"].as_str().unwrap().to_string();
        let row = by_id[id.as_str()];
        assert_eq!(row.request, sent, "request bytes");
        assert_eq!(row.response, received.as_str(), "response bytes");
    }
    assert_eq!(by_id.values().next().unwrap().metadata.get("team").map(String::as_str), Some("support"));
    // The stored form of a stream is the complete response it adds up to.
    let stream_id = stream_body
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["id"].clone())
        .unwrap();
    let stored: Value = serde_json::from_str(&by_id[stream_id.as_str().unwrap()].response).unwrap();
    let mut streamed_text = [String::new(), String::new()];
    for data in stream_body.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]") {
        for c in serde_json::from_str::<Value>(data).unwrap()["choices"].as_array().unwrap() {
            streamed_text[c["index"].as_u64().unwrap() as usize] += c["delta"]["content"].as_str().unwrap_or("");
        }
    }
    for (i, t) in streamed_text.iter().enumerate() {
        assert_eq!(stored["choices"][i]["message"]["content"].as_str().unwrap(), t);
    }

    // Prompts for the next run (only team=support, one line per choice: 1 + 2), scored by the
    // teacher straight into a teacher-signal dataset.
    let prompts = dir.path().join("support.jsonl");
    let dataset = dir.path().join("dataset");
    let (db_arg, prompts_arg, dataset_arg) =
        (db.to_str().unwrap(), prompts.to_str().unwrap(), dataset.to_str().unwrap());
    let out = distill(&[
        "capture",
        "export",
        "--db",
        db_arg,
        "--metadata",
        "team=support",
        "-o",
        prompts_arg,
        "--dataset",
        dataset_arg,
        "--teacher",
        model.to_str().unwrap(),
        "--k",
        "4",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> =
        std::fs::read_to_string(&prompts).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    let first = lines.iter().find(|l| l["metadata"]["ticket"] == "42").expect("the chat request is exported");
    assert_eq!(first["messages"][0]["content"], "héllo ✓ the");
    assert!(lines.iter().all(|l| l["completion"].is_string() && l["metadata"]["id"].is_string()));
    let out = distill(&["inspect", dataset.to_str().unwrap()]);
    let summary = text(&out.stdout);
    assert!(
        summary.lines().any(|l| l.starts_with("sequences") && l.split_whitespace().nth(1) == Some("3")),
        "{summary}"
    );
}

#[test]
fn acknowledged_captures_survive_repeated_kill_9_under_write_load() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 42).unwrap();
    let key = create_key(&db, "user", &[]);
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    for round in 0..3u64 {
        let server = Server::start(&model, &db, &[]);
        let url = format!("{}/v1/chat/completions", server.url);
        let writers: Vec<_> = (0..6)
            .map(|w| {
                let (url, key, acknowledged) = (url.clone(), key.clone(), acknowledged.clone());
                std::thread::spawn(move || {
                    for i in 0.. {
                        let body = json!({"model": "tiny", "messages": [{"role": "user", "content": format!("round {round} writer {w} request {i}")}],
                                          "max_tokens": 4, "store": true, "metadata": {"writer": w.to_string()}});
                        let reply = ureq::post(&url)
                            .set("Authorization", &format!("Bearer {key}"))
                            .timeout(Duration::from_secs(30))
                            .send_string(&body.to_string());
                        match reply {
                            Ok(r) => {
                                let v: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
                                acknowledged.lock().unwrap().insert(v["id"].as_str().unwrap().to_string());
                            }
                            Err(_) => return, // the server was killed
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400 + 150 * round));
        server.kill();
        for w in writers {
            w.join().unwrap();
        }
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 30, "the load was real: {} acknowledged", acknowledged.len());
    let stored: BTreeSet<String> = export_raw(&db, dir.path()).into_iter().map(|r| r.id).collect();
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged rows lost, e.g. {:?}", lost.len(), lost.first());
    // An independent check of the file: SQLite's own, through Python's sqlite3 module.
    let check = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])",
        ])
        .arg(&db)
        .output()
        .expect("python3 runs");
    assert_eq!(text(&check.stdout).trim(), "ok", "{}", text(&check.stderr));
}
