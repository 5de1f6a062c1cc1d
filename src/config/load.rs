//! Reading the configuration from disk: the main file, then `models.d/*.toml` beside it in
//! name order. All parsing is delegated to the pure functions in [`super::raw`].

use std::path::{Path, PathBuf};

use super::{parse_dropin, parse_main, Config, ConfigError};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/vramd/vramd.toml";

/// A configuration and the files it was read from.
#[derive(Debug)]
pub struct LoadedConfig {
    pub config: Config,
    /// Files read, in order; empty when the default file is absent and defaults apply.
    pub sources: Vec<PathBuf>,
}

/// Loads `explicit` (from `--config` or `VRAMD_CONFIG`), or the default path. An explicit
/// file must exist; a missing default file means built-in defaults (no models), which is
/// what a freshly installed package without a config would want.
pub fn load(explicit: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    let path = explicit.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
            return Ok(LoadedConfig {
                config: Config::defaults(),
                sources: Vec::new(),
            })
        }
        Err(e) => return Err(io_error(path, e)),
    };
    let main = parse_main(path, &text)?;
    let mut sources = vec![path.to_owned()];
    let dir = path.parent().unwrap_or(Path::new("/")).join("models.d");
    let mut dropins = Vec::new();
    for file in dropin_files(&dir)? {
        let text = std::fs::read_to_string(&file).map_err(|e| io_error(&file, e))?;
        dropins.push(parse_dropin(&file, &text)?);
        sources.push(file);
    }
    Ok(LoadedConfig {
        config: Config::assemble(main, dropins)?,
        sources,
    })
}

fn dropin_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        // Packaging leaves `example.toml.sample` and editors leave backups: only `*.toml` counts.
        if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn io_error(path: &Path, e: std::io::Error) -> ConfigError {
    ConfigError {
        file: path.to_owned(),
        at: None,
        message: format!("cannot read: {e}"),
    }
}
