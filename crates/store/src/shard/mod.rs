//! One Parquet shard: writing (atomic) and reading, in either layout.
//!
//! Both layouts share the columns that say which sequence a row is (`prompt_index`,
//! `prompt_id`, `sample`, `prompt_len`, `token_ids`). The teacher signal is stored
//! - `plain` (format version 1, scheme `delta-u8`): `topk_ids`, `topk_logprob_deltas` and
//!   `tail_codes` as lists any Parquet reader can use as they are;
//! - `coded` (format version 2, scheme `range-coded`, the default): one `topk_coded` byte
//!   string per row, see [`crate::codec`]; about half the size, readable through distill.

mod coded;
mod plain;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, UInt32Builder};
use arrow_array::{Array, ArrayRef, ListArray, RecordBatch, StringArray, UInt16Array, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use distill_kernels::TopK;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::quant::{kl_with_tail, QuantScheme, Quantization};

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
    /// A teacher-scored sequence: `token_ids` is the prompt's `prompt_len` tokens then the
    /// completion, `top` the teacher's top-K for predicting each completion token.
    pub fn from_scored(
        prompt_index: u32,
        prompt_id: String,
        sample: u16,
        token_ids: Vec<u32>,
        prompt_len: usize,
        top: TopK,
    ) -> Self {
        Self {
            prompt_index,
            prompt_id,
            sample,
            prompt_len: prompt_len as u32,
            token_ids,
            topk_ids: top.ids,
            topk_logprobs: top.logprobs,
            tail_logprobs: top.tail_logprob,
        }
    }

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

/// How a dataset's shards are coded: from its manifest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardCoding {
    pub k: usize,
    /// Rows of the teacher's output layer: every stored id is below it.
    pub vocab: usize,
    pub quantization: Quantization,
}

impl ShardCoding {
    pub fn of(spec: &crate::DatasetSpec) -> Self {
        Self { k: spec.k, vocab: spec.model_vocab, quantization: spec.quantization }
    }
}

/// The quantised teacher signal of one sequence, as both layouts store it.
pub(crate) struct SequenceCodes {
    /// Log-probability code differences: (Tc, K).
    pub deltas: Vec<u8>,
    /// (Tc).
    pub tails: Vec<u16>,
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
pub fn write_shard(path: &Path, sequences: &[Sequence], coding: &ShardCoding) -> Result<ShardStats> {
    let (k, quant) = (coding.k, &coding.quantization);
    // Sequences are quantised in parallel, and their figures summed in order afterwards.
    let quantised: Vec<(SequenceCodes, Vec<f64>)> = sequences
        .par_iter()
        .map(|seq| {
            seq.validate(k)?;
            let mut back = vec![0f32; k];
            let mut c = SequenceCodes { deltas: Vec::with_capacity(seq.topk_ids.len()), tails: Vec::new() };
            let mut kls = Vec::with_capacity(seq.tail_logprobs.len());
            for (pos, tail_lp) in seq.tail_logprobs.iter().enumerate() {
                let lps = &seq.topk_logprobs[pos * k..(pos + 1) * k];
                let start = c.deltas.len();
                let tail_code = quant.encode_position(lps, *tail_lp, &mut c.deltas);
                c.tails.push(tail_code);
                // Measure what the quantisation costs, position by position.
                let tail_back = quant.decode_position(&c.deltas[start..], tail_code, &mut back);
                kls.push(kl_with_tail(lps, *tail_lp, &back, tail_back));
            }
            Ok((c, kls))
        })
        .collect::<Result<_>>()?;
    let (mut kl_sum, mut kl_max) = (0f64, 0f64);
    for kl in quantised.iter().flat_map(|(_, kls)| kls) {
        kl_sum += kl;
        kl_max = kl_max.max(*kl);
    }
    let tokens = sequences.iter().map(Sequence::completion_len).sum();
    let codes: Vec<SequenceCodes> = quantised.into_iter().map(|(c, _)| c).collect();
    let mut fields = common_fields();
    let mut columns = common_columns(sequences);
    match quant.scheme {
        QuantScheme::DeltaU8 => plain::columns(sequences, &codes, &mut fields, &mut columns),
        QuantScheme::RangeCoded => coded::columns(sequences, &codes, coding, &mut fields, &mut columns)?,
    }
    let schema = Arc::new(Schema::new(fields));
    let batch =
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::Invalid(format!("building shard: {e}")))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(9).expect("9 is a valid zstd level")))
        .set_dictionary_enabled(false)
        // Range-coded bytes do not compress further; zstd would only add its frame.
        .set_column_compression(ColumnPath::from(coded::COLUMN), Compression::UNCOMPRESSED)
        .build();
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| Error::corrupt(&tmp, e))?;
    writer.write(&batch).map_err(|e| Error::corrupt(&tmp, e))?;
    let file = writer.into_inner().map_err(|e| Error::corrupt(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path)?;
    let bytes = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    Ok(ShardStats { sequences: sequences.len(), completion_tokens: tokens, bytes, kl_sum, kl_max })
}

/// The columns both layouts start with.
fn common_fields() -> Vec<Field> {
    vec![
        Field::new("prompt_index", DataType::UInt32, false),
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("sample", DataType::UInt16, false),
        Field::new("prompt_len", DataType::UInt32, false),
        list_field("token_ids", DataType::UInt32),
    ]
}

fn common_columns(sequences: &[Sequence]) -> Vec<ArrayRef> {
    let mut token_ids = ListBuilder::new(UInt32Builder::new()).with_field(item_field(DataType::UInt32));
    for seq in sequences {
        token_ids.values().append_slice(&seq.token_ids);
        token_ids.append(true);
    }
    vec![
        Arc::new(UInt32Array::from_iter_values(sequences.iter().map(|s| s.prompt_index))),
        Arc::new(StringArray::from_iter_values(sequences.iter().map(|s| s.prompt_id.as_str()))),
        Arc::new(UInt16Array::from_iter_values(sequences.iter().map(|s| s.sample))),
        Arc::new(UInt32Array::from_iter_values(sequences.iter().map(|s| s.prompt_len))),
        Arc::new(token_ids.finish()),
    ]
}

fn list_field(name: &str, item: DataType) -> Field {
    Field::new(name, DataType::List(item_field(item)), false)
}

fn item_field(dt: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", dt, false))
}

/// Makes a rename in `path`'s directory durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Each sequence's (token count, prompt length), reading only those two columns.
pub fn read_lengths(path: &Path) -> Result<Vec<(usize, usize)>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::corrupt(path, format!("not a readable Parquet shard: {e}")))?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["token_ids", "prompt_len"]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| Error::corrupt(path, format!("not a readable shard: {e}")))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| Error::corrupt(path, e))?;
        let prompt_len = column::<UInt32Array>(path, &batch, "prompt_len")?;
        let token_ids = column::<ListArray>(path, &batch, "token_ids")?;
        for row in 0..batch.num_rows() {
            let (start, end) = (token_ids.value_offsets()[row], token_ids.value_offsets()[row + 1]);
            out.push(((end - start) as usize, prompt_len.value(row) as usize));
        }
    }
    Ok(out)
}

/// Reads a shard back, reconstructing log-probabilities.
pub fn read_shard(path: &Path, coding: &ShardCoding) -> Result<Vec<Sequence>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| Error::corrupt(path, format!("not a readable Parquet shard: {e}")))?;
    let mut out = Vec::new();
    // The coded layout's models carry over from row to row, across record batches too.
    let mut decoder = match coding.quantization.scheme {
        QuantScheme::DeltaU8 => None,
        QuantScheme::RangeCoded => Some(coded::RowDecoder::new(coding)),
    };
    for batch in reader {
        let batch = batch.map_err(|e| Error::corrupt(path, e))?;
        let prompt_index = column::<UInt32Array>(path, &batch, "prompt_index")?;
        let prompt_id = column::<StringArray>(path, &batch, "prompt_id")?;
        let sample = column::<UInt16Array>(path, &batch, "sample")?;
        let prompt_len = column::<UInt32Array>(path, &batch, "prompt_len")?;
        let token_ids = column::<ListArray>(path, &batch, "token_ids")?;
        let mut signal = match decoder.as_mut() {
            None => Signal::Plain(plain::Columns::of(path, &batch)?),
            Some(decoder) => Signal::Coded(coded::Columns::of(path, &batch)?, decoder),
        };
        for row in 0..batch.num_rows() {
            let tokens = list_values::<UInt32Array>(path, token_ids, row, "token_ids")?;
            let tokens = tokens.as_any().downcast_ref::<UInt32Array>().expect("checked by list_values");
            let mut seq = Sequence {
                prompt_index: prompt_index.value(row),
                prompt_id: prompt_id.value(row).to_string(),
                sample: sample.value(row),
                token_ids: tokens.values().to_vec(),
                prompt_len: prompt_len.value(row),
                topk_ids: Vec::new(),
                topk_logprobs: Vec::new(),
                tail_logprobs: Vec::new(),
            };
            if seq.prompt_len as usize > seq.token_ids.len() {
                return Err(Error::corrupt(
                    path,
                    format!("row {row}: prompt_len {} > {} tokens", seq.prompt_len, seq.token_ids.len()),
                ));
            }
            match &mut signal {
                Signal::Plain(columns) => columns.decode_row(path, row, coding, &mut seq)?,
                Signal::Coded(columns, decoder) => decoder.decode_row(path, columns, row, &mut seq)?,
            }
            seq.validate(coding.k).map_err(|e| Error::corrupt(path, format!("row {row}: {e}")))?;
            out.push(seq);
        }
    }
    Ok(out)
}

/// A record batch's teacher-signal columns, with the decoder the coded layout carries along.
enum Signal<'a> {
    Plain(plain::Columns<'a>),
    Coded(coded::Columns<'a>, &'a mut coded::RowDecoder),
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
