//! Reading GGUF files: metadata, tensor directory and dequantised tensors.
//!
//! Parsing is candle's (`gguf_file`), which bounds every length by the file size; this module adds
//! the checks candle leaves to the caller (element counts that overflow, tensors that run past the
//! end of the file, wrong metadata types) so a malformed file is an error, never a panic.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use distill_kernels::quant::BlockType;

use crate::error::{Error, Result};

/// An open GGUF file whose directory has been validated against the file's length.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| Error::BadGguf {
            path: path.clone(),
            reason: format!("{e} (is the file truncated or not GGUF at all?)"),
        })?;
        validate_directory(&content, file_len).map_err(|reason| Error::BadGguf { path: path.clone(), reason })?;
        Ok(Self { path, content, reader })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Shape of a tensor in candle's (row-major, outermost first) order.
    pub fn tensor_shape(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|t| t.shape.dims())
    }

    /// Reads one tensor and dequantises it to f32 on `device`.
    pub fn tensor_f32(&mut self, name: &str, device: &Device) -> Result<Tensor> {
        let qtensor = self
            .content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| Error::BadGguf { path: self.path.clone(), reason: format!("tensor `{name}`: {e}") })?;
        Ok(qtensor.dequantize(device)?)
    }

    /// The block type of a tensor stored in one the quantised kernels run; None for float
    /// tensors (f32, f16, bf16) and block types they do not (Q2_K, Q3_K, …).
    pub fn block_type(&self, name: &str) -> Option<BlockType> {
        let info = self.content.tensor_infos.get(name)?;
        Some(match info.ggml_dtype {
            GgmlDType::Q4_0 => BlockType::Q4_0,
            GgmlDType::Q4_1 => BlockType::Q4_1,
            GgmlDType::Q5_0 => BlockType::Q5_0,
            GgmlDType::Q5_1 => BlockType::Q5_1,
            GgmlDType::Q8_0 => BlockType::Q8_0,
            GgmlDType::Q4K => BlockType::Q4K,
            GgmlDType::Q5K => BlockType::Q5K,
            GgmlDType::Q6K => BlockType::Q6K,
            _ => return None,
        })
    }

    /// A tensor's stored bytes as they are (its blocks, for a quantised one): the directory
    /// checked at open that they lie inside the file.
    pub fn tensor_bytes(&mut self, name: &str) -> Result<Vec<u8>> {
        let info =
            self.content.tensor_infos.get(name).ok_or_else(|| Error::tensor(name, "is missing from the GGUF file"))?;
        let elems: usize = info.shape.dims().iter().product();
        let len = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let start = self.content.tensor_data_offset + info.offset;
        let mut bytes = vec![0u8; len];
        let path = self.path.clone();
        self.reader.seek(SeekFrom::Start(start)).map_err(|e| Error::io(&path, e))?;
        self.reader.read_exact(&mut bytes).map_err(|e| Error::BadGguf {
            path: path.clone(),
            reason: format!("tensor `{name}`: {e} (is the file truncated?)"),
        })?;
        Ok(bytes)
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| Error::Metadata { key: key.into(), problem: "is missing".into() })
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            Value::String(s) => Ok(s),
            other => Err(type_error(key, "a string", other)),
        }
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        let v = self.value(key)?;
        value_as_u64(v).ok_or_else(|| type_error(key, "an unsigned integer", v))
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        usize::try_from(self.u64(key)?)
            .map_err(|_| Error::Metadata { key: key.into(), problem: "does not fit in usize".into() })
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        let v = self.value(key)?;
        match v {
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            other => value_as_u64(other).map(|x| x as f64).ok_or_else(|| type_error(key, "a number", other)),
        }
    }

    pub fn bool(&self, key: &str) -> Result<bool> {
        match self.value(key)? {
            Value::Bool(b) => Ok(*b),
            other => Err(type_error(key, "a bool", other)),
        }
    }

    pub fn str_array(&self, key: &str) -> Result<Vec<&str>> {
        let Value::Array(items) = self.value(key)? else {
            return Err(type_error(key, "an array of strings", self.value(key)?));
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(type_error(key, "an array of strings", other)),
            })
            .collect()
    }

    pub fn f32_array(&self, key: &str) -> Result<Vec<f32>> {
        let Value::Array(items) = self.value(key)? else {
            return Err(type_error(key, "an array of numbers", self.value(key)?));
        };
        items
            .iter()
            .map(|v| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                other => Err(type_error(key, "an array of numbers", other)),
            })
            .collect()
    }

    pub fn int_array(&self, key: &str) -> Result<Vec<i64>> {
        let Value::Array(items) = self.value(key)? else {
            return Err(type_error(key, "an array of integers", self.value(key)?));
        };
        items.iter().map(|v| value_as_i64(v).ok_or_else(|| type_error(key, "an array of integers", v))).collect()
    }
}

fn type_error(key: &str, wanted: &str, got: &Value) -> Error {
    Error::Metadata { key: key.into(), problem: format!("should be {wanted}, found {:?}", got.value_type()) }
}

fn value_as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(_) | Value::I16(_) | Value::I32(_) | Value::I64(_) => {
            value_as_i64(v).and_then(|x| u64::try_from(x).ok())
        }
        _ => None,
    }
}

fn value_as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::I8(x) => Some(*x as i64),
        Value::I16(x) => Some(*x as i64),
        Value::I32(x) => Some(*x as i64),
        Value::I64(x) => Some(*x),
        Value::U8(x) => Some(*x as i64),
        Value::U16(x) => Some(*x as i64),
        Value::U32(x) => Some(*x as i64),
        Value::U64(x) => i64::try_from(*x).ok(),
        _ => None,
    }
}

/// Checks that every tensor's byte range lies inside the file, computing sizes with checked
/// arithmetic (a crafted dimension list would otherwise overflow the element count).
fn validate_directory(content: &Content, file_len: u64) -> Result<(), String> {
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let elems = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor `{name}` has dimensions {dims:?} whose product overflows"))?;
        let block = info.ggml_dtype.block_size();
        if elems % block != 0 {
            return Err(format!(
                "tensor `{name}` has {elems} elements, not a multiple of the {:?} block size {block}",
                info.ggml_dtype
            ));
        }
        let bytes = (elems / block)
            .checked_mul(info.ggml_dtype.type_size())
            .ok_or_else(|| format!("tensor `{name}` is too large"))? as u64;
        let end = content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|start| start.checked_add(bytes))
            .ok_or_else(|| format!("tensor `{name}` has an offset past any possible file end"))?;
        if end > file_len {
            return Err(format!(
                "tensor `{name}` ends at byte {end} but the file has only {file_len} bytes (truncated download?)"
            ));
        }
    }
    Ok(())
}
