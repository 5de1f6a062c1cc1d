//! Random-weight stable-diffusion.cpp models from a tensor manifest.
//!
//! Why: stable-diffusion.cpp checks every tensor it expects by name and shape and nothing else,
//! so a file holding exactly the manifest's tensors, filled with small random values, is a model
//! it loads and runs. That gives the image worker's tests a 13 MB model instead of a multi-GB
//! download. The format and fill rules are in `testdata/sd-tiny/README.md`:
//!
//! - the manifest is a JSON object mapping tensor name → shape in ggml order (`ne0` first);
//!   trailing 1s may be dropped, and are (ggml's own writer stores `ggml_n_dims` dimensions);
//! - values: biases (`*.bias`) 0, 1-D norm weights (every 1-D `*.weight` is a norm scale: the
//!   manifests' GroupNorm/LayerNorm/RMSNorm weights) 1, everything else normal with std 0.02;
//! - metadata: only `general.architecture` (any string) is needed;
//! - data aligned to 32 bytes, which [`GgufWriter`] does.
//!
//! Types follow the README's size table ("q4_0 (linear weights) / f16"): 2-D `*.weight`
//! tensors whose `ne0` fits the block size take [`ManifestOptions::linear_type`]; other
//! multi-dimensional tensors (convolution kernels, embeddings the block size does not divide)
//! take [`ManifestOptions::other_type`]; 1-D tensors stay F32, since stable-diffusion.cpp keeps
//! biases and norms in F32 and they are tiny.

use std::path::Path;

use crate::quant;
use crate::rng::XorShift64;
use crate::types::{GgmlType, Value};
use crate::write::{GgufWriter, WriteError};

/// Why a manifest could not be turned into a model.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest JSON, byte {offset}: {reason}")]
    Json { offset: usize, reason: String },
    #[error("manifest tensor \"{name}\": {reason}")]
    Tensor { name: String, reason: String },
    #[error("invalid manifest options: {0}")]
    Options(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// How to fill and type the manifest's tensors. `Default` matches the README's q4_0 column.
#[derive(Debug, Clone)]
pub struct ManifestOptions {
    /// `general.architecture`; stable-diffusion.cpp accepts any string.
    pub architecture: String,
    /// Type of linear (2-D) weights: F32, F16, Q8_0 or Q4_0.
    pub linear_type: GgmlType,
    /// Type of other multi-dimensional tensors (convolutions): F32 or F16.
    pub other_type: GgmlType,
    pub seed: u64,
    /// Standard deviation of the random weights.
    pub std: f32,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        Self {
            architecture: "vramd-sd-tiny".into(),
            linear_type: GgmlType::Q4_0,
            other_type: GgmlType::F16,
            seed: 0x5d_71e5,
            std: 0.02,
        }
    }
}

/// One manifest entry, with trailing 1s dropped from its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestTensor {
    pub name: String,
    pub dims: Vec<u64>,
}

/// How a tensor is filled, by the README's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    Zeros,
    Ones,
    Normal,
}

impl ManifestTensor {
    /// The fill the README prescribes for this tensor.
    pub fn fill(&self) -> Fill {
        if self.name.ends_with(".bias") {
            Fill::Zeros
        } else if self.dims.len() == 1 && self.name.ends_with(".weight") {
            Fill::Ones
        } else {
            Fill::Normal
        }
    }

    /// The type this tensor is written with under `opts`.
    pub fn ggml_type(&self, opts: &ManifestOptions) -> GgmlType {
        let linear =
            self.dims.len() == 2 && self.name.ends_with(".weight") && self.dims[0] % opts.linear_type.block_size() == 0;
        match self.dims.len() {
            1 => GgmlType::F32,
            _ if linear => opts.linear_type,
            _ => opts.other_type,
        }
    }
}

/// Parses a manifest: a JSON object of tensor name → array of positive integers.
pub fn parse_manifest(json: &str) -> Result<Vec<ManifestTensor>, ManifestError> {
    let mut p = Json {
        s: json.as_bytes(),
        pos: 0,
    };
    let mut out: Vec<ManifestTensor> = Vec::new();
    p.expect(b'{')?;
    if p.peek() == Some(b'}') {
        return Err(p.err("the manifest lists no tensors"));
    }
    loop {
        let key_at = p.pos;
        let name = p.string()?;
        if out.iter().any(|t| t.name == name) {
            return Err(ManifestError::Json {
                offset: key_at,
                reason: format!("duplicate tensor \"{name}\""),
            });
        }
        p.expect(b':')?;
        let dims_at = p.pos;
        let mut dims = p.uint_array()?;
        while dims.len() > 1 && dims.last() == Some(&1) {
            dims.pop();
        }
        let bad = |reason: &str| ManifestError::Json {
            offset: dims_at,
            reason: format!("shape of \"{name}\": {reason}"),
        };
        if dims.is_empty() {
            return Err(bad("empty"));
        }
        if dims.contains(&0) {
            return Err(bad("zero-sized dimension"));
        }
        if dims.len() > 4 {
            return Err(bad("more than 4 dimensions"));
        }
        out.push(ManifestTensor { name, dims });
        match p.next_token()? {
            b',' => continue,
            b'}' => break,
            c => return Err(p.err(&format!("expected ',' or '}}', found '{}'", c as char))),
        }
    }
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(p.err("trailing characters after the manifest object"));
    }
    Ok(out)
}

/// Builds the model for `manifest_json` in memory.
pub fn build_from_manifest(manifest_json: &str, opts: &ManifestOptions) -> Result<GgufWriter, ManifestError> {
    if !matches!(
        opts.linear_type,
        GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0 | GgmlType::Q4_0
    ) {
        return Err(ManifestError::Options(format!(
            "linear_type {} (supported: f32, f16, q8_0, q4_0)",
            opts.linear_type
        )));
    }
    if !matches!(opts.other_type, GgmlType::F32 | GgmlType::F16) {
        return Err(ManifestError::Options(format!(
            "other_type {} (supported: f32, f16; ggml's convolutions take no quantized kernels)",
            opts.other_type
        )));
    }
    let tensors = parse_manifest(manifest_json)?;
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::from(opts.architecture.as_str()))?;
    let mut rng = XorShift64::new(opts.seed);
    for t in &tensors {
        let ty = t.ggml_type(opts);
        let fill = t.fill();
        let n = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let n = n
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| ManifestError::Tensor {
                name: t.name.clone(),
                reason: format!("shape {:?} is too large", t.dims),
            })?;
        // Encode in block-aligned chunks so a 38M-element embedding never exists as f32.
        const CHUNK: usize = 1 << 16;
        let mut data = Vec::with_capacity(ty.tensor_bytes(&t.dims).unwrap_or(0) as usize);
        let mut values = Vec::with_capacity(CHUNK.min(n));
        let mut done = 0;
        while done < n {
            let len = CHUNK.min(n - done);
            values.clear();
            values.extend((0..len).map(|_| match fill {
                Fill::Zeros => 0.0,
                Fill::Ones => 1.0,
                Fill::Normal => rng.normal(opts.std),
            }));
            let bytes = quant::encode_f32(&values, ty).map_err(|e| ManifestError::Tensor {
                name: t.name.clone(),
                reason: e.to_string(),
            })?;
            data.extend_from_slice(&bytes);
            done += len;
        }
        w.add_tensor(t.name.as_str(), &t.dims, ty, data)?;
    }
    Ok(w)
}

/// Writes the model for `manifest_json` to `path`.
pub fn write_from_manifest(
    path: impl AsRef<Path>,
    manifest_json: &str,
    opts: &ManifestOptions,
) -> Result<(), ManifestError> {
    build_from_manifest(manifest_json, opts)?.write_to(path)?;
    Ok(())
}

/// Just enough JSON for manifests: one object of strings → arrays of non-negative integers.
struct Json<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Json<'_> {
    fn err(&self, reason: &str) -> ManifestError {
        ManifestError::Json {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.s.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn next_token(&mut self) -> Result<u8, ManifestError> {
        let c = self.peek().ok_or_else(|| self.err("unexpected end of input"))?;
        self.pos += 1;
        Ok(c)
    }

    fn expect(&mut self, want: u8) -> Result<(), ManifestError> {
        let at = self.pos;
        match self.next_token()? {
            c if c == want => Ok(()),
            c => {
                self.pos = at;
                Err(self.err(&format!("expected '{}', found '{}'", want as char, c as char)))
            }
        }
    }

    fn string(&mut self) -> Result<String, ManifestError> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.pos).ok_or_else(|| self.err("unterminated string"))?;
            self.pos += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = *self.s.get(self.pos).ok_or_else(|| self.err("unterminated escape"))?;
                    self.pos += 1;
                    let simple = match e {
                        b'"' => Some('"'),
                        b'\\' => Some('\\'),
                        b'/' => Some('/'),
                        b'b' => Some('\u{8}'),
                        b'f' => Some('\u{c}'),
                        b'n' => Some('\n'),
                        b'r' => Some('\r'),
                        b't' => Some('\t'),
                        b'u' => None,
                        _ => return Err(self.err("invalid escape")),
                    };
                    let ch = match simple {
                        Some(ch) => ch,
                        None => self.unicode_escape()?,
                    };
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
                0..=0x1f => return Err(self.err("control character in string")),
                _ => out.push(c),
            }
        }
        // The input is a &str and we only split it at ASCII bytes, so this cannot fail.
        String::from_utf8(out).map_err(|_| self.err("invalid UTF-8 in string"))
    }

    fn hex4(&mut self) -> Result<u32, ManifestError> {
        let digits = self
            .s
            .get(self.pos..self.pos + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.err("\\u needs four hex digits"))?;
        self.pos += 4;
        Ok(digits)
    }

    fn unicode_escape(&mut self) -> Result<char, ManifestError> {
        let hi = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&hi) {
            if self.s.get(self.pos..self.pos + 2) != Some(b"\\u") {
                return Err(self.err("unpaired surrogate"));
            }
            self.pos += 2;
            let lo = self.hex4()?;
            if !(0xdc00..0xe000).contains(&lo) {
                return Err(self.err("unpaired surrogate"));
            }
            0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
        } else {
            hi
        };
        char::from_u32(code).ok_or_else(|| self.err("invalid \\u escape"))
    }

    fn uint_array(&mut self) -> Result<Vec<u64>, ManifestError> {
        self.expect(b'[')?;
        let mut out = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            self.skip_ws();
            let start = self.pos;
            while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
                self.pos += 1;
            }
            if matches!(self.s.get(self.pos), Some(b'.' | b'e' | b'E')) || start == self.pos {
                self.pos = start;
                return Err(self.err("dimensions must be non-negative integers"));
            }
            let digits = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or_default();
            let v = digits.parse::<u64>().map_err(|_| {
                self.pos = start;
                self.err("dimension does not fit in 64 bits")
            })?;
            out.push(v);
            match self.next_token()? {
                b',' => continue,
                b']' => return Ok(out),
                c => {
                    self.pos -= 1;
                    return Err(self.err(&format!("expected ',' or ']', found '{}'", c as char)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shapes_and_drops_trailing_ones() {
        let m =
            parse_manifest(" {\"a.weight\": [64, 256, 1, 1], \"b\\u00e9\\n\": [3,3,4,32],\"c.bias\":[1]} \n").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].dims, vec![64, 256]);
        assert_eq!(m[1].name, "b\u{e9}\n");
        assert_eq!(m[1].dims, vec![3, 3, 4, 32]);
        assert_eq!(m[2].dims, vec![1]);
    }

    #[test]
    fn rejects_malformed_manifests_with_offsets() {
        let cases = [
            ("", "end of input"),
            ("{}", "no tensors"),
            ("{\"a\": [1,2}", "expected ',' or ']'"),
            ("{\"a\": [1.5]}", "non-negative integers"),
            ("{\"a\": [-1]}", "non-negative integers"),
            ("{\"a\": [0]}", "zero-sized"),
            ("{\"a\": []}", "empty"),
            ("{\"a\": [2,2,2,2,2]}", "more than 4"),
            ("{\"a\": [1], \"a\": [2]}", "duplicate"),
            ("{\"a\": [1]} x", "trailing"),
            ("{\"a\": [99999999999999999999]}", "64 bits"),
            ("{\"\\ud800\": [1]}", "surrogate"),
        ];
        for (json, want) in cases {
            let err = parse_manifest(json).unwrap_err().to_string();
            assert!(err.contains(want), "{json:?}: {err}");
        }
        let Err(ManifestError::Json { offset, .. }) = parse_manifest("{\"a\": [1,2}") else {
            panic!("expected a JSON error");
        };
        assert_eq!(offset, 10);
    }

    #[test]
    fn fill_and_type_follow_the_readme() {
        let t = |name: &str, dims: &[u64]| ManifestTensor {
            name: name.into(),
            dims: dims.to_vec(),
        };
        let opts = ManifestOptions::default();
        assert_eq!(t("x.bias", &[64]).fill(), Fill::Zeros);
        assert_eq!(t("x.norm.weight", &[64]).fill(), Fill::Ones);
        assert_eq!(t("cap_pad_token", &[256]).fill(), Fill::Normal);
        assert_eq!(t("x.weight", &[64, 256]).fill(), Fill::Normal);
        assert_eq!(t("x.weight", &[64, 256]).ggml_type(&opts), GgmlType::Q4_0);
        assert_eq!(t("x.weight", &[3, 3, 4, 32]).ggml_type(&opts), GgmlType::F16);
        assert_eq!(t("x.weight", &[48, 8]).ggml_type(&opts), GgmlType::F16);
        assert_eq!(t("x.bias", &[64]).ggml_type(&opts), GgmlType::F32);
        assert_eq!(t("cap_pad_token", &[256]).ggml_type(&opts), GgmlType::F32);
    }

    #[test]
    fn rejects_unsupported_types() {
        let json = "{\"a.weight\": [32, 2]}";
        let q4k = ManifestOptions {
            linear_type: GgmlType::Q4_K,
            ..Default::default()
        };
        assert!(matches!(
            build_from_manifest(json, &q4k),
            Err(ManifestError::Options(_))
        ));
        let q8conv = ManifestOptions {
            other_type: GgmlType::Q8_0,
            ..Default::default()
        };
        assert!(matches!(
            build_from_manifest(json, &q8conv),
            Err(ManifestError::Options(_))
        ));
    }
}
