//! f32 → F16 / BF16 / Q8_0 / Q4_0 encoding (and back), byte-compatible with ggml's reference
//! quantizers.
//!
//! Why hand-written: test models need quantized tensors (the daemon's VRAM accounting must be
//! exercised on the types real models use) and the crate must not pull in `half` or ggml. Only
//! the simple block formats are implemented; the k-quants are sized by the reader but never
//! written.

use crate::types::GgmlType;

/// Why a slice could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("{ty} packs {block} values per block; {len} values is not a multiple")]
    NotBlockMultiple { ty: GgmlType, len: usize, block: u64 },
    #[error("{ty} data is {len} bytes, not a whole number of {block_bytes}-byte blocks")]
    BadByteLength { ty: GgmlType, len: usize, block_bytes: u64 },
    #[error("encoding to or from {0} is not implemented (supported: f32, f16, bf16, q8_0, q4_0)")]
    Unsupported(GgmlType),
}

/// Converts `x` to IEEE half-precision bits, rounding to nearest even (as ggml's
/// `GGML_FP32_TO_FP16` does); out-of-range values become ±inf, NaN stays NaN.
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        let nan = if man != 0 { 0x200 | (man >> 13) as u16 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    let half_exp = exp - 127 + 15;
    if half_exp >= 0x1f {
        return sign | 0x7c00;
    }
    if half_exp <= 0 {
        // Subnormal half: value = m * 2^-24, m = (1.man) >> (126 - exp).
        let shift = (126 - exp) as u32;
        if shift > 24 {
            return sign;
        }
        let full = man | 0x80_0000;
        let m = full >> shift;
        let rem = full & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        let round_up = rem > halfway || (rem == halfway && m & 1 == 1);
        // A carry out of the mantissa lands on the smallest normal, which is correct.
        return sign | (m + u32::from(round_up)) as u16;
    }
    let out = ((half_exp as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    let round_up = rem > 0x1000 || (rem == 0x1000 && out & 1 == 1);
    // A carry may ripple into the exponent, up to infinity: that is the correct rounding.
    sign | (out + u32::from(round_up)) as u16
}

/// Converts half-precision bits to `f32` (exact).
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    match exp {
        0 => {
            let magnitude = man as f32 / 16_777_216.0; // man * 2^-24, exact
            f32::from_bits(sign | magnitude.to_bits())
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// Converts `x` to bfloat16 bits, rounding to nearest even (as ggml's `GGML_FP32_TO_BF16`).
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 64) as u16; // force quiet
    }
    ((bits + (0x7fff + ((bits >> 16) & 1))) >> 16) as u16
}

fn check_blocks(ty: GgmlType, len: usize) -> Result<(), QuantError> {
    let block = ty.block_size();
    if len as u64 % block != 0 {
        return Err(QuantError::NotBlockMultiple { ty, len, block });
    }
    Ok(())
}

/// Q8_0: per 32 values, an f16 scale `d = max|x| / 127` then 32 `i8` quants `round(x / d)`.
pub fn quantize_q8_0(x: &[f32]) -> Result<Vec<u8>, QuantError> {
    check_blocks(GgmlType::Q8_0, x.len())?;
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f32_to_f16_bits(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    Ok(out)
}

/// Q4_0: per 32 values, an f16 scale `d = max / -8` (signed value of largest magnitude) then 16
/// bytes of nibbles: value `j` in the low nibble of byte `j`, value `j + 16` in its high nibble.
pub fn quantize_q4_0(x: &[f32]) -> Result<Vec<u8>, QuantError> {
    check_blocks(GgmlType::Q4_0, x.len())?;
    let mut out = Vec::with_capacity(x.len() / 32 * 18);
    for block in x.chunks_exact(32) {
        let mut amax = 0f32;
        let mut max = 0f32;
        for &v in block {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f32_to_f16_bits(d).to_le_bytes());
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
    }
    Ok(out)
}

/// Encodes `x` as tensor data of type `ty` (F32, F16, BF16, Q8_0 or Q4_0).
pub fn encode_f32(x: &[f32], ty: GgmlType) -> Result<Vec<u8>, QuantError> {
    match ty {
        GgmlType::F32 => Ok(x.iter().flat_map(|v| v.to_le_bytes()).collect()),
        GgmlType::F16 => Ok(x.iter().flat_map(|&v| f32_to_f16_bits(v).to_le_bytes()).collect()),
        GgmlType::BF16 => Ok(x.iter().flat_map(|&v| f32_to_bf16_bits(v).to_le_bytes()).collect()),
        GgmlType::Q8_0 => quantize_q8_0(x),
        GgmlType::Q4_0 => quantize_q4_0(x),
        other => Err(QuantError::Unsupported(other)),
    }
}

/// Decodes tensor data of type `ty` back to f32 (the inverse of [`encode_f32`], up to the
/// quantization error). Used by tests to check what a writer stored.
pub fn decode_to_f32(bytes: &[u8], ty: GgmlType) -> Result<Vec<f32>, QuantError> {
    let block_bytes = ty.type_size();
    if bytes.len() as u64 % block_bytes != 0 {
        return Err(QuantError::BadByteLength {
            ty,
            len: bytes.len(),
            block_bytes,
        });
    }
    let half = |b: &[u8]| f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
    Ok(match ty {
        GgmlType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => bytes.chunks_exact(2).map(half).collect(),
        GgmlType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        GgmlType::Q8_0 => bytes
            .chunks_exact(34)
            .flat_map(|b| {
                let d = half(b);
                b[2..].iter().map(move |&q| f32::from(q as i8) * d)
            })
            .collect(),
        GgmlType::Q4_0 => bytes
            .chunks_exact(18)
            .flat_map(|b| {
                let d = half(b);
                let lo = b[2..].iter().map(move |&q| (f32::from(q & 0x0f) - 8.0) * d);
                let hi = b[2..].iter().map(move |&q| (f32::from(q >> 4) - 8.0) * d);
                lo.chain(hi)
            })
            .collect(),
        other => return Err(QuantError::Unsupported(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_known_values() {
        assert_eq!(f32_to_f16_bits(1.0), 0x3c00);
        assert_eq!(f32_to_f16_bits(-2.0), 0xc000);
        assert_eq!(f32_to_f16_bits(0.1), 0x2e66);
        assert_eq!(f32_to_f16_bits(65504.0), 0x7bff);
        assert_eq!(f32_to_f16_bits(65520.0), 0x7c00); // rounds up to inf
        assert_eq!(f32_to_f16_bits(f32::INFINITY), 0x7c00);
        assert_eq!(f32_to_f16_bits(-0.0), 0x8000);
        assert_eq!(f32_to_f16_bits(2f32.powi(-24)), 0x0001); // smallest subnormal
        assert_eq!(f32_to_f16_bits(2.0e-8), 0x0000); // below half of it
        assert_eq!(f32_to_f16_bits(1023.0 * 2f32.powi(-24)), 0x03ff); // largest subnormal
        assert!(f16_bits_to_f32(f32_to_f16_bits(f32::NAN)).is_nan());
        // Ties go to even: 1 + 2^-11 is halfway between 0x3c00 and 0x3c01.
        assert_eq!(f32_to_f16_bits(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16_bits(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
    }

    #[test]
    fn every_f16_survives_a_round_trip_through_f32() {
        for h in 0..=u16::MAX {
            let f = f16_bits_to_f32(h);
            if f.is_nan() {
                assert!(f16_bits_to_f32(f32_to_f16_bits(f)).is_nan());
            } else {
                assert_eq!(f32_to_f16_bits(f), h, "{h:#06x} -> {f}");
            }
        }
    }

    #[test]
    fn f16_rounding_is_nearest() {
        // Midpoints between consecutive positive halves must round to one of the two, and
        // values just off a midpoint to the nearer one.
        for h in 0x0001u16..0x7bff {
            let (a, b) = (f16_bits_to_f32(h), f16_bits_to_f32(h + 1));
            let mid = (a as f64 + b as f64) / 2.0;
            let below = (mid - (b as f64 - a as f64) / 8.0) as f32;
            let above = (mid + (b as f64 - a as f64) / 8.0) as f32;
            assert_eq!(f32_to_f16_bits(below), h);
            assert_eq!(f32_to_f16_bits(above), h + 1);
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd -> up
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
    }

    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 400.0).collect()
    }

    #[test]
    fn q8_0_layout_and_error() {
        let x = ramp(64);
        let q = quantize_q8_0(&x).unwrap();
        assert_eq!(q.len(), 2 * 34);
        let amax = x[..32].iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(u16::from_le_bytes([q[0], q[1]]), f32_to_f16_bits(amax / 127.0));
        // The value of largest magnitude maps to ±127.
        let imax = (0..32).max_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs())).unwrap();
        assert_eq!((q[2 + imax] as i8).unsigned_abs(), 127);
        let back = decode_to_f32(&q, GgmlType::Q8_0).unwrap();
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= amax / 127.0, "{a} vs {b}");
        }
    }

    #[test]
    fn q4_0_layout_and_error() {
        let x = ramp(96);
        let q = quantize_q4_0(&x).unwrap();
        assert_eq!(q.len(), 3 * 18);
        let back = decode_to_f32(&q, GgmlType::Q4_0).unwrap();
        for (i, block) in x.chunks(32).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (j, a) in block.iter().enumerate() {
                let b = back[i * 32 + j];
                assert!((a - b).abs() <= amax / 8.0 + 1e-6, "{a} vs {b}");
            }
        }
        // The (first) largest-magnitude value is reproduced exactly up to the f16 scale; with
        // a tie, the opposite sign clips to 7/8 of it, as in ggml.
        let amax = x[..32].iter().fold(0f32, |m, v| m.max(v.abs()));
        let imax = (0..32).find(|&j| x[j].abs() == amax).unwrap();
        assert!((back[imax] - x[imax]).abs() < 1e-3);
    }

    #[test]
    fn zero_blocks_quantize_to_zero() {
        let z = [0f32; 32];
        assert_eq!(decode_to_f32(&quantize_q8_0(&z).unwrap(), GgmlType::Q8_0).unwrap(), z);
        assert_eq!(decode_to_f32(&quantize_q4_0(&z).unwrap(), GgmlType::Q4_0).unwrap(), z);
    }

    #[test]
    fn wrong_lengths_and_types_are_errors() {
        assert_eq!(
            quantize_q4_0(&[0.0; 33]),
            Err(QuantError::NotBlockMultiple {
                ty: GgmlType::Q4_0,
                len: 33,
                block: 32
            })
        );
        assert!(matches!(
            encode_f32(&[0.0; 256], GgmlType::Q4_K),
            Err(QuantError::Unsupported(GgmlType::Q4_K))
        ));
        assert!(matches!(
            decode_to_f32(&[0; 35], GgmlType::Q8_0),
            Err(QuantError::BadByteLength { .. })
        ));
        assert_eq!(encode_f32(&[1.5], GgmlType::F16).unwrap(), vec![0x00, 0x3e]);
    }
}
