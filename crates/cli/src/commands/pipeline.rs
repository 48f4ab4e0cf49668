//! The pipeline config of `distill run`: the file as written (`[train]` and `[student]` as tables
//! the pipeline completes) and [`Pipeline`], every section typed and checked, as the stages run it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use distill_kernels::packed::Precision;
use distill_models::export::GgufType;
use distill_train::config::{ScheduleConfig, TrainConfig};
use distill_train::optim::AdamWConfig;
use distill_train::LossConfig;
use serde::{Deserialize, Serialize};

/// The pipeline as it runs: the teacher resolved, the training run a complete `distill train`
/// config (its dataset, eval_dataset and output inside the pipeline's directory), every value
/// checked before the first stage. Written to `OUTPUT/pipeline.toml` for the record.
#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    pub output: PathBuf,
    /// The teacher model (the fetched default teacher unless `[teacher] model` names one).
    pub teacher: String,
    /// The arithmetic of the teacher's matmuls while it writes the teacher signal (`--matmuls`);
    /// none: the file's own (quantised weights as they are, else f32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teacher_matmuls: Option<Precision>,
    pub data: DataSection,
    pub train: TrainConfig,
    pub eval: EvalSection,
    pub export: ExportSection,
}

impl Pipeline {
    /// Reads and checks the pipeline config at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let file: PipelineFile =
            toml::from_str(&text).with_context(|| format!("{} is not a valid pipeline config", path.display()))?;
        file.resolve().with_context(|| path.display().to_string())
    }

    pub fn train_dir(&self) -> PathBuf {
        self.output.join("train")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    output: PathBuf,
    #[serde(default)]
    teacher: TeacherSection,
    data: DataSection,
    /// `distill train` settings (steps, batch_size, …, on_policy); the pipeline fills in
    /// dataset, eval_dataset and output.
    train: toml::Table,
    /// As in `distill train`; a pruned student is cut from the pipeline's teacher unless `from`
    /// says otherwise.
    student: toml::Table,
    #[serde(default)]
    loss: LossConfig,
    #[serde(default)]
    optimizer: AdamWConfig,
    #[serde(default)]
    schedule: ScheduleConfig,
    #[serde(default)]
    eval: EvalSection,
    #[serde(default)]
    export: ExportSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeacherSection {
    model: Option<String>,
    matmuls: Option<Precision>,
}

/// `[data]`: the prompts and how the teacher answers them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// One prompt file, or several read one after another (the shipped prompts and ones the
    /// teacher synthesised, say).
    pub train_prompts: PromptFiles,
    pub heldout_prompts: PathBuf,
    pub ood_prompts: Option<PathBuf>,
    pub max_train_prompts: Option<usize>,
    pub max_heldout_prompts: Option<usize>,
    #[serde(default = "default_k")]
    pub k: usize,
    /// Completions the teacher samples per training prompt.
    #[serde(default = "default_completions", skip_serializing_if = "is_one")]
    pub completions: usize,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    #[serde(default)]
    pub seed: u64,
    /// Prompts the teacher answers as one batch (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Strings that end a teacher completion (e.g. `"\ndef"` for code: one function per prompt).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// System messages, one per line: a share (`system_share`, default 0.5) of the training
    /// prompts without one get one of them, so the student also learns to answer under the system
    /// messages real traffic carries (the held-out prompts stay as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompts: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_share: Option<f64>,
}

fn default_completions() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// One prompt file or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromptFiles {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl PromptFiles {
    pub fn paths(&self) -> &[PathBuf] {
        match self {
            PromptFiles::One(p) => std::slice::from_ref(p),
            PromptFiles::Many(list) => list,
        }
    }
}

/// `[eval]`: the evaluation of the trained and of each exported student.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    #[serde(default = "default_eval_tokens")]
    pub max_tokens: usize,
    pub max_prompts: Option<usize>,
    /// Code tasks in HumanEval's format: the trained student's and the teacher's executed pass@1
    /// (as `distill eval --code-tasks`). `~/` is the home directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_tasks: Option<PathBuf>,
    /// Only the first N code tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_limit: Option<usize>,
    /// Tokens each model writes per code task (default [`distill_eval::code::MAX_TOKENS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_max_tokens: Option<usize>,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            max_tokens: default_eval_tokens(),
            max_prompts: None,
            code_tasks: None,
            code_limit: None,
            code_max_tokens: None,
        }
    }
}

/// `[export]`: the GGUF files written (each evaluated again).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSection {
    #[serde(default = "default_types")]
    pub types: Vec<String>,
}

impl Default for ExportSection {
    fn default() -> Self {
        Self { types: default_types() }
    }
}

fn default_k() -> usize {
    32
}
fn default_max_tokens() -> usize {
    64
}
fn default_temperature() -> f64 {
    0.7
}
fn default_top_p() -> f64 {
    0.95
}
fn default_eval_tokens() -> usize {
    48
}
fn default_types() -> Vec<String> {
    vec!["q8_0".into(), "q4_0".into()]
}

impl PipelineFile {
    /// The typed pipeline: `[train]`, `[student]`, `[loss]`, `[optimizer]` and `[schedule]` become
    /// one `distill train` config, checked like one.
    fn resolve(self) -> Result<Pipeline> {
        let teacher = match &self.teacher.model {
            Some(m) => m.clone(),
            None => distill_models::teacher::default_teacher()
                .with_context(|| {
                    format!("the default teacher is not fetched\n{}", distill_models::teacher::FETCH_HINT)
                })?
                .display()
                .to_string(),
        };
        let out = &self.output;
        let mut table = self.train;
        for (key, path) in [("dataset", "data/train"), ("eval_dataset", "data/heldout"), ("output", "train")] {
            if table.contains_key(key) {
                bail!("[train] sets `{key}`: the pipeline keeps it in its own directory ({}/{path})", out.display());
            }
            table.insert(key.into(), toml::Value::String(out.join(path).display().to_string()));
        }
        let mut student = self.student;
        if student.get("type").and_then(|t| t.as_str()) == Some("prune") && !student.contains_key("from") {
            // A pruned student is cut from the pipeline's teacher unless told otherwise.
            student.insert("from".into(), toml::Value::String(teacher.clone()));
        }
        table.insert("student".into(), toml::Value::Table(student));
        let mut train: TrainConfig =
            toml::Value::Table(table).try_into().context("the [train] and [student] sections")?;
        (train.loss, train.optimizer, train.schedule) = (self.loss, self.optimizer, self.schedule);
        train.validate()?;
        let d = &self.data;
        if d.k == 0
            || d.max_tokens == 0
            || d.batch_size == Some(0)
            || self.eval.max_tokens == 0
            || self.eval.code_max_tokens == Some(0)
        {
            bail!(
                "data.k, data.max_tokens, data.batch_size, eval.max_tokens and eval.code_max_tokens must be at least 1"
            );
        }
        match (&d.system_prompts, d.system_share) {
            (None, Some(_)) => {
                bail!("data.system_share is set without data.system_prompts (a file of system messages)")
            }
            (_, Some(share)) if !(0.0..=1.0).contains(&share) => bail!("data.system_share is {share}; expected 0 to 1"),
            _ => {}
        }
        let mut eval = self.eval;
        if let Some(tasks) = &eval.code_tasks {
            let path = distill_models::loader::expand_home(tasks);
            if !path.is_file() {
                bail!(
                    "eval.code_tasks: {} does not exist\nHINT: scripts/fetch-humaneval.sh fetches HumanEval's 164 problems",
                    path.display()
                );
            }
            eval.code_tasks = Some(path);
        }
        for ty in &self.export.types {
            if GgufType::parse(ty).is_none() {
                bail!("export.types: unknown type `{ty}` ({})", GgufType::NAMES);
            }
        }
        Ok(Pipeline {
            output: self.output,
            teacher,
            teacher_matmuls: self.teacher.matmuls,
            data: self.data,
            train,
            eval,
            export: self.export,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_train::config::StudentConfig;

    fn resolve(text: &str) -> Result<Pipeline> {
        toml::from_str::<PipelineFile>(text)?.resolve()
    }

    #[test]
    fn the_quickstart_resolves_to_a_complete_train_config() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart.toml"))
            .unwrap()
            .replace("# model = \"path/to/teacher.gguf\"", "model = \"teacher.gguf\"");
        let p = resolve(&text).unwrap();
        assert_eq!(p.teacher, "teacher.gguf");
        assert_eq!(p.train.output, Path::new("runs/quickstart/train"));
        assert_eq!(p.train.dataset.as_deref(), Some(Path::new("runs/quickstart/data/train")));
        assert_eq!((p.train.steps, p.train.optimizer.lr), (360, 1e-3));
        let StudentConfig::Prune { from, num_layers, .. } = &p.train.student else { panic!("a pruned student") };
        assert_eq!((from.as_str(), *num_layers), ("teacher.gguf", Some(10)), "cut from the pipeline's teacher");
        // The resolved pipeline is written as TOML for the record.
        assert!(toml::to_string(&p).unwrap().contains("[train.student]"));

        let err = format!("{:#}", resolve(&text.replace("steps = 360", "steps = 360\noutput = \"x\"")).unwrap_err());
        assert!(err.contains("[train] sets `output`"), "{err}");
        let err = format!("{:#}", resolve(&text.replace("\"q4_0\"]", "\"q3\"]")).unwrap_err());
        assert!(err.contains("export.types: unknown type `q3`"), "{err}");
    }

    #[test]
    fn a_system_share_needs_system_messages() {
        let base = "output = \"o\"\n[teacher]\nmodel = \"t.gguf\"\n[data]\ntrain_prompts = \"a.jsonl\"\n\
                    heldout_prompts = \"b.jsonl\"\nSYSTEM\n[train]\nsteps = 1\n[student]\ntype = \"prune\"\nkeep_every = 3\n";
        let with = |s: &str| resolve(&base.replace("SYSTEM", s));
        let p = with("system_prompts = \"s.txt\"").unwrap();
        assert_eq!((p.data.system_prompts.as_deref(), p.data.system_share), (Some(Path::new("s.txt")), None));
        let err = format!("{:#}", with("system_share = 0.3").unwrap_err());
        assert!(err.contains("without data.system_prompts"), "{err}");
        let err = format!("{:#}", with("system_prompts = \"s.txt\"\nsystem_share = 2.0").unwrap_err());
        assert!(err.contains("expected 0 to 1"), "{err}");
    }

    #[test]
    fn the_teachers_matmuls_and_batch_size_are_read_and_checked() {
        let base = "output = \"o\"\n[teacher]\nmodel = \"t.gguf\"\nMATMULS\n[data]\ntrain_prompts = \"a.jsonl\"\n\
                    heldout_prompts = \"b.jsonl\"\nBATCH\n[train]\nsteps = 1\n[student]\ntype = \"prune\"\nkeep_every = 3\n";
        let with = |m: &str, b: &str| resolve(&base.replace("MATMULS", m).replace("BATCH", b));
        let p = with("", "").unwrap();
        assert_eq!((p.teacher_matmuls, p.data.batch_size), (None, None));
        let p = with("matmuls = \"bf16\"", "batch_size = 32").unwrap();
        assert_eq!((p.teacher_matmuls, p.data.batch_size), (Some(Precision::Bf16), Some(32)));
        let err = format!("{:#}", with("", "batch_size = 0").unwrap_err());
        assert!(err.contains("data.batch_size"), "{err}");
        let err = format!("{:#}", with("matmuls = \"fp8\"", "").unwrap_err());
        assert!(err.contains("fp8"), "{err}");
    }

    #[test]
    fn code_tasks_are_checked_before_the_first_stage() {
        let base = "output = \"o\"\n[teacher]\nmodel = \"t.gguf\"\n[data]\ntrain_prompts = \"a.jsonl\"\n\
                    heldout_prompts = \"b.jsonl\"\n[train]\nsteps = 1\n[student]\ntype = \"prune\"\nkeep_every = 3\n";
        assert_eq!(resolve(base).unwrap().eval.code_tasks, None);
        let err = format!(
            "{:#}",
            resolve(&format!("{base}[eval]\ncode_tasks = \"/no/such/HumanEval.jsonl.gz\"\n")).unwrap_err()
        );
        assert!(err.contains("eval.code_tasks: /no/such/HumanEval.jsonl.gz does not exist"), "{err}");
        assert!(err.contains("scripts/fetch-humaneval.sh"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let tasks = dir.path().join("tasks.jsonl");
        std::fs::write(&tasks, "{}\n").unwrap();
        let p = resolve(&format!("{base}[eval]\ncode_tasks = \"{}\"\ncode_limit = 3\n", tasks.display())).unwrap();
        assert_eq!((p.eval.code_tasks.as_deref(), p.eval.code_limit), (Some(tasks.as_path()), Some(3)));
    }
}
