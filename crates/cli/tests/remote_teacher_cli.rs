//! A teacher behind OpenAI-compatible endpoints (`distill generate --dataset --teacher-url`):
//! real `distill serve` processes on loopback, compared with the same model run locally.

mod common;
use common::server::{create_key, Server};
use common::{command, text};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use distill_models::fixtures::tiny_gguf;
use distill_store::{Dataset, Sequence};

fn write_prompts(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"messages": [{"role": "user", "content": format!("hello {} the {i}", "a".repeat(i % 4))}],
                               "metadata": {"id": format!("p{i}")}})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A temporary directory with a tiny teacher (tiny.gguf) and a server database holding one key.
struct Setup {
    dir: tempfile::TempDir,
    model: PathBuf,
    db: PathBuf,
    key: String,
}

fn setup(seed: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, seed).unwrap();
    let db = dir.path().join("serve.db");
    let key = create_key(&db, "teacher", &[]);
    Setup { dir, model, db, key }
}

fn read(dir: &Path) -> BTreeMap<String, Sequence> {
    Dataset::open(dir).unwrap().sequences().map(|s| s.unwrap()).map(|s| (s.prompt_id.clone(), s)).collect()
}

/// `distill ARGS --dataset DIR/remote --teacher-url URL` with the key, then `distill ARGS --dataset
/// DIR/local` with the local teacher; the remote run's stderr and both datasets' directories.
fn remote_and_local(dir: &Path, args: &[&str], url: &str, key: &str) -> (String, PathBuf, PathBuf) {
    let (remote_dir, local_dir) = (dir.join("remote"), dir.join("local"));
    let out = command()
        .args(args)
        .args(["--dataset", remote_dir.to_str().unwrap(), "--teacher-url", url])
        .env("DISTILL_TEACHER_API_KEY", key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let remote_log = text(&out.stderr);
    let out = command().args(args).args(["--dataset", local_dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    (remote_log, remote_dir, local_dir)
}

/// Rows `0..rows` of two sequences hold the same top-`k` ids, with distributions equal to within
/// the store's quantisation: each log-probability within one step (1/8 nat; two nearly equal
/// values can round apart) unless both are below ln 1e-6 (no mass a loss can see; on this random
/// fixture, whose weights are scaled up, the far tail moves by tenths of a nat between the f32
/// paths of CPUs without AVX-512), and the KL between the rows' reconstructions below 2e-3 nats.
fn assert_same_top(id: &str, r: &Sequence, l: &Sequence, k: usize, rows: usize) {
    let step = distill_store::quant::Quantization::default().step;
    for row in 0..rows {
        let span = row * k..(row + 1) * k;
        assert_eq!(r.topk_ids[span.clone()], l.topk_ids[span.clone()], "{id} row {row}");
        for j in span.clone() {
            let (x, y) = (r.topk_logprobs[j], l.topk_logprobs[j]);
            let negligible = 1e-6f32.ln();
            assert!((x - y).abs() < step + 0.02 || (x < negligible && y < negligible), "{id} entry {j}: {x} vs {y}");
        }
        let kl = distill_store::quant::kl_with_tail(
            &l.topk_logprobs[span.clone()],
            l.tail_logprobs[row],
            &r.topk_logprobs[span],
            r.tail_logprobs[row],
        );
        assert!(kl < 2e-3, "{id} row {row}: KL {kl}");
    }
}

#[test]
fn a_dataset_from_two_served_endpoints_matches_the_local_teacher() {
    let Setup { dir, model, db, key } = setup(51);
    let (a, b) = (Server::start(&model, &db, &[]), Server::start(&model, &db, &[]));
    let prompts = dir.path().join("prompts.jsonl");
    write_prompts(&prompts, 12);
    let (m, p) = (model.to_str().unwrap(), prompts.to_str().unwrap());
    let common_args =
        ["generate", "--model", m, "--prompts-file", p, "--k", "5", "--max-tokens", "10", "--prompts-per-shard", "5"];

    let remote_dir = dir.path().join("remote");
    let out = command()
        .args(common_args)
        .args([
            "--dataset",
            remote_dir.to_str().unwrap(),
            "--teacher-url",
            &a.url,
            "--teacher-url",
            &format!("{}/v1", b.url),
        ])
        .env("DISTILL_TEACHER_API_KEY", &key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    assert!(!log.contains(&key), "the API key is never printed");
    assert!(log.contains("teacher: tiny @ "), "{log}");
    let local_dir = dir.path().join("local");
    let out = command().args(common_args).args(["--dataset", local_dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let (remote, local) = (read(&remote_dir), read(&local_dir));
    assert_eq!(remote.len(), 12);
    assert_eq!(remote.keys().collect::<Vec<_>>(), local.keys().collect::<Vec<_>>());
    for (id, r) in &remote {
        let l = &local[id];
        assert_eq!(r.token_ids, l.token_ids, "{id}: greedy completions agree");
        assert_eq!(r.prompt_len, l.prompt_len);
        // Every row but a final end-of-sequence one (a hard label remotely): same top-5 ids,
        // same log-probabilities to within the store's quantisation.
        let rows = r.tail_logprobs.len() - usize::from(r.token_ids.last() == Some(&2));
        assert_same_top(id, r, l, 5, rows);
    }
    // Both endpoints took work.
    assert!(log.lines().filter(|l| l.starts_with("endpoint ") && !l.contains(": 0 completions")).count() == 2, "{log}");
}

/// `distill serve --matmuls bf16` serves what the local teacher computes with `--matmuls bf16`:
/// the same greedy completions and top-k. (Where the CPU lacks AVX-512 BF16 both fall back to
/// f32, and the comparison still holds.)
#[test]
fn a_bf16_server_matches_the_local_bf16_teacher() {
    let Setup { dir, model, db, key } = setup(53);
    let server = Server::start(&model, &db, &["--matmuls", "bf16"]);
    let prompts = dir.path().join("prompts.jsonl");
    write_prompts(&prompts, 6);
    let (m, p) = (model.to_str().unwrap(), prompts.to_str().unwrap());
    let common_args = ["generate", "--model", m, "--prompts-file", p, "--k", "5", "--max-tokens", "8"];
    let (remote_dir, local_dir) = (dir.path().join("remote"), dir.path().join("local"));
    let out = command()
        .args(common_args)
        .args(["--dataset", remote_dir.to_str().unwrap(), "--teacher-url", &server.url])
        .env("DISTILL_TEACHER_API_KEY", &key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = command()
        .args(common_args)
        .args(["--dataset", local_dir.to_str().unwrap(), "--matmuls", "bf16"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (remote, local) = (read(&remote_dir), read(&local_dir));
    assert_eq!(remote.len(), 6);
    for (id, r) in &remote {
        let l = &local[id];
        assert_eq!(r.token_ids, l.token_ids, "{id}: greedy completions agree");
        // A final stop token (<|endoftext|> 0 or <|im_end|> 2 in the fixture) is a hard label
        // remotely.
        let rows = r.tail_logprobs.len() - usize::from(matches!(r.token_ids.last(), Some(&0) | Some(&2)));
        assert_same_top(id, r, l, 5, rows);
    }
}

#[test]
fn a_dead_endpoint_only_slows_the_job_and_no_prompt_is_lost_or_repeated() {
    let Setup { dir, model, db, key } = setup(52);
    let (alive, doomed) = (Server::start(&model, &db, &[]), Server::start(&model, &db, &[]));
    let doomed_url = doomed.url.clone();
    let prompts = dir.path().join("prompts.jsonl");
    write_prompts(&prompts, 60);
    let out_dir = dir.path().join("remote");
    let child = command()
        .args(["generate", "--model", model.to_str().unwrap(), "--prompts-file", prompts.to_str().unwrap()])
        .args(["--k", "4", "--max-tokens", "24", "--prompts-per-shard", "20", "--teacher-concurrency", "2"])
        .args(["--dataset", out_dir.to_str().unwrap(), "--teacher-url", &alive.url, "--teacher-url", &doomed_url])
        .env("DISTILL_TEACHER_API_KEY", &key)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    doomed.kill();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    let doomed_line = log.lines().find(|l| l.starts_with(&format!("endpoint {doomed_url}:"))).unwrap_or_default();
    assert!(!doomed_line.contains(" 0 failed requests"), "the killed endpoint's failures are reported: {log}");
    let sequences = read(&out_dir);
    let ids: Vec<String> = (0..60).map(|i| format!("p{i}")).collect();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(sequences.keys().cloned().collect::<Vec<_>>(), expected, "every prompt exactly once");
    let total: usize = Dataset::open(&out_dir).unwrap().sequences().count();
    assert_eq!(total, 60, "no duplicates");
    drop(alive);
}

#[test]
fn remote_teacher_misuse_gets_clear_errors() {
    let Setup { dir, model, db, key } = setup(53);
    let server = Server::start(&model, &db, &[]);
    let prompts = dir.path().join("prompts.jsonl");
    write_prompts(&prompts, 2);
    let runs = std::cell::Cell::new(0);
    let run = |extra: &[&str], key: &str| {
        runs.set(runs.get() + 1);
        let out_dir = dir.path().join(format!("d{}", runs.get()));
        let out = command()
            .args(["generate", "--model", model.to_str().unwrap(), "--prompts-file", prompts.to_str().unwrap()])
            .args(["--dataset", out_dir.to_str().unwrap(), "--teacher-url", &server.url])
            .args(extra)
            .env("DISTILL_TEACHER_API_KEY", key)
            .output()
            .unwrap();
        assert!(!out.status.success());
        text(&out.stderr)
    };
    let err = run(&["--k", "32"], &key);
    assert!(err.contains("--k 20"), "{err}");
    assert!(!dir.path().join("d1").exists(), "nothing is written before the settings are checked");
    let err = run(&["--k", "5"], "dk-wrong");
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains("dk-wrong"), "keys are not printed: {err}");
    let err = run(&["--k", "5", "--teacher-model", "other"], &key);
    assert!(err.contains("404") && err.contains("other"), "{err}");
}

#[test]
fn a_text_only_endpoint_falls_back_to_sequence_level_kd_with_a_warning() {
    let Setup { dir, model, db, key } = setup(54);
    let server = Server::start(&model, &db, &["--no-logprobs"]);
    let prompts = dir.path().join("prompts.jsonl");
    write_prompts(&prompts, 4);
    let (m, p) = (model.to_str().unwrap(), prompts.to_str().unwrap());
    let args = ["generate", "--model", m, "--prompts-file", p, "--k", "4", "--max-tokens", "8"];
    let (log, remote_dir, local_dir) = remote_and_local(dir.path(), &args, &server.url, &key);
    assert!(log.contains("sequence-level KD"), "{log}");
    let tokenizer = distill_models::load(m, &candle_core::Device::Cpu).unwrap().tokenizer;
    let (remote, local) = (read(&remote_dir), read(&local_dir));
    assert_eq!(remote.len(), 4);
    for (id, r) in &remote {
        let completion = |s: &Sequence| tokenizer.decode(&s.token_ids[s.prompt_len as usize..], true).unwrap();
        assert_eq!(completion(r), completion(&local[id]), "{id}: the teacher's text");
        for row in 0..r.tail_logprobs.len() {
            assert_eq!(r.topk_ids[row * 4], r.token_ids[r.prompt_len as usize + row], "hard label = the token");
            assert!(r.topk_logprobs[row * 4].abs() < 1e-3 && r.tail_logprobs[row] == f32::NEG_INFINITY);
        }
    }
}

#[test]
fn prompt_logprobs_of_a_served_teacher_score_given_tokens_as_the_local_teacher_does() {
    use distill_teacher::remote::{RemoteOptions, RemoteTeacher};
    use distill_teacher::{LocalTeacher, ScoreRequest, Teacher};

    let Setup { dir: _dir, model, db, key } = setup(57);
    let server = Server::start(&model, &db, &[]);
    let local = LocalTeacher::new(distill_models::load(model.to_str().unwrap(), &candle_core::Device::Cpu).unwrap());
    let options = RemoteOptions {
        urls: vec![server.url.clone()],
        model: "tiny".into(),
        concurrency: 2,
        api_key: Some(key),
        timeout: Duration::from_secs(60),
        attempts: 2,
    };
    let tokenizer = local.model.tokenizer.clone();
    let text = distill_models::load(model.to_str().unwrap(), &candle_core::Device::Cpu).unwrap().into_text();
    let remote = RemoteTeacher::new(options, text, local.vocab_size()).unwrap();
    let requests: Vec<ScoreRequest> = ["hello there the cat", "a b c d e f g", "the the the"]
        .iter()
        .map(|t| {
            let ids = tokenizer.encode(t, false).unwrap();
            ScoreRequest { from: ids.len() / 2, token_ids: ids }
        })
        .collect();
    for k in [20, 32] {
        let theirs = remote.score_tokens(&requests, k).unwrap();
        let ours = local.score(&requests, 20, 1.0).unwrap();
        for (r, (t, o)) in requests.iter().zip(theirs.iter().zip(&ours)) {
            let rows = r.token_ids.len() - r.from;
            assert_eq!((t.k, t.tail_logprob.len()), (k, rows));
            for row in 0..rows {
                let (tr, or) = (&t.ids[row * k..row * k + 20], &o.ids[row * 20..row * 20 + 20]);
                assert_eq!(tr, or, "row {row}: the same top-20 ids");
                for j in 0..20 {
                    let (a, b) = (t.logprobs[row * k + j], o.logprobs[row * 20 + j]);
                    assert!((a - b).abs() <= 1e-5 * b.abs().max(10.0), "row {row} entry {j}: {a} vs {b}");
                }
                // Entries past the API's 20 are padding; the tail is the mass the 20 miss.
                assert!(t.logprobs[row * k + 20..row * k + k].iter().all(|lp| *lp == f32::NEG_INFINITY));
                // (Below e^-15 the difference of sums is float noise and counts as no tail.)
                let (a, b) = (t.tail_logprob[row], o.tail_logprob[row]);
                if b > -15.0 {
                    assert!((a - b).abs() < 2e-3, "row {row} tail: {a} vs {b}");
                } else {
                    assert!(a < -14.0, "row {row} tail: {a} vs {b}");
                }
            }
        }
    }
    // Completing a token-id prompt gives the text the local model writes (greedy).
    let params = distill_models::SamplingParams { temperature: 0.0, max_tokens: 6, ..Default::default() };
    let prompt = tokenizer.encode("hello there", false).unwrap();
    let theirs = remote.complete_tokens(std::slice::from_ref(&prompt), &params).unwrap();
    let ours = local.generate(std::slice::from_ref(&prompt), &params).unwrap();
    // (The local completion ends with its stop token, which the text leaves out.)
    let mut ours = ours[0].clone();
    if ours.last().is_some_and(|id| local.stop_ids().contains(id)) {
        ours.pop();
    }
    assert_eq!(theirs[0].text, tokenizer.decode(&ours, false).unwrap());
    // A token id outside the vocabulary is refused, naming the field.
    let bad = ScoreRequest { token_ids: vec![1, 2, 9_999_999], from: 1 };
    let err = remote.score_tokens(&[bad], 5).unwrap_err().to_string();
    assert!(err.contains("prompt") && err.contains("vocabulary"), "{err}");
}

#[test]
fn given_completions_are_scored_by_a_served_teacher_as_by_the_local_one() {
    let Setup { dir, model, db, key } = setup(59);
    let server = Server::start(&model, &db, &[]);
    // Half the prompts come with a completion to score, half are generated.
    let lines: Vec<String> = (0..8)
        .map(|i| {
            let mut line = serde_json::json!({"messages": [{"role": "user", "content": format!("hello the {i}")}],
                                              "metadata": {"id": format!("p{i}")}});
            if i % 2 == 0 {
                line["completion"] = serde_json::json!(format!("the cat {} sat", "a ".repeat(i)));
            }
            line.to_string()
        })
        .collect();
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, lines.join("\n") + "\n").unwrap();
    let (m, p) = (model.to_str().unwrap(), prompts.to_str().unwrap());
    let args = ["generate", "--model", m, "--prompts-file", p, "--k", "5", "--max-tokens", "8"];
    let (_, remote_dir, local_dir) = remote_and_local(dir.path(), &args, &server.url, &key);
    let (remote, local) = (read(&remote_dir), read(&local_dir));
    assert_eq!(remote.len(), 8);
    for i in (0..8).step_by(2) {
        let id = format!("p{i}");
        let (r, l) = (&remote[&id], &local[&id]);
        assert_eq!((&r.token_ids, r.prompt_len), (&l.token_ids, l.prompt_len), "{id}: the given completion's tokens");
        // Every row, the end-of-sequence one included: given tokens are scored, not generated.
        assert_same_top(&id, r, l, 5, r.tail_logprobs.len());
    }
}
