#!/usr/bin/env python3
"""Cross-checks files written by vramd-gguf with gguf-py, llama.cpp's reference GGUF package.

Not part of `cargo test` (no Python dependency there); run by hand after changing the writer:

    pip install gguf
    D=$(mktemp -d); G=target/debug/examples/gen_test_models
    cargo build -p vramd-gguf --example gen_test_models
    $G llama $D/tiny_f32.gguf; $G llama $D/tiny_q8_same.gguf q8_0; $G llama $D/tiny_q4_same.gguf q4_0
    $G llama $D/tiny_f16_same.gguf f16; $G llama $D/tiny_q8.gguf q8_0 gqa
    for m in zi_dit zi_llm zi_tae sd1_full tae_full; do
        $G sd crates/vramd-gguf/testdata/sd-tiny/$m.json $D/$m.gguf; done
    python3 crates/vramd-gguf/testdata/gguf-py/check_with_gguf_py.py $D

Checks: every file parses; tensor offsets are aligned; gguf-py's byte sizes agree; llama
metadata is what llama.cpp wants; and gguf-py's own quantizers, applied to the F32 model's
weights, reproduce the Q8_0 / Q4_0 / F16 models (same seed, same random stream) byte for byte.
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

d = sys.argv[1]


def load(name):
    r = gguf.GGUFReader(os.path.join(d, name))
    align = r.fields["general.alignment"].parts[-1][0] if "general.alignment" in r.fields else 32
    for t in r.tensors:
        assert t.data_offset % align == 0, (name, t.name, t.data_offset)
        blk, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
        assert t.n_bytes == int(np.prod(t.shape)) // blk * size, (name, t.name)
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    print(f"{name}: {len(r.tensors)} tensors, {len(keys)} keys, "
          f"types {sorted({t.tensor_type.name for t in r.tensors})}")
    return r


def val(r, key):
    f = r.fields[key]
    return f.contents()


files = sorted(f for f in os.listdir(d) if f.endswith(".gguf"))
readers = {f: load(f) for f in files}

r = readers["tiny_f32.gguf"]
print("  keys:", [k for k in r.fields if not k.startswith("GGUF.")])
print("  tensors:", [(t.name, t.shape.tolist(), t.tensor_type.name) for t in r.tensors[:5]], "...")
for key in ["general.architecture", "general.file_type", "llama.block_count",
            "llama.embedding_length", "llama.attention.head_count_kv",
            "llama.rope.dimension_count", "llama.attention.layer_norm_rms_epsilon",
            "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id"]:
    print(f"  {key} = {val(r, key)!r}")
tokens = val(r, "tokenizer.ggml.tokens")
types = val(r, "tokenizer.ggml.token_type")
print(f"  {len(tokens)} tokens; first: {tokens[:6]}; <0x0A> at {tokens.index('<0x0A>')}, "
      f"type {types[tokens.index('<0x0A>')]}; sample pieces: {tokens[261:266]} ... {tokens[-3:]}")
print("  chat_template:", repr(val(r, "tokenizer.chat_template")))
assert val(r, "llama.rope.dimension_count") == 64 // 4
assert len(set(tokens)) == len(tokens)

f32 = {t.name: np.array(t.data) for t in r.tensors}
for name, qtype, ftype in [("tiny_q8_same.gguf", Q.Q8_0, 7), ("tiny_q4_same.gguf", Q.Q4_0, 2),
                           ("tiny_f16_same.gguf", Q.F16, 1)]:
    rq = readers[name]
    assert val(rq, "general.file_type") == ftype
    n = 0
    for t in rq.tensors:
        if t.tensor_type == Q.F32:
            assert np.array_equal(np.array(t.data), f32[t.name]), t.name
            continue
        src = f32[t.name].astype(np.float32)
        ours = np.array(t.data).tobytes()
        if qtype == Q.F16:
            ref = src.astype(np.float16).tobytes()
        else:
            ref = gguf.quants.quantize(src, qtype).tobytes()
        assert ours == ref, f"{name}: {t.name} differs from gguf-py's {qtype.name}"
        n += 1
    print(f"  {name}: {n} tensors byte-identical to gguf-py's {qtype.name} of the F32 weights")

for name in ["zi_dit.gguf", "zi_llm.gguf", "zi_tae.gguf", "sd1_full.gguf", "tae_full.gguf"]:
    if name not in readers:
        continue
    rq = readers[name]
    zeros = ones = 0
    for t in rq.tensors:
        if t.n_elements > 1 << 16:
            continue
        v = gguf.quants.dequantize(np.array(t.data), t.tensor_type).ravel()
        if t.name.endswith(".bias"):
            assert not v.any(), t.name
            zeros += 1
        elif len(t.shape) == 1 and t.name.endswith(".weight"):
            assert (v == 1).all(), t.name
            ones += 1
    print(f"  {name}: arch {val(rq, 'general.architecture')!r}, "
          f"{zeros} zero biases and {ones} unit norm weights confirmed")
print("OK")
