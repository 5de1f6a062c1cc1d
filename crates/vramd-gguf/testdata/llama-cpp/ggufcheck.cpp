// Manual check (not run by cargo test): ggml's own strict GGUF parser (contiguous offsets,
// padded data section present, GGML_MAX_NAME) on generated files. Build like check.cpp:
//
//   g++ -std=c++17 ggufcheck.cpp -I$LLAMA/include -L$LLAMA/lib -lggml -lggml-cpu -lggml-base \
//       -lpthread -fopenmp -ldl -o ggufcheck
//
// Note: sd1_full.gguf fails here with "tensor name ... is too long: 73 >= 64" because stock
// llama.cpp builds ggml with GGML_MAX_NAME=64; stable-diffusion.cpp builds it with 128.
#include "ggml.h"
#include "gguf.h"
#include <cstdio>
int main(int argc, char **argv) {
    int fails = 0;
    for (int i = 1; i < argc; i++) {
        ggml_context *ctx = nullptr;
        gguf_init_params p = {/*no_alloc*/ false, &ctx};
        gguf_context *g = gguf_init_from_file(argv[i], p);
        if (!g) { printf("FAIL %s\n", argv[i]); fails++; continue; }
        printf("ok %s: v%u, %lld tensors, %lld kvs, data offset %zu, alignment %zu\n", argv[i],
               gguf_get_version(g), (long long)gguf_get_n_tensors(g), (long long)gguf_get_n_kv(g),
               gguf_get_data_offset(g), gguf_get_alignment(g));
        gguf_free(g);
        ggml_free(ctx);
    }
    return fails != 0;
}
