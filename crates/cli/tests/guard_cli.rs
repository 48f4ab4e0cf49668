//! The extraction guard in a real `distill serve` over loopback: a logprob sweep is flagged,
//! throttled (429) and, where allowed, revoked (401); every decision is audited with its
//! signal values; `distill guard report` lists it; an admin clear restores the key, a declared
//! use keeps it served; ordinary traffic on another key is left alone. Thresholds are lowered in a config file so the test
//! needs tens of requests, not hundreds.

mod common;
use common::server::{create_key, Server};
use common::{distill, text};

use std::path::Path;

use distill_models::fixtures::tiny_gguf;
use serde_json::{json, Value};

fn sweep(i: usize) -> String {
    json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": format!("Fact {i}: the word after this is")}],
        "max_tokens": 1, "logprobs": true, "top_logprobs": 20,
    })
    .to_string()
}

fn ordinary(i: usize) -> String {
    let asks = ["how do I water a cactus", "is my invoice late", "what should I cook tonight", "fix my bike chain"];
    json!({"model": "tiny", "messages": [{"role": "user", "content": asks[i % asks.len()]}], "max_tokens": 4})
        .to_string()
}

fn config(dir: &Path, max_action: &str, throttle_rpm: u64) -> String {
    let path = dir.join(format!("guard-{max_action}.toml"));
    std::fs::write(
        &path,
        format!(
            "max_action = \"{max_action}\"\nwindow = 20\nmin_requests = 5\neval_every = 2\n\
             probe_requests = 6\nescalate_after = 6\nthrottle_rpm = {throttle_rpm}\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn guard(db: &Path, args: &[&str]) -> String {
    let mut all = vec!["guard"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--db", db.to_str().unwrap()]);
    let out = distill(&all);
    assert!(out.status.success(), "distill guard {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn a_logprob_sweep_is_flagged_throttled_audited_and_cleared_while_ordinary_traffic_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 31).unwrap();
    let db = dir.path().join("serve.db");
    let sweeper = create_key(&db, "sweeper", &[]);
    let person = create_key(&db, "person", &[]);
    let admin = create_key(&db, "ops", &["--admin"]);
    let server = Server::start(&model, &db, &["--guard-config", &config(dir.path(), "throttle", 2)]);

    for i in 0..12 {
        let mut request: Value = serde_json::from_str(&ordinary(i)).unwrap();
        request["store"] = json!(true);
        let (status, body, _) = server.post("/v1/chat/completions", &person, &request.to_string());
        assert_eq!(status, 200, "{body}");
    }
    // Captured traffic replays through the guard as it was served: nothing to act on.
    let traffic = dir.path().join("traffic.jsonl");
    let db_arg = db.to_str().unwrap();
    let out = distill(&["capture", "export", "--db", db_arg, "--format", "traffic", "-o", traffic.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&traffic).unwrap().lines().count(), 12);
    let out = distill(&["guard", "replay", traffic.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("12 requests from 1 keys; the guard acted on 0 keys"), "{}", text(&out.stderr));
    // Flagged at 6 sweeps (still served), throttled to 2 requests a minute at 12.
    let mut refused = None;
    for i in 0..20 {
        let (status, body, retry) = server.post("/v1/chat/completions", &sweeper, &sweep(i));
        if status == 429 {
            refused = Some((i, body, retry));
            break;
        }
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let (at, body, retry) = refused.expect("the sweeping key was never throttled");
    assert!((12..16).contains(&at), "throttled at request {at}");
    assert!(body.contains("usage policy"), "{body}");
    assert!(retry.is_some());
    // The ordinary key is untouched.
    assert_eq!(server.post("/v1/chat/completions", &person, &ordinary(99)).0, 200);

    // The live view, for admins only.
    assert_eq!(server.get("/v1/admin/guard", Some(&person)).0, 403);
    let (status, body, _) = server.get("/v1/admin/guard", Some(&admin));
    assert_eq!(status, 200, "{body}");
    let live: Value = serde_json::from_str(&body).unwrap();
    let first = &live["data"][0];
    assert_eq!(first["level"], "throttle", "{body}");
    assert!(first["reasons"][0].as_str().unwrap().contains("probe the distribution"), "{body}");

    // Decisions are written to the database behind the response; give them a moment.
    let mut report = String::new();
    for _ in 0..50 {
        report = guard(&db, &["report"]);
        if report.contains("throttle") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let line = report.lines().find(|l| l.contains("sweeper")).unwrap_or_else(|| panic!("{report}"));
    assert!(line.contains("throttle") && line.contains("probe the distribution"), "{report}");
    assert!(!report.contains("person"), "{report}");
    let audit: Vec<Value> =
        guard(&db, &["audit", "sweeper"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<&str> = audit.iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["flag", "throttle"]);
    assert!(audit[0]["signals"]["signals"]["probes"].as_u64().unwrap() >= 6, "{:?}", audit[0]);
    assert_eq!(audit[0]["actor"], "guard");

    // An admin clears it: served again at once, and the clear is audited.
    let out = guard(&db, &["clear", "sweeper", "--note", "our own load test"]);
    assert!(out.is_empty(), "{out}");
    let (status, body, _) = server.post("/v1/chat/completions", &sweeper, &sweep(100));
    assert_eq!(status, 200, "{body}");
    let audit = guard(&db, &["audit", "sweeper"]);
    assert!(audit.lines().last().unwrap().contains("our own load test"), "{audit}");
    assert!(guard(&db, &["report"]).lines().any(|l| l.contains("sweeper") && l.contains(" none ")));
    // The same over HTTP, for admins: audited, and the key keeps being served.
    let (status, body, _) =
        server.post("/v1/admin/guard/sweeper/clear", &admin, &json!({"note": "cleared over http"}).to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.post("/v1/admin/guard/nobody/clear", &admin, "").0, 404);
    assert_eq!(server.post("/v1/admin/guard/sweeper/clear", &person, "").0, 403);
    assert!(guard(&db, &["audit", "sweeper"]).lines().last().unwrap().contains("cleared over http"));
    assert_eq!(server.post("/v1/chat/completions", &sweeper, &sweep(101)).0, 200);
    // Declaring its use: the same sweep goes on unthrottled, and the declaration is audited.
    let out = distill(&["guard", "allow", "sweeper", "--db", db.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out.stderr).contains("--use"), "{}", text(&out.stderr));
    guard(&db, &["allow", "sweeper", "--use", "nightly calibration sweep"]);
    for i in 0..20 {
        let (status, body, _) = server.post("/v1/chat/completions", &sweeper, &sweep(200 + i));
        assert_eq!(status, 200, "request {i} after the declaration: {body}");
    }
    let last: Value = serde_json::from_str(guard(&db, &["audit", "sweeper"]).lines().last().unwrap()).unwrap();
    assert_eq!((last["action"].as_str(), last["actor"].as_str()), (Some("allow"), Some("admin")));
    assert!(last["reasons"][0].as_str().unwrap().contains("nightly calibration sweep"), "{last}");
    // The same over HTTP, for admins, with a use to declare.
    let allow = json!({"use": "evaluation harness", "tokens_per_hour": 50000}).to_string();
    assert_eq!(server.post("/v1/admin/guard/sweeper/allow", &person, &allow).0, 403);
    assert_eq!(server.post("/v1/admin/guard/sweeper/allow", &admin, "{}").0, 400);
    let (status, body, _) = server.post("/v1/admin/guard/sweeper/allow", &admin, &allow);
    assert_eq!(status, 200, "{body}");
    assert!(guard(&db, &["audit", "sweeper"]).lines().last().unwrap().contains("50000 tokens an hour"));
    // Clearing a key that does not exist says so.
    let out = distill(&["guard", "clear", "nobody", "--db", db.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out.stderr).contains("no key"), "{}", text(&out.stderr));
}

#[test]
fn a_sweep_that_goes_on_is_revoked_where_allowed_and_a_clear_brings_the_key_back() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 31).unwrap();
    let db = dir.path().join("serve.db");
    let sweeper = create_key(&db, "sweeper", &[]);
    // Throttling to 1,000 a minute does not stop the test's pace, so escalation goes on.
    let server =
        Server::start(&model, &db, &["--guard-config", &config(dir.path(), "flag", 1000), "--guard", "revoke"]);
    let mut revoked_at = None;
    for i in 0..40 {
        let (status, body, _) = server.post("/v1/chat/completions", &sweeper, &sweep(i));
        if status == 401 {
            revoked_at = Some(i);
            break;
        }
        assert_eq!(status, 200, "request {i}: {body}");
        // The revocation is written behind the response; wait for it once due.
        if i >= 18 {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    let at = revoked_at.expect("the key was never revoked");
    assert!((18..30).contains(&at), "revoked at request {at}");
    let keys = distill(&["keys", "list", "--db", db.to_str().unwrap()]);
    assert!(text(&keys.stdout).lines().any(|l| l.contains("sweeper") && l.contains("revoked")));
    let actions: Vec<String> = guard(&db, &["audit"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["flag", "throttle", "revoke"]);

    guard(&db, &["clear", "sweeper"]);
    let (status, body, _) = server.post("/v1/chat/completions", &sweeper, &sweep(0));
    assert_eq!(status, 200, "a cleared key is live again: {body}");
}

#[test]
fn replay_and_calibrate_read_traffic_files_and_refuse_bad_lines_and_configs() {
    let dir = tempfile::tempdir().unwrap();
    let traffic = dir.path().join("traffic.jsonl");
    let mut lines = Vec::new();
    for i in 0..60 {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": format!("The word number {i} is")}],
                          "max_tokens": 1, "logprobs": true, "top_logprobs": 20});
        lines.push(json!({"t": 1_795_910_400.0 + i as f64, "key": "sweeper", "body": body}).to_string());
    }
    std::fs::write(&traffic, lines.join("\n")).unwrap();
    let db = dir.path().join("replay.db");
    let decisions = dir.path().join("decisions.jsonl");
    let out = distill(&[
        "guard",
        "replay",
        traffic.to_str().unwrap(),
        "--decisions",
        decisions.to_str().unwrap(),
        "--record",
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.lines().any(|l| l.contains("sweeper") && l.contains("flag@48")), "{summary}");
    assert!(text(&out.stderr).contains("p99"), "{}", text(&out.stderr));
    let first: Value =
        serde_json::from_str(std::fs::read_to_string(&decisions).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!((first["line"].as_u64(), first["level"].as_str()), (Some(48), Some("flag")));
    assert!(guard(&db, &["report"]).contains("sweeper"), "--record writes the decisions");

    // A bad line names its line number; a bad config names its field.
    std::fs::write(&traffic, format!("{}\n{{\"t\": 1, \"key\": \"k\"}}\n", lines[0])).unwrap();
    let out = distill(&["guard", "replay", traffic.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("line 2"), "{}", text(&out.stderr));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "one_off_share = 2.0\n").unwrap();
    let out = distill(&["guard", "replay", traffic.to_str().unwrap(), "--config", bad.to_str().unwrap()]);
    assert!(text(&out.stderr).contains("one_off_share"), "{}", text(&out.stderr));
    std::fs::write(&bad, "tempalte_share = 0.5\n").unwrap();
    let out = distill(&["guard", "replay", traffic.to_str().unwrap(), "--config", bad.to_str().unwrap()]);
    assert!(text(&out.stderr).contains("tempalte_share"), "{}", text(&out.stderr));
    // Calibration needs enough benign keys and says so.
    std::fs::write(&traffic, lines.join("\n")).unwrap();
    let out = distill(&[
        "guard",
        "calibrate",
        traffic.to_str().unwrap(),
        "--out",
        dir.path().join("g.toml").to_str().unwrap(),
    ]);
    assert!(!out.status.success() && text(&out.stderr).contains("more benign traffic"), "{}", text(&out.stderr));
}
