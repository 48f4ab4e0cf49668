//! One Parquet shard: schema, writing (atomic) and reading.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, UInt16Builder, UInt32Builder, UInt8Builder};
use arrow_array::{Array, ArrayRef, ListArray, RecordBatch, StringArray, UInt16Array, UInt32Array, UInt8Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};
use crate::quant::{kl_with_tail, Quantization};

/// One sequence with its teacher signal, unquantised (as computed or as reconstructed).
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// Position of the prompt in the prompt file (0-based, blank lines skipped).
    pub prompt_index: u32,
    /// The prompt's `metadata.id` when given, else `line-N`.
    pub prompt_id: String,
    /// Which of the prompt's completions this is.
    pub sample: u16,
    /// Prompt then completion token ids (T).
    pub token_ids: Vec<u32>,
    pub prompt_len: u32,
    /// Top-K ids per completion token, descending probability: (Tc, K) row-major.
    pub topk_ids: Vec<u32>,
    /// Their log-probabilities: (Tc, K).
    pub topk_logprobs: Vec<f32>,
    /// `ln(1 − Σ top-K p)` per completion token: (Tc).
    pub tail_logprobs: Vec<f32>,
}

impl Sequence {
    pub fn completion_len(&self) -> usize {
        self.token_ids.len() - self.prompt_len as usize
    }

    /// Checks the lengths agree, naming what is off.
    pub fn validate(&self, k: usize) -> Result<()> {
        let tc = self.token_ids.len().checked_sub(self.prompt_len as usize).ok_or_else(|| {
            Error::Invalid(format!(
                "prompt {}: prompt_len {} > {} tokens",
                self.prompt_id,
                self.prompt_len,
                self.token_ids.len()
            ))
        })?;
        if self.topk_ids.len() != tc * k || self.topk_logprobs.len() != tc * k || self.tail_logprobs.len() != tc {
            return Err(Error::Invalid(format!(
                "prompt {}: {tc} completion tokens need {} top-k entries and {tc} tails, got {} ids, {} logprobs, {} tails",
                self.prompt_id,
                tc * k,
                self.topk_ids.len(),
                self.topk_logprobs.len(),
                self.tail_logprobs.len()
            )));
        }
        Ok(())
    }
}

/// Arrow schema of a shard (format version 1).
pub fn schema() -> Arc<Schema> {
    let list =
        |name: &str, item: DataType| Field::new(name, DataType::List(Arc::new(Field::new("item", item, false))), false);
    Arc::new(Schema::new(vec![
        Field::new("prompt_index", DataType::UInt32, false),
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("sample", DataType::UInt16, false),
        Field::new("prompt_len", DataType::UInt32, false),
        list("token_ids", DataType::UInt32),
        list("topk_ids", DataType::UInt32),
        list("topk_logprob_deltas", DataType::UInt8),
        list("tail_codes", DataType::UInt16),
    ]))
}

/// Figures about a written shard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardStats {
    pub sequences: usize,
    pub completion_tokens: usize,
    pub bytes: u64,
    pub kl_sum: f64,
    pub kl_max: f64,
}

/// Writes `sequences` to `path` atomically (temp file, fsync, rename, fsync of the directory).
pub fn write_shard(path: &Path, sequences: &[Sequence], k: usize, quant: &Quantization) -> Result<ShardStats> {
    let mut token_ids = ListBuilder::new(UInt32Builder::new()).with_field(item_field(DataType::UInt32));
    let mut topk_ids = ListBuilder::new(UInt32Builder::new()).with_field(item_field(DataType::UInt32));
    let mut deltas = ListBuilder::new(UInt8Builder::new()).with_field(item_field(DataType::UInt8));
    let mut tails = ListBuilder::new(UInt16Builder::new()).with_field(item_field(DataType::UInt16));
    let (mut kl_sum, mut kl_max, mut tokens) = (0f64, 0f64, 0usize);
    let mut codes = Vec::with_capacity(k);
    let mut back = vec![0f32; k];
    for seq in sequences {
        seq.validate(k)?;
        token_ids.values().append_slice(&seq.token_ids);
        token_ids.append(true);
        topk_ids.values().append_slice(&seq.topk_ids);
        topk_ids.append(true);
        for (pos, tail_lp) in seq.tail_logprobs.iter().enumerate() {
            let lps = &seq.topk_logprobs[pos * k..(pos + 1) * k];
            codes.clear();
            quant.encode_logprobs(lps, &mut codes);
            deltas.values().append_slice(&codes);
            let tail_code = quant.encode_tail(*tail_lp);
            tails.values().append_value(tail_code);
            // Measure what the quantisation costs, position by position.
            let tail_back = quant.decode_position(&codes, tail_code, &mut back);
            let kl = kl_with_tail(lps, *tail_lp, &back, tail_back);
            kl_sum += kl;
            kl_max = kl_max.max(kl);
        }
        deltas.append(true);
        tails.append(true);
        tokens += seq.completion_len();
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(sequences.iter().map(|s| s.prompt_index))),
        Arc::new(StringArray::from_iter_values(sequences.iter().map(|s| s.prompt_id.as_str()))),
        Arc::new(UInt16Array::from_iter_values(sequences.iter().map(|s| s.sample))),
        Arc::new(UInt32Array::from_iter_values(sequences.iter().map(|s| s.prompt_len))),
        Arc::new(token_ids.finish()),
        Arc::new(topk_ids.finish()),
        Arc::new(deltas.finish()),
        Arc::new(tails.finish()),
    ];
    let batch = RecordBatch::try_new(schema(), columns).map_err(|e| Error::Invalid(format!("building shard: {e}")))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(9).expect("9 is a valid zstd level")))
        .set_dictionary_enabled(false)
        .build();
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut writer = ArrowWriter::try_new(file, schema(), Some(props)).map_err(|e| Error::corrupt(&tmp, e))?;
    writer.write(&batch).map_err(|e| Error::corrupt(&tmp, e))?;
    let file = writer.into_inner().map_err(|e| Error::corrupt(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path)?;
    let bytes = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    Ok(ShardStats { sequences: sequences.len(), completion_tokens: tokens, bytes, kl_sum, kl_max })
}

fn item_field(dt: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", dt, false))
}

/// Makes a rename in `path`'s directory durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Reads a shard back, reconstructing log-probabilities.
pub fn read_shard(path: &Path, k: usize, quant: &Quantization) -> Result<Vec<Sequence>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| Error::corrupt(path, format!("not a readable Parquet shard: {e}")))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| Error::corrupt(path, e))?;
        decode_batch(path, &batch, k, quant, &mut out)?;
    }
    Ok(out)
}

fn column<'a, T: 'static>(path: &Path, batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::corrupt(path, format!("column `{name}` is missing or has the wrong type")))
}

fn list_values<T: 'static>(path: &Path, list: &ListArray, row: usize, name: &str) -> Result<arrow_array::ArrayRef> {
    let values = list.value(row);
    if values.as_any().downcast_ref::<T>().is_none() {
        return Err(Error::corrupt(path, format!("column `{name}` has the wrong item type")));
    }
    Ok(values)
}

fn decode_batch(
    path: &Path,
    batch: &RecordBatch,
    k: usize,
    quant: &Quantization,
    out: &mut Vec<Sequence>,
) -> Result<()> {
    let prompt_index = column::<UInt32Array>(path, batch, "prompt_index")?;
    let prompt_id = column::<StringArray>(path, batch, "prompt_id")?;
    let sample = column::<UInt16Array>(path, batch, "sample")?;
    let prompt_len = column::<UInt32Array>(path, batch, "prompt_len")?;
    let token_ids = column::<ListArray>(path, batch, "token_ids")?;
    let topk_ids = column::<ListArray>(path, batch, "topk_ids")?;
    let deltas = column::<ListArray>(path, batch, "topk_logprob_deltas")?;
    let tails = column::<ListArray>(path, batch, "tail_codes")?;
    for row in 0..batch.num_rows() {
        let tokens = list_values::<UInt32Array>(path, token_ids, row, "token_ids")?;
        let tokens = tokens.as_any().downcast_ref::<UInt32Array>().expect("checked by list_values");
        let ids = list_values::<UInt32Array>(path, topk_ids, row, "topk_ids")?;
        let ids = ids.as_any().downcast_ref::<UInt32Array>().expect("checked by list_values");
        let d = list_values::<UInt8Array>(path, deltas, row, "topk_logprob_deltas")?;
        let d = d.as_any().downcast_ref::<UInt8Array>().expect("checked by list_values");
        let t = list_values::<UInt16Array>(path, tails, row, "tail_codes")?;
        let t = t.as_any().downcast_ref::<UInt16Array>().expect("checked by list_values");
        let tc = t.len();
        if d.len() != tc * k || ids.len() != tc * k {
            return Err(Error::corrupt(
                path,
                format!("row {row}: {tc} positions but {} ids and {} codes for k={k}", ids.len(), d.len()),
            ));
        }
        let mut logprobs = vec![0f32; tc * k];
        let mut tail_lps = Vec::with_capacity(tc);
        for pos in 0..tc {
            let codes = &d.values()[pos * k..(pos + 1) * k];
            tail_lps.push(quant.decode_position(codes, t.value(pos), &mut logprobs[pos * k..(pos + 1) * k]));
        }
        let seq = Sequence {
            prompt_index: prompt_index.value(row),
            prompt_id: prompt_id.value(row).to_string(),
            sample: sample.value(row),
            token_ids: tokens.values().to_vec(),
            prompt_len: prompt_len.value(row),
            topk_ids: ids.values().to_vec(),
            topk_logprobs: logprobs,
            tail_logprobs: tail_lps,
        };
        seq.validate(k).map_err(|e| Error::corrupt(path, format!("row {row}: {e}")))?;
        out.push(seq);
    }
    Ok(())
}
