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
    // Off a terminal the progress is logged as lines; the last one says the run is complete.
    assert!(text(&out.stderr).contains("prompts 150/150, "), "{}", text(&out.stderr));

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
    let script = r#"
import glob, json, sys
import pyarrow.parquet as pq
rows = tokens = entries = coded_bytes = 0
ids = []
for path in sorted(glob.glob(sys.argv[1] + "/shard-*.parquet")):
    t = pq.read_table(path)
    rows += t.num_rows
    ids += t.column("prompt_id").to_pylist()
    lengths = zip(t.column("token_ids").to_pylist(), t.column("prompt_len").to_pylist())
    tokens += sum(len(x) - n for x, n in lengths)
    if "topk_ids" in t.column_names:
        assert sum(len(x) for x in t.column("tail_codes").to_pylist()) == sum(len(x) for x in t.column("token_ids").to_pylist()) - sum(t.column("prompt_len").to_pylist())
        entries += sum(len(x) for x in t.column("topk_ids").to_pylist())
    else:
        coded_bytes += sum(len(x) for x in t.column("topk_coded").to_pylist())
print(json.dumps({"rows": rows, "tokens": tokens, "entries": entries, "coded_bytes": coded_bytes, "ids": ids}))
"#;
    for layout in ["coded", "plain"] {
        let out_dir = dir.path().join(layout);
        let mut args = dataset_args(model.to_str().unwrap(), prompts.to_str().unwrap(), out_dir.to_str().unwrap(), "3");
        args.extend(["--layout", layout]);
        let out = run(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let py = Command::new("python3").arg("-c").arg(script).arg(&out_dir).output().expect("python3 runs");
        assert!(py.status.success(), "pyarrow could not read the shards (pip install pyarrow):\n{}", text(&py.stderr));
        let got: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
        let ds = Dataset::open(&out_dir).unwrap();
        assert_eq!(got["rows"], ds.manifest().sequences(), "{layout}");
        assert_eq!(got["tokens"], ds.manifest().tokens(), "{layout}");
        let ids: Vec<String> = all_sequences(&out_dir).into_iter().map(|s| s.prompt_id).collect();
        let mut py_ids: Vec<String> = serde_json::from_value(got["ids"].clone()).unwrap();
        py_ids.sort_by_key(|id| ids.iter().position(|x| x == id));
        assert_eq!(py_ids, ids, "{layout}");
        match layout {
            "plain" => {
                assert_eq!(ds.manifest().format_version, 1);
                assert_eq!(got["entries"], ds.manifest().tokens() * 8);
            }
            _ => {
                assert_eq!(ds.manifest().format_version, 2);
                let coded = got["coded_bytes"].as_u64().unwrap();
                assert!(coded > 0 && coded < ds.manifest().bytes(), "{coded} coded bytes");
            }
        }
    }
    // Same seed, same teacher: both layouts hold the same sequences and ids, and log-probabilities
    // that agree to within the two quantisation steps.
    let (coded, plain) = (all_sequences(&dir.path().join("coded")), all_sequences(&dir.path().join("plain")));
    assert_eq!(coded.len(), plain.len());
    for (c, p) in coded.iter().zip(&plain) {
        assert_eq!((&c.token_ids, &c.topk_ids), (&p.token_ids, &p.topk_ids), "{}", c.prompt_id);
        for (a, b) in c.topk_logprobs.iter().zip(&p.topk_logprobs).filter(|(a, _)| **a > -8.0) {
            assert!((a - b).abs() < 0.2, "{}: {a} vs {b}", c.prompt_id);
        }
    }
}

#[test]
fn resuming_keeps_the_layout_the_dataset_was_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 25).unwrap();
    let prompts = prompts(dir.path(), 6);
    let out_dir = dir.path().join("data");
    let (m, p, o) = (model.to_str().unwrap(), prompts.to_str().unwrap(), out_dir.to_str().unwrap());
    let mut first = dataset_args(m, p, o, "3");
    first.extend(["--layout", "plain"]);
    assert!(run(&first).status.success());
    let whole = all_sequences(&out_dir);
    // Drop the second shard from the manifest, as if the run had been killed before it.
    let manifest_path = out_dir.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["shards"].as_array_mut().unwrap().truncate(1);
    manifest["complete"] = false.into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let out = run(&dataset_args(m, p, o, "3"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ds = Dataset::open(&out_dir).unwrap();
    assert_eq!((ds.manifest().format_version, ds.num_shards()), (1, 2), "resumed in the plain layout");
    assert_eq!(all_sequences(&out_dir), whole, "the redone shard holds the same sequences");
    let mut other = dataset_args(m, p, o, "3");
    other.extend(["--layout", "coded"]);
    let out = run(&other);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("quantization"), "{}", text(&out.stderr));
}

/// `--matmuls bf16`: the manifest records what the teacher ran, a resume with other matmuls is
/// refused, and the scored (given) completions' top-k stays close to an f32 run's. Where the CPU
/// lacks AVX-512 BF16 the run warns and records f32.
#[test]
fn bf16_matmuls_are_recorded_and_stay_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 26).unwrap();
    let prompts = prompts(dir.path(), 10);
    let (exact_dir, fast_dir) = (dir.path().join("f32"), dir.path().join("bf16"));
    let (m, p) = (model.to_str().unwrap(), prompts.to_str().unwrap());
    let out = run(&dataset_args(m, p, exact_dir.to_str().unwrap(), "5"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut fast = dataset_args(m, p, fast_dir.to_str().unwrap(), "5");
    fast.extend(["--matmuls", "bf16"]);
    let out = run(&fast);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let available = distill_kernels::packed::Precision::Bf16.available();
    let recorded = |d: &Path| Dataset::open(d).unwrap().manifest().spec.teacher_matmuls;
    assert_eq!(recorded(&exact_dir), "f32");
    if !available {
        assert!(text(&out.stderr).contains("needs a CPU with AVX-512 BF16"), "{}", text(&out.stderr));
        assert_eq!(recorded(&fast_dir), "f32");
        return;
    }
    assert_eq!(recorded(&fast_dir), "bf16");
    // Resuming the bf16 dataset with f32 matmuls would mix two teachers' signals.
    let out = run(&dataset_args(m, p, fast_dir.to_str().unwrap(), "5"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("teacher matmuls: dataset has bf16, this run has f32"), "{}", text(&out.stderr));
    // Given completions are scored, not sampled: the same tokens, so their top-k compare.
    let given =
        |d: &Path| all_sequences(d).into_iter().filter(|s| s.prompt_id.starts_with("given-")).collect::<Vec<_>>();
    let (a, b) = (given(&exact_dir), given(&fast_dir));
    assert_eq!(a.len(), 2);
    let (mut same_top1, mut rows, mut diff, mut size) = (0, 0, 0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.token_ids, y.token_ids);
        for (rx, ry) in x.topk_ids.chunks(8).zip(y.topk_ids.chunks(8)) {
            same_top1 += usize::from(rx[0] == ry[0]);
            rows += 1;
        }
        for (i, (ix, lx)) in x.topk_ids.iter().zip(&x.topk_logprobs).enumerate() {
            if y.topk_ids[i] == *ix {
                diff += (lx - y.topk_logprobs[i]).abs() as f64;
                size += lx.abs() as f64;
            }
        }
    }
    assert!(same_top1 * 10 >= rows * 9, "top-1 agrees at {same_top1} of {rows} positions");
    // This fixture's weights are scaled up 20× (norms included), so its logits run to hundreds and
    // bf16's rounding compounds through the layers to ~2% of the values (measured 2.2%). The
    // bound catches wiring errors (a wrong weight layout is off by ~100%); the fidelity on a real
    // teacher is measured by bench/score_speed.sh and on sane tiny models by the models crate.
    assert!(diff / size < 0.05, "Σ|Δ log p| / Σ|log p| = {}", diff / size);
}

#[test]
fn system_messages_from_a_file_go_to_a_share_of_the_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 22).unwrap();
    let prompts = prompts(dir.path(), 10);
    let systems = dir.path().join("system.txt");
    std::fs::write(&systems, "Be brief.\n\"You sell shoes.\\nBe kind.\"\n").unwrap();
    let out_dir = dir.path().join("data");
    let (m, p, o, s) =
        (model.to_str().unwrap(), prompts.to_str().unwrap(), out_dir.to_str().unwrap(), systems.to_str().unwrap());
    let with_share = |share: &'static str| {
        let mut args = dataset_args(m, p, o, "4");
        args.extend(["--system-file", s, "--system-share", share]);
        run(&args)
    };
    let out = with_share("1");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("10 of 10 prompts given one of 2 system messages"), "{}", text(&out.stderr));

    // The teacher read every prompt after a system message; the dataset's copy of the prompts
    // (what a student with another tokenizer renders) holds them, and the manifest records them.
    let copy = distill_teacher::read_prompt_file(&distill_store::Source::of(&out_dir).prompts).unwrap();
    assert_eq!(copy.len(), 10);
    for record in &copy {
        let distill_teacher::Prompt::Chat(messages) = &record.prompt else { panic!("{record:?}") };
        assert_eq!(messages[0].role, "system");
        assert!(["Be brief.", "You sell shoes.\nBe kind."].contains(&messages[0].content.as_str()));
    }
    assert!(copy[0].completion.is_some(), "a given completion is kept");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["spec"]["system_messages"]["messages"], 2);
    assert_eq!(manifest["spec"]["system_messages"]["share"], 1.0);

    let out = with_share("0.5");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("system messages: dataset has 2 messages"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("for a share of 0.5"), "{}", text(&out.stderr));

    let mut no_chat = dataset_args(m, p, o, "4");
    no_chat.retain(|a| *a != "--chat");
    no_chat.extend(["--system-file", s]);
    let out = run(&no_chat);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--chat"), "{}", text(&out.stderr));
    let out = run(&[dataset_args(m, p, o, "4"), vec!["--system-file", "missing.txt"]].concat());
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read system messages missing.txt"), "{}", text(&out.stderr));
}
