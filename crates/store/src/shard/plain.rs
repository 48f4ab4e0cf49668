//! The `plain` layout (format version 1): the teacher signal as lists of numbers.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, UInt16Builder, UInt32Builder, UInt8Builder};
use arrow_array::{Array, ArrayRef, ListArray, RecordBatch, UInt16Array, UInt32Array, UInt8Array};
use arrow_schema::{DataType, Field};

use super::{column, item_field, list_field, list_values, Sequence, SequenceCodes, ShardCoding};
use crate::error::{Error, Result};

pub(super) fn columns(
    sequences: &[Sequence],
    codes: &[SequenceCodes],
    fields: &mut Vec<Field>,
    columns: &mut Vec<ArrayRef>,
) {
    let mut topk_ids = ListBuilder::new(UInt32Builder::new()).with_field(item_field(DataType::UInt32));
    let mut deltas = ListBuilder::new(UInt8Builder::new()).with_field(item_field(DataType::UInt8));
    let mut tails = ListBuilder::new(UInt16Builder::new()).with_field(item_field(DataType::UInt16));
    for (seq, c) in sequences.iter().zip(codes) {
        topk_ids.values().append_slice(&seq.topk_ids);
        topk_ids.append(true);
        deltas.values().append_slice(&c.deltas);
        deltas.append(true);
        tails.values().append_slice(&c.tails);
        tails.append(true);
    }
    fields.push(list_field("topk_ids", DataType::UInt32));
    fields.push(list_field("topk_logprob_deltas", DataType::UInt8));
    fields.push(list_field("tail_codes", DataType::UInt16));
    columns.push(Arc::new(topk_ids.finish()));
    columns.push(Arc::new(deltas.finish()));
    columns.push(Arc::new(tails.finish()));
}

pub(super) struct Columns<'a> {
    topk_ids: &'a ListArray,
    deltas: &'a ListArray,
    tails: &'a ListArray,
}

impl<'a> Columns<'a> {
    pub fn of(path: &Path, batch: &'a RecordBatch) -> Result<Self> {
        Ok(Self {
            topk_ids: column::<ListArray>(path, batch, "topk_ids")?,
            deltas: column::<ListArray>(path, batch, "topk_logprob_deltas")?,
            tails: column::<ListArray>(path, batch, "tail_codes")?,
        })
    }

    pub fn decode_row(&self, path: &Path, row: usize, coding: &ShardCoding, seq: &mut Sequence) -> Result<()> {
        let k = coding.k;
        let ids = list_values::<UInt32Array>(path, self.topk_ids, row, "topk_ids")?;
        let ids = ids.as_any().downcast_ref::<UInt32Array>().expect("checked by list_values");
        let d = list_values::<UInt8Array>(path, self.deltas, row, "topk_logprob_deltas")?;
        let d = d.as_any().downcast_ref::<UInt8Array>().expect("checked by list_values");
        let t = list_values::<UInt16Array>(path, self.tails, row, "tail_codes")?;
        let t = t.as_any().downcast_ref::<UInt16Array>().expect("checked by list_values");
        let tc = t.len();
        if d.len() != tc * k || ids.len() != tc * k {
            return Err(Error::corrupt(
                path,
                format!("row {row}: {tc} positions but {} ids and {} codes for k={k}", ids.len(), d.len()),
            ));
        }
        seq.topk_ids = ids.values().to_vec();
        seq.topk_logprobs = vec![0f32; tc * k];
        seq.tail_logprobs = Vec::with_capacity(tc);
        for pos in 0..tc {
            let codes = &d.values()[pos * k..(pos + 1) * k];
            let out = &mut seq.topk_logprobs[pos * k..(pos + 1) * k];
            seq.tail_logprobs.push(coding.quantization.decode_position(codes, t.value(pos), out));
        }
        Ok(())
    }
}
