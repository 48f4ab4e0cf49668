//! `distill generate --dataset` and `distill inspect` as a user runs them: resumption after
//! kill -9, refusal of mismatched re-runs, and shards read by the real pyarrow.

mod common;
use common::{command, text};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use distill_models::fixtures::tiny_gguf;
use distill_store::{Dataset, Sequence};

fn prompts(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("prompts.jsonl");
    let mut lines = String::new();
    for i in 0..n {
        if i % 5 == 0 {
            lines.push_str(&format!("{{\"prompt\": \"the hello {i}\", \"completion\": \"er all {i}\", \"metadata\": {{\"id\": \"given-{i}\"}}}}\n"));
        } else {
            lines.push_str(&format!(
                "{{\"messages\": [{{\"role\": \"user\", \"content\": \"hello there number {i}\"}}]}}\n"
            ));
        }
    }
    std::fs::write(&path, lines).unwrap();
    path
}

fn dataset_args<'a>(model: &'a str, prompts: &'a str, out: &'a str, per_shard: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "--model",
        model,
        "--prompts-file",
        prompts,
        "--dataset",
        out,
        "--chat",
        "--k",
        "8",
        "--max-tokens",
        "12",
        "--temperature",
        "0.8",
        "--seed",
        "5",
        "--completions",
        "2",
        "--prompts-per-shard",
        per_shard,
        "--batch-size",
        "3",
    ]
}

fn run(args: &[&str]) -> Output {
    command().args(args).output().unwrap()
}

fn all_sequences(dir: &Path) -> Vec<Sequence> {
    let ds = Dataset::open(dir).unwrap();
    let mut seqs: Vec<Sequence> = ds.sequences().map(|s| s.unwrap()).collect();
    seqs.sort_by_key(|s| (s.prompt_index, s.sample));
    seqs
}

#[test]
fn killed_run_resumes_without_losing_or_duplicating_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 21).unwrap();
    let prompts = prompts(dir.path(), 150);
    let (m, p) = (model.to_str().unwrap(), prompts.to_str().unwrap());

    let reference = dir.path().join("reference");
    let out = run(&dataset_args(m, p, reference.to_str().unwrap(), "1"));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let resumed = dir.path().join("resumed");
    let args = dataset_args(m, p, resumed.to_str().unwrap(), "1");
    let mut kills = 0;
    for _ in 0..2 {
        let mut child = command().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let before = Dataset::open(&resumed).map(|d| d.num_shards()).unwrap_or(0);
        let started = Instant::now();
        // Kill once a few more shards have landed, mid-run.
        loop {
            let shards = Dataset::open(&resumed).map(|d| d.num_shards()).unwrap_or(0);
            if shards >= before + 3 || started.elapsed() > Duration::from_secs(60) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let ds = Dataset::open(&resumed).unwrap();
        assert!(!ds.manifest().complete, "the run finished before kill {kills}; the test did not interrupt it");
    }
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("resuming"), "{}", text(&out.stderr));

    let want = all_sequences(&reference);
    let got = all_sequences(&resumed);
    let ids: Vec<(u32, u16)> = got.iter().map(|s| (s.prompt_index, s.sample)).collect();
    let mut expected: Vec<(u32, u16)> = Vec::new();
    for i in 0..150u32 {
        expected.push((i, 0));
        if i % 5 != 0 {
            expected.push((i, 1)); // generated prompts get two completions, given ones one
        }
    }
    assert_eq!(ids, expected, "every prompt exactly once per completion");
    assert_eq!(got, want, "the resumed dataset equals an uninterrupted run's");
    assert_eq!(got[0].prompt_id, "given-0");
    assert_eq!(got[1].prompt_id, "line-2");
}

#[test]
fn rerun_with_other_settings_is_refused_and_inspect_summarises() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 22).unwrap();
    let prompts = prompts(dir.path(), 6);
    let out_dir = dir.path().join("data");
    let (m, p, o) = (model.to_str().unwrap(), prompts.to_str().unwrap(), out_dir.to_str().unwrap());
    let out = run(&dataset_args(m, p, o, "4"));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut other_k = dataset_args(m, p, o, "4");
    let pos = other_k.iter().position(|a| *a == "8").unwrap();
    other_k[pos] = "16";
    let out = run(&other_k);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("k: dataset has 8, this run has 16"), "{}", text(&out.stderr));

    let other_model = dir.path().join("other.gguf");
    tiny_gguf(&other_model, 23).unwrap();
    let out = run(&dataset_args(other_model.to_str().unwrap(), p, o, "4"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("teacher"), "{}", text(&out.stderr));

    let out = run(&["inspect", o, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["sequences"], 10); // 2 given completions + 4 prompts × 2 samples
    assert_eq!(summary["k"], 8);
    assert_eq!(summary["complete"], true);
    assert!(summary["bytes_per_token"].as_f64().unwrap() > 0.0);
    assert!(summary["quantization_kl_max_nats"].as_f64().unwrap() < 1e-3);
    let out = run(&["inspect", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not a distill dataset"), "{}", text(&out.stderr));
}

#[test]
fn shards_open_in_pyarrow_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 24).unwrap();
    let prompts = prompts(dir.path(), 7);
    let out_dir = dir.path().join("data");
    let out = run(&dataset_args(model.to_str().unwrap(), prompts.to_str().unwrap(), out_dir.to_str().unwrap(), "3"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = r#"
import glob, json, sys
import pyarrow.parquet as pq
rows = tokens = entries = 0
for path in sorted(glob.glob(sys.argv[1] + "/shard-*.parquet")):
    t = pq.read_table(path)
    rows += t.num_rows
    tails = t.column("tail_codes").to_pylist()
    ids = t.column("topk_ids").to_pylist()
    tokens += sum(len(x) for x in tails)
    entries += sum(len(x) for x in ids)
print(json.dumps({"rows": rows, "tokens": tokens, "entries": entries}))
"#;
    let py = Command::new("python3").arg("-c").arg(script).arg(&out_dir).output().expect("python3 runs");
    assert!(py.status.success(), "pyarrow could not read the shards (pip install pyarrow):\n{}", text(&py.stderr));
    let got: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    let ds = Dataset::open(&out_dir).unwrap();
    assert_eq!(got["rows"], ds.manifest().sequences());
    assert_eq!(got["tokens"], ds.manifest().tokens());
    assert_eq!(got["entries"], ds.manifest().tokens() * 8);
}
