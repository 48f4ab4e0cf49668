//! `distill generate` as a user runs it: the real binary on a tiny model file and on the teacher.

mod common;
use common::{distill, text};

use std::path::{Path, PathBuf};

use distill_models::fixtures::tiny_gguf;

fn tiny(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    tiny_gguf(&path, 11).unwrap();
    path
}

#[test]
fn greedy_generation_is_deterministic_and_respects_max_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let args = ["generate", "--model", model.to_str().unwrap(), "--json", "--max-tokens", "7", "the hello"];
    let a = distill(&args);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let b = distill(&args);
    assert_eq!(a.stdout, b.stdout);
    let line: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert!(line["completion_tokens"].as_u64().unwrap() <= 7);
}

#[test]
fn many_prompts_come_back_as_jsonl_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"a\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"hello there\"}]}\n{\"prompt\": \"the end\"}\n",
    )
    .unwrap();
    let out = distill(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompts-file",
        prompts.to_str().unwrap(),
        "--max-tokens",
        "5",
        "--batch-size",
        "2",
        "--temperature",
        "0.9",
        "--seed",
        "4",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i);
    }
    assert!(lines[1]["prompt"].as_str().unwrap().starts_with("<|im_start|>user\nhello there"));
}

#[test]
fn a_hugging_face_parquet_collection_is_read_as_prompts() {
    // Written by pyarrow as a Hugging Face chat dataset is: `prompt`, `prompt_id` and a `messages`
    // list of structs, snappy-compressed.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let path = dir.path().join("train-00000-of-00001.parquet");
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
rows = [
    {"prompt": "hello there", "prompt_id": "a1", "messages": [
        {"content": "hello there", "role": "user"}, {"content": "hi!", "role": "assistant"}]},
    {"prompt": "the end", "prompt_id": "a2", "messages": [
        {"content": "be brief", "role": "system"}, {"content": "the end", "role": "user"},
        {"content": "ok", "role": "assistant"}, {"content": "the end", "role": "user"}]},
]
pq.write_table(pa.Table.from_pylist(rows), sys.argv[1], compression="snappy")
"#;
    let made = std::process::Command::new("python3").args(["-c", script, path.to_str().unwrap()]).output().unwrap();
    assert!(made.status.success(), "{}\n(pyarrow comes from tests/requirements.txt)", text(&made.stderr));
    let out = distill(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompts-file",
        path.to_str().unwrap(),
        "--max-tokens",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    let first = lines[0]["prompt"].as_str().unwrap();
    assert!(first.starts_with("<|im_start|>user\nhello there") && !first.contains("hi!"), "{first}");
    let second = lines[1]["prompt"].as_str().unwrap();
    assert!(
        second.contains("be brief") && second.contains("ok") && second.ends_with("<|im_start|>assistant\n"),
        "{second}"
    );

    // A Parquet file that is cut short is named as such.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = distill(&["generate", "--model", model.to_str().unwrap(), "--prompts-file", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("Parquet"), "{}", text(&out.stderr));
}

#[test]
fn the_teacher_writes_new_prompts_from_seeds_and_a_rerun_goes_on() {
    let Some(teacher) = distill_models::teacher::default_teacher() else {
        panic!("the default teacher is needed: {}", distill_models::teacher::FETCH_HINT);
    };
    let dir = tempfile::tempdir().unwrap();
    let seeds = [
        "Where is my order #1234? It was due on Monday.",
        "How do I reset my password?",
        "Can I return shoes that I wore once?",
        "Do you ship to Canada, and how long does it take?",
        "My parcel arrived damaged. What now?",
    ];
    let seeds_path = dir.path().join("seeds.jsonl");
    let lines: String = seeds.iter().map(|q| format!("{}\n", serde_json::json!({ "prompt": q }))).collect();
    std::fs::write(&seeds_path, lines).unwrap();
    let out = dir.path().join("synth.jsonl");
    let run = |n: &str| {
        distill(&[
            "generate",
            "--model",
            teacher.to_str().unwrap(),
            "--synthesize",
            n,
            "--seeds",
            seeds_path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--seed",
            "1",
        ])
    };
    let first = run("4");
    assert!(first.status.success(), "{}", text(&first.stderr));
    let kept = distill_teacher::read_prompt_file(&out).unwrap();
    assert_eq!(kept.len(), 4);
    let texts: Vec<String> = kept.iter().map(|r| r.display_text()).collect();
    let fingerprints: Vec<_> = texts.iter().map(|t| distill_teacher::synthesize::Fingerprint::of(t)).collect();
    for (i, t) in texts.iter().enumerate() {
        assert!(t.chars().count() >= 12 && !seeds.contains(&t.as_str()), "{t:?}");
        for s in seeds {
            assert!(
                fingerprints[i].similarity(&distill_teacher::synthesize::Fingerprint::of(s)) < 0.5,
                "{t:?} ~ {s:?}"
            );
        }
        for j in 0..i {
            assert!(fingerprints[i].similarity(&fingerprints[j]) < 0.5, "{t:?} ~ {:?}", texts[j]);
        }
    }
    // Asked for more, the same command keeps what is there and adds the rest.
    let second = run("6");
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(text(&second.stderr).contains("2 new, 4 from before"), "{}", text(&second.stderr));
    let again: Vec<String> =
        distill_teacher::read_prompt_file(&out).unwrap().iter().map(|r| r.display_text()).collect();
    assert_eq!((again.len(), &again[..4]), (6, &texts[..]));

    std::fs::write(&seeds_path, "{\"prompt\": \"only one\"}\n").unwrap();
    let refused = run("8");
    assert!(!refused.status.success() && text(&refused.stderr).contains("at least 2"), "{}", text(&refused.stderr));
}

#[test]
fn bad_input_fails_with_a_message_and_nonzero_status() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let m = model.to_str().unwrap();
    let broken = dir.path().join("broken.gguf");
    std::fs::write(&broken, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let bad_prompts = dir.path().join("bad.jsonl");
    std::fs::write(&bad_prompts, "{\"prompt\": 3}\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["generate", "--model", broken.to_str().unwrap(), "hi"], "not a usable GGUF"),
        (vec!["generate", "--model", m, "--top-p", "0", "hi"], "top_p"),
        (vec!["generate", "--model", m, "--stop", "", "hi"], "stop strings"),
        (vec!["generate", "--model", m], "no prompt given"),
        (vec!["generate", "--model", m, "--prompts-file", bad_prompts.to_str().unwrap()], "bad.jsonl:1"),
        (vec!["generate", "--model", m, "--batch-size", "0", "hi"], "--batch-size"),
        // A dataset flag without --dataset would be ignored: refused instead.
        (vec!["generate", "--model", m, "--k", "5", "hi"], "--dataset"),
        (vec!["generate", "--model", m, "--teacher-model", "x", "hi"], "--teacher-url"),
        (vec!["generate", "--model", m, "--device", "tpu", "hi"], "expected `cpu`, `cuda` or `cuda:N`"),
        // Without the `cuda` feature: how to build it; with it but no GPU: what to check.
        (vec!["generate", "--model", m, "--device", "cuda", "hi"], "CUDA"),
    ];
    for (args, expected) in cases {
        let out = distill(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = text(&out.stderr);
        assert!(err.contains(expected), "{args:?}: expected `{expected}` in:\n{err}");
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    }
}

#[test]
fn streams_the_default_teacher_reply_to_a_chat_prompt() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = common::command()
        .current_dir(root)
        .args(["generate", "--chat", "--max-tokens", "24", "What is the capital of France?"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), distill_models::teacher::FETCH_HINT);
    let reply = text(&out.stdout);
    assert!(reply.contains("Paris"), "reply: {reply:?}");
}

#[test]
fn json_logprobs_cover_every_generated_token_with_sorted_alternatives() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let m = model.to_str().unwrap();
    let out = distill(&["generate", "--model", m, "--max-tokens", "6", "--json", "--logprobs", "3", "the hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = line["logprobs"].as_array().unwrap();
    assert_eq!(steps.len() as u64, line["completion_tokens"].as_u64().unwrap());
    for step in steps {
        let top = step["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]), "most likely first: {lps:?}");
        assert!(lps.iter().map(|x| x.exp()).sum::<f64>() <= 1.0 + 1e-5);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(step["id"], top[0]["id"]);
        assert!((step["logprob"].as_f64().unwrap() - lps[0]).abs() < 1e-6);
    }
    let out = distill(&["generate", "--model", m, "--logprobs", "3", "the hello"]);
    assert!(!out.status.success(), "--logprobs needs --json");
}

#[test]
fn a_broken_weights_file_is_named_without_a_backtrace_even_with_rust_backtrace_set() {
    let dir = tempfile::tempdir().unwrap();
    let model = distill_models::load(tiny(dir.path()).to_str().unwrap(), &candle_core::Device::Cpu).unwrap();
    let hf = dir.path().join("hf");
    distill_models::checkpoint::save_hf_dir(&hf, &model.model, &model.tokenizer, None).unwrap();
    std::fs::write(hf.join("model.safetensors"), b"garbage, not safetensors").unwrap();
    let out = common::command()
        .env("RUST_BACKTRACE", "1")
        .args(["generate", "--model", hf.to_str().unwrap(), "hi"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("model.safetensors is not a usable safetensors file"), "{err}");
    assert!(!err.contains("backtrace") && err.lines().count() <= 2, "a user error carries no backtrace:\n{err}");
}

/// The default teacher's Q4_1 and Q8_0 blocks run as they are (int8 products) unless f32 is
/// asked for, which dequantises them; both greedy continuations agree (the native path is within
/// a mean KL of 5e-7 nats of f32 on this teacher).
#[test]
fn the_default_teacher_runs_its_quantised_blocks_natively_unless_f32_is_asked() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let run = |args: &[&str]| common::command().current_dir(root).args(args).output().unwrap();
    let prompt = "The three primary colours are";
    let native = run(&["generate", "--max-tokens", "12", prompt]);
    assert!(native.status.success(), "{}\n{}", text(&native.stderr), distill_models::teacher::FETCH_HINT);
    let f32 = run(&["generate", "--max-tokens", "12", "--matmuls", "f32", prompt]);
    assert!(f32.status.success(), "{}", text(&f32.stderr));
    // Without AVX-512 VNNI or AVX2 the weights were dequantised at load: both runs are the f32 path.
    if distill_kernels::quant::available() {
        assert!(text(&native.stderr).contains("matmuls in int8"), "{}", text(&native.stderr));
        let said = text(&f32.stderr);
        assert!(said.contains("dequantised the file's quantised weights to f32"), "{said}");
    }
    assert_eq!(text(&native.stdout), text(&f32.stdout));
}
