//! Whatever the bytes, the reader returns `Ok` or `Err`: never a panic, never an allocation
//! sized by a corrupt length (which would abort the test process).

use proptest::prelude::*;
use vramd_gguf::llama::{build_tiny_llama, TinyLlamaSpec};
use vramd_gguf::{GgmlType, Gguf, GgufWriter, Value, ValueType};

/// A small valid file exercising strings, arrays and tensors.
fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "x".into()).unwrap();
    w.add_kv("tokens", Value::string_array(["a", "bc", "\u{2581}d"]))
        .unwrap();
    w.add_kv("n", Value::U32(7)).unwrap();
    w.add_kv("nested", Value::Array(ValueType::Array, vec![Value::i32_array([1, 2])]))
        .unwrap();
    w.add_tensor_f32("a", &[32, 2], GgmlType::Q8_0, &[0.5; 64]).unwrap();
    w.add_tensor_f32("b", &[3], GgmlType::F32, &[1.0, 2.0, 3.0]).unwrap();
    w.to_bytes()
}

/// End of the last tensor's data: any prefix at least this long is still a complete file.
fn data_end(bytes: &[u8]) -> usize {
    let g = Gguf::parse(bytes).unwrap();
    let last = g.tensors().iter().map(|t| t.offset + t.size).max().unwrap();
    (g.data_offset() + last) as usize
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Gguf::parse(&bytes);
    }

    #[test]
    fn random_bytes_after_a_valid_magic_never_panic(
        version in 2u32..=3,
        rest in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(version.to_le_bytes());
        bytes.extend(rest);
        let _ = Gguf::parse(&bytes);
    }

    #[test]
    fn truncations_fail_exactly_when_data_is_cut(cut in 0usize..2000) {
        let bytes = valid_file();
        let cut = cut.min(bytes.len());
        let result = Gguf::parse(&bytes[..cut]);
        // Only the trailing padding may go; anything shorter must be an error.
        prop_assert_eq!(result.is_ok(), cut >= data_end(&bytes), "cut at {}", cut);
    }

    #[test]
    fn byte_flips_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = valid_file();
        let len = bytes.len();
        for (i, b) in edits {
            bytes[i.index(len)] = b;
        }
        let _ = Gguf::parse(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn tiny_llama_truncations_never_panic(frac in 0.0f64..1.0) {
        let bytes = build_tiny_llama(&TinyLlamaSpec::default()).unwrap().to_bytes();
        let cut = (bytes.len() as f64 * frac) as usize;
        prop_assert!(Gguf::parse(&bytes[..cut]).is_err());
    }
}
