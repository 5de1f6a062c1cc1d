//! With `dynamic-backends`, llama.cpp is shared libraries (`libllama`, `libggml`,
//! `libggml-base`) plus CPU modules. A build tree's worker finds the libraries where
//! llama-cpp-sys-2 built them: their folder goes into the run path (`DT_RPATH`, which unlike
//! `DT_RUNPATH` also serves the libraries' own dependencies: `libllama` needs `libggml`).
//! Packages replace it with their private library folder (packaging/build, `patchelf`), so no
//! build path ships and nothing needs `LD_LIBRARY_PATH`. src/backends.rs finds the modules.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // `cargo:backends_dir` of llama-cpp-sys-2 (`links = "llama"`): its OUT_DIR/backends.
    if let Some(backends) = std::env::var_os("DEP_LLAMA_BACKENDS_DIR") {
        let libs = std::path::Path::new(&backends).with_file_name("lib");
        println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libs.display());
    }
}
