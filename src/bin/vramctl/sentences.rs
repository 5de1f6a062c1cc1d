//! What a desktop notification says about a burst of vramd's signals: pure, tested on values.
//!
//! One burst (signals that arrived close together, usually one request's doing) becomes one
//! notification: a short summary from its most important signal and one plain sentence per
//! signal. A model's load is news only on its own; next to an eviction or a VAE decision it
//! is the expected end of the story and is left out.

use std::collections::{BTreeMap, BTreeSet};

use vramd::units::format_size_human as size;

/// A signal the agent received.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    Loaded {
        model: String,
        bytes: u64,
        seconds: f64,
        from_page_cache: bool,
    },
    Unloaded {
        model: String,
        mode: String,
        reason: String,
        freed_bytes: u64,
    },
    Vae {
        model: String,
        width: u32,
        height: u32,
        placement: String,
        reason: String,
    },
    Queued {
        model: String,
        reason: String,
    },
    Crashed {
        model: String,
        reason: String,
    },
}

impl Signal {
    pub fn model(&self) -> &str {
        match self {
            Signal::Loaded { model, .. }
            | Signal::Unloaded { model, .. }
            | Signal::Vae { model, .. }
            | Signal::Queued { model, .. }
            | Signal::Crashed { model, .. } => model,
        }
    }

    /// Higher is more important: it picks the summary and the urgency.
    fn rank(&self) -> u8 {
        match self {
            Signal::Loaded { .. } => 0,
            Signal::Queued { .. } => 1,
            Signal::Vae { .. } => 2,
            Signal::Unloaded { .. } => 3,
            Signal::Crashed { .. } => 4,
        }
    }
}

/// Model name → kind (`llm`, `image`), from `ListModels`.
pub type Kinds = BTreeMap<String, String>;

/// `--quiet-for`: models or kinds whose signals never notify.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quiet(pub BTreeSet<String>);

impl Quiet {
    /// Comma-separated names, from each `--quiet-for` given.
    pub fn parse<'a>(lists: impl IntoIterator<Item = &'a str>) -> Quiet {
        Quiet(
            lists
                .into_iter()
                .flat_map(|l| l.split(','))
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    }

    pub fn silences(&self, model: &str, kinds: &Kinds) -> bool {
        self.0.contains(model) || kinds.get(model).is_some_and(|k| self.0.contains(k))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub summary: String,
    pub body: String,
    /// The freedesktop urgency: 1 normal, 2 critical.
    pub urgency: u8,
}

/// "Chat model", "Image model", or with its name when that kind has several models.
pub fn subject(model: &str, kinds: &Kinds) -> String {
    let Some(kind) = kinds.get(model) else {
        return format!("Model “{model}”");
    };
    let word = match kind.as_str() {
        "llm" => "Chat model",
        "image" => "Image model",
        _ => "Model",
    };
    if kinds.values().filter(|k| *k == kind).count() > 1 {
        format!("{word} “{model}”")
    } else {
        word.to_owned()
    }
}

/// How much slower a VAE decode on the CPU is, roughly: 2 s for a 512×512 image (an SD1.5
/// VAE on a desktop CPU against a GPU), growing with the pixel count.
pub fn cpu_decode_penalty_secs(width: u32, height: u32) -> u64 {
    let pixels = u64::from(width) * u64::from(height);
    ((2 * pixels + (1 << 17)) >> 18).max(1)
}

/// Why a model gave memory back, as the end of a sentence, from its reason and from what
/// else happened in the same burst (the request it made room for).
fn purpose(model: &str, reason: &str, burst: &[Signal], kinds: &Kinds) -> String {
    if reason == "requested" {
        return " on request".into();
    }
    if reason == "interrupted" {
        return " because its image was interrupted".into();
    }
    let beneficiary = burst
        .iter()
        .filter(|s| !matches!(s, Signal::Unloaded { .. } | Signal::Crashed { .. }))
        .map(Signal::model)
        .find(|m| *m != model);
    match beneficiary.map(|b| kinds.get(b).map(String::as_str)) {
        Some(Some("image")) => " to make room for an image".into(),
        Some(Some("llm")) => " to make room for a chat".into(),
        Some(_) => format!(" to make room for “{}”", beneficiary.unwrap_or_default()),
        None if reason.contains("idle") => " after sitting idle".into(),
        None => String::new(),
    }
}

/// The sentence for one signal.
pub fn sentence(signal: &Signal, burst: &[Signal], kinds: &Kinds) -> String {
    match signal {
        Signal::Unloaded {
            model,
            mode,
            reason,
            freed_bytes,
        } if mode == "soft" => format!(
            "{} set its working memory aside{} — {} freed; its weights stay loaded",
            subject(model, kinds),
            purpose(model, reason, burst, kinds),
            size(*freed_bytes)
        ),
        Signal::Unloaded {
            model,
            reason,
            freed_bytes,
            ..
        } => format!(
            "{} moved out of GPU memory{} — {} freed",
            subject(model, kinds),
            purpose(model, reason, burst, kinds),
            size(*freed_bytes)
        ),
        Signal::Vae {
            width,
            height,
            placement,
            ..
        } if placement == "cpu" => format!(
            "This image's VAE decode runs on the CPU: about {} s slower",
            cpu_decode_penalty_secs(*width, *height)
        ),
        Signal::Vae { .. } => "This image's VAE decode runs in tiles to fit in GPU memory: a little slower".into(),
        Signal::Queued { model, reason } => {
            format!("{} request is waiting: {reason}", subject(model, kinds))
        }
        Signal::Crashed { model, reason } => format!(
            "{} stopped unexpectedly ({reason}); it restarts with the next request",
            subject(model, kinds)
        ),
        Signal::Loaded {
            model,
            bytes,
            seconds,
            from_page_cache,
        } => format!(
            "{} loaded into GPU memory in {seconds:.1} s ({}, {})",
            subject(model, kinds),
            size(*bytes),
            if *from_page_cache { "from RAM" } else { "read from disk" }
        ),
    }
}

/// The notification for a burst, or `None` when everything in it is silenced.
pub fn compose(burst: &[Signal], kinds: &Kinds, quiet: &Quiet) -> Option<Notification> {
    let shown: Vec<Signal> = burst
        .iter()
        .filter(|s| !quiet.silences(s.model(), kinds))
        .cloned()
        .collect();
    let top = shown.iter().max_by_key(|s| s.rank())?;
    let summary = match top {
        Signal::Crashed { .. } => "A model crashed",
        Signal::Unloaded { .. } => "GPU memory freed",
        Signal::Vae { .. } => "Slower image decode",
        Signal::Queued { .. } => "Request waiting",
        Signal::Loaded { .. } => "Model loaded",
    };
    let only_loads = top.rank() == 0;
    let mut lines: Vec<String> = Vec::new();
    for s in shown.iter().filter(|s| only_loads || s.rank() > 0) {
        let line = sentence(s, &shown, kinds);
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    const MAX_LINES: usize = 5;
    if lines.len() > MAX_LINES {
        let more = lines.len() - (MAX_LINES - 1);
        lines.truncate(MAX_LINES - 1);
        lines.push(format!("…and {more} more"));
    }
    Some(Notification {
        summary: summary.into(),
        body: lines.join("\n"),
        urgency: if top.rank() == 4 { 2 } else { 1 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn kinds() -> Kinds {
        [("chat", "llm"), ("sd", "image")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    }

    fn unloaded(mode: &str, reason: &str, freed: u64) -> Signal {
        Signal::Unloaded {
            model: "chat".into(),
            mode: mode.into(),
            reason: reason.into(),
            freed_bytes: freed,
        }
    }

    fn vae(placement: &str, side: u32) -> Signal {
        Signal::Vae {
            model: "sd".into(),
            width: side,
            height: side,
            placement: placement.into(),
            reason: "r".into(),
        }
    }

    fn loaded(model: &str) -> Signal {
        Signal::Loaded {
            model: model.into(),
            bytes: GIB,
            seconds: 1.25,
            from_page_cache: true,
        }
    }

    fn one(s: Signal) -> Notification {
        compose(std::slice::from_ref(&s), &kinds(), &Quiet::default()).unwrap()
    }

    #[test]
    fn each_signal_on_its_own() {
        let n = one(unloaded("hard", "requested", 4 * GIB + GIB / 10));
        assert_eq!(n.summary, "GPU memory freed");
        assert_eq!(n.body, "Chat model moved out of GPU memory on request — 4.1 GiB freed");
        let n = one(unloaded("soft", "chat is idle (11 min)", GIB / 2));
        assert_eq!(
            n.body,
            "Chat model set its working memory aside after sitting idle — 512.0 MiB freed; its weights stay loaded"
        );
        let n = one(vae("cpu", 512));
        assert_eq!(n.summary, "Slower image decode");
        assert_eq!(n.body, "This image's VAE decode runs on the CPU: about 2 s slower");
        assert_eq!(
            one(vae("cpu", 1024)).body,
            "This image's VAE decode runs on the CPU: about 8 s slower"
        );
        assert_eq!(
            one(vae("tiled", 512)).body,
            "This image's VAE decode runs in tiles to fit in GPU memory: a little slower"
        );
        let n = one(Signal::Queued {
            model: "sd".into(),
            reason: "waiting for chat".into(),
        });
        assert_eq!(
            (n.summary.as_str(), n.body.as_str()),
            ("Request waiting", "Image model request is waiting: waiting for chat")
        );
        let n = one(Signal::Crashed {
            model: "chat".into(),
            reason: "killed by signal 9".into(),
        });
        assert_eq!(n.summary, "A model crashed");
        assert_eq!(
            n.body,
            "Chat model stopped unexpectedly (killed by signal 9); it restarts with the next request"
        );
        assert_eq!(n.urgency, 2);
        let n = one(loaded("chat"));
        assert_eq!(n.summary, "Model loaded");
        assert_eq!(n.body, "Chat model loaded into GPU memory in 1.2 s (1.0 GiB, from RAM)");
        assert_eq!(n.urgency, 1);
    }

    #[test]
    fn a_burst_for_an_image_says_what_the_room_was_for() {
        let burst = [
            unloaded(
                "hard",
                "chat is idle (12 min): unloading it frees 4.1 GiB",
                4 * GIB + GIB / 10,
            ),
            vae("cpu", 512),
            loaded("sd"),
        ];
        let n = compose(&burst, &kinds(), &Quiet::default()).unwrap();
        assert_eq!(n.summary, "GPU memory freed");
        assert_eq!(
            n.body,
            "Chat model moved out of GPU memory to make room for an image — 4.1 GiB freed\n\
             This image's VAE decode runs on the CPU: about 2 s slower"
        );
    }

    #[test]
    fn quiet_models_and_kinds() {
        let q = Quiet::parse(["image", "other, x"]);
        assert!(q.silences("sd", &kinds()));
        assert!(q.silences("x", &kinds()));
        assert!(!q.silences("chat", &kinds()));
        assert_eq!(compose(&[vae("cpu", 512)], &kinds(), &q), None);
        let n = compose(&[unloaded("soft", "r", 1), vae("tiled", 512)], &kinds(), &q).unwrap();
        assert!(!n.body.contains("VAE"), "{}", n.body);
    }

    #[test]
    fn names_and_long_bursts() {
        let mut k = kinds();
        k.insert("big".into(), "llm".into());
        assert_eq!(subject("chat", &k), "Chat model “chat”");
        assert_eq!(subject("sd", &k), "Image model");
        assert_eq!(subject("ghost", &k), "Model “ghost”");
        let burst: Vec<Signal> = (0..8)
            .map(|i| Signal::Crashed {
                model: format!("m{i}"),
                reason: "x".into(),
            })
            .collect();
        let n = compose(&burst, &k, &Quiet::default()).unwrap();
        assert_eq!(n.body.lines().count(), 5);
        assert_eq!(n.body.lines().last(), Some("…and 4 more"));
    }
}
