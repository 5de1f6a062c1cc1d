//! llama.cpp's CPU code as loadable modules: built with `dynamic-backends` (as the packages
//! are), llama.cpp has one `libggml-cpu-<variant>.so` per x86-64 level (`x64`, `sse42`,
//! `haswell`, `skylakex`, `zen4`, …) and ggml loads the best one this CPU runs, so one package
//! is fast on a new CPU and safe on an old one. Without the feature the CPU code is linked in
//! and there is nothing to find.
//!
//! Packages put the modules with the shared libraries the worker links (`libllama`,
//! `libggml`), in the folder the packaged worker's run path names (packaging/build): beside
//! the binary (Arch, whose workers live in `/usr/lib/vramd`), or `/usr/lib/vramd` or
//! `/usr/lib64/vramd` for a worker in `/usr/libexec/vramd` (Debian, Fedora). A build tree's
//! worker finds them where llama-cpp-sys-2 built them (`llama_cpp_sys_2::BACKENDS_DIR`).

use std::path::{Path, PathBuf};

/// The folders searched, in order: beside the binary, the private library folders of a
/// libexec install, then where the build put them (a build tree's examples and tests).
pub fn search_dirs(exe_dir: &Path, built_in: Option<&str>) -> Vec<PathBuf> {
    let mut dirs = vec![
        exe_dir.to_owned(),
        exe_dir.join("../../lib/vramd"),
        exe_dir.join("../../lib64/vramd"),
    ];
    dirs.extend(built_in.map(PathBuf::from));
    dirs
}

/// Whether `dir` holds a CPU module (`libggml-cpu-*.so`).
fn has_cpu_module(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libggml-cpu-") && name.ends_with(".so")
        })
    })
}

/// The CPU module this process has mapped (`/proc/self/maps`): the variant ggml chose.
pub fn loaded_cpu_module(maps: &str) -> Option<&str> {
    maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| {
        let name = p.rsplit('/').next().unwrap_or(p);
        name.starts_with("libggml-cpu-") && name.ends_with(".so")
    })
}

/// The GPU modules this process has mapped (`libggml-cuda.so`): a module whose libraries
/// (the system's CUDA runtime) are missing is not loaded, and ggml runs on the CPU.
pub fn loaded_gpu_modules(maps: &str) -> Vec<&str> {
    let mut names: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.rsplit('/').next().unwrap_or(p))
        .filter(|n| is_gpu_module(n))
        .collect();
    names.dedup();
    names
}

/// `libggml-cuda.so`, `libggml-vulkan.so`…: a ggml module that is neither CPU code nor the
/// base library.
fn is_gpu_module(file: &str) -> bool {
    file.starts_with("libggml-")
        && file.ends_with(".so")
        && !file.starts_with("libggml-cpu-")
        && file != "libggml-base.so"
}

/// The GPU modules in `dir` that are not mapped: ggml could not load them, because what they
/// link (the CUDA runtime, cuBLAS, the NVIDIA driver's libcuda) is not on this machine.
fn unloaded_gpu_modules(dir: &Path, maps: &str) -> Vec<String> {
    let loaded = loaded_gpu_modules(maps);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| is_gpu_module(n) && !loaded.contains(&n.as_str()));
    names.sort();
    names
}

/// `libggml-cpu-zen4.so` → `ggml-cpu-zen4`.
fn module_name(file: &str) -> &str {
    let name = file.rsplit('/').next().unwrap_or(file);
    name.trim_start_matches("lib").trim_end_matches(".so")
}

/// Loads the best CPU module (and any GPU module beside it) before llama.cpp starts, and
/// says which: `ggml-cpu-zen4 from /usr/lib/vramd`, `ggml-cpu-zen4 and ggml-cuda from …`.
#[cfg(feature = "dynamic-backends")]
pub fn load() -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the worker binary: {e}"))?;
    let exe_dir = exe.parent().unwrap_or(Path::new("/"));
    let dirs = search_dirs(exe_dir, llama_cpp_sys_2::BACKENDS_DIR);
    let Some(dir) = dirs.iter().find(|d| has_cpu_module(d)) else {
        return Err(format!(
            "no llama.cpp CPU module (libggml-cpu-*.so) in {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
    llama_cpp_2::llama_backend::load_backends_from_path(&dir);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    match loaded_cpu_module(&maps) {
        Some(path) => {
            let mut names = vec![module_name(path)];
            names.extend(loaded_gpu_modules(&maps).into_iter().map(module_name));
            let mut line = format!("{} from {}", names.join(" and "), dir.display());
            let unloaded = unloaded_gpu_modules(&dir, &maps);
            if !unloaded.is_empty() {
                let unloaded: Vec<_> = unloaded.iter().map(|n| module_name(n)).collect();
                line += &format!(
                    "; {} not loaded (no NVIDIA driver or CUDA runtime found): on the CPU",
                    unloaded.join(" and ")
                );
                tracing::warn!("{line}");
            }
            Ok(line)
        }
        None => Err(format!("no llama.cpp CPU module in {} runs on this CPU", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_searched_beside_the_binary_then_in_the_private_library_folders() {
        let dirs = search_dirs(Path::new("/usr/libexec/vramd"), Some("/build/out/backends"));
        let dirs: Vec<_> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(
            dirs,
            [
                "/usr/libexec/vramd",
                "/usr/libexec/vramd/../../lib/vramd",
                "/usr/libexec/vramd/../../lib64/vramd",
                "/build/out/backends"
            ]
        );

        let tmp = tempfile::tempdir().unwrap();
        assert!(!has_cpu_module(tmp.path()));
        std::fs::write(tmp.path().join("libggml-base.so.0"), "").unwrap();
        assert!(!has_cpu_module(tmp.path()));
        std::fs::write(tmp.path().join("libggml-cpu-haswell.so"), "").unwrap();
        assert!(has_cpu_module(tmp.path()));
    }

    #[test]
    fn the_chosen_variant_is_read_from_the_mappings() {
        let maps = "7f00-7f01 r-xp 00000000 fd:01 12 /usr/lib/vramd/libggml-base.so.0.9.4\n\
                    7f02-7f03 r-xp 00001000 fd:01 13 /usr/lib/vramd/libggml-cpu-haswell.so\n\
                    7f04-7f05 rw-p 00000000 00:00 0 \n";
        assert_eq!(loaded_cpu_module(maps), Some("/usr/lib/vramd/libggml-cpu-haswell.so"));
        assert_eq!(loaded_cpu_module("7f04-7f05 rw-p 00000000 00:00 0 [heap]\n"), None);
        assert_eq!(module_name("/usr/lib/vramd/libggml-cpu-haswell.so"), "ggml-cpu-haswell");
    }

    #[test]
    fn a_loaded_gpu_module_is_named_once_and_the_cpu_ones_are_not() {
        let maps = "7f00-7f01 r-xp 00000000 fd:01 12 /usr/lib/vramd/libggml-base.so.0.9.4\n\
                    7f02-7f03 r-xp 00001000 fd:01 13 /usr/lib/vramd/libggml-cpu-haswell.so\n\
                    7f06-7f07 r--p 00000000 fd:01 14 /usr/lib/vramd/libggml-cuda.so\n\
                    7f07-7f08 r-xp 00001000 fd:01 14 /usr/lib/vramd/libggml-cuda.so\n\
                    7f09-7f0a r-xp 00001000 fd:01 15 /usr/lib/x86_64-linux-gnu/libcudart.so.13\n";
        assert_eq!(loaded_gpu_modules(maps), ["libggml-cuda.so"]);
        assert!(loaded_gpu_modules(&maps.replace("libggml-cuda.so", "libother.so")).is_empty());
    }

    #[test]
    fn a_gpu_module_ggml_could_not_load_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        for f in [
            "libggml-cpu-haswell.so",
            "libggml-cuda.so",
            "libggml-base.so.0",
            "libllama.so.0",
        ] {
            std::fs::write(tmp.path().join(f), "").unwrap();
        }
        let cpu_only = "7f02-7f03 r-xp 00001000 fd:01 13 /d/libggml-cpu-haswell.so\n";
        assert_eq!(unloaded_gpu_modules(tmp.path(), cpu_only), ["libggml-cuda.so"]);
        let with_cuda = format!("{cpu_only}7f06-7f07 r-xp 00000000 fd:01 14 /d/libggml-cuda.so\n");
        assert!(unloaded_gpu_modules(tmp.path(), &with_cuda).is_empty());
    }
}
