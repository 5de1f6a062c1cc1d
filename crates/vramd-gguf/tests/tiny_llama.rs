//! The generated llama model carries what llama.cpp's loader checks.

use std::collections::HashSet;

use vramd_gguf::llama::{
    build_tiny_llama, vocab, write_tiny_llama, TinyLlamaSpec, TokenType, BOS_ID, CHATML_TEMPLATE, EOS_ID,
    FIRST_BYTE_ID, IM_END_ID, IM_START_ID, UNK_ID,
};
use vramd_gguf::quant::decode_to_f32;
use vramd_gguf::{GgmlType, Gguf, GgufFile, ValueType, WriteError};

fn parse(spec: &TinyLlamaSpec) -> Gguf {
    Gguf::parse(&build_tiny_llama(spec).unwrap().to_bytes()).unwrap()
}

/// Every tensor llama.cpp's llama architecture loads, with ggml dims.
fn expected_tensors(spec: &TinyLlamaSpec) -> Vec<(String, Vec<u64>)> {
    let (e, v, ff) = (spec.n_embd as u64, spec.n_vocab() as u64, spec.n_ff as u64);
    let kv = (spec.n_embd / spec.n_head * spec.n_head_kv) as u64;
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![e, v]),
        ("output_norm.weight".to_string(), vec![e]),
    ];
    if spec.output_tensor {
        t.push(("output.weight".into(), vec![e, v]));
    }
    for l in 0..spec.n_layer {
        for (name, dims) in [
            ("attn_norm", vec![e]),
            ("attn_q", vec![e, e]),
            ("attn_k", vec![e, kv]),
            ("attn_v", vec![e, kv]),
            ("attn_output", vec![e, e]),
            ("ffn_norm", vec![e]),
            ("ffn_gate", vec![e, ff]),
            ("ffn_up", vec![e, ff]),
            ("ffn_down", vec![ff, e]),
        ] {
            t.push((format!("blk.{l}.{name}.weight"), dims));
        }
    }
    t
}

#[test]
fn default_model_has_llama_hparams() {
    let spec = TinyLlamaSpec::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_llama(&path, &spec).unwrap();
    let g = GgufFile::open(&path).unwrap();

    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get_str("general.name"), Some("vramd-tiny-llama"));
    assert_eq!(g.get_u32("general.file_type"), Some(0));
    assert_eq!(g.get_u32("llama.context_length"), Some(512));
    assert_eq!(g.get_u32("llama.embedding_length"), Some(64));
    assert_eq!(g.get_u32("llama.block_count"), Some(2));
    assert_eq!(g.get_u32("llama.feed_forward_length"), Some(128));
    assert_eq!(g.get_u32("llama.attention.head_count"), Some(4));
    assert_eq!(g.get_u32("llama.attention.head_count_kv"), Some(4));
    assert_eq!(g.get_u32("llama.rope.dimension_count"), Some(16));
    assert_eq!(g.get_f32("llama.attention.layer_norm_rms_epsilon"), Some(1e-5));
    assert_eq!(g.get_f32("llama.rope.freq_base"), Some(10_000.0));
    assert_eq!(g.get_u32("llama.vocab_size"), Some(spec.n_vocab()));
    assert_eq!(g.get_str("tokenizer.ggml.model"), Some("llama"));
    assert_eq!(g.get_u32("tokenizer.ggml.bos_token_id"), Some(BOS_ID));
    assert_eq!(g.get_u32("tokenizer.ggml.eos_token_id"), Some(EOS_ID));
    assert_eq!(g.get_u32("tokenizer.ggml.unknown_token_id"), Some(UNK_ID));
    assert_eq!(g.get_str("tokenizer.chat_template"), Some(CHATML_TEMPLATE));
    assert!(CHATML_TEMPLATE.contains("'<|im_start|>' + message['role'] + '\n'"));

    let (names, shapes): (Vec<_>, Vec<_>) = expected_tensors(&spec).into_iter().unzip();
    let got: Vec<_> = g.tensors().iter().map(|t| t.name.clone()).collect();
    assert_eq!(got, names);
    for (t, dims) in g.tensors().iter().zip(shapes) {
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(t.ggml_type, GgmlType::F32, "{}", t.name);
    }
    // Norms are exactly 1; weights small and not all equal.
    let norm = decode_to_f32(g.tensor_data("blk.1.ffn_norm.weight").unwrap(), GgmlType::F32).unwrap();
    assert!(norm.iter().all(|&x| x == 1.0));
    let q = decode_to_f32(g.tensor_data("blk.0.attn_q.weight").unwrap(), GgmlType::F32).unwrap();
    assert!(q.iter().all(|x| x.abs() <= 0.05));
    let spread = q.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(spread > 0.04, "weights look constant: max |x| = {spread}");
}

#[test]
fn vocabulary_is_a_usable_sentencepiece_vocab() {
    let g = parse(&TinyLlamaSpec::default());
    let (tt, tokens) = g.get_array("tokenizer.ggml.tokens").unwrap();
    let (st, scores) = g.get_array("tokenizer.ggml.scores").unwrap();
    let (kt, kinds) = g.get_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!((tt, st, kt), (ValueType::String, ValueType::F32, ValueType::I32));
    let n = tokens.len();
    assert_eq!(scores.len(), n);
    assert_eq!(kinds.len(), n);
    assert!((500..2000).contains(&n), "vocab of {n}");

    let text = |i: u32| tokens[i as usize].as_str().unwrap();
    let kind = |i: u32| kinds[i as usize].as_i64().unwrap();
    assert_eq!((text(UNK_ID), kind(UNK_ID)), ("<unk>", 2));
    assert_eq!((text(BOS_ID), kind(BOS_ID)), ("<s>", 3));
    assert_eq!((text(EOS_ID), kind(EOS_ID)), ("</s>", 3));
    assert_eq!((text(IM_START_ID), kind(IM_START_ID)), ("<|im_start|>", 3));
    assert_eq!((text(IM_END_ID), kind(IM_END_ID)), ("<|im_end|>", 3));
    for b in 0..=255u32 {
        assert_eq!(text(FIRST_BYTE_ID + b), format!("<0x{b:02X}>"));
        assert_eq!(kind(FIRST_BYTE_ID + b), 6);
    }
    assert_eq!(text(FIRST_BYTE_ID + 0x0a), "<0x0A>");

    // Unique texts (llama.cpp maps text -> id), and normal pieces after the bytes with
    // strictly decreasing scores.
    let unique: HashSet<_> = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(unique.len(), n);
    let normal_start = (FIRST_BYTE_ID + 256) as usize;
    assert!(n - normal_start >= 300, "{} normal pieces", n - normal_start);
    assert!(kinds[normal_start..].iter().all(|k| k.as_i64() == Some(1)));
    let s: Vec<f32> = scores[normal_start..].iter().map(|v| v.as_f32().unwrap()).collect();
    assert!(s.windows(2).all(|w| w[0] > w[1]));

    // SentencePiece merges pairs, so every multi-character piece must split into two pieces
    // that are themselves tokens, or it could never be produced.
    for piece in &tokens[normal_start..] {
        let chars: Vec<char> = piece.as_str().unwrap().chars().collect();
        if chars.len() < 2 {
            continue;
        }
        let reachable = (1..chars.len()).any(|k| {
            let (a, b): (String, String) = (chars[..k].iter().collect(), chars[k..].iter().collect());
            unique.contains(a.as_str()) && unique.contains(b.as_str())
        });
        assert!(reachable, "{piece:?} cannot be built by merges");
    }
    for word in ["\u{2581}the", "\u{2581}hello", "\u{2581}a", "\u{2581}", "e", "ing"] {
        assert!(unique.contains(word), "{word} missing");
    }
    assert_eq!(vocab().iter().filter(|t| t.kind == TokenType::Byte).count(), 256);
}

#[test]
fn gqa_quantized_untied_variants() {
    let spec = TinyLlamaSpec {
        n_head_kv: 2,
        weight_type: GgmlType::Q8_0,
        output_tensor: false,
        chat_template: None,
        n_layer: 3,
        ..Default::default()
    };
    let g = parse(&spec);
    assert_eq!(g.get_u32("general.file_type"), Some(7));
    assert_eq!(g.get_u32("llama.attention.head_count_kv"), Some(2));
    assert!(g.metadata("tokenizer.chat_template").is_none());
    assert!(g.tensor("output.weight").is_none());
    let k = g.tensor("blk.2.attn_k.weight").unwrap();
    assert_eq!(k.dims, vec![64, 32]);
    assert_eq!(k.ggml_type, GgmlType::Q8_0);
    assert_eq!(k.size, 64 / 32 * 34 * 32);
    assert_eq!(g.tensor("blk.2.ffn_norm.weight").unwrap().ggml_type, GgmlType::F32);
    let names: Vec<_> = g.tensors().iter().map(|t| (t.name.clone(), t.dims.clone())).collect();
    assert_eq!(names, expected_tensors(&spec));

    let q4 = parse(&TinyLlamaSpec {
        weight_type: GgmlType::Q4_0,
        ..Default::default()
    });
    assert_eq!(q4.get_u32("general.file_type"), Some(2));
    assert_eq!(q4.tensor("token_embd.weight").unwrap().ggml_type, GgmlType::Q4_0);
}

#[test]
fn same_seed_same_bytes() {
    let a = build_tiny_llama(&TinyLlamaSpec::default()).unwrap().to_bytes();
    let b = build_tiny_llama(&TinyLlamaSpec::default()).unwrap().to_bytes();
    let c = build_tiny_llama(&TinyLlamaSpec {
        seed: 1,
        ..Default::default()
    })
    .unwrap()
    .to_bytes();
    assert_eq!(a, b);
    assert_eq!(a.len(), c.len());
    assert_ne!(a, c);
}

#[test]
fn impossible_specs_are_refused() {
    let bad = [
        TinyLlamaSpec {
            n_head: 3,
            ..Default::default()
        },
        TinyLlamaSpec {
            n_head_kv: 3,
            ..Default::default()
        },
        TinyLlamaSpec {
            n_head: 64,
            ..Default::default()
        }, // head_dim 1: rope needs pairs
        TinyLlamaSpec {
            n_layer: 0,
            ..Default::default()
        },
        TinyLlamaSpec {
            n_ff: 48,
            weight_type: GgmlType::Q8_0,
            ..Default::default()
        },
        TinyLlamaSpec {
            weight_type: GgmlType::Q4_K,
            ..Default::default()
        },
    ];
    for spec in bad {
        assert!(
            matches!(build_tiny_llama(&spec), Err(WriteError::InvalidSpec(_))),
            "{spec:?}"
        );
    }
    // n_ff not a multiple of 32 is fine when nothing is quantized.
    assert!(build_tiny_llama(&TinyLlamaSpec {
        n_ff: 48,
        ..Default::default()
    })
    .is_ok());
}
