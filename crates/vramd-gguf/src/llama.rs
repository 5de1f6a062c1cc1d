//! A tiny random-weight llama model that llama.cpp loads and runs.
//!
//! Why: the LLM worker's tests need a real model to load, tokenize, run a chat template on and
//! free, but a downloaded model is slow, large and unavailable offline. This one is a few
//! hundred kilobytes, generated deterministically from a seed, and carries everything
//! llama.cpp's loader checks: the `llama.*` hyper-parameters (with `rope.dimension_count =
//! n_embd / n_head`, else "invalid n_rot"), a SentencePiece vocabulary with the 256 byte
//! tokens (so any UTF-8 tokenizes and `\n` has a token), ChatML control tokens and template,
//! and every tensor at the shape llama.cpp expects. Its output is gibberish, by design.

use std::path::Path;

use crate::rng::XorShift64;
use crate::types::{GgmlType, Value};
use crate::write::{GgufWriter, WriteError};

/// The ChatML template Qwen and SmolLM ship (`'\n'` here is a real newline, as in GGUF files
/// converted from `tokenizer_config.json`).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Token ids of the special tokens at the start of the vocabulary.
pub const UNK_ID: u32 = 0;
pub const BOS_ID: u32 = 1;
pub const EOS_ID: u32 = 2;
pub const IM_START_ID: u32 = 3;
pub const IM_END_ID: u32 = 4;
/// Id of `<0x00>`; byte `b` is token `FIRST_BYTE_ID + b`.
pub const FIRST_BYTE_ID: u32 = 5;

/// llama.cpp's `llama_token_type` values stored in `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum TokenType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    Byte = 6,
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub text: String,
    pub score: f32,
    pub kind: TokenType,
}

/// Shape and contents of the generated model. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct TinyLlamaSpec {
    /// `general.name`.
    pub name: String,
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_head: u32,
    /// Equal to `n_head` for plain multi-head attention, smaller (dividing it) for GQA.
    pub n_head_kv: u32,
    pub n_ff: u32,
    pub n_ctx_train: u32,
    /// Seed for the weights; the same seed gives a byte-identical file.
    pub seed: u64,
    /// Type of the 2-D weights: F32, F16, Q8_0 or Q4_0 (norms are always F32).
    pub weight_type: GgmlType,
    /// Write `output.weight`; without it llama.cpp ties the output to `token_embd.weight`.
    pub output_tensor: bool,
    /// `tokenizer.chat_template`; `None` writes a model without one.
    pub chat_template: Option<String>,
    /// Weights are uniform in `±init_scale`.
    pub init_scale: f32,
}

impl Default for TinyLlamaSpec {
    fn default() -> Self {
        Self {
            name: "vramd-tiny-llama".into(),
            n_embd: 64,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 4,
            n_ff: 128,
            n_ctx_train: 512,
            seed: 0x5eed,
            weight_type: GgmlType::F32,
            output_tensor: true,
            chat_template: Some(CHATML_TEMPLATE.into()),
            init_scale: 0.05,
        }
    }
}

impl TinyLlamaSpec {
    /// Vocabulary size (the length of [`vocab`]).
    pub fn n_vocab(&self) -> u32 {
        vocab().len() as u32
    }

    /// `n_embd / n_head`, which is also the rope dimension count.
    pub fn head_dim(&self) -> u32 {
        self.n_embd / self.n_head
    }

    /// Width of the K and V projections: `head_dim * n_head_kv`.
    pub fn n_embd_kv(&self) -> u32 {
        self.head_dim() * self.n_head_kv
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`) for the chosen weight type.
    pub fn file_type(&self) -> Option<u32> {
        match self.weight_type {
            GgmlType::F32 => Some(0),
            GgmlType::F16 => Some(1),
            GgmlType::Q4_0 => Some(2),
            GgmlType::Q8_0 => Some(7),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), WriteError> {
        let fail = |msg: String| Err(WriteError::InvalidSpec(msg));
        if self.file_type().is_none() {
            return fail(format!(
                "weight_type {} (supported: f32, f16, q8_0, q4_0)",
                self.weight_type
            ));
        }
        if [
            self.n_embd,
            self.n_layer,
            self.n_head,
            self.n_head_kv,
            self.n_ff,
            self.n_ctx_train,
        ]
        .contains(&0)
        {
            return fail("every size must be non-zero".into());
        }
        if self.n_embd % self.n_head != 0 || self.head_dim() % 2 != 0 {
            return fail(format!(
                "n_embd {} must split into n_head {} heads of even size (rope rotates pairs)",
                self.n_embd, self.n_head
            ));
        }
        if self.n_head % self.n_head_kv != 0 {
            return fail(format!(
                "n_head_kv {} must divide n_head {}",
                self.n_head_kv, self.n_head
            ));
        }
        let block = self.weight_type.block_size();
        if u64::from(self.n_embd) % block != 0 || u64::from(self.n_ff) % block != 0 {
            return fail(format!(
                "{} needs n_embd ({}) and n_ff ({}) to be multiples of {block}",
                self.weight_type, self.n_embd, self.n_ff
            ));
        }
        Ok(())
    }
}

/// Common English words, most frequent first; each becomes `▁word` plus the prefixes needed for
/// SentencePiece's pairwise merges to reach it.
const WORDS: &str = "the of and to a in is you that it he was for on are as with his they I at \
    be this have from or one had by word but not what all were we when your can said there use \
    an each which she do how their if will up other about out many then them these so some her \
    would make like him into time has look two more write go see number no way could people my \
    than first water been call who oil its now find long down day did get come made may part \
    hello world model memory GPU image text chat user assistant system answer question yes please \
    thank good new old small big test run load free The Hello What How Yes No This It We You";

/// Sub-word pieces common inside English words.
const SUFFIXES: &str = "ing ed er es ly th he in an re on at en nd ti te or st ar al it ion tion \
    ment ness ous";

/// The full vocabulary: specials, 256 byte tokens, then normal pieces with decreasing scores.
pub fn vocab() -> Vec<Token> {
    let special = |text: &str, kind| Token {
        text: text.into(),
        score: 0.0,
        kind,
    };
    let mut tokens = vec![
        special("<unk>", TokenType::Unknown),
        special("<s>", TokenType::Control),
        special("</s>", TokenType::Control),
        special("<|im_start|>", TokenType::Control),
        special("<|im_end|>", TokenType::Control),
    ];
    tokens.extend((0..=255u8).map(|b| special(&format!("<0x{b:02X}>"), TokenType::Byte)));

    let mut pieces: Vec<String> = Vec::new();
    let mut add = |p: String| {
        if !pieces.contains(&p) {
            pieces.push(p);
        }
    };
    add("\u{2581}".into());
    let singles = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain(".,!?'-:;()\"".chars());
    for c in singles {
        add(c.to_string());
    }
    let words = WORDS.split_whitespace().map(|w| format!("\u{2581}{w}"));
    for piece in words.chain(SUFFIXES.split_whitespace().map(String::from)) {
        // Every prefix of two or more characters, so each step of the merge is a token.
        let chars: Vec<char> = piece.chars().collect();
        for end in 2..=chars.len() {
            add(chars[..end].iter().collect());
        }
    }
    tokens.extend(pieces.into_iter().enumerate().map(|(i, text)| Token {
        text,
        score: -(i as f32),
        kind: TokenType::Normal,
    }));
    tokens
}

/// Builds the model in memory (so callers can add keys or take the bytes).
pub fn build_tiny_llama(spec: &TinyLlamaSpec) -> Result<GgufWriter, WriteError> {
    spec.validate()?;
    let vocab = vocab();
    let n_vocab = vocab.len() as u32;
    let mut w = GgufWriter::new();
    let arch = "llama";
    let kvs: Vec<(&str, Value)> = vec![
        ("general.architecture", arch.into()),
        ("general.name", spec.name.as_str().into()),
        // file_type() is Some after validate().
        ("general.file_type", spec.file_type().unwrap_or(0).into()),
        ("llama.vocab_size", n_vocab.into()),
        ("llama.context_length", spec.n_ctx_train.into()),
        ("llama.embedding_length", spec.n_embd.into()),
        ("llama.block_count", spec.n_layer.into()),
        ("llama.feed_forward_length", spec.n_ff.into()),
        ("llama.attention.head_count", spec.n_head.into()),
        ("llama.attention.head_count_kv", spec.n_head_kv.into()),
        ("llama.attention.layer_norm_rms_epsilon", 1e-5f32.into()),
        ("llama.rope.dimension_count", spec.head_dim().into()),
        ("llama.rope.freq_base", 10_000f32.into()),
        ("tokenizer.ggml.model", "llama".into()),
        (
            "tokenizer.ggml.tokens",
            Value::string_array(vocab.iter().map(|t| t.text.as_str())),
        ),
        ("tokenizer.ggml.scores", Value::f32_array(vocab.iter().map(|t| t.score))),
        (
            "tokenizer.ggml.token_type",
            Value::i32_array(vocab.iter().map(|t| t.kind as i32)),
        ),
        ("tokenizer.ggml.bos_token_id", BOS_ID.into()),
        ("tokenizer.ggml.eos_token_id", EOS_ID.into()),
        ("tokenizer.ggml.unknown_token_id", UNK_ID.into()),
        ("tokenizer.ggml.add_bos_token", true.into()),
        ("tokenizer.ggml.add_eos_token", false.into()),
    ];
    for (k, v) in kvs {
        w.add_kv(k, v)?;
    }
    if let Some(t) = &spec.chat_template {
        w.add_kv("tokenizer.chat_template", t.as_str().into())?;
    }

    let mut rng = XorShift64::new(spec.seed);
    let (e, kv, ff, v) = (
        u64::from(spec.n_embd),
        u64::from(spec.n_embd_kv()),
        u64::from(spec.n_ff),
        u64::from(n_vocab),
    );
    let mut weight = |w: &mut GgufWriter, name: &str, dims: &[u64]| {
        let n = dims.iter().product::<u64>() as usize;
        let values: Vec<f32> = (0..n).map(|_| rng.uniform(spec.init_scale)).collect();
        w.add_tensor_f32(name, dims, spec.weight_type, &values).map(|_| ())
    };
    let norm = |w: &mut GgufWriter, name: &str| {
        w.add_tensor_f32(name, &[e], GgmlType::F32, &vec![1.0; e as usize])
            .map(|_| ())
    };
    weight(&mut w, "token_embd.weight", &[e, v])?;
    norm(&mut w, "output_norm.weight")?;
    if spec.output_tensor {
        weight(&mut w, "output.weight", &[e, v])?;
    }
    for l in 0..spec.n_layer {
        let name = |t: &str| format!("blk.{l}.{t}.weight");
        norm(&mut w, &name("attn_norm"))?;
        weight(&mut w, &name("attn_q"), &[e, e])?;
        weight(&mut w, &name("attn_k"), &[e, kv])?;
        weight(&mut w, &name("attn_v"), &[e, kv])?;
        weight(&mut w, &name("attn_output"), &[e, e])?;
        norm(&mut w, &name("ffn_norm"))?;
        weight(&mut w, &name("ffn_gate"), &[e, ff])?;
        weight(&mut w, &name("ffn_up"), &[e, ff])?;
        weight(&mut w, &name("ffn_down"), &[ff, e])?;
    }
    Ok(w)
}

/// Writes the model described by `spec` to `path`.
pub fn write_tiny_llama(path: impl AsRef<Path>, spec: &TinyLlamaSpec) -> Result<(), WriteError> {
    build_tiny_llama(spec)?.write_to(path)
}
