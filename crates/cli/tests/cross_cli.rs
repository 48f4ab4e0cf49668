//! A teacher and a student that share no vocabulary, end to end: `distill align` on the pair,
//! `distill train` with `[cross_tokenizer]` from Gemma-3-270M's dataset into SmolLM2-135M, and
//! `distill eval` of the result.

mod common;
use common::{distill, text};

use std::path::Path;

use distill_models::teacher::{default_teacher, fetched_model, FETCH_HINT, GEMMA3_270M_FILE};

fn models() -> (String, String) {
    let teacher = fetched_model(GEMMA3_270M_FILE)
        .expect("Gemma-3-270M is missing\nHINT: fetch it with `scripts/fetch-teacher.sh gemma3-270m`");
    let student = default_teacher().unwrap_or_else(|| panic!("SmolLM2-135M-Instruct is missing\n{FETCH_HINT}"));
    (teacher.display().to_string(), student.display().to_string())
}

/// Plain-text support turns (Gemma-3-270M is a base model without a chat template).
fn prompts(dir: &Path) -> String {
    let questions = [
        "Where is my order #1234?",
        "How do I reset my password?",
        "Can I return shoes that I wore once?",
        "Do you ship to Canada, and how long does it take?",
        "My parcel arrived damaged. What now?",
        "How long does a refund take to show up on my card?",
    ];
    let lines: String = questions
        .iter()
        .map(|q| format!("{}\n", serde_json::json!({ "prompt": format!("Customer: {q}\nSupport agent:") })))
        .collect();
    let path = dir.join("prompts.jsonl");
    std::fs::write(&path, lines).unwrap();
    path.display().to_string()
}

#[test]
fn align_reports_the_pair_and_advises_a_mode() {
    let (teacher, student) = models();
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts(dir.path());
    let out = distill(&["align", &teacher, &student, "--prompts", &prompts, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["teacher_vocab"], 262_144);
    assert_eq!(report["student_vocab"], 49_152);
    assert_eq!(report["identical"], false);
    assert_eq!(report["texts"], 6);
    // Both split plain English at words: most of the student's vocabulary is the teacher's too
    // (measured: 46,253 tokens), and on these short turns nearly every boundary agrees and
    // nearly all of the teacher's top-k mass is on tokens the student has.
    let shared = report["shared_tokens"].as_u64().unwrap();
    assert!(shared > 10_000 && shared < 49_152, "{report}");
    for key in ["boundary_agreement", "mapped_topk_share"] {
        let v = report[key].as_f64().unwrap();
        assert!(v > 0.5 && v <= 1.0, "{key} = {v}: {report}");
    }
    assert!(report["advice"][0].as_str().unwrap().starts_with("gold"), "{report}");
    let advice = report["advice"].as_array().unwrap();
    assert!(advice.iter().any(|a| a.as_str().unwrap().starts_with("sequence")), "{report}");
}

#[test]
fn a_student_with_another_tokenizer_trains_with_gold_and_is_refused_without_it() {
    let (teacher, student) = models();
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts(dir.path());
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let out = distill(&[
        "generate",
        "--model",
        &teacher,
        "--dataset",
        data,
        "--prompts-file",
        &prompts,
        "--k",
        "8",
        "--max-tokens",
        "12",
        "--temperature",
        "0.7",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(Path::new(data).join("source/tokenizer.json").is_file());

    let config = |name: &str, cross: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        let toml = format!(
            "dataset = {data:?}\neval_dataset = {data:?}\noutput = {:?}\nsteps = 3\nbatch_size = 2\nseq_len = 64\n\
             eval_every = 3\ncheckpoint_every = 3\n\n[student]\ntype = \"pretrained\"\nfrom = {student:?}\n\n\
             [optimizer]\nlr = 2e-4\n{cross}",
            dir.path().join(name).display()
        );
        std::fs::write(&path, toml).unwrap();
        path.display().to_string()
    };

    // Without [cross_tokenizer] the mismatch is refused, pointing at the section.
    let out = distill(&["train", &config("plain", "")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("is not the one this dataset was made with") && err.contains("[cross_tokenizer]"), "{err}");

    let gold = config("gold", "\n[cross_tokenizer]\nmode = \"gold\"\n");
    let out = distill(&["train", &gold]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let metrics = std::fs::read_to_string(dir.path().join("gold/metrics.jsonl")).unwrap();
    let evals: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|m| m["eval_nll_per_byte"].as_f64())
        .collect();
    assert_eq!(evals.len(), 2, "{metrics}");
    // Trained and evaluated on the same teacher text: the student's NLL per byte of it falls.
    assert!(evals[1] < evals[0] && evals[0] > 0.0, "held-out NLL/byte {evals:?}");
    assert!(dir.path().join("gold/final/model.safetensors").is_file());

    // `distill eval` compares a student with another tokenizer where the tokenizations line up.
    let trained = dir.path().join("gold/final").display().to_string();
    let eval = |who: &str, student: &str| {
        let out_path = dir.path().join(format!("eval-{who}.json"));
        let out = distill(&[
            "eval",
            "--teacher",
            &teacher,
            "--student",
            student,
            "--prompts",
            &prompts,
            "--max-tokens",
            "8",
            "--no-speed",
            "-o",
            out_path.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("NLL per byte"), "{}", text(&out.stdout));
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(out_path).unwrap()).unwrap()
    };
    let (before, after) = (eval("before", &student), eval("after", &trained));
    for r in [&before["in_domain"], &after["in_domain"]] {
        assert_eq!(r["cross_tokenizer"], true, "{r}");
        let t = &r["tokens"];
        assert!(t["positions"].as_u64().unwrap() > 0 && t["bytes"].as_u64().unwrap() > 0, "{t}");
        assert!(t["kl_forward"].as_f64().unwrap() >= 0.0 && t["kl_forward"].as_f64().unwrap().is_finite(), "{t}");
        let top1 = t["top1_agreement"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1), "{t}");
    }
    let nll = |r: &serde_json::Value, who: &str| r["in_domain"]["tokens"][who].as_f64().unwrap();
    // The teacher's greedy text is the same in both; the trained student reads it better.
    assert_eq!(nll(&before, "teacher_nll_per_byte"), nll(&after, "teacher_nll_per_byte"));
    assert!(
        nll(&after, "student_nll_per_byte") < nll(&before, "student_nll_per_byte"),
        "student NLL/byte of the teacher's text {} -> {}",
        nll(&before, "student_nll_per_byte"),
        nll(&after, "student_nll_per_byte")
    );

    // On-policy across tokenizers: the student's samples re-tokenised for the teacher to score.
    let on_policy = format!(
        "\n[cross_tokenizer]\nmode = \"gold\"\n\n[on_policy]\nteacher = {teacher:?}\nprompts = {prompts:?}\n\
         fraction = 0.5\nrollouts = 2\nmax_tokens = 8\nchat = false\n"
    );
    let out = distill(&["train", &config("on-policy", &on_policy)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let metrics = std::fs::read_to_string(dir.path().join("on-policy/metrics.jsonl")).unwrap();
    let scored = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rollout_teacher_tokens"].as_u64())
        .max();
    assert!(scored.is_some_and(|t| t > 0), "the teacher scored no rollout token: {metrics}");

    // A dataset made before `source/` existed names the fix.
    std::fs::remove_file(Path::new(data).join("source/tokenizer.json")).unwrap();
    let out = distill(&["train", &config("old", "\n[cross_tokenizer]\nmode = \"uld\"\n")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("keeps no copy of its teacher's tokenizer") && err.contains("distill generate"), "{err}");
}
