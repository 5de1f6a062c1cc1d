//! GGUF v3 writer.
//!
//! Why validate on `add_*` rather than on write: a test model that llama.cpp or
//! stable-diffusion.cpp rejects fails far from the code that built it, with a loader log as the
//! only clue. Checking each key and tensor as it is added (data length matching shape and type,
//! homogeneous arrays, `general.alignment` being a power-of-two u32 as ggml requires) points at
//! the offending call instead.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::quant::{self, QuantError};
use crate::types::{GgmlType, Value, DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// Why a GGUF file could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("metadata \"{key}\": {reason}")]
    InvalidValue { key: String, reason: String },
    #[error("tensor \"{name}\": {reason}")]
    InvalidTensor { name: String, reason: String },
    #[error("tensor \"{name}\": {source}")]
    Quant {
        name: String,
        #[source]
        source: QuantError,
    },
    #[error("invalid model spec: {0}")]
    InvalidSpec(String),
}

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF v3 file in memory, then writes it in one go.
///
/// Metadata and tensors are written in the order added. Tensor data is laid out back to back,
/// each tensor starting at a multiple of the alignment and padded with zeros to the next one
/// (the trailing padding included, as ggml's own writer does).
pub struct GgufWriter {
    alignment: u64,
    kvs: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl fmt::Debug for GgufWriter {
    /// Names only: tensor data can be hundreds of megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.kvs.iter().map(|(k, _)| k.as_str()).collect();
        let tensors: Vec<&str> = self.tensors.iter().map(|t| t.name.as_str()).collect();
        f.debug_struct("GgufWriter")
            .field("alignment", &self.alignment)
            .field("keys", &keys)
            .field("tensors", &tensors)
            .finish()
    }
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty file with the default 32-byte alignment.
    pub fn new() -> Self {
        Self {
            alignment: DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// The alignment tensors will be written with (`general.alignment`, or 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Adds a metadata entry. Adding `general.alignment` (a power-of-two `U32`) also changes
    /// the alignment used for the data section.
    pub fn add_kv(&mut self, key: impl Into<String>, value: Value) -> Result<&mut Self, WriteError> {
        let key = key.into();
        let invalid = |reason: String| WriteError::InvalidValue {
            key: key.clone(),
            reason,
        };
        if key.is_empty() {
            return Err(invalid("empty key".into()));
        }
        if self.kvs.iter().any(|(k, _)| *k == key) {
            return Err(invalid("duplicate key".into()));
        }
        check_homogeneous(&value).map_err(invalid)?;
        if key == "general.alignment" {
            // ggml reads this with gguf_get_val_u32, which rejects any other integer type.
            match value {
                Value::U32(a) if a.is_power_of_two() => self.alignment = a.into(),
                _ => return Err(invalid(format!("must be a power-of-two U32, got {value:?}"))),
            }
        }
        self.kvs.push((key, value));
        Ok(self)
    }

    /// Adds a tensor. `dims` is in ggml order (`ne0` first, 1 to 4 entries) and `data` must be
    /// exactly the bytes ggml expects for that shape and type.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self, WriteError> {
        let name = name.into();
        let invalid = |reason: String| WriteError::InvalidTensor {
            name: name.clone(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("empty name".into()));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(invalid("duplicate tensor name".into()));
        }
        if dims.is_empty() || dims.len() > 4 {
            return Err(invalid(format!("{} dimensions (ggml allows 1 to 4)", dims.len())));
        }
        let expected = ggml_type.tensor_bytes(dims).ok_or_else(|| {
            invalid(format!(
                "shape {dims:?} does not fit {ggml_type}: ne0 must be a multiple of {}",
                ggml_type.block_size()
            ))
        })?;
        if data.len() as u64 != expected {
            return Err(invalid(format!(
                "{} bytes of data, but {dims:?} at {ggml_type} takes {expected}",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
        Ok(self)
    }

    /// Adds a tensor from f32 values, encoding them as `ggml_type` (F32, F16, BF16, Q8_0 or
    /// Q4_0; see [`quant::encode_f32`]).
    pub fn add_tensor_f32(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        values: &[f32],
    ) -> Result<&mut Self, WriteError> {
        let name = name.into();
        let n: Option<u64> = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        if n != Some(values.len() as u64) {
            return Err(WriteError::InvalidTensor {
                name,
                reason: format!("{} values for shape {dims:?}", values.len()),
            });
        }
        let data = quant::encode_f32(values, ggml_type).map_err(|source| WriteError::Quant {
            name: name.clone(),
            source,
        })?;
        self.add_tensor(name, dims, ggml_type, data)
    }

    /// Writes the file to `w`.
    pub fn write(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut out = Counting { w, pos: 0 };
        out.put(&GGUF_MAGIC)?;
        out.put(&3u32.to_le_bytes())?;
        out.put(&(self.tensors.len() as u64).to_le_bytes())?;
        out.put(&(self.kvs.len() as u64).to_le_bytes())?;
        let mut buf = Vec::new();
        for (key, value) in &self.kvs {
            buf.clear();
            encode_str(&mut buf, key);
            buf.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            encode_value(&mut buf, value);
            out.put(&buf)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            buf.clear();
            encode_str(&mut buf, &t.name);
            buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                buf.extend_from_slice(&d.to_le_bytes());
            }
            buf.extend_from_slice(&t.ggml_type.as_u32().to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
            out.put(&buf)?;
            offset += padded(t.data.len() as u64, self.alignment);
        }
        out.pad_to(self.alignment)?;
        for t in &self.tensors {
            out.put(&t.data)?;
            out.pad_to(self.alignment)?;
        }
        Ok(())
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Writes the file to `path`, replacing it.
    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<(), WriteError> {
        let path = path.as_ref();
        let io_err = |source| WriteError::Io {
            path: path.to_owned(),
            source,
        };
        let mut w = BufWriter::new(File::create(path).map_err(io_err)?);
        self.write(&mut w).map_err(io_err)?;
        w.flush().map_err(io_err)
    }
}

/// A writer that knows how many bytes it has written, for padding.
struct Counting<'a> {
    w: &'a mut dyn Write,
    pos: u64,
}

impl Counting<'_> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.pos += bytes.len() as u64;
        self.w.write_all(bytes)
    }

    fn pad_to(&mut self, align: u64) -> io::Result<()> {
        const ZEROS: [u8; 256] = [0; 256];
        let mut pad = padded(self.pos, align) - self.pos;
        while pad > 0 {
            let n = pad.min(ZEROS.len() as u64);
            self.put(&ZEROS[..n as usize])?;
            pad -= n;
        }
        Ok(())
    }
}

/// `n` rounded up to a multiple of `align` (a power of two).
fn padded(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

fn check_homogeneous(value: &Value) -> Result<(), String> {
    if let Value::Array(elem, items) = value {
        for (i, item) in items.iter().enumerate() {
            if item.value_type() != *elem {
                return Err(format!("array of {elem} holds a {} at index {i}", item.value_type()));
            }
            check_homogeneous(item)?;
        }
    }
    Ok(())
}

fn encode_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn encode_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => buf.push(*v),
        Value::I8(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => buf.push(u8::from(*v)),
        Value::String(s) => encode_str(buf, s),
        Value::Array(elem, items) => {
            buf.extend_from_slice(&(*elem as u32).to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                encode_value(buf, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ValueType;

    #[test]
    fn add_tensor_rejects_mismatched_data() {
        let mut w = GgufWriter::new();
        let err = w.add_tensor("t", &[32, 2], GgmlType::Q8_0, vec![0; 67]).unwrap_err();
        assert!(err.to_string().contains("67 bytes"), "{err}");
        let err = w.add_tensor("t", &[48], GgmlType::Q4_0, vec![0; 27]).unwrap_err();
        assert!(err.to_string().contains("multiple of 32"), "{err}");
        let err = w
            .add_tensor("t", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4])
            .unwrap_err();
        assert!(err.to_string().contains("5 dimensions"), "{err}");
        w.add_tensor("t", &[32, 2], GgmlType::Q8_0, vec![0; 68]).unwrap();
        let err = w.add_tensor("t", &[1], GgmlType::F32, vec![0; 4]).unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
    }

    #[test]
    fn add_kv_rejects_bad_values() {
        let mut w = GgufWriter::new();
        let mixed = Value::Array(ValueType::U32, vec![Value::U32(1), Value::I32(2)]);
        assert!(w.add_kv("a", mixed).is_err());
        assert!(w.add_kv("general.alignment", Value::U64(64)).is_err());
        assert!(w.add_kv("general.alignment", Value::U32(48)).is_err());
        assert_eq!(w.alignment(), 32);
        w.add_kv("general.alignment", Value::U32(64)).unwrap();
        assert_eq!(w.alignment(), 64);
        assert!(w.add_kv("general.alignment", Value::U32(64)).is_err());
        assert!(w.add_kv("", Value::U8(0)).is_err());
    }

    #[test]
    fn layout_is_aligned_and_padded() {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", "x".into()).unwrap();
        w.add_tensor("a", &[3], GgmlType::F32, vec![1; 12]).unwrap();
        w.add_tensor("b", &[5], GgmlType::F16, vec![2; 10]).unwrap();
        let bytes = w.to_bytes();
        assert_eq!(bytes.len() % 32, 0);
        assert_eq!(&bytes[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
        // Data: a at 0 (12 bytes + 20 pad), b at 32 (10 bytes + 22 pad).
        let data = &bytes[bytes.len() - 64..];
        assert_eq!(&data[..12], &[1; 12]);
        assert_eq!(&data[12..32], &[0; 20]);
        assert_eq!(&data[32..42], &[2; 10]);
        assert_eq!(&data[42..], &[0; 22]);
    }
}
