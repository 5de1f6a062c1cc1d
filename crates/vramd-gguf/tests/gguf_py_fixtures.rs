//! The reader against files written by gguf-py, llama.cpp's reference Python writer (see
//! testdata/gguf-py/make_fixtures.py for how they were made and what they hold).

use std::path::PathBuf;

use vramd_gguf::quant::decode_to_f32;
use vramd_gguf::{GgmlType, GgufFile, ReadError, Value, ValueType};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/gguf-py")
        .join(name)
}

#[test]
fn reads_every_value_type_written_by_gguf_py() {
    let f = GgufFile::open(fixture("little.gguf")).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture(), Some("fixturearch"));
    assert_eq!(f.get_str("general.name"), Some("gguf-py fixture"));
    assert_eq!(f.metadata_entries().len(), 19);
    assert_eq!(f.metadata("t.u8"), Some(&Value::U8(200)));
    assert_eq!(f.metadata("t.i8"), Some(&Value::I8(-100)));
    assert_eq!(f.metadata("t.u16"), Some(&Value::U16(60000)));
    assert_eq!(f.metadata("t.i16"), Some(&Value::I16(-30000)));
    assert_eq!(f.metadata("t.u32"), Some(&Value::U32(4_000_000_000)));
    assert_eq!(f.metadata("t.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(f.metadata("t.u64"), Some(&Value::U64((1 << 63) + 5)));
    assert_eq!(f.metadata("t.i64"), Some(&Value::I64(-(1 << 62))));
    assert_eq!(f.get_f32("t.f32"), Some(1.5));
    assert_eq!(f.get_f64("t.f64"), Some(-0.25));
    assert_eq!(f.get_bool("t.bool"), Some(true));
    assert_eq!(f.get_str("t.str"), Some("h\u{e9}llo \u{2581}world"));
    // Integer getters accept any width, within range.
    assert_eq!(f.get_u64("t.u8"), Some(200));
    assert_eq!(f.get_i64("t.i16"), Some(-30000));
    assert_eq!(f.get_u64("t.i8"), None);
    assert_eq!(f.get_u32("t.u64"), None);

    let (ty, items) = f.get_array("t.arr_str").unwrap();
    assert_eq!(ty, ValueType::String);
    let strs: Vec<_> = items.iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(strs, ["a", "", "\u{fc}"]);
    assert_eq!(f.metadata("t.arr_i32"), Some(&Value::i32_array([1, -2, 3])));
    assert_eq!(f.metadata("t.arr_f32"), Some(&Value::f32_array([0.5, -1.0])));
    assert_eq!(
        f.metadata("t.arr_nested"),
        Some(&Value::Array(
            ValueType::Array,
            vec![Value::i32_array([1, 2]), Value::i32_array([3])]
        ))
    );
}

#[test]
fn tensor_table_matches_gguf_py() {
    let f = GgufFile::open(fixture("little.gguf")).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    // (name, dims, type, offset, size) as gguf-py's GGUFReader reports them (data_offset
    // there is absolute: 896, 960, 1024, 1152).
    let expected: [(&str, &[u64], GgmlType, u64, u64); 4] = [
        ("f32_tensor", &[4, 3], GgmlType::F32, 896, 48),
        ("f16_tensor", &[8], GgmlType::F16, 960, 16),
        ("q8_0_tensor", &[32, 2], GgmlType::Q8_0, 1024, 68),
        ("q4_k_tensor", &[256, 1], GgmlType::Q4_K, 1152, 144),
    ];
    assert_eq!(f.tensors().len(), expected.len());
    for (t, (name, dims, ty, abs_offset, size)) in f.tensors().iter().zip(expected) {
        assert_eq!(t.name, name);
        assert_eq!(t.dims, dims);
        assert_eq!(t.ggml_type, ty);
        assert_eq!(f.data_offset() + t.offset, abs_offset, "{name}");
        assert_eq!(t.size, size, "{name}");
    }
    assert_eq!(f.tensor_data_bytes(), 48 + 16 + 68 + 144);

    let f32s = decode_to_f32(f.tensor_data("f32_tensor").unwrap(), GgmlType::F32).unwrap();
    assert_eq!(f32s, (0..12).map(|i| i as f32).collect::<Vec<_>>());
    let f16s = decode_to_f32(f.tensor_data("f16_tensor").unwrap(), GgmlType::F16).unwrap();
    assert_eq!(f16s, [1.0, -2.0, 0.5, 65504.0, 0.0, 0.0, 0.0, 0.0]);
    let q8 = decode_to_f32(f.tensor_data("q8_0_tensor").unwrap(), GgmlType::Q8_0).unwrap();
    let want: Vec<f32> = (0..64).map(|i| (i % 32) as f32 * 0.5).collect();
    assert_eq!(q8, want);
    assert_eq!(f.tensor_data("q4_k_tensor").unwrap(), &[7u8; 144][..]);
    assert_eq!(f.tensor_data("missing"), None);
}

#[test]
fn big_endian_file_is_refused_clearly() {
    let err = match GgufFile::open(fixture("big.gguf")) {
        Err(e) => e,
        Ok(_) => panic!("big-endian file parsed"),
    };
    assert!(matches!(err, ReadError::BigEndian { .. }), "{err:?}");
    assert!(err.to_string().contains("big-endian"), "{err}");
}
