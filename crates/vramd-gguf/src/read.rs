//! GGUF reader: header, metadata and tensor table, without reading tensor data.
//!
//! Why memory-mapped and lazy: the daemon inspects multi-gigabyte models to learn how much VRAM
//! they need; mapping the file costs nothing and only the pages holding the header are touched.
//!
//! Why so defensive: model paths come from user configuration, so a truncated download or a
//! random file must give an error that names the field and byte offset, never a panic or a
//! multi-gigabyte allocation driven by a corrupt length. Every length is checked against the
//! bytes left in the file before anything is allocated.

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::types::{GgmlType, Value, ValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// ggml's `GGML_MAX_DIMS`: a tensor has at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Items per metadata array. The byte check alone still lets a file of N bytes declare a u8 array
/// of N items, each a 32-byte [`Value`] in memory; the largest real arrays (tokenizer vocabularies
/// and merges) stay far below this.
const MAX_ARRAY_ITEMS: usize = 1 << 24;
/// Arrays of arrays are legal GGUF but unused in practice; the cap keeps a crafted file from
/// recursing the parser into a stack overflow.
const MAX_ARRAY_NESTING: u32 = 4;

/// Why a GGUF file could not be read. `field` names what was being read (e.g.
/// `metadata[3] "general.name" value`), `offset` is the byte offset in the file where it starts.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not a GGUF file: first bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("GGUF version {version} is big-endian (byte-swapped); only little-endian files are supported")]
    BigEndian { version: u32 },
    #[error("unsupported GGUF version {version} (supported: 2 and 3)")]
    UnsupportedVersion { version: u32 },
    #[error("truncated GGUF: {field} at offset {offset} needs {needed} bytes but only {available} remain")]
    Truncated {
        field: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("invalid GGUF: {field} at offset {offset}: {reason}")]
    Invalid { field: String, offset: u64, reason: String },
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape in ggml order: `dims[0]` is `ne0`, the contiguous (row) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the tensor's data from the start of the data section (not of the file).
    pub offset: u64,
    /// Bytes of tensor data, from the type's block geometry.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements (product of `dims`).
    pub fn n_elements(&self) -> u64 {
        // Cannot overflow: the size check at parse time already multiplied these.
        self.dims.iter().product()
    }
}

/// Parsed header, metadata and tensor table of a GGUF file.
#[derive(Debug, Clone)]
pub struct Gguf {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
}

/// A memory-mapped GGUF file. Derefs to [`Gguf`] for metadata and tensor queries.
pub struct GgufFile {
    map: Mmap,
    gguf: Gguf,
}

impl GgufFile {
    /// Maps `path` and parses everything but the tensor data.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ReadError> {
        let path = path.as_ref();
        let io_err = |source| ReadError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        // SAFETY: the map is read-only. If another process truncates or rewrites the file while
        // it is mapped, reads may fault or see new bytes; that is the standard memmap caveat and
        // acceptable for model files, which are not modified in place.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let gguf = Gguf::parse(&map)?;
        Ok(Self { map, gguf })
    }

    /// The raw bytes of tensor `name`, or `None` if there is no such tensor.
    pub fn tensor_data(&self, name: &str) -> Option<&[u8]> {
        let t = self.gguf.tensor(name)?;
        let start = usize::try_from(self.gguf.data_offset.checked_add(t.offset)?).ok()?;
        let end = start.checked_add(usize::try_from(t.size).ok()?)?;
        self.map.get(start..end)
    }
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("gguf", &self.gguf)
            .finish_non_exhaustive()
    }
}

impl Deref for GgufFile {
    type Target = Gguf;
    fn deref(&self) -> &Gguf {
        &self.gguf
    }
}

impl Gguf {
    /// Parses a whole GGUF file held in memory (tensor data included, but not read).
    pub fn parse(bytes: &[u8]) -> Result<Self, ReadError> {
        Parser::new(bytes).parse()
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Size of the parsed file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// `general.alignment`, or 32 when absent.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section, to which every tensor offset is relative.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Metadata entries in file order.
    pub fn metadata_entries(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value stored under `key`.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// An integer of any width under `key` that fits a `u64`.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.metadata(key)?.as_u64()
    }

    /// An integer of any width under `key` that fits a `u32`.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.metadata(key)?.as_u32()
    }

    /// An integer of any width under `key` that fits an `i64`.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.metadata(key)?.as_i64()
    }

    /// An `f32` (or narrowed `f64`) under `key`.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.metadata(key)?.as_f32()
    }

    /// An `f64` (or widened `f32`) under `key`.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.metadata(key)?.as_f64()
    }

    /// A bool under `key`.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.metadata(key)?.as_bool()
    }

    /// A string under `key`.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.metadata(key)?.as_str()
    }

    /// An array under `key`: element type and items.
    pub fn get_array(&self, key: &str) -> Option<(ValueType, &[Value])> {
        self.metadata(key)?.as_array()
    }

    /// `general.architecture` (e.g. `"llama"`).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// The tensor table in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Sum of all tensor sizes: what loading every tensor costs, before any backend overhead.
    pub fn tensor_data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.size).sum()
    }
}

/// Low-level failure inside a read, before the caller names the field.
enum Fail {
    Short { offset: u64, needed: u64 },
    Bad { offset: u64, reason: String },
}

/// A [`Fail`] plus the array indices it happened under (innermost last).
struct RawError {
    fail: Fail,
    path: Vec<u64>,
}

impl From<Fail> for RawError {
    fn from(fail: Fail) -> Self {
        RawError { fail, path: Vec::new() }
    }
}

type Raw<T> = Result<T, RawError>;

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// Turns a low-level failure into a [`ReadError`] naming `field`.
    fn named(&self, err: RawError, field: impl FnOnce() -> String) -> ReadError {
        let mut field = field();
        for i in &err.path {
            field.push_str(&format!("[{i}]"));
        }
        match err.fail {
            Fail::Short { offset, needed } => ReadError::Truncated {
                field,
                offset,
                needed,
                available: self.len().saturating_sub(offset),
            },
            Fail::Bad { offset, reason } => ReadError::Invalid { field, offset, reason },
        }
    }

    fn take(&mut self, n: u64) -> Raw<&'a [u8]> {
        if n > self.remaining() {
            return Err(Fail::Short {
                offset: self.pos as u64,
                needed: n,
            }
            .into());
        }
        let start = self.pos;
        self.pos += n as usize; // n <= remaining, so it fits usize
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self) -> Raw<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u32(&mut self) -> Raw<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Raw<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 length then bytes (no terminator).
    fn string_bytes(&mut self) -> Raw<&'a [u8]> {
        let at = self.pos as u64;
        let len = self.u64()?;
        if len > self.remaining() {
            return Err(Fail::Bad {
                offset: at,
                reason: format!(
                    "string length {len} exceeds the {} bytes left in the file",
                    self.remaining()
                ),
            }
            .into());
        }
        self.take(len)
    }

    /// A key or tensor name: must be UTF-8, since lookups are by `&str`.
    fn name(&mut self) -> Raw<String> {
        let at = self.pos as u64;
        let raw = self.string_bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|e| {
            Fail::Bad {
                offset: at,
                reason: format!("not UTF-8: {e}"),
            }
            .into()
        })
    }

    /// Checks that `count` items of at least `min_len` bytes each can fit in what is left.
    fn check_count(&self, at: u64, count: u64, min_len: u64, what: &str) -> Raw<usize> {
        let fits = count.checked_mul(min_len).is_some_and(|n| n <= self.remaining());
        if !fits {
            return Err(Fail::Bad {
                offset: at,
                reason: format!(
                    "{count} {what} cannot fit in the {} bytes left in the file",
                    self.remaining()
                ),
            }
            .into());
        }
        // count <= remaining <= usize::MAX
        Ok(count as usize)
    }

    fn value_type(&mut self) -> Raw<ValueType> {
        let at = self.pos as u64;
        let id = self.u32()?;
        ValueType::from_u32(id).ok_or_else(|| {
            Fail::Bad {
                offset: at,
                reason: format!("unknown value type {id}"),
            }
            .into()
        })
    }

    fn value(&mut self, ty: ValueType, depth: u32) -> Raw<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>()?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array()?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
            // Any non-zero byte is true, as in ggml's reader.
            ValueType::Bool => Value::Bool(self.array::<1>()?[0] != 0),
            // Lossy on purpose: a vocabulary with one malformed token must not make the whole
            // model unreadable when all we want is its size.
            ValueType::String => Value::String(String::from_utf8_lossy(self.string_bytes()?).into_owned()),
            ValueType::Array => {
                let at = self.pos as u64;
                if depth >= MAX_ARRAY_NESTING {
                    return Err(Fail::Bad {
                        offset: at,
                        reason: format!("arrays nested deeper than {MAX_ARRAY_NESTING}"),
                    }
                    .into());
                }
                let elem = self.value_type()?;
                let count_at = self.pos as u64;
                let count = self.u64()?;
                let count = self.check_count(count_at, count, elem.min_encoded_len(), "items")?;
                if count > MAX_ARRAY_ITEMS {
                    return Err(Fail::Bad {
                        offset: count_at,
                        reason: format!("{count} items exceed this reader's limit of {MAX_ARRAY_ITEMS}"),
                    }
                    .into());
                }
                let mut items = Vec::with_capacity(count);
                for i in 0..count {
                    let item = self.value(elem, depth + 1).map_err(|mut e| {
                        e.path.insert(0, i as u64);
                        e
                    })?;
                    items.push(item);
                }
                Value::Array(elem, items)
            }
        })
    }

    fn parse(mut self) -> Result<Gguf, ReadError> {
        let magic: [u8; 4] = self.array().map_err(|e| self.named(e, || "magic".into()))?;
        if magic != GGUF_MAGIC {
            return Err(ReadError::BadMagic { found: magic });
        }
        let version = self.u32().map_err(|e| self.named(e, || "header.version".into()))?;
        match version {
            2 | 3 => {}
            v if matches!(v.swap_bytes(), 1..=3) => return Err(ReadError::BigEndian { version: v }),
            v => return Err(ReadError::UnsupportedVersion { version: v }),
        }

        let tc_at = self.pos as u64;
        let tensor_count = self.u64().map_err(|e| self.named(e, || "header.tensor_count".into()))?;
        let kv_at = self.pos as u64;
        let kv_count = self
            .u64()
            .map_err(|e| self.named(e, || "header.metadata_kv_count".into()))?;
        // Minimal encodings: a KV is key length (8) + type (4) + 1 value byte; a tensor info is
        // name length (8) + n_dims (4) + type (4) + offset (8).
        let kv_count = self
            .check_count(kv_at, kv_count, 13, "metadata entries")
            .map_err(|e| self.named(e, || "header.metadata_kv_count".into()))?;
        let tensor_count = self
            .check_count(tc_at, tensor_count, 24, "tensor infos")
            .map_err(|e| self.named(e, || "header.tensor_count".into()))?;

        let mut metadata: Vec<(String, Value)> = Vec::with_capacity(kv_count);
        let mut alignment_at = 0;
        for i in 0..kv_count {
            let key_at = self.pos as u64;
            let key = self
                .name()
                .map_err(|e| self.named(e, || format!("metadata[{i}] key")))?;
            if metadata.iter().any(|(k, _)| *k == key) {
                return Err(ReadError::Invalid {
                    field: format!("metadata[{i}] key"),
                    offset: key_at,
                    reason: format!("duplicate key \"{key}\""),
                });
            }
            if key == "general.alignment" {
                alignment_at = self.pos as u64;
            }
            let value = self
                .value_type()
                .and_then(|ty| self.value(ty, 0))
                .map_err(|e| self.named(e, || format!("metadata[{i}] \"{key}\" value")))?;
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(ReadError::Invalid {
                        field: "metadata \"general.alignment\" value".into(),
                        offset: alignment_at,
                        reason: format!("{v:?} is not a power-of-two integer"),
                    })
                }
            },
        };

        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count);
        for i in 0..tensor_count {
            let info = self.tensor_info(i, &tensors)?;
            tensors.push(info);
        }

        let header_end = self.pos as u64;
        // alignment <= 2^63 and header_end <= file length, so this cannot overflow.
        let data_offset = header_end.div_ceil(alignment) * alignment;
        for t in &tensors {
            let field = || format!("tensor \"{}\" data", t.name);
            if t.offset % alignment != 0 {
                return Err(ReadError::Invalid {
                    field: field(),
                    offset: data_offset.saturating_add(t.offset),
                    reason: format!("offset {} is not a multiple of the alignment {alignment}", t.offset),
                });
            }
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.size));
            if !matches!(end, Some(end) if end <= self.len()) {
                let start = start.unwrap_or(u64::MAX);
                return Err(ReadError::Truncated {
                    field: field(),
                    offset: start,
                    needed: t.size,
                    available: self.len().saturating_sub(start),
                });
            }
        }

        Ok(Gguf {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_len: self.len(),
        })
    }

    fn tensor_info(&mut self, i: usize, seen: &[TensorInfo]) -> Result<TensorInfo, ReadError> {
        let name_at = self.pos as u64;
        let name = self.name().map_err(|e| self.named(e, || format!("tensor[{i}] name")))?;
        if seen.iter().any(|t| t.name == name) {
            return Err(ReadError::Invalid {
                field: format!("tensor[{i}] name"),
                offset: name_at,
                reason: format!("duplicate tensor name \"{name}\""),
            });
        }
        let field = |what: &str| format!("tensor[{i}] \"{name}\" {what}");
        let bad = |what: &str, offset: u64, reason: String| ReadError::Invalid {
            field: field(what),
            offset,
            reason,
        };

        let nd_at = self.pos as u64;
        let n_dims = self.u32().map_err(|e| self.named(e, || field("n_dims")))?;
        if n_dims > MAX_DIMS {
            return Err(bad("n_dims", nd_at, format!("{n_dims} > {MAX_DIMS}")));
        }
        let dims_at = self.pos as u64;
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let ne = self.u64().map_err(|e| self.named(e, || field(&format!("dims[{d}]"))))?;
            dims.push(ne);
        }
        let type_at = self.pos as u64;
        let type_id = self.u32().map_err(|e| self.named(e, || field("type")))?;
        let ggml_type =
            GgmlType::from_u32(type_id).ok_or_else(|| bad("type", type_at, format!("unknown ggml type {type_id}")))?;
        let offset = self.u64().map_err(|e| self.named(e, || field("offset")))?;

        // ggml stores element counts as int64_t, so anything at or above 2^63 is corrupt.
        let n = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64);
        let Some(_) = n else {
            return Err(bad("dims", dims_at, format!("{dims:?} overflows")));
        };
        let size = ggml_type.tensor_bytes(&dims).ok_or_else(|| {
            bad(
                "dims",
                dims_at,
                format!(
                    "ne0 = {} is not a multiple of the {} block size {}",
                    dims.first().copied().unwrap_or(1),
                    ggml_type,
                    ggml_type.block_size()
                ),
            )
        })?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            size,
        })
    }
}
