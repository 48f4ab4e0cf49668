//! `distill train` end to end on a tiny teacher: the pruned student's held-out KL falls, the run
//! directory holds the resolved config, metrics and a loadable student.

mod common;
use common::{distill, text};

use std::path::Path;
use std::process::Command;

use distill_models::fixtures::tiny_gguf;

/// A tiny random teacher written to DIR/teacher.gguf; its path.
fn teacher(dir: &Path, seed: u64) -> String {
    let model = dir.join("teacher.gguf");
    tiny_gguf(&model, seed).unwrap();
    model.to_str().unwrap().to_string()
}

fn dataset(dir: &Path, model: &str, name: &str, prompts: usize, seed: usize) -> String {
    let file = dir.join(format!("{name}.jsonl"));
    let lines: String = (0..prompts)
        .map(|i| {
            format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"hello the {} there\"}}]}}\n", i * 7 + seed)
        })
        .collect();
    std::fs::write(&file, lines).unwrap();
    let out_dir = dir.join(name);
    let out = distill(&[
        "generate",
        "--model",
        model,
        "--prompts-file",
        file.to_str().unwrap(),
        "--dataset",
        out_dir.to_str().unwrap(),
        "--chat",
        "--k",
        "8",
        "--max-tokens",
        "16",
        "--temperature",
        "1.0",
        "--seed",
        &seed.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    out_dir.to_str().unwrap().to_string()
}

#[test]
fn pruned_student_learns_from_the_teacher_signal() {
    let dir = tempfile::tempdir().unwrap();
    let m = &teacher(dir.path(), 31);
    let train = dataset(dir.path(), m, "train", 48, 1);
    let heldout = dataset(dir.path(), m, "heldout", 24, 2);
    let run = dir.path().join("run");
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "dataset = {train:?}\neval_dataset = {heldout:?}\noutput = {:?}\nsteps = 80\nbatch_size = 4\nseq_len = 64\neval_every = 20\n\n[student]\ntype = \"prune\"\nfrom = {m:?}\nkeep_layers = [0]\n\n[optimizer]\nlr = 0.001\n",
            run.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = distill(&["train", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Off a terminal (stderr is a pipe here) the progress is logged as lines.
    let log = text(&out.stderr);
    assert!(log.contains("step 80/80, loss ") && log.contains(" tok/s, ETA "), "{log}");
    assert_eq!(log.matches(": held-out KL ").count(), 5, "{log}");
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let evals: Vec<f64> = metrics.iter().filter_map(|m| m["eval_kl"].as_f64()).collect();
    assert_eq!(evals.len(), 5, "evaluations at steps 0, 20, 40, 60, 80");
    eprintln!("held-out KL at steps 0, 20, 40, 60, 80: {evals:?}");
    // The teacher's completions are sampled, so the figure depends on the draw. With 24 training
    // and 8 held-out prompts it ended at 0.68–0.96 of the start over five seed pairs; with 48 and
    // 24 at 0.78–0.81 over three (at lr 0.001, 80 steps), falling at every evaluation.
    assert!(evals[4] < evals[0] * 0.85, "held-out KL did not fall enough: {evals:?}");
    assert!(run.join("config.toml").is_file());
    let student = run.join("final");
    let out = distill(&["generate", "--model", student.to_str().unwrap(), "--max-tokens", "4", "--json", "the"]);
    assert!(out.status.success(), "the trained student does not load: {}", text(&out.stderr));
}

#[test]
fn bad_run_configs_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("dataset = \"d\"\noutput = \"o\"\nstepz = 3\n[student]\ntype = \"prune\"\nfrom = \"m\"\nkeep_every = 2\n", "stepz"),
        ("dataset = \"d\"\noutput = \"o\"\n[student]\ntype = \"prune\"\nfrom = \"m\"\n", "keep_every, keep_layers or num_layers"),
        ("dataset = \"d\"\noutput = \"o\"\n[student]\ntype = \"prune\"\nfrom = \"m\"\nkeep_every = 2\n[loss]\nkd_weight = 2.0\n", "kd_weight"),
        ("dataset = \"d\"\noutput = \"o\"\n[student]\ntype = \"prune\"\nfrom = \"m\"\nkeep_every = 2\n[loss]\ntail = \"uniform\"\n", "reverse KL only"),
        (
            "dataset = \"d\"\noutput = \"o\"\n[student]\ntype = \"prune\"\nfrom = \"m\"\nkeep_every = 2\n[on_policy]\nteacher = \"m\"\nprompts = \"p\"\nbeta = 0.5\ntail = \"uniform\"\n",
            "needs beta = 1",
        ),
    ];
    for (i, (toml, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out = distill(&["train", path.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(needle), "case {i}: expected `{needle}` in {}", text(&out.stderr));
    }
}

fn losses(run: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].to_string()))
        .collect()
}

#[test]
fn a_run_killed_mid_training_resumes_to_the_same_losses_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let m = &teacher(dir.path(), 32);
    let train = dataset(dir.path(), m, "train", 24, 3);
    let write_config = |name: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        let out = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "dataset = {train:?}\noutput = {:?}\nsteps = 400\nbatch_size = 2\nseq_len = 48\ncheckpoint_every = 7\n\n[student]\ntype = \"prune\"\nfrom = {m:?}\nkeep_layers = [1]\n\n[optimizer]\nlr = 0.002\n",
                out.to_str().unwrap()
            ),
        )
        .unwrap();
        (path, out)
    };
    let (reference_cfg, reference) = write_config("reference");
    let out = distill(&["train", reference_cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let (cfg, run) = write_config("interrupted");
    for round in 0..2 {
        let mut child = common::command()
            .args(["train", cfg.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        // Lines may be half-written while the run goes on: count complete ones.
        let lines = || std::fs::read_to_string(run.join("metrics.jsonl")).map(|t| t.matches('\n').count()).unwrap_or(0);
        let before = lines();
        loop {
            let now = lines();
            if now >= before + 60 || started.elapsed() > std::time::Duration::from_secs(120) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL: no chance to save anything
        child.wait().unwrap();
        let done = lines();
        assert!(done < 400, "round {round}: the run finished before it was killed");
    }
    let out = distill(&["train", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("resuming"), "{}", text(&out.stderr));
    let want = losses(&reference);
    let got = losses(&run);
    assert_eq!(want.len(), 400);
    assert_eq!(got, want, "per-step losses after kill -9 and resume differ from an uninterrupted run");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let m = &teacher(dir.path(), 33);
    let train = dataset(dir.path(), m, "train", 12, 4);
    let run = dir.path().join("run");
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "dataset = {train:?}\noutput = {:?}\nsteps = 100000\nbatch_size = 2\nseq_len = 48\ngrad_accum = 2\ncheckpoint_every = 100000\n\n[student]\ntype = \"prune\"\nfrom = {m:?}\nkeep_layers = [0]\n",
            run.to_str().unwrap()
        ),
    )
    .unwrap();
    let child = common::command()
        .args(["train", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map(|t| t.matches('\n').count()).unwrap_or(0) < 5 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("interrupted at step"), "{}", text(&out.stderr));
    assert!(run.join("checkpoint").join("trainer_state.json").is_file());
}

#[test]
fn width_pruned_student_trains_and_the_reference_export_holds_its_batches() {
    let dir = tempfile::tempdir().unwrap();
    let m = &teacher(dir.path(), 31);
    let train = dataset(dir.path(), m, "train", 12, 1);
    let heldout = dataset(dir.path(), m, "heldout", 4, 2);
    let run = dir.path().join("run");
    let write = |heads: usize| {
        let config = dir.path().join(format!("run{heads}.toml"));
        std::fs::write(
            &config,
            format!(
                "dataset = {train:?}\neval_dataset = {heldout:?}\noutput = {:?}\nsteps = 3\ngrad_accum = 2\nbatch_size = 2\nseq_len = 48\n\n[student]\ntype = \"prune\"\nfrom = {m:?}\nkeep_layers = [0, 1]\nintermediate_size = 40\nnum_attention_heads = {heads}\n",
                run.to_str().unwrap()
            ),
        )
        .unwrap();
        config
    };
    // The tiny teacher has 4 query heads over 2 key/value heads: 3 would split a group.
    let out = distill(&["train", write(3).to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("choose one of 2, 4"), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&run).unwrap();

    let config = write(2);
    let out = distill(&["train", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let student: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("final/config.json")).unwrap()).unwrap();
    assert_eq!(student["intermediate_size"], 40);
    assert_eq!(student["num_attention_heads"], 2);
    assert_eq!(student["num_key_value_heads"], 1);

    let reference = dir.path().join("reference");
    let out = distill(&["train", config.to_str().unwrap(), "--export-reference", reference.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let initial: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference.join("student/config.json")).unwrap()).unwrap();
    assert_eq!(initial["intermediate_size"], 40);
    let batches =
        candle_core::safetensors::load(reference.join("train_batches.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(batches["input_ids"].dims(), &[6, 2, 48], "steps × grad_accum micro-batches");
    assert_eq!(batches["topk_ids"].dims(), &[6, 2, 48, 8]);
    let mask = batches["loss_mask"].sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(mask > 0.0, "every exported micro-batch carries a teacher signal");
    assert!(reference.join("eval_batches.safetensors").is_file());
    assert!(reference.join("config.toml").is_file());
}

/// Writes `arch` as a student config named `name` and a two-step run config training it on
/// `train` into `run`, with `teacher`'s tokenizer; returns the run config's path.
fn config_student_run(
    dir: &Path,
    name: &str,
    arch: &distill_models::LlamaConfig,
    train: &str,
    teacher: &str,
    run: &Path,
) -> std::path::PathBuf {
    let arch_path = dir.join(format!("{name}.json"));
    std::fs::write(&arch_path, serde_json::to_string(arch).unwrap()).unwrap();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "dataset = {train:?}\noutput = {:?}\nsteps = 2\nbatch_size = 2\nseq_len = 48\n\n[student]\ntype = \"config\"\nconfig = {:?}\ntokenizer_from = {teacher:?}\ninit_seed = 3\n",
            run.to_str().unwrap(),
            arch_path.to_str().unwrap()
        ),
    )
    .unwrap();
    config
}

#[test]
fn explicit_config_student_trains_and_a_padded_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = &teacher(dir.path(), 31);
    let train = dataset(dir.path(), m, "train", 6, 1);
    let run = dir.path().join("run");
    let tiny = distill_models::fixtures::tiny_config();
    let write = |vocab: usize| {
        let arch =
            distill_models::LlamaConfig { num_hidden_layers: 1, hidden_size: 16, vocab_size: vocab, ..tiny.clone() };
        config_student_run(dir.path(), &format!("student{vocab}"), &arch, &train, m, &run)
    };
    let out = distill(&["train", write(tiny.vocab_size + 64).to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&format!("give the student vocab_size = {}", tiny.vocab_size)), "{err}");
    std::fs::remove_dir_all(&run).unwrap();

    let out = distill(&["train", write(tiny.vocab_size).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let student: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("final/config.json")).unwrap()).unwrap();
    assert_eq!((student["num_hidden_layers"].as_u64(), student["hidden_size"].as_u64()), (Some(1), Some(16)));
}

#[test]
fn on_policy_rollouts_are_scored_by_the_teacher_at_the_configured_share() {
    let dir = tempfile::tempdir().unwrap();
    let m = &teacher(dir.path(), 33);
    let train = dataset(dir.path(), m, "train", 24, 1);
    let heldout = dataset(dir.path(), m, "heldout", 8, 2);
    let prompts = dir.path().join("train.jsonl");
    let run = dir.path().join("run");
    let config = |fraction: f64| {
        format!(
            "dataset = {train:?}\neval_dataset = {heldout:?}\noutput = {:?}\nsteps = 30\nbatch_size = 4\nseq_len = 64\neval_every = 30\n\n\
             [student]\ntype = \"prune\"\nfrom = {m:?}\nkeep_layers = [0]\n\n[optimizer]\nlr = 0.002\n\n\
             [on_policy]\nteacher = {m:?}\nprompts = {:?}\nfraction = {fraction}\nrollouts = 4\nmax_tokens = 12\n",
            run.to_str().unwrap(),
            prompts.to_str().unwrap()
        )
    };
    let path = dir.path().join("run.toml");
    std::fs::write(&path, config(1.5)).unwrap();
    let out = distill(&["train", path.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out.stderr).contains("on_policy.fraction"), "{}", text(&out.stderr));
    assert!(!run.exists(), "a config refused by validation leaves no run directory behind");

    std::fs::write(&path, config(0.5)).unwrap();
    let out = distill(&["train", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scored: Vec<u64> = metrics.iter().filter_map(|l| l["rollout_teacher_tokens"].as_u64()).collect();
    assert_eq!(scored.len(), 30);
    let rollout_steps = scored.windows(2).filter(|w| w[1] > w[0]).count() + usize::from(scored[0] > 0);
    assert_eq!(rollout_steps, 15, "λ = 0.5: every other micro-batch is a scored rollout: {scored:?}");
    // Rollout steps (odd) train on JSD(0.5), which is bounded by ln 2; offline steps on forward KL.
    let losses: Vec<f64> = metrics.iter().filter_map(|l| l["loss"].as_f64()).collect();
    for (i, loss) in losses.iter().enumerate() {
        assert!(loss.is_finite() && *loss >= 0.0, "step {}: {loss}", i + 1);
        if i % 2 == 1 {
            assert!(*loss <= std::f64::consts::LN_2 + 1e-4, "a rollout step's JSD exceeds ln 2: {loss}");
        }
    }
    assert!(std::fs::read_to_string(run.join("config.toml")).unwrap().contains("[on_policy]"));
    let out =
        distill(&["generate", "--model", run.join("final").to_str().unwrap(), "--max-tokens", "4", "--json", "the"]);
    assert!(out.status.success(), "the student trained on-policy loads: {}", text(&out.stderr));

    // Online: the teacher writes every batch inside the loop.
    std::fs::remove_dir_all(&run).unwrap();
    std::fs::write(&path, config(1.0).replace("steps = 30", "steps = 3") + "sampler = \"teacher\"\nstart_step = 1\n")
        .unwrap();
    let out = distill(&["train", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let scored = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rollout_teacher_tokens"].as_u64())
        .max();
    assert!(scored.is_some_and(|t| t > 0), "{metrics}");
    let first_step = metrics.lines().find(|l| l.contains("\"loss\"")).unwrap();
    assert!(first_step.contains("\"rollout_teacher_tokens\":0"), "step 1 is a warm-up: {metrics}");
}

#[test]
fn on_policy_and_online_training_work_with_a_teacher_behind_an_openai_compatible_server() {
    use common::server::{create_key, Server};

    let dir = tempfile::tempdir().unwrap();
    let m = &teacher(dir.path(), 35);
    let train = dataset(dir.path(), m, "train", 16, 1);
    let prompts = dir.path().join("train.jsonl");
    let db = dir.path().join("serve.db");
    let key = create_key(&db, "trainer", &[]);
    let server = Server::start(Path::new(m), &db, &[]);
    let run = dir.path().join("run");
    let config = |extra: &str| {
        format!(
            "dataset = {train:?}\noutput = {:?}\nsteps = 6\nbatch_size = 4\nseq_len = 64\n\n\
             [student]\ntype = \"prune\"\nfrom = {m:?}\nkeep_layers = [0]\n\n[optimizer]\nlr = 0.002\n\n\
             [on_policy]\nteacher = {:?}\nprompts = {:?}\nfraction = 0.5\nrollouts = 4\nmax_tokens = 10\n{extra}",
            run.to_str().unwrap(),
            server.url,
            prompts.to_str().unwrap()
        )
    };
    let path = dir.path().join("run.toml");
    let train_with = |key: &str| {
        common::command().args(["train", path.to_str().unwrap()]).env("DISTILL_TEACHER_API_KEY", key).output().unwrap()
    };
    std::fs::write(&path, config("")).unwrap();
    let out = train_with("dk-wrong");
    assert!(!out.status.success() && text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("dk-wrong"), "the key is never printed");
    let _ = std::fs::remove_dir_all(&run);

    let out = train_with(&key);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scored: Vec<u64> = metrics.iter().filter_map(|l| l["rollout_teacher_tokens"].as_u64()).collect();
    assert_eq!(scored.len(), 6);
    assert!(scored[1] > 0 && scored[5] > scored[3] && scored[3] > scored[1], "{scored:?}");
    let losses: Vec<f64> = metrics.iter().filter_map(|l| l["loss"].as_f64()).collect();
    for (i, loss) in losses.iter().enumerate() {
        assert!(loss.is_finite() && *loss >= 0.0, "step {}: {loss}", i + 1);
        if i % 2 == 1 {
            assert!(*loss <= std::f64::consts::LN_2 + 1e-4, "a rollout step's JSD exceeds ln 2: {loss}");
        }
    }

    // Online: the served teacher writes the rollouts too.
    std::fs::remove_dir_all(&run).unwrap();
    std::fs::write(&path, config("sampler = \"teacher\"\nteacher_model = \"tiny\"\n")).unwrap();
    let out = train_with(&key);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last = metrics.lines().last().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).unwrap();
    assert!(last["rollout_teacher_tokens"].as_u64().is_some_and(|t| t > 0), "{metrics}");

    // Pure online training needs no dataset at all: every batch comes from the served teacher.
    std::fs::remove_dir_all(&run).unwrap();
    let no_dataset = |fraction: &str| {
        config("sampler = \"teacher\"\nk = 8\n")
            .lines()
            .filter(|l| !l.starts_with("dataset = "))
            .map(|l| if l.starts_with("fraction = ") { format!("fraction = {fraction}") } else { l.to_string() })
            .collect::<Vec<_>>()
            .join("\n")
    };
    std::fs::write(&path, no_dataset("0.5")).unwrap();
    let out = train_with(&key);
    assert!(!out.status.success() && text(&out.stderr).contains("`dataset` is missing"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&run);
    std::fs::write(&path, no_dataset("1.0")).unwrap();
    let out = train_with(&key);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no dataset"), "{}", text(&out.stderr));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"loss\"")).count(), 6, "{metrics}");
    assert!(run.join("final/config.json").exists());
}

/// Students of the other families (Qwen3's q/k norms, Phi-3's fused checkpoints and sliding
/// window, Gemma 3's norms, GeGLU and sliding layers) train on a teacher's signal, save, and load
/// back to generate.
#[test]
fn students_of_every_family_train_save_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    let m = &teacher(dir.path(), 35);
    let train = dataset(dir.path(), m, "train", 6, 1);
    let tiny = distill_models::fixtures::tiny_config();
    for family in ["qwen3", "phi3", "gemma3"] {
        let mut arch = distill_models::LlamaConfig {
            model_type: family.into(),
            num_hidden_layers: 2,
            hidden_size: 16,
            ..tiny.clone()
        };
        match family {
            "qwen3" => arch.head_dim = Some(8),
            "phi3" => arch.sliding_window = Some(16),
            _ => {
                arch.hidden_act = "gelu_pytorch_tanh".into();
                arch.sliding_window = Some(16);
                arch.rope_local_base_freq = Some(10_000.0);
                arch.layer_types = Some(vec!["sliding_attention".into(), "full_attention".into()]);
            }
        }
        let run = dir.path().join(format!("run-{family}"));
        let config = config_student_run(dir.path(), family, &arch, &train, m, &run);
        let out = distill(&["train", config.to_str().unwrap()]);
        assert!(out.status.success(), "{family}: {}", text(&out.stderr));
        let final_dir = run.join("final");
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(final_dir.join("config.json")).unwrap()).unwrap();
        let expected_type = if family == "gemma3" { "gemma3_text" } else { family };
        assert_eq!(saved["model_type"], expected_type);
        let out = distill(&["generate", "-m", final_dir.to_str().unwrap(), "--max-tokens", "4", "--json", "the"]);
        assert!(out.status.success(), "{family}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("\"completion_tokens\":4"), "{family}: {}", text(&out.stdout));
    }
}
