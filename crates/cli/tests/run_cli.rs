//! `distill run`: the whole pipeline on a tiny teacher, then a re-run that skips every stage, and
//! re-runs with edited settings or prompts that are refused, naming what changed.

mod common;
use common::{distill, text};

use distill_models::fixtures::tiny_gguf;

#[test]
fn pipeline_runs_every_stage_then_resumes_by_skipping_them() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher.gguf");
    tiny_gguf(&teacher, 21).unwrap();
    let prompts = |name: &str, n: usize, with_ref: bool| {
        let path = dir.path().join(name);
        let lines: String = (0..n)
            .map(|i| {
                let reference = if with_ref { format!(", \"reference\": \"the {i}\"") } else { String::new() };
                format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"hello the {i} there\"}}]{reference}}}\n")
            })
            .collect();
        std::fs::write(&path, lines).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (train, heldout, ood) =
        (prompts("train.jsonl", 8, false), prompts("heldout.jsonl", 6, false), prompts("ood.jsonl", 3, true));
    let more = prompts("more.jsonl", 8, false);
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"task_id\": \"T/0\", \"prompt\": \"def add(a, b):\\n\", \"test\": \"def check(f):\\n    assert f(1, 2) == 3\\n\", \"entry_point\": \"add\"}\n",
    )
    .unwrap();
    let system = dir.path().join("system.txt");
    std::fs::write(&system, "Be brief.\n").unwrap();
    let system = system.to_str().unwrap();
    let out = dir.path().join("run");
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "output = {:?}\n[teacher]\nmodel = {:?}\n[data]\ntrain_prompts = [{train:?}, {more:?}]\nheldout_prompts = {heldout:?}\nood_prompts = {ood:?}\nmax_train_prompts = 12\nsystem_prompts = {system:?}\nsystem_share = 1.0\ncompletions = 2\nk = 8\nmax_tokens = 8\n[train]\nsteps = 6\nbatch_size = 2\nseq_len = 48\neval_every = 3\n[student]\ntype = \"prune\"\nkeep_layers = [0]\n[optimizer]\nlr = 0.002\n[eval]\nmax_tokens = 6\ncode_tasks = {:?}\ncode_max_tokens = 4\n[export]\ntypes = [\"q8_0\"]\n",
            out.to_str().unwrap(),
            teacher.to_str().unwrap(),
            tasks.to_str().unwrap()
        ),
    )
    .unwrap();
    let first = distill(&["run", config.to_str().unwrap()]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    assert!(stdout.contains("report.html"), "{stdout}");
    assert!(stdout.contains("retention student in_domain: top-1 agreement"), "{stdout}");
    assert!(stdout.contains("retention student (q8_0) out_of_domain"), "{stdout}");
    // Code tasks are scored on the trained student only, not again on each export.
    assert!(stdout.contains("code tasks student (1 tasks): pass@1 teacher 0.000, student 0.000"), "{stdout}");
    assert!(!stdout.contains("code tasks student (q8_0)"), "{stdout}");
    for stage in ["teacher-signal-train", "teacher-signal-heldout", "train", "eval", "export-q8_0"] {
        assert!(out.join("stages").join(format!("{stage}.done")).is_file(), "{stage} not marked done");
    }
    assert!(out.join("export/student.q8_0.gguf").is_file());
    let train_dir = out.join("train");
    for file in ["final/config.json", "eval.json", "eval-q8_0.json", "report.html", "report.json"] {
        assert!(train_dir.join(file).is_file(), "{file} missing");
    }
    let html = std::fs::read_to_string(train_dir.join("report.html")).unwrap();
    // Loss, held-out KL and top-1; learning rate, gradient norm and throughput.
    assert_eq!(html.matches("<svg").count(), 6, "six plots");
    assert!(html.contains("teacher-signal-train") && html.contains("training config"), "the run's section");
    assert!(html.contains("student (q8_0) — in-domain") && html.contains("student — out-of-domain"));
    assert!(html.contains("Code tasks (executed pass@1"), "the code tasks' table");
    // The train stage used only the first 12 prompts: the first file's 8, then 4 of the second.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("data/train/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["spec"]["prompts"], 12);
    assert_eq!(manifest["spec"]["completions_per_prompt"], 2);
    let heldout_manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("data/heldout/manifest.json")).unwrap()).unwrap();
    assert_eq!(heldout_manifest["spec"]["completions_per_prompt"], 1, "held-out prompts are sampled once");
    // ... each given the system message (share 1): the prompts as the teacher read them.
    assert_eq!(manifest["spec"]["system_messages"]["share"], 1.0);
    let used = std::fs::read_to_string(distill_store::Source::of(&out.join("data/train")).prompts).unwrap();
    let users: Vec<String> = used
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["messages"][0]["content"], "Be brief.", "{l}");
            v["messages"][1]["content"].as_str().unwrap().to_string()
        })
        .collect();
    let expected: Vec<String> = (0..8).chain(0..4).map(|i| format!("hello the {i} there")).collect();
    assert_eq!(users, expected);
    // The system file is an input of the training prompts' stage only.
    let marker = |stage: &str| std::fs::read_to_string(out.join(format!("stages/{stage}.done"))).unwrap();
    assert!(marker("teacher-signal-train").contains("system_prompts"));
    assert!(!marker("teacher-signal-heldout").contains("system_"), "{}", marker("teacher-signal-heldout"));

    let again = distill(&["run", config.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let log = text(&again.stderr);
    assert_eq!(log.matches("done earlier, skipped").count(), 5, "{log}");
    assert!(text(&again.stdout).contains("report.html"));

    // Edited settings are not skipped over: the first stage they reach is refused, naming them.
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, original.replace("steps = 6", "steps = 7")).unwrap();
    let changed = distill(&["run", config.to_str().unwrap()]);
    let log = text(&changed.stderr);
    assert!(!changed.status.success(), "{log}");
    assert!(log.contains("stage `train` was done with other settings") && log.contains("config.steps: 6 → 7"), "{log}");
    assert_eq!(log.matches("done earlier, skipped").count(), 2, "the teacher signal is unchanged: {log}");
    // So is an edited prompt file, though its path is the same.
    std::fs::write(&config, &original).unwrap();
    std::fs::write(&heldout, std::fs::read_to_string(&heldout).unwrap().replace("hello the 0", "hi the 0")).unwrap();
    let log = text(&distill(&["run", config.to_str().unwrap()]).stderr);
    assert!(log.contains("stage `teacher-signal-heldout` was done with other settings"), "{log}");
    assert!(log.contains("prompts.sha256"), "{log}");
}

/// The whole loop on a real Gemma 3 teacher (Gemma-3-270M base: no chat template, a 262,144-token
/// SentencePiece vocabulary, sliding-window layers): teacher signal from plain prompts, a
/// student cut from it, eval, and a GGUF export that reads back.
#[test]
fn pipeline_distils_a_gemma3_teacher_into_a_pruned_gemma3_student() {
    let teacher = distill_models::teacher::fetched_model(distill_models::teacher::GEMMA3_270M_FILE)
        .expect("Gemma-3-270M is missing\nHINT: fetch it with `scripts/fetch-teacher.sh gemma3-270m`");
    let dir = tempfile::tempdir().unwrap();
    let prompts = |name: &str, questions: &[&str]| {
        let path = dir.path().join(name);
        let lines: String =
            questions.iter().map(|q| format!("{{\"prompt\": \"Customer: {q}\\nSupport agent:\"}}\n")).collect();
        std::fs::write(&path, lines).unwrap();
        path.to_str().unwrap().to_string()
    };
    let train = prompts("train.jsonl", &["Where is my order?", "How do I reset my password?", "Can I get a refund?"]);
    let heldout = prompts("heldout.jsonl", &["Do you ship to Canada?", "My parcel arrived damaged."]);
    let out = dir.path().join("run");
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "output = {:?}\n[teacher]\nmodel = {:?}\n[data]\ntrain_prompts = {train:?}\nheldout_prompts = {heldout:?}\nk = 8\nmax_tokens = 8\n[train]\nsteps = 2\nbatch_size = 2\nseq_len = 32\neval_every = 2\n[student]\ntype = \"prune\"\nkeep_every = 6\nintermediate_size = 256\n[eval]\nmax_tokens = 4\n[export]\ntypes = [\"q8_0\"]\n",
            out.to_str().unwrap(),
            teacher.to_str().unwrap()
        ),
    )
    .unwrap();
    let run = distill(&["run", config.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(stdout.contains("retention student (q8_0) in_domain: top-1 agreement"), "{stdout}");
    let student: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train/final/config.json")).unwrap()).unwrap();
    assert_eq!(student["model_type"], "gemma3_text");
    assert_eq!(student["num_hidden_layers"], 3);
    assert_eq!(student["intermediate_size"], 256);
    let exported =
        distill_models::load(out.join("export/student.q8_0.gguf").to_str().unwrap(), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(exported.model.config().model_type, "gemma3");
    assert!(exported.tokenizer.is_spm());
}
