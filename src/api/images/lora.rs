//! LoRAs from the prompt, as AUTOMATIC1111 takes them: `<lora:name:weight>` anywhere in the
//! prompt names a file in the image model's `lora_dir` (its name without the extension) and
//! is removed from the text the encoder sees.
//!
//! A name is a file name, never a path: one with a `/`, a `\`, `..`, a leading `.` or a NUL
//! is refused before anything touches the disk, and only files that `read_dir` lists in
//! the configured folder are found, so a request cannot reach a file outside it.

use std::path::{Path, PathBuf};

use super::invalid;
use crate::api::ApiError;

/// File types stable-diffusion.cpp reads LoRAs from.
const EXTENSIONS: &[&str] = &["safetensors", "gguf", "ckpt", "pt"];

/// Most LoRAs in one prompt.
const MAX_LORAS: usize = 16;

/// One `<lora:…>` tag: the name and its weight (1 when absent).
#[derive(Clone, Debug, PartialEq)]
pub struct Tag {
    pub name: String,
    pub weight: f32,
}

/// The prompt without its `<lora:…>` tags, and the tags in order. A1111's forms are
/// accepted: `<lora:name>`, `<lora:name:0.8>`, and `<lora:name:te:unet>` (the first weight
/// is used: stable-diffusion.cpp has one multiplier per LoRA). A tag that does not close
/// is left in the text, as A1111 leaves it.
pub fn parse(prompt: &str) -> Result<(String, Vec<Tag>), ApiError> {
    let mut text = String::with_capacity(prompt.len());
    let mut tags = Vec::new();
    let mut rest = prompt;
    while let Some(start) = find_tag(rest) {
        let Some(len) = rest[start..].find('>') else { break };
        text.push_str(&rest[..start]);
        let body = &rest[start + "<lora:".len()..start + len];
        tags.push(tag(body)?);
        rest = &rest[start + len + 1..];
    }
    text.push_str(rest);
    if tags.len() > MAX_LORAS {
        return Err(invalid(
            "prompt",
            format!("at most {MAX_LORAS} LoRAs may be used at once, got {}", tags.len()),
        ));
    }
    Ok((text, tags))
}

fn find_tag(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    lower.find("<lora:")
}

fn tag(body: &str) -> Result<Tag, ApiError> {
    let mut parts = body.split(':');
    let name = parts.next().unwrap_or_default().trim().to_owned();
    let weight = match parts.next().map(str::trim) {
        None | Some("") => 1.0,
        Some(w) => w
            .parse::<f32>()
            .ok()
            .filter(|w| w.is_finite() && w.abs() <= 10.0)
            .ok_or_else(|| {
                invalid(
                    "prompt",
                    format!("<lora:{body}>: the weight must be a number between -10 and 10"),
                )
            })?,
    };
    check_name(&name)?;
    Ok(Tag { name, weight })
}

/// A LoRA name is a file name: no path, nothing hidden.
fn check_name(name: &str) -> Result<(), ApiError> {
    let bad = name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0'])
        || name.contains("..")
        || name.len() > 255;
    if bad {
        return Err(invalid(
            "prompt",
            format!("<lora:{name}>: a LoRA is named by its file name in the model's LoRA folder, without a path"),
        ));
    }
    Ok(())
}

/// The LoRA files in `dir`: (name, path), sorted by name. A folder that cannot be read has
/// none (the daemon logs nothing per request: `GET /sdapi/v1/loras` shows the list).
pub fn list(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter_map(|p| {
            let ext = p.extension()?.to_str()?.to_ascii_lowercase();
            let stem = p.file_stem()?.to_str()?.to_owned();
            (EXTENSIONS.contains(&ext.as_str()) && !stem.starts_with('.')).then_some((stem, p))
        })
        .collect();
    found.sort();
    found
}

/// The files of `tags` in `dir` (the model's `lora_dir`), or a 400 that says what exists.
pub fn resolve(model: &str, dir: Option<&Path>, tags: &[Tag]) -> Result<Vec<vramd_protocol::Lora>, ApiError> {
    if tags.is_empty() {
        return Ok(Vec::new());
    }
    let Some(dir) = dir else {
        return Err(invalid(
            "prompt",
            format!(
                "the prompt names LoRAs ({}), but image model {model:?} has no `lora_dir` configured",
                names(tags)
            ),
        ));
    };
    let available = list(dir);
    tags.iter()
        .map(|t| {
            available
                .iter()
                .find(|(name, _)| *name == t.name)
                .map(|(_, path)| vramd_protocol::Lora {
                    path: path.clone(),
                    multiplier: t.weight,
                })
                .ok_or_else(|| {
                    let known: Vec<&str> = available.iter().map(|(n, _)| n.as_str()).collect();
                    invalid(
                        "prompt",
                        format!(
                            "LoRA {:?} is not in the LoRA folder of {model:?}; available: {}",
                            t.name,
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                })
        })
        .collect()
}

fn names(tags: &[Tag]) -> String {
    tags.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: ApiError) -> String {
        match e {
            ApiError::InvalidRequest { message, param } => {
                assert_eq!(param.as_deref(), Some("prompt"));
                message
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tags_are_taken_out_of_the_prompt() {
        let (text, tags) = parse("a cat <lora:ink:0.6>, sketch <LORA:paper> <lora:x:0.5:0.9>").unwrap();
        assert_eq!(text, "a cat , sketch  ");
        assert_eq!(
            tags,
            vec![
                Tag {
                    name: "ink".into(),
                    weight: 0.6
                },
                Tag {
                    name: "paper".into(),
                    weight: 1.0
                },
                Tag {
                    name: "x".into(),
                    weight: 0.5
                },
            ]
        );
        let (text, tags) = parse("no tags <lora:open").unwrap();
        assert_eq!((text.as_str(), tags.len()), ("no tags <lora:open", 0));
    }

    #[test]
    fn paths_and_bad_weights_are_refused() {
        for p in [
            "<lora:../x:1>",
            "<lora:a/b>",
            "<lora:.hidden>",
            "<lora:a\\b>",
            "<lora:>",
            "<lora:x..y>",
        ] {
            assert!(message(parse(p).unwrap_err()).contains("without a path"), "{p}");
        }
        assert!(message(parse("<lora:x:heavy>").unwrap_err()).contains("weight"));
        assert!(message(parse("<lora:x:1e9>").unwrap_err()).contains("weight"));
        let many = "<lora:a>".repeat(MAX_LORAS + 1);
        assert!(message(parse(&many).unwrap_err()).contains("at most"));
    }

    #[test]
    fn names_resolve_only_to_files_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ink.safetensors", "paper.gguf", "notes.txt", ".secret.safetensors"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.safetensors")).unwrap();
        let listed: Vec<String> = list(dir.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(listed, ["ink", "paper"]);
        let tags = |n: &str| {
            vec![Tag {
                name: n.into(),
                weight: 0.5,
            }]
        };
        let got = resolve("sd", Some(dir.path()), &tags("paper")).unwrap();
        assert_eq!(got[0].path, dir.path().join("paper.gguf"));
        assert_eq!(got[0].multiplier, 0.5);
        let e = message(resolve("sd", Some(dir.path()), &tags("notes")).unwrap_err());
        assert!(e.contains("available: ink, paper"), "{e}");
        let e = message(resolve("sd", None, &tags("ink")).unwrap_err());
        assert!(e.contains("no `lora_dir`"), "{e}");
        assert!(resolve("sd", None, &[]).unwrap().is_empty());
    }
}
