//! The training loop as a library: a dataset built through the `Teacher` seam, a `Trainer` run
//! heard by an observer, stopped through its handle and resumed, and on-policy batches from an
//! injected teacher.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::Device;
use distill_models::fixtures::tiny_gguf;
use distill_models::SamplingParams;
use distill_teacher::{create_dataset, DatasetOptions, LocalTeacher};
use distill_train::{EvalMetrics, RunStart, StepMetrics, TrainConfig, TrainObserver, TrainOutcome, Trainer};

/// Everything it heard, and a stop handle to pull at a given step.
#[derive(Default)]
struct Recorder {
    kept_layers: Vec<Option<Vec<usize>>>,
    resumed_at: Vec<Option<u64>>,
    extended_from: Vec<Option<u64>>,
    truncated: Vec<usize>,
    steps: Vec<u64>,
    evaluations: Vec<u64>,
    outcome: Option<TrainOutcome>,
    stop_at: Option<(u64, Arc<AtomicBool>)>,
}

impl TrainObserver for Recorder {
    fn started(&mut self, start: &RunStart) {
        self.kept_layers.push(start.kept_layers.clone());
        self.resumed_at.push(start.resumed_at);
        self.extended_from.push(start.extended_from);
        self.truncated.extend(start.truncation.iter().map(|(_, t)| t.dropped()));
    }
    fn step(&mut self, m: &StepMetrics) {
        self.steps.push(m.step);
        assert!(m.loss.is_finite() && m.tokens > 0, "{m:?}");
        if let Some((at, flag)) = &self.stop_at {
            if m.step == *at {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }
    fn evaluated(&mut self, m: &EvalMetrics) {
        self.evaluations.push(m.step);
    }
    fn finished(&mut self, outcome: &TrainOutcome) {
        self.outcome = Some(outcome.clone());
    }
}

fn teacher(dir: &Path) -> (String, LocalTeacher) {
    let path = dir.join("teacher.gguf");
    tiny_gguf(&path, 41).unwrap();
    let path = path.to_str().unwrap().to_string();
    let teacher = LocalTeacher::new(distill_models::load(&path, &Device::Cpu).unwrap());
    (path, teacher)
}

fn prompts(dir: &Path, n: usize) -> std::path::PathBuf {
    let file = dir.join("prompts.jsonl");
    let lines: String = (0..n).map(|i| format!("{{\"prompt\": \"hello the {i} cat\"}}\n")).collect();
    std::fs::write(&file, lines).unwrap();
    file
}

/// A teacher-signal dataset of `n` prompts in `dir`/data: k = 4, up to 10 sampled tokens each.
fn dataset(dir: &Path, teacher: &LocalTeacher, n: usize) -> distill_teacher::DatasetSummary {
    let opts = DatasetOptions {
        chat: false,
        k: 4,
        sampling: SamplingParams { temperature: 0.8, max_tokens: 10, ..Default::default() },
        ..Default::default()
    };
    create_dataset(teacher, &prompts(dir, n), &dir.join("data"), &opts, &mut |_| {}).unwrap()
}

fn config(dir: &Path, model: &str, output: &str, steps: u64, extra: &str) -> TrainConfig {
    let data = dir.join("data");
    toml::from_str(&format!(
        "dataset = {data:?}\neval_dataset = {data:?}\noutput = {:?}\nsteps = {steps}\nbatch_size = 2\nseq_len = 48\n\
         eval_every = 2\ncheckpoint_every = 2\n[student]\ntype = \"prune\"\nfrom = {model:?}\nkeep_layers = [0]\n{extra}",
        dir.join(output)
    ))
    .unwrap()
}

#[test]
fn a_trainer_is_heard_stopped_and_resumed_through_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let (model, teacher) = teacher(dir.path());
    let summary = dataset(dir.path(), &teacher, 12);
    assert_eq!(summary.manifest.prompts_done(), 12);

    // A whole run: every step and evaluation heard, the student saved.
    let mut heard = Recorder::default();
    let outcome =
        Trainer::new(config(dir.path(), &model, "whole", 4, ""), &mut heard).unwrap().run(&mut heard).unwrap();
    assert_eq!((heard.steps.as_slice(), heard.evaluations.as_slice()), (&[1, 2, 3, 4][..], &[0, 2, 4][..]));
    assert_eq!(heard.resumed_at, [None]);
    assert!(!outcome.interrupted && outcome.final_dir.join("model.safetensors").is_file());
    assert_eq!(heard.outcome.as_ref(), Some(&outcome));

    // Stopped through the handle after step 3: a checkpoint, no final student.
    let mut stopped = Recorder::default();
    let trainer = Trainer::new(config(dir.path(), &model, "stopped", 4, ""), &mut stopped).unwrap();
    stopped.stop_at = Some((3, trainer.stop_handle()));
    let outcome = trainer.run(&mut stopped).unwrap();
    assert!(outcome.interrupted && outcome.steps == 3 && !outcome.final_dir.exists());
    assert!(outcome.checkpoint_dir.join("trainer_state.json").is_file());

    // Resumed, it finishes where the whole run did, with the same final loss.
    let mut resumed = Recorder::default();
    let outcome =
        Trainer::new(config(dir.path(), &model, "stopped", 4, ""), &mut resumed).unwrap().run(&mut resumed).unwrap();
    assert_eq!((resumed.resumed_at.as_slice(), resumed.steps.as_slice()), (&[Some(3)][..], &[4][..]));
    assert!(!outcome.interrupted && outcome.steps == 4);
    let last_loss = |run: &str| {
        let text = std::fs::read_to_string(dir.path().join(run).join("metrics.jsonl")).unwrap();
        let steps: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v["loss"].is_number())
            .collect();
        assert_eq!(steps.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4], "{run}");
        steps[3]["loss"].as_f64().unwrap()
    };
    assert_eq!(last_loss("stopped"), last_loss("whole"));

    // A finished run is extended by raising `steps`; any other change is refused, naming it.
    let mut more = Recorder::default();
    Trainer::new(config(dir.path(), &model, "whole", 6, ""), &mut more).unwrap().run(&mut more).unwrap();
    assert_eq!((more.resumed_at.as_slice(), more.extended_from.as_slice()), (&[Some(4)][..], &[Some(4)][..]));
    assert_eq!(more.steps, [5, 6]);
    let other = config(dir.path(), &model, "whole", 8, "[optimizer]\nlr = 0.01\n");
    let err = Trainer::new(other, &mut ()).err().expect("another learning rate is refused").to_string();
    assert!(err.contains("optimizer.lr: 0.001 → 0.01") && err.contains("only `steps` may be raised"), "{err}");
}

#[test]
fn on_policy_batches_come_from_the_injected_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let (model, teacher) = teacher(dir.path());
    let prompts = prompts(dir.path(), 6);
    let opts = DatasetOptions { chat: false, k: 4, ..Default::default() };
    let opts = DatasetOptions { sampling: SamplingParams { max_tokens: 8, ..Default::default() }, ..opts };
    create_dataset(&teacher, &prompts, &dir.path().join("data"), &opts, &mut |_| {}).unwrap();
    // `teacher` in the config names a file that does not exist: the injected teacher is used.
    let extra = format!(
        "[on_policy]\nteacher = \"not-loaded.gguf\"\nprompts = {prompts:?}\nfraction = 0.5\nrollouts = 2\nmax_tokens = 6\nchat = false\n"
    );
    let cfg = config(dir.path(), &model, "on-policy", 4, &extra);
    let mut heard = Recorder::default();
    let trainer = Trainer::with_teacher(cfg, Some(Box::new(teacher)), &mut heard).unwrap();
    trainer.run(&mut heard).unwrap();
    let text = std::fs::read_to_string(dir.path().join("on-policy/metrics.jsonl")).unwrap();
    let scored: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rollout_teacher_tokens"].as_u64())
        .collect();
    assert_eq!(scored.len(), 4);
    assert!(scored[3] > 0, "the teacher scored the rollouts: {scored:?}");
}

#[test]
fn rows_too_short_for_the_data_are_reported_and_rows_with_no_target_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (model, teacher) = teacher(dir.path());
    let opts = DatasetOptions { chat: false, k: 4, ..Default::default() };
    let opts = DatasetOptions { sampling: SamplingParams { max_tokens: 12, ..Default::default() }, ..opts };
    create_dataset(&teacher, &prompts(dir.path(), 6), &dir.path().join("data"), &opts, &mut |_| {}).unwrap();
    let whole = distill_store::Dataset::open(&dir.path().join("data")).unwrap().truncation(10_000).unwrap();
    assert!(whole.truncated == 0 && whole.kept_tokens == whole.target_tokens && whole.target_tokens > 0);

    // One token short of the longest sequence: its last target token is dropped, and the run says so.
    let mut cfg = config(dir.path(), &model, "short", 1, "");
    cfg.seq_len = whole.longest - 1;
    let mut heard = Recorder::default();
    Trainer::new(cfg, &mut heard).unwrap();
    assert!(!heard.truncated.is_empty() && heard.truncated.iter().all(|&d| d >= 1), "{:?}", heard.truncated);

    // Rows shorter than every prompt keep no target at all: refused before any work, with the fix.
    let mut cfg = config(dir.path(), &model, "shorter", 1, "");
    cfg.seq_len = 2;
    let err = Trainer::new(cfg, &mut ()).err().expect("no target token fits").to_string();
    assert!(err.contains("no completion token") && err.contains(&format!("set seq_len = {}", whole.longest)), "{err}");
    assert!(!dir.path().join("shorter/checkpoint").exists());
}

#[test]
fn a_student_keeps_the_layers_that_turn_the_hidden_state_most() {
    let dir = tempfile::tempdir().unwrap();
    let (model, teacher) = teacher(dir.path());
    let opts = DatasetOptions { chat: false, k: 4, ..Default::default() };
    create_dataset(&teacher, &prompts(dir.path(), 4), &dir.path().join("data"), &opts, &mut |_| {}).unwrap();
    let layers = teacher_layers(&model);
    let by_influence = |n: usize| {
        let mut cfg = config(dir.path(), &model, &format!("n{n}"), 1, "");
        let distill_train::config::StudentConfig::Prune { keep_layers, num_layers, .. } = &mut cfg.student else {
            unreachable!()
        };
        (*keep_layers, *num_layers) = (None, Some(n));
        let mut heard = Recorder::default();
        Trainer::new(cfg, &mut heard).map(|_| heard.kept_layers[0].clone().expect("a pruned student"))
    };
    let one = by_influence(1).unwrap();
    assert_eq!(one.len(), 1);
    assert!(one[0] < layers);
    assert_eq!(by_influence(layers).unwrap(), (0..layers).collect::<Vec<_>>());
    let err = by_influence(layers + 1).err().unwrap().to_string();
    assert!(err.contains(&format!("between 1 and the model's {layers} layers")), "{err}");
}

fn teacher_layers(model: &str) -> usize {
    distill_models::load(model, &Device::Cpu).unwrap().model.config().num_hidden_layers
}

/// `precision = "bf16"` trains (mixed precision on the generic path) and saves an f32 student;
/// `device = "cuda"` without a usable GPU stops before training, saying what is missing.
#[test]
fn a_run_trains_in_bf16_and_a_missing_gpu_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (model, teacher) = teacher(dir.path());
    dataset(dir.path(), &teacher, 8);
    let mut heard = Recorder::default();
    let mut cfg = config(dir.path(), &model, "bf16", 3, "");
    cfg.precision = distill_train::Compute::Bf16;
    let outcome = Trainer::new(cfg, &mut heard).unwrap().run(&mut heard).unwrap();
    let saved = std::fs::read_to_string(outcome.final_dir.parent().unwrap().join("config.toml")).unwrap();
    assert!(saved.contains("precision = \"bf16\""), "{saved}");
    let student = distill_models::load(&outcome.final_dir.display().to_string(), &Device::Cpu).unwrap();
    assert_eq!(student.model.dtype(), candle_core::DType::F32);
    assert!(heard.evaluations.len() >= 2);

    let mut cfg = config(dir.path(), &model, "gpu", 2, "");
    cfg.device = "cuda:0".parse().unwrap();
    let built = distill_models::DeviceSpec::CUDA_BUILT;
    match Trainer::new(cfg, &mut heard) {
        Err(e) if !built => assert!(e.to_string().contains("built without CUDA"), "{e}"),
        Err(e) => assert!(e.to_string().contains("cannot open CUDA device 0"), "{e}"),
        Ok(_) => assert!(built, "a GPU opened without CUDA"),
    }
    assert!(!dir.path().join("gpu").exists(), "nothing is written before the device opens");
}
