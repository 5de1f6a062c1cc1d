// Manual check (not run by cargo test): does llama.cpp itself load, tokenize, template and run
// the models vramd-gguf generates? Build against any llama.cpp build's include/ and lib/:
//
//   g++ -std=c++17 check.cpp -I$LLAMA/include -L$LLAMA/lib -lllama -lggml -lggml-cpu \
//       -lggml-base -lpthread -fopenmp -ldl -o check
//   ./check tiny_f32.gguf tiny_q8.gguf ...   # models from examples/gen_test_models.rs
//
// Exit status 0 when every model loads, its chat template (if any) applies, and 8 greedy
// tokens decode.
#include "llama.h"
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

static bool quiet = true;
static void log_cb(ggml_log_level level, const char *text, void *) {
    if (!quiet || level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

static std::string piece(const llama_vocab *v, llama_token t) {
    char buf[64];
    int n = llama_token_to_piece(v, t, buf, sizeof buf, 0, true);
    return n < 0 ? "?" : std::string(buf, n);
}

int main(int argc, char **argv) {
    llama_log_set(log_cb, nullptr);
    llama_backend_init();
    int fails = 0;
    for (int i = 1; i < argc; i++) {
        quiet = i > 1;
        printf("== %s\n", argv[i]);
        auto mp = llama_model_default_params();
        llama_model *m = llama_model_load_from_file(argv[i], mp);
        if (!m) { printf("LOAD FAILED\n"); fails++; continue; }
        const llama_vocab *v = llama_model_get_vocab(m);
        printf("n_vocab %d, nl token %d '%s', eos %d, <|im_end|> is eog: %d\n",
               llama_vocab_n_tokens(v), llama_vocab_nl(v), piece(v, llama_vocab_nl(v)).c_str(),
               llama_vocab_eos(v), (int)llama_vocab_is_eog(v, 4));
        const char *text = "Hello world, the model can write text.\nünï 🙂";
        std::vector<llama_token> toks(256);
        int n = llama_tokenize(v, text, strlen(text), toks.data(), toks.size(), true, false);
        toks.resize(n > 0 ? n : 0);
        printf("tokenize(%zu bytes) -> %d tokens:", strlen(text), n);
        for (auto t : toks) printf(" %d:'%s'", t, piece(v, t).c_str());
        printf("\n");
        const char *tmpl = llama_model_chat_template(m, nullptr);
        printf("chat template: %s\n", tmpl ? "present" : "absent");
        if (tmpl) {
            llama_chat_message msgs[] = {{"system", "Be brief."}, {"user", "Hi!"}};
            std::vector<char> buf(1024);
            int len = llama_chat_apply_template(tmpl, msgs, 2, true, buf.data(), buf.size());
            printf("applied (%d bytes): %s", len, len > 0 ? std::string(buf.data(), len).c_str() : "FAILED\n");
            if (len <= 0) fails++;
            std::string prompt(buf.data(), len);
            std::vector<llama_token> pt(256);
            int np = llama_tokenize(v, prompt.c_str(), prompt.size(), pt.data(), pt.size(), true, true);
            printf("prompt -> %d tokens, first: %d %d %d (im_start=3)\n", np, pt[0], pt[1], pt[2]);
        }
        auto cp = llama_context_default_params();
        cp.n_ctx = 128; cp.n_batch = 128;
        llama_context *ctx = llama_init_from_model(m, cp);
        if (!ctx) { printf("CONTEXT FAILED\n"); fails++; llama_model_free(m); continue; }
        llama_sampler *s = llama_sampler_chain_init(llama_sampler_chain_default_params());
        llama_sampler_chain_add(s, llama_sampler_init_greedy());
        std::vector<llama_token> cur = toks;
        printf("generated:");
        for (int step = 0; step < 8; step++) {
            if (llama_decode(ctx, llama_batch_get_one(cur.data(), cur.size())) != 0) {
                printf(" DECODE FAILED"); fails++; break;
            }
            llama_token t = llama_sampler_sample(s, ctx, -1);
            printf(" %d", t);
            cur = {t};
        }
        printf("\n");
        llama_sampler_free(s);
        llama_free(ctx);
        llama_model_free(m);
    }
    llama_backend_free();
    printf(fails ? "FAILURES: %d\n" : "ALL OK\n", fails);
    return fails != 0;
}
