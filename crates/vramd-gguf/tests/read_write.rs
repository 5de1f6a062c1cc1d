//! Writer → reader round trips, and the reader's errors on damaged files.

use vramd_gguf::quant::{decode_to_f32, f32_to_f16_bits};
use vramd_gguf::{GgmlType, Gguf, GgufFile, GgufWriter, ReadError, Value, ValueType};

fn all_value_kinds() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", "roundtrip".into()),
        ("k.u8", Value::U8(255)),
        ("k.i8", Value::I8(-128)),
        ("k.u16", Value::U16(65535)),
        ("k.i16", Value::I16(-32768)),
        ("k.u32", Value::U32(u32::MAX)),
        ("k.i32", Value::I32(i32::MIN)),
        ("k.u64", Value::U64(u64::MAX)),
        ("k.i64", Value::I64(i64::MIN)),
        ("k.f32", Value::F32(-3.25)),
        ("k.f64", Value::F64(1e300)),
        ("k.bool", Value::Bool(false)),
        ("k.str", "\u{2581}h\u{e9}llo\n<0x0A>".into()),
        ("k.empty_str", "".into()),
        ("k.tokens", Value::string_array(["<unk>", "\u{2581}the", ""])),
        ("k.scores", Value::f32_array([0.0, -1.0, -2.5])),
        ("k.types", Value::i32_array([2, 1, 6])),
        ("k.empty_arr", Value::Array(ValueType::U64, vec![])),
        (
            "k.nested",
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::U8, vec![Value::U8(1)]),
                    Value::Array(ValueType::Bool, vec![Value::Bool(true), Value::Bool(false)]),
                ],
            ),
        ),
    ]
}

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in all_value_kinds() {
        w.add_kv(k, v).unwrap();
    }
    let ramp: Vec<f32> = (0..64 * 3).map(|i| (i as f32 - 96.0) / 100.0).collect();
    w.add_tensor_f32("f32.odd", &[5, 3], GgmlType::F32, &ramp[..15])
        .unwrap();
    w.add_tensor_f32("f16.t", &[7], GgmlType::F16, &ramp[..7]).unwrap();
    w.add_tensor_f32("q8.t", &[64, 3], GgmlType::Q8_0, &ramp).unwrap();
    w.add_tensor_f32("q4.t", &[32, 2, 3], GgmlType::Q4_0, &ramp).unwrap();
    w.add_tensor("raw.q6k", &[256, 2], GgmlType::Q6_K, vec![9; 420])
        .unwrap();
    w
}

#[test]
fn round_trip_preserves_metadata_tensors_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rt.gguf");
    sample_writer().write_to(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();

    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    let kinds = all_value_kinds();
    assert_eq!(f.metadata_entries().len(), kinds.len());
    for ((k, v), (rk, rv)) in kinds.iter().zip(f.metadata_entries()) {
        assert_eq!(k, rk);
        assert_eq!(v, rv, "{k}");
    }

    let expect: [(&str, &[u64], GgmlType, u64); 5] = [
        ("f32.odd", &[5, 3], GgmlType::F32, 60),
        ("f16.t", &[7], GgmlType::F16, 14),
        ("q8.t", &[64, 3], GgmlType::Q8_0, 6 * 34),
        ("q4.t", &[32, 2, 3], GgmlType::Q4_0, 6 * 18),
        ("raw.q6k", &[256, 2], GgmlType::Q6_K, 420),
    ];
    assert_eq!(f.tensors().len(), expect.len());
    let mut next = 0;
    for (t, (name, dims, ty, size)) in f.tensors().iter().zip(expect) {
        assert_eq!(
            (t.name.as_str(), t.dims.as_slice(), t.ggml_type, t.size),
            (name, dims, ty, size)
        );
        // Back to back in order, each at the next aligned offset: ggml's expected layout.
        assert_eq!(t.offset, next, "{name}");
        assert_eq!((f.data_offset() + t.offset) % 32, 0, "{name}");
        next = (t.offset + t.size).div_ceil(32) * 32;
    }
    assert_eq!(f.file_len(), f.data_offset() + next, "trailing padding written");
    assert_eq!(f.tensor_data_bytes(), 60 + 14 + 204 + 108 + 420);

    let ramp: Vec<f32> = (0..64 * 3).map(|i| (i as f32 - 96.0) / 100.0).collect();
    let got = decode_to_f32(f.tensor_data("f32.odd").unwrap(), GgmlType::F32).unwrap();
    assert_eq!(got, &ramp[..15]);
    let got = f.tensor_data("f16.t").unwrap();
    assert_eq!(
        got,
        ramp[..7]
            .iter()
            .flat_map(|&v| f32_to_f16_bits(v).to_le_bytes())
            .collect::<Vec<_>>()
    );
    let q8 = decode_to_f32(f.tensor_data("q8.t").unwrap(), GgmlType::Q8_0).unwrap();
    assert!(q8.iter().zip(&ramp).all(|(a, b)| (a - b).abs() < 0.01));
    let q4 = decode_to_f32(f.tensor_data("q4.t").unwrap(), GgmlType::Q4_0).unwrap();
    assert!(q4.iter().zip(&ramp).all(|(a, b)| (a - b).abs() < 0.08));
    assert_eq!(f.tensor_data("raw.q6k").unwrap(), &[9u8; 420][..]);
}

#[test]
fn custom_alignment_is_honoured() {
    let mut w = GgufWriter::new();
    w.add_kv("general.alignment", Value::U32(256)).unwrap();
    w.add_tensor("a", &[3], GgmlType::F32, vec![1; 12]).unwrap();
    w.add_tensor("b", &[3], GgmlType::F32, vec![2; 12]).unwrap();
    let g = Gguf::parse(&w.to_bytes()).unwrap();
    assert_eq!(g.alignment(), 256);
    assert_eq!(g.data_offset() % 256, 0);
    assert_eq!(g.tensor("b").unwrap().offset, 256);
    assert_eq!(g.file_len() % 256, 0);
}

#[test]
fn version_2_files_are_read() {
    let mut bytes = sample_writer().to_bytes();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version(), 2);
    assert_eq!(g.tensors().len(), 5);
    assert_eq!(g.get_str("k.str"), Some("\u{2581}h\u{e9}llo\n<0x0A>"));
}

fn parse_err(bytes: &[u8]) -> ReadError {
    match Gguf::parse(bytes) {
        Err(e) => e,
        Ok(_) => panic!("parsed"),
    }
}

/// A minimal header: magic, version 3, counts.
fn header(tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b
}

fn push_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

#[test]
fn header_errors_name_the_problem() {
    assert!(matches!(parse_err(b""), ReadError::Truncated { ref field, offset: 0, .. } if field == "magic"));
    assert!(matches!(parse_err(b"GGML\x03\0\0\0"), ReadError::BadMagic { found } if &found == b"GGML"));
    assert!(matches!(
        parse_err(b"GGUF\x01\0\0\0"),
        ReadError::UnsupportedVersion { version: 1 }
    ));
    assert!(matches!(parse_err(b"GGUF\0\0\0\x03"), ReadError::BigEndian { .. }));
    let e = parse_err(b"GGUF\x03\0\0\0\x01\0");
    assert!(
        matches!(e, ReadError::Truncated { ref field, offset: 8, needed: 8, available: 2 } if field == "header.tensor_count"),
        "{e:?}"
    );
    // Counts the file cannot possibly hold are refused before allocating anything.
    let e = parse_err(&header(u64::MAX, 0));
    assert!(e.to_string().contains("header.tensor_count"), "{e}");
    let e = parse_err(&header(0, 1 << 60));
    assert!(e.to_string().contains("metadata entries cannot fit"), "{e}");
}

#[test]
fn metadata_errors_name_key_and_offset() {
    // A string value claiming to be longer than the file.
    let mut b = header(0, 1);
    push_str(&mut b, "general.name");
    b.extend(8u32.to_le_bytes());
    let len_at = b.len() as u64;
    b.extend(u64::MAX.to_le_bytes());
    b.extend(b"abc");
    let e = parse_err(&b);
    let msg = e.to_string();
    assert!(
        matches!(e, ReadError::Invalid { offset, .. } if offset == len_at),
        "{e:?}"
    );
    assert!(
        msg.contains("metadata[0] \"general.name\" value") && msg.contains("exceeds"),
        "{msg}"
    );

    // An array of 2^40 u32s in a tiny file.
    let mut b = header(0, 1);
    push_str(&mut b, "k");
    b.extend(9u32.to_le_bytes());
    b.extend(4u32.to_le_bytes());
    b.extend((1u64 << 40).to_le_bytes());
    let msg = parse_err(&b).to_string();
    assert!(msg.contains("1099511627776 items cannot fit"), "{msg}");

    // Enough bytes for 2^24 + 1 u8 items, but past the per-array item cap (each item would
    // be a 32-byte Value in memory).
    let mut b = header(0, 1);
    push_str(&mut b, "k");
    b.extend(9u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(((1u64 << 24) + 1).to_le_bytes());
    b.resize(b.len() + (1 << 24) + 1, 0);
    let msg = parse_err(&b).to_string();
    assert!(msg.contains("exceed this reader's limit"), "{msg}");

    // A truncated item inside an array names its index.
    let mut b = header(0, 1);
    push_str(&mut b, "tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    push_str(&mut b, "ok");
    b.extend(5u64.to_le_bytes());
    b.extend(b"ab");
    let msg = parse_err(&b).to_string();
    assert!(msg.contains("\"tokens\" value[1]"), "{msg}");

    // Unknown value type, bad bool, duplicate key, bad alignment.
    let mut b = header(0, 1);
    push_str(&mut b, "k");
    b.extend(13u32.to_le_bytes());
    assert!(parse_err(&b).to_string().contains("unknown value type 13"));
    // Any non-zero bool byte is true, as in ggml.
    let mut b = header(0, 1);
    push_str(&mut b, "k");
    b.extend(7u32.to_le_bytes());
    b.push(2);
    assert_eq!(Gguf::parse(&b).unwrap().get_bool("k"), Some(true));
    let mut b = header(0, 2);
    for _ in 0..2 {
        push_str(&mut b, "k");
        b.extend(0u32.to_le_bytes());
        b.push(1);
    }
    assert!(parse_err(&b).to_string().contains("duplicate key \"k\""));
    let mut b = header(0, 1);
    push_str(&mut b, "general.alignment");
    let value_at = b.len() as u64;
    b.extend(4u32.to_le_bytes());
    b.extend(48u32.to_le_bytes());
    let e = parse_err(&b);
    assert!(e.to_string().contains("power-of-two"), "{e}");
    assert!(
        matches!(e, ReadError::Invalid { offset, .. } if offset == value_at),
        "{e:?}"
    );
}

fn one_tensor(name: &str, dims: &[u64], ty: u32, offset: u64, data_len: usize) -> Vec<u8> {
    let mut b = header(1, 0);
    push_str(&mut b, name);
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(ty.to_le_bytes());
    b.extend(offset.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32 + data_len, 0);
    b
}

#[test]
fn tensor_table_errors_name_tensor_and_field() {
    assert!(Gguf::parse(&one_tensor("w", &[4, 2], 0, 0, 32)).is_ok());
    let cases: [(Vec<u8>, &str); 7] = [
        (one_tensor("w", &[4, 2], 0, 0, 31), "tensor \"w\" data"),
        (one_tensor("w", &[4, 2], 4, 0, 32), "unknown ggml type 4"),
        (one_tensor("w", &[4, 2], 0, 16, 64), "not a multiple of the alignment"),
        (
            one_tensor("w", &[48], 2, 0, 64),
            "not a multiple of the q4_0 block size 32",
        ),
        (one_tensor("w", &[1, 1, 1, 1, 1], 0, 0, 4), "n_dims"),
        (one_tensor("w", &[u64::MAX, 2], 0, 0, 0), "overflows"),
        (one_tensor("w", &[4], 0, u64::MAX - 31, 16), "tensor \"w\" data"),
    ];
    for (bytes, want) in cases {
        let msg = parse_err(&bytes).to_string();
        assert!(msg.contains(want), "want {want:?} in {msg}");
    }
    let e = parse_err(&one_tensor("w", &[4, 2], 0, 0, 31));
    assert!(
        matches!(
            e,
            ReadError::Truncated {
                needed: 32,
                available: 31,
                ..
            }
        ),
        "{e:?}"
    );
    // Duplicate tensor names.
    let mut b = header(2, 0);
    for _ in 0..2 {
        push_str(&mut b, "w");
        b.extend(1u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
    }
    b.resize(b.len().div_ceil(32) * 32 + 4, 0);
    assert!(parse_err(&b).to_string().contains("duplicate tensor name \"w\""));
}

#[test]
fn open_reports_io_errors_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.gguf");
    let msg = GgufFile::open(&missing).err().unwrap().to_string();
    assert!(msg.contains("missing.gguf"), "{msg}");
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&empty),
        Err(ReadError::Truncated { offset: 0, .. })
    ));
}
