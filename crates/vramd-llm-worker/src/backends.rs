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

/// Loads the best CPU module (and any GPU module beside it) before llama.cpp starts, and
/// says which one: `ggml-cpu-zen4 from /usr/lib/vramd`.
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
            let name = path.rsplit('/').next().unwrap_or(path);
            let name = name.trim_start_matches("lib").trim_end_matches(".so");
            Ok(format!("{name} from {}", dir.display()))
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
    }
}
