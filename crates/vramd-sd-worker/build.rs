//! With `cuda`, diffusion-rs-sys links libcudart, libcublas, libcublasLt and libcuda
//! dynamically (the system's CUDA libraries at run time) but looks for them only in
//! /usr/local/cuda and /opt/cuda. A toolkit elsewhere (packaging/cuda-toolkit installs one
//! from PyPI wheels) is named by `CUDA_PATH`, whose `lib64`, `lib` and their `stubs` (the
//! driver's link-time stub) are added to the search here.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let Some(cuda) = std::env::var_os("CUDA_PATH") else {
        return;
    };
    let cuda = std::path::Path::new(&cuda);
    for dir in ["lib64", "lib64/stubs", "lib", "lib/stubs"] {
        let dir = cuda.join(dir);
        if dir.is_dir() {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
    }
}
