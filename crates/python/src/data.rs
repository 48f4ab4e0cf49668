//! Datasets as NumPy-ready records: sequences, packed training batches, and training events.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use distill_store::{Batch, PackOptions, Packer, Sequence};
use distill_train::{EvalMetrics, RunStart, StepMetrics, TrainObserver, TrainOutcome};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::py_err;

/// An element type NumPy knows by name.
trait Element: Copy {
    const DTYPE: &'static str;
    fn put(self, out: &mut Vec<u8>);
}

impl Element for i32 {
    const DTYPE: &'static str = "<i4";
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Element for f32 {
    const DTYPE: &'static str = "<f4";
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// `(bytes, dtype, shape)`: what the Python half turns into an array with `numpy.frombuffer`.
fn array<'py, T: Element>(
    py: Python<'py>,
    values: impl ExactSizeIterator<Item = T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyTuple>> {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    values.for_each(|v| v.put(&mut bytes));
    (PyBytes::new(py, &bytes), T::DTYPE, PyTuple::new(py, shape)?).into_pyobject(py)
}

/// Token ids as int32 (every vocabulary here is far below 2³¹; NumPy and PyTorch index with it).
fn ids<'py>(py: Python<'py>, values: &[u32], shape: &[usize]) -> PyResult<Bound<'py, PyTuple>> {
    array(py, values.iter().map(|&v| v as i32), shape)
}

fn floats<'py>(py: Python<'py>, values: &[f32], shape: &[usize]) -> PyResult<Bound<'py, PyTuple>> {
    array(py, values.iter().copied(), shape)
}

fn sequence_record<'py>(py: Python<'py>, s: &Sequence, k: usize) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let completion = s.tail_logprobs.len();
    d.set_item("prompt_index", s.prompt_index)?;
    d.set_item("prompt_id", &s.prompt_id)?;
    d.set_item("sample", s.sample)?;
    d.set_item("prompt_len", s.prompt_len)?;
    d.set_item("token_ids", ids(py, &s.token_ids, &[s.token_ids.len()])?)?;
    d.set_item("topk_ids", ids(py, &s.topk_ids, &[completion, k])?)?;
    d.set_item("topk_logprobs", floats(py, &s.topk_logprobs, &[completion, k])?)?;
    d.set_item("tail_logprobs", floats(py, &s.tail_logprobs, &[completion])?)?;
    Ok(d)
}

fn batch_record<'py>(py: Python<'py>, b: &Batch) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let (rows, k) = ([b.batch_size, b.seq_len], [b.batch_size, b.seq_len, b.k]);
    d.set_item("input_ids", ids(py, &b.input_ids, &rows)?)?;
    d.set_item("position_ids", ids(py, &b.position_ids, &rows)?)?;
    d.set_item("segment_ids", ids(py, &b.segment_ids, &rows)?)?;
    d.set_item("target_ids", ids(py, &b.target_ids, &rows)?)?;
    d.set_item("loss_mask", floats(py, &b.loss_mask, &rows)?)?;
    d.set_item("topk_ids", ids(py, &b.topk_ids, &k)?)?;
    d.set_item("topk_logprobs", floats(py, &b.topk_logprobs, &k)?)?;
    d.set_item("tail_logprobs", floats(py, &b.tail_logprobs, &rows)?)?;
    Ok(d)
}

/// A teacher-signal dataset directory, opened.
#[pyclass(module = "distill._distill", frozen)]
pub struct Dataset {
    inner: distill_store::Dataset,
}

#[pymethods]
impl Dataset {
    #[new]
    fn new(path: std::path::PathBuf) -> PyResult<Self> {
        Ok(Self { inner: distill_store::Dataset::open(&path).map_err(py_err)? })
    }

    /// `manifest.json` as JSON text.
    fn manifest_json(&self) -> PyResult<String> {
        serde_json::to_string(self.inner.manifest()).map_err(py_err)
    }

    #[getter]
    fn num_shards(&self) -> usize {
        self.inner.num_shards()
    }

    /// The sequences of shard `index` (in file order), each a dict of scalars and arrays.
    fn read_shard<'py>(&self, py: Python<'py>, index: usize) -> PyResult<Vec<Bound<'py, PyDict>>> {
        if index >= self.inner.num_shards() {
            return Err(pyo3::exceptions::PyIndexError::new_err(format!(
                "shard {index} of a dataset with {}",
                self.inner.num_shards()
            )));
        }
        let sequences = py.detach(|| self.inner.read_shard(index)).map_err(py_err)?;
        let k = self.inner.manifest().spec.k;
        sequences.iter().map(|s| sequence_record(py, s, k)).collect()
    }
}

/// One epoch of packed batches over a dataset, exactly as `distill train` packs them (rows of
/// `seq_len`, `batch_size` rows, shuffled with `seed + epoch`, padding id 0).
#[pyclass(module = "distill._distill")]
pub struct Batches {
    packer: Packer,
}

#[pymethods]
impl Batches {
    #[new]
    fn new(dataset: &Dataset, seq_len: usize, batch_size: usize, seed: u64, epoch: u64) -> PyResult<Self> {
        if seq_len < 2 || batch_size == 0 {
            return Err(py_err("seq_len must be at least 2 and batch_size at least 1"));
        }
        let options = PackOptions { seq_len, batch_size, seed: seed.wrapping_add(epoch), pad_id: 0 };
        Ok(Self { packer: Packer::new(&dataset.inner, options) })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let packer = &mut self.packer;
        match py.detach(|| packer.next_batch()).map_err(py_err)? {
            Some(batch) => batch_record(py, &batch).map(Some),
            None => Ok(None),
        }
    }

    /// Sequences cut to `seq_len` so far.
    #[getter]
    fn truncated(&self) -> usize {
        self.packer.truncated
    }
}

/// Hands a run's events to a Python callback `on_event(kind, json)`; a callback that raises (or
/// Ctrl-C in Python) stops the run at the end of the step, with a checkpoint.
pub struct PyObserver {
    callback: Option<Py<PyAny>>,
    pub stop: Option<Arc<AtomicBool>>,
    error: Option<PyErr>,
}

impl PyObserver {
    pub fn new(callback: Option<Py<PyAny>>) -> Self {
        Self { callback, stop: None, error: None }
    }

    fn send(&mut self, kind: &str, value: serde_json::Value) {
        if self.error.is_some() {
            return;
        }
        let result = Python::attach(|py| -> PyResult<()> {
            py.check_signals()?;
            if let Some(callback) = &self.callback {
                callback.call1(py, (kind, value.to_string()))?;
            }
            Ok(())
        });
        if let Err(e) = result {
            self.error = Some(e);
            if let Some(stop) = &self.stop {
                stop.store(true, Ordering::SeqCst);
            }
        }
    }

    /// The callback's error (or KeyboardInterrupt), if one stopped the run.
    pub fn into_result(self) -> PyResult<()> {
        self.error.map_or(Ok(()), Err)
    }
}

impl TrainObserver for PyObserver {
    fn started(&mut self, start: &RunStart) {
        let value = serde_json::json!({
            "student_parameters": start.student.num_parameters(),
            "kept_layers": start.kept_layers,
            "data": start.data,
            "resumed_at": start.resumed_at,
            "steps": start.steps,
        });
        self.send("started", value);
    }

    fn step(&mut self, metrics: &StepMetrics) {
        self.send("step", serde_json::to_value(metrics).unwrap_or_default());
    }

    fn evaluated(&mut self, metrics: &EvalMetrics) {
        self.send("eval", serde_json::to_value(metrics).unwrap_or_default());
    }

    fn finished(&mut self, outcome: &TrainOutcome) {
        self.send("finished", serde_json::json!({"steps": outcome.steps, "interrupted": outcome.interrupted}));
    }
}
