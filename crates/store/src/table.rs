//! Any Parquet file's rows as JSON objects: how a prompt collection published as Parquet (a
//! Hugging Face dataset's `messages` column, say) reaches the same reader as JSON lines.

use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, Result};

/// Whether `path` is a Parquet file (by its magic bytes, whatever its name).
pub fn is_parquet(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && &magic == b"PAR1"
}

/// The rows of the Parquet file at `path` as JSON lines (nested lists and structs as JSON arrays
/// and objects; nulls left out).
pub fn parquet_as_json_lines(path: &Path) -> Result<String> {
    let corrupt = |reason: String| Error::Corrupt { path: path.to_path_buf(), reason };
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| corrupt(format!("not a readable Parquet file: {e}")))?
        .build()
        .map_err(|e| corrupt(e.to_string()))?;
    let mut writer = arrow_json::LineDelimitedWriter::new(Vec::new());
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(format!("reading its rows: {e}")))?;
        writer.write(&batch).map_err(|e| corrupt(format!("a column JSON cannot hold: {e}")))?;
    }
    writer.finish().map_err(|e| corrupt(e.to_string()))?;
    String::from_utf8(writer.into_inner()).map_err(|e| corrupt(format!("text that is not UTF-8: {e}")))
}
