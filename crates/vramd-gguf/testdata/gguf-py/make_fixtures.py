#!/usr/bin/env python3
"""Regenerates the reader fixtures with the reference writer, gguf-py (`pip install gguf`).

Why fixtures from another writer: a reader tested only on files from its own writer can share
its mistakes. These files were written by the Python package llama.cpp itself uses for
conversions; the Rust tests (tests/gguf_py_fixtures.rs) check every value below, so keep the
two in sync. Run from this directory: `python3 make_fixtures.py`.
"""
import numpy as np
import gguf

def build(path, endianess):
    w = gguf.GGUFWriter(path, arch="fixturearch", endianess=endianess)
    w.add_custom_alignment(64)
    w.add_name("gguf-py fixture")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 1.5)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", -0.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "h\u00e9llo \u2581world")
    w.add_array("t.arr_str", ["a", "", "\u00fc"])
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_f32", [0.5, -1.0])
    w.add_array("t.arr_nested", [[1, 2], [3]])
    f32 = np.arange(12, dtype=np.float32).reshape(3, 4)  # ggml dims [4, 3]
    w.add_tensor("f32_tensor", f32)
    w.add_tensor("f16_tensor", np.array([1.0, -2.0, 0.5, 65504.0, 0, 0, 0, 0], dtype=np.float16))
    # Quantized tensors as raw bytes: gguf-py takes the byte shape and derives ggml dims.
    q8 = np.zeros((2, 34), dtype=np.uint8)  # 2 rows of one Q8_0 block -> ggml dims [32, 2]
    q8[:, 0:2] = np.frombuffer(np.float16(0.5).tobytes(), dtype=np.uint8)
    q8[:, 2:] = np.arange(32, dtype=np.int8).view(np.uint8)
    w.add_tensor("q8_0_tensor", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    q4k = np.full((1, 144), 7, dtype=np.uint8)  # one Q4_K super-block -> [256]
    w.add_tensor("q4_k_tensor", q4k, raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

build("little.gguf", gguf.GGUFEndian.LITTLE)
build("big.gguf", gguf.GGUFEndian.BIG)
