//! The `coded` layout (format version 2): one range-coded byte string per row.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, RecordBatch};
use arrow_schema::{DataType, Field};

use super::{column, Sequence, SequenceCodes, ShardCoding};
use crate::codec::{Decoder, Encoder, Neighbours, PositionCodes, TopkCodec};
use crate::error::{Error, Result};

pub(super) const COLUMN: &str = "topk_coded";
/// Coded after a row's last position: a damaged row decodes to it with odds 2^-16.
const ROW_END: u64 = 0xD15C;
const ROW_END_RANGE: u64 = 1 << 16;

pub(super) fn columns(
    sequences: &[Sequence],
    codes: &[SequenceCodes],
    coding: &ShardCoding,
    fields: &mut Vec<Field>,
    columns: &mut Vec<ArrayRef>,
) -> Result<()> {
    let k = coding.k;
    let mut codec = TopkCodec::new(k, coding.vocab);
    let mut rows = Vec::with_capacity(sequences.len());
    for (seq, c) in sequences.iter().zip(codes) {
        let mut enc = Encoder::default();
        for pos in 0..seq.completion_len() {
            let at = Neighbours::at(&seq.token_ids, seq.prompt_len as usize, pos);
            let position = PositionCodes {
                ids: &seq.topk_ids[pos * k..(pos + 1) * k],
                deltas: &c.deltas[pos * k..(pos + 1) * k],
                tail: c.tails[pos],
            };
            codec
                .check(at, &position)
                .map_err(|e| Error::Invalid(format!("prompt {}, completion token {pos}: {e}", seq.prompt_id)))?;
            codec.encode(&mut enc, at, &position);
        }
        enc.encode_uniform(ROW_END, ROW_END_RANGE);
        rows.push(enc.finish());
    }
    fields.push(Field::new(COLUMN, DataType::Binary, false));
    columns.push(Arc::new(BinaryArray::from_iter_values(rows.iter())));
    Ok(())
}

pub(super) struct Columns<'a> {
    coded: &'a BinaryArray,
}

impl<'a> Columns<'a> {
    pub fn of(path: &Path, batch: &'a RecordBatch) -> Result<Self> {
        Ok(Self { coded: column::<BinaryArray>(path, batch, COLUMN)? })
    }
}

/// Decodes a shard's rows in order (the models carry over from row to row).
pub(super) struct RowDecoder {
    coding: ShardCoding,
    codec: TopkCodec,
}

impl RowDecoder {
    pub fn new(coding: &ShardCoding) -> Self {
        Self { coding: *coding, codec: TopkCodec::new(coding.k, coding.vocab) }
    }

    pub fn decode_row(&mut self, path: &Path, columns: &Columns, row: usize, seq: &mut Sequence) -> Result<()> {
        let k = self.coding.k;
        let tc = seq.completion_len();
        // Completion tokens index the models' tables (the writer checked them; prompts it did not).
        let completion = &seq.token_ids[seq.prompt_len as usize..];
        if let Some(id) = completion.iter().find(|&&id| id as usize >= self.coding.vocab) {
            return Err(Error::corrupt(
                path,
                format!("row {row}: completion token id {id} outside the vocabulary of {}", self.coding.vocab),
            ));
        }
        let mut dec = Decoder::new(columns.coded.value(row));
        seq.topk_ids = vec![0u32; tc * k];
        seq.topk_logprobs = vec![0f32; tc * k];
        seq.tail_logprobs = Vec::with_capacity(tc);
        let mut deltas = vec![0u8; k];
        for pos in 0..tc {
            let at = Neighbours::at(&seq.token_ids, seq.prompt_len as usize, pos);
            let ids = &mut seq.topk_ids[pos * k..(pos + 1) * k];
            let tail = self.codec.decode(&mut dec, at, ids, &mut deltas);
            let out = &mut seq.topk_logprobs[pos * k..(pos + 1) * k];
            seq.tail_logprobs.push(self.coding.quantization.decode_position(&deltas, tail, out));
        }
        if dec.decode_uniform(ROW_END_RANGE) != ROW_END || self.codec.corrupt() {
            return Err(Error::corrupt(
                path,
                format!("row {row}: the `{COLUMN}` bytes do not decode to {tc} positions (truncated or damaged)"),
            ));
        }
        Ok(())
    }
}
