//! `distill._distill`: the native half of the `distill` Python package.
//!
//! Every function calls the same library code as the command line, in-process; the Python half
//! (`python/distill`) turns what comes back into NumPy arrays and dicts. Arrays cross as
//! little-endian bytes with their element type and shape (`(bytes, dtype, shape)`), so this
//! module needs no NumPy headers and one wheel serves every Python ≥ 3.9 (abi3). Results that are
//! records (manifests, reports) cross as JSON text. Long calls release the GIL and run on a rayon
//! worker, as the command line runs them.

mod data;

use std::path::PathBuf;

use candle_core::Device;
use distill_models::export::{parse_hf_dtype, ExportFormat, ExportOptions, GgufType};
use distill_models::{LoadedModel, SamplingParams};
use distill_teacher::prompts::{read_prompt_file, render, Prompt};
use distill_teacher::{DatasetOptions, DatasetProgress, Layout, LocalTeacher};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(_distill, DistillError, PyException, "An error from distill's library, with what to do next.");

/// A library error as a Python exception carrying the whole message (causes and HINT lines).
pub(crate) fn py_err(err: impl std::fmt::Display) -> PyErr {
    DistillError::new_err(err.to_string())
}

fn json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(py_err)
}

/// Runs `f` without the GIL on a rayon worker, as the command line runs its loops.
fn heavy<R: Send>(py: Python<'_>, f: impl FnOnce() -> R + Send) -> R {
    py.detach(|| distill_kernels::on_worker(f))
}

/// The `distill` command line with `argv` (program name first); returns its exit code.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| distill_cli::main(argv))
}

fn load(spec: Option<&str>) -> Result<LoadedModel, PyErr> {
    let spec = match spec {
        Some(s) => s.to_string(),
        None => distill_models::teacher::default_teacher()
            .ok_or_else(|| {
                py_err(format!(
                    "no model given and the default teacher is not fetched\n{}",
                    distill_models::teacher::FETCH_HINT
                ))
            })?
            .display()
            .to_string(),
    };
    distill_models::load(&spec, &Device::Cpu).map_err(|e| py_err(format!("loading model `{spec}`: {e}")))
}

/// A model loaded once and kept for generation: a GGUF file, an HF directory or a Hub id.
#[pyclass(module = "distill._distill", frozen)]
struct Model {
    loaded: LoadedModel,
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path=None))]
    fn new(py: Python<'_>, path: Option<String>) -> PyResult<Self> {
        let loaded = py.detach(|| -> PyResult<LoadedModel> {
            let mut loaded = load(path.as_deref())?;
            loaded.use_matmuls(None).map_err(py_err)?;
            Ok(loaded)
        })?;
        Ok(Self { loaded })
    }

    /// The model as it was named.
    #[getter]
    fn source(&self) -> String {
        self.loaded.source.clone()
    }

    /// The model's config (HF `config.json` fields) as JSON text.
    fn config_json(&self) -> PyResult<String> {
        json(self.loaded.model.config())
    }

    fn encode(&self, text: &str) -> PyResult<Vec<u32>> {
        self.loaded.tokenizer.encode(text, true).map_err(py_err)
    }

    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        self.loaded.tokenizer.decode(&ids, false).map_err(py_err)
    }

    /// Completions of `prompts` (text, or OpenAI-style message lists as JSON text), decoded in
    /// batches of `batch_size`; returns JSON lines' worth of records as one JSON array.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (prompts, max_tokens, temperature, top_p, top_k, seed, stop, chat, system, batch_size))]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: Vec<String>,
        max_tokens: usize,
        temperature: f64,
        top_p: f64,
        top_k: usize,
        seed: u64,
        stop: Vec<String>,
        chat: bool,
        system: Option<String>,
        batch_size: usize,
    ) -> PyResult<String> {
        let params = SamplingParams { temperature, top_p, top_k, seed, max_tokens, stop };
        params.validate().map_err(py_err)?;
        if batch_size == 0 {
            return Err(py_err("batch_size must be at least 1"));
        }
        let model = &self.loaded;
        let prompts: Vec<Prompt> = prompts.into_iter().map(parse_prompt).collect::<PyResult<_>>()?;
        heavy(py, || -> PyResult<String> {
            let template = model.chat_template.as_ref();
            let token_ids: Vec<Vec<u32>> = prompts
                .iter()
                .map(|p| {
                    let text = render(template, &model.source, p, chat, system.as_deref()).map_err(py_err)?;
                    model.tokenizer.encode(&text, true).map_err(py_err)
                })
                .collect::<PyResult<_>>()?;
            let mut out = Vec::with_capacity(token_ids.len());
            for batch in token_ids.chunks(batch_size) {
                let completions = distill_models::generate(
                    &model.model,
                    &model.tokenizer,
                    batch,
                    &params,
                    &model.stop_ids,
                    |_, _| {},
                )
                .map_err(py_err)?;
                for (prompt, c) in batch.iter().zip(completions) {
                    out.push(serde_json::json!({
                        "text": c.text,
                        "finish_reason": c.finish_reason,
                        "prompt_tokens": prompt.len(),
                        "completion_tokens": c.token_ids.len(),
                        "token_ids": c.token_ids,
                    }));
                }
            }
            json(&out)
        })
    }
}

/// A prompt given as text, or as JSON text of a message list (`[{"role", "content"}, …]`).
fn parse_prompt(text: String) -> PyResult<Prompt> {
    if text.starts_with('[') {
        if let Ok(messages) = serde_json::from_str(&text) {
            return Ok(Prompt::Chat(messages));
        }
    }
    if text.is_empty() {
        return Err(py_err("a prompt is empty"));
    }
    Ok(Prompt::Text(text))
}

/// Builds (or resumes) a teacher-signal dataset in `output` from the prompt file `prompts`;
/// `progress(done, total)` hears each shard. Returns the manifest as JSON text.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (prompts, output, model, k, max_tokens, temperature, top_p, seed, completions, chat, system, batch_size, prompts_per_shard, layout, system_file=None, system_share=distill_teacher::SystemMessages::DEFAULT_SHARE, progress=None))]
fn build_dataset(
    py: Python<'_>,
    prompts: PathBuf,
    output: PathBuf,
    model: Option<String>,
    k: usize,
    max_tokens: usize,
    temperature: f64,
    top_p: f64,
    seed: u64,
    completions: usize,
    chat: bool,
    system: Option<String>,
    batch_size: usize,
    prompts_per_shard: usize,
    layout: Option<String>,
    system_file: Option<PathBuf>,
    system_share: f64,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let layout = layout.map(|l| l.parse::<Layout>().map_err(py_err)).transpose()?;
    let system_messages = system_file
        .map(|path| distill_teacher::SystemMessages::from_file(&path, system_share))
        .transpose()
        .map_err(py_err)?;
    let sampling = SamplingParams { temperature, top_p, seed, max_tokens, ..Default::default() };
    sampling.validate().map_err(py_err)?;
    let opts = DatasetOptions {
        chat,
        system,
        system_messages,
        sampling,
        k,
        completions,
        prompts_per_shard,
        batch_size,
        logprob_temperature: 1.0,
        layout,
    };
    heavy(py, || -> PyResult<String> {
        let teacher = LocalTeacher::new(load(model.as_deref())?);
        let mut callback_error = None;
        let summary = distill_teacher::create_dataset(&teacher, &prompts, &output, &opts, &mut |event| {
            let (done, total) = match event {
                DatasetProgress::Started { done, total, .. } => (done, total),
                DatasetProgress::Shard { done, total, .. } => (done, total),
            };
            if let Some(callback) = &progress {
                Python::attach(|py| {
                    if let Err(e) = callback.call1(py, (done, total)) {
                        callback_error.get_or_insert(e);
                    }
                });
            }
        })
        .map_err(py_err)?;
        if let Some(e) = callback_error {
            return Err(e);
        }
        json(&summary.manifest)
    })
}

/// Trains the run a config describes (`text`, TOML or JSON as `format` says) to its end or until
/// interrupted; `on_event(kind, json)` hears `started`, `step`, `eval` and `finished`. Returns
/// the outcome as JSON text.
#[pyfunction]
#[pyo3(signature = (text, format, on_event=None))]
fn train(py: Python<'_>, text: String, format: &str, on_event: Option<Py<PyAny>>) -> PyResult<String> {
    let cfg = match format {
        "toml" => distill_train::TrainConfig::from_toml(&text),
        "json" => distill_train::TrainConfig::from_json(&text),
        other => return Err(py_err(format!("unknown config format `{other}` (toml or json)"))),
    }
    .map_err(|e| py_err(format!("not a valid run config: {e}")))?;
    cfg.validate().map_err(py_err)?;
    heavy(py, || -> PyResult<String> {
        let mut observer = data::PyObserver::new(on_event);
        let trainer = distill_train::Trainer::new(cfg, &mut observer).map_err(py_err)?;
        observer.stop = Some(trainer.stop_handle());
        let outcome = trainer.run(&mut observer).map_err(py_err)?;
        observer.into_result()?;
        json(&serde_json::json!({
            "steps": outcome.steps,
            "tokens": outcome.tokens,
            "seconds": outcome.seconds,
            "interrupted": outcome.interrupted,
            "checkpoint_dir": outcome.checkpoint_dir,
            "final_dir": outcome.final_dir,
            "metrics": outcome.metrics,
        }))
    })
}

/// Compares `student` with `teacher` (the default teacher when `None`) on the prompt files
/// `prompts` (and `ood_prompts`); returns the report as JSON text (memory and speed are left
/// out: they are measured by `distill eval` in separate processes).
#[pyfunction]
#[pyo3(signature = (student, prompts, teacher, ood_prompts, max_tokens, batch_size))]
fn evaluate(
    py: Python<'_>,
    student: String,
    prompts: PathBuf,
    teacher: Option<String>,
    ood_prompts: Option<PathBuf>,
    max_tokens: usize,
    batch_size: usize,
) -> PyResult<String> {
    heavy(py, || -> PyResult<String> {
        let teacher = load(teacher.as_deref())?;
        let student = load(Some(&student))?;
        let mut files = vec![("in_domain", prompts)];
        if let Some(ood) = ood_prompts {
            files.push(("out_of_domain", ood));
        }
        let records =
            files.iter().map(|(_, path)| read_prompt_file(path).map_err(py_err)).collect::<PyResult<Vec<_>>>()?;
        let sets: Vec<distill_eval::PromptSet> =
            files.iter().zip(&records).map(|((name, _), records)| distill_eval::PromptSet { name, records }).collect();
        let opts = distill_eval::EvalOptions { max_tokens, batch_size };
        let report =
            distill_eval::evaluate(&teacher, &student, &sets, &opts, None, &mut |_, _, _| {}).map_err(py_err)?;
        json(&report)
    })
}

/// Exports `model` to `output` (a `.gguf` file or an HF directory); returns what was written as
/// JSON text.
#[pyfunction]
#[pyo3(signature = (model, output, ty, name, force))]
fn export(
    py: Python<'_>,
    model: String,
    output: PathBuf,
    ty: Option<String>,
    name: Option<String>,
    force: bool,
) -> PyResult<String> {
    let format = ExportFormat::of(&output).map_err(py_err)?;
    let mut options = ExportOptions { name, force, ..Default::default() };
    match (format, ty.as_deref()) {
        (_, None) => {}
        (ExportFormat::Gguf, Some(ty)) => {
            options.gguf_type =
                GgufType::parse(ty).ok_or_else(|| py_err(format!("unknown GGUF type `{ty}` ({})", GgufType::NAMES)))?;
        }
        (ExportFormat::HfDir, Some(ty)) => {
            options.hf_dtype = parse_hf_dtype(ty)
                .ok_or_else(|| py_err(format!("unknown type `{ty}` for an HF directory (f32, f16, bf16)")))?;
        }
    }
    heavy(py, || -> PyResult<String> {
        let loaded = load(Some(&model))?;
        let summary = distill_models::export::export(&loaded, &output, &options).map_err(py_err)?;
        json(&serde_json::json!({
            "path": output,
            "format": match format { ExportFormat::Gguf => "gguf", ExportFormat::HfDir => "hf" },
            "bytes": summary.bytes,
            "tensors": summary.tensors,
            "fallbacks": summary.fallbacks,
            "parameters": summary.parameters,
        }))
    })
}

/// The default teacher's path, if it has been fetched.
#[pyfunction]
fn default_teacher() -> Option<PathBuf> {
    distill_models::teacher::default_teacher()
}

#[pymodule]
fn _distill(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("DistillError", m.py().get_type::<DistillError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(build_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(export, m)?)?;
    m.add_function(wrap_pyfunction!(default_teacher, m)?)?;
    m.add_class::<Model>()?;
    m.add_class::<data::Dataset>()?;
    m.add_class::<data::Batches>()?;
    Ok(())
}
