//! What a desktop notification says: pure functions from vramd's structured signals (and
//! what the agent knows: the models' kinds, the memory backend) to words, tested on values.
//!
//! The words are for a person at a desktop, not for vramd's log. No daemon reason is shown
//! as it is (the agent logs it instead); the VAE decode is "the last step of the image";
//! "GPU memory" is said only when vramd measures a GPU (`Backend` is `nvml`), since on the
//! `budget` backend the memory may not be a GPU's. Which notification appears, replaces or
//! closes which is [`crate::story`]'s decision; this module only words one.

use std::collections::{BTreeMap, BTreeSet};

/// A request that waited less than this is not news on its own (its waiting notice is not
/// even shown: see [`crate::story`]).
pub const WORTH_WAITING_SECS: f64 = 2.0;

/// The freedesktop urgency hint: the consequence decides it.
pub const LOW: u8 = 0;
pub const NORMAL: u8 = 1;
pub const CRITICAL: u8 = 2;

/// A signal the agent acts on, with the arguments it uses (`org.vramd.Vramd1`, see
/// `dbus/org.vramd.Vramd1.xml`). `VaeOffloaded` is not here: an image's last step is told
/// from its `RequestFinished`.
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
        /// `soft` or `hard`.
        mode: String,
        /// `room`, `idle`, `requested`, `interrupted` or `other`.
        cause: String,
        freed_bytes: u64,
    },
    Queued {
        model: String,
        request_id: String,
        /// The busy model it waits for; empty when it waits for memory.
        waiting_for: String,
        needed_bytes: u64,
        free_bytes: u64,
    },
    Restored {
        model: String,
        bytes: u64,
    },
    Finished(Finished),
    Crashed {
        model: String,
        /// The daemon's words: logged, never shown.
        reason: String,
    },
}

/// `RequestFinished`'s arguments: one request's whole story.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Finished {
    pub model: String,
    pub request_id: String,
    /// `text` or `image` (empty from a daemon that did not know: the model's kind decides).
    pub kind: String,
    /// `done`, `cancelled`, `interrupted`, `failed`, `refused`, `too_large`, `timed_out`.
    pub outcome: String,
    /// The daemon's reason: logged, never shown.
    pub error: String,
    pub waited_seconds: f64,
    pub needed_bytes: u64,
    pub free_bytes: u64,
    /// `gpu`, `tiled`, `cpu`; empty for text.
    pub vae_placement: String,
    pub vae_seconds: f64,
    /// How much slower the last step was than on the device; -1 when not known yet.
    pub slower_seconds: f64,
    pub freed: Vec<Freed>,
}

/// A model unloaded to make room for a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Freed {
    pub model: String,
    /// `soft` or `hard`.
    pub mode: String,
    pub bytes: u64,
}

impl Signal {
    pub fn model(&self) -> &str {
        match self {
            Signal::Loaded { model, .. }
            | Signal::Unloaded { model, .. }
            | Signal::Queued { model, .. }
            | Signal::Restored { model, .. }
            | Signal::Finished(Finished { model, .. })
            | Signal::Crashed { model, .. } => model,
        }
    }
}

/// Model name → kind (`llm`, `image`), from `ListModels`.
pub type Kinds = BTreeMap<String, String>;

/// What the words depend on besides the signal.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ctx {
    pub kinds: Kinds,
    /// vramd measures a GPU (`Backend` is `nvml`), so "GPU memory" is true.
    pub gpu: bool,
}

impl Ctx {
    fn memory(&self) -> &'static str {
        if self.gpu {
            "GPU memory"
        } else {
            "memory"
        }
    }

    fn kind(&self, model: &str) -> &str {
        self.kinds.get(model).map_or("", String::as_str)
    }
}

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
    /// [`LOW`], [`NORMAL`] or [`CRITICAL`].
    pub urgency: u8,
}

fn note(summary: impl Into<String>, lines: &[String], urgency: u8) -> Notification {
    Notification {
        summary: summary.into(),
        body: lines.join("\n"),
        urgency,
    }
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

/// [`subject`] inside a sentence: "the chat model", "the model “x”".
fn the(model: &str, kinds: &Kinds) -> String {
    let s = subject(model, kinds);
    let mut chars = s.chars();
    let first = chars.next().map(|c| c.to_lowercase().to_string()).unwrap_or_default();
    format!("the {first}{}", chars.as_str())
}

/// What a model's next use is called: its next answer or image.
fn next_use(model: &str, ctx: &Ctx) -> &'static str {
    match ctx.kind(model) {
        "llm" => "its next answer",
        "image" => "its next image",
        _ => "its next request",
    }
}

/// `image` or `text`: the signal's word, else the model's kind.
fn request_kind<'a>(kind: &'a str, model: &str, ctx: &'a Ctx) -> &'a str {
    match (kind, ctx.kind(model)) {
        ("image" | "text", _) => kind,
        (_, "image") => "image",
        _ => "text",
    }
}

/// "1.2 GiB", "512 MiB": vramd's sizes without a needless ".0".
pub fn size(bytes: u64) -> String {
    vramd::units::format_size_human(bytes).replace(".0 ", " ")
}

/// "28 s", "2 min 5 s": whole seconds, at least one.
pub fn seconds(s: f64) -> String {
    let whole = (s.max(0.0).round() as u64).max(1);
    match (whole / 60, whole % 60) {
        (0, s) => format!("{s} s"),
        (m, 0) => format!("{m} min"),
        (m, s) => format!("{m} min {s} s"),
    }
}

/// The notice of a request that waits (shown only once it has waited a while).
pub fn waiting(model: &str, waiting_for: &str, needed: u64, free: u64, ctx: &Ctx) -> Notification {
    let summary = match ctx.kind(model) {
        "image" => "Image waiting".to_owned(),
        _ => format!("{} waiting", subject(model, &ctx.kinds)),
    };
    let line = if !waiting_for.is_empty() {
        format!("It starts when {} is finished", the(waiting_for, &ctx.kinds))
    } else if needed > 0 {
        format!(
            "It needs {} of {} and {} is free; it starts as soon as there is room",
            size(needed),
            ctx.memory(),
            size(free)
        )
    } else {
        "It starts as soon as there is room".to_owned()
    };
    note(summary, &[line], NORMAL)
}

/// The end of a request's story, or `None` when nothing in it is worth telling (its
/// waiting notice, if shown, is then closed). `waiting_for` is what its `RequestQueued`
/// said it waited for ("" if none was seen).
pub fn finished(f: &Finished, waiting_for: &str, ctx: &Ctx) -> Option<Notification> {
    let image = request_kind(&f.kind, &f.model, ctx) == "image";
    let freed: Vec<String> = f.freed.iter().map(|x| freed_line(x, ctx)).collect();
    match f.outcome.as_str() {
        "done" => {
            let lines: Vec<String> = freed
                .into_iter()
                .chain(last_step_line(f, ctx))
                .chain(waited_line(f.waited_seconds, waiting_for, ctx))
                .collect();
            let summary = if image {
                "Image ready".to_owned()
            } else {
                format!("{} answered", subject(&f.model, &ctx.kinds))
            };
            (!lines.is_empty()).then(|| note(summary, &lines, NORMAL))
        }
        "cancelled" | "interrupted" => {
            let what = if image { "Image" } else { "Request" };
            let how = if f.outcome == "cancelled" {
                "cancelled"
            } else {
                "stopped"
            };
            (!freed.is_empty()).then(|| note(format!("{what} {how}"), &freed, NORMAL))
        }
        "failed" => {
            let line = format!(
                "{} reported an error; vramd's log has the details",
                capitalized(&the(&f.model, &ctx.kinds))
            );
            let lines: Vec<String> = std::iter::once(line).chain(freed).collect();
            Some(note(not_made(image, &f.model, ctx), &lines, CRITICAL))
        }
        "refused" | "too_large" | "timed_out" => {
            let lines: Vec<String> = std::iter::once(refusal_line(f, waiting_for, ctx))
                .chain(freed)
                .collect();
            Some(note(not_made(image, &f.model, ctx), &lines, CRITICAL))
        }
        _ => None,
    }
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// "The image could not be made", "The chat model could not answer".
fn not_made(image: bool, model: &str, ctx: &Ctx) -> String {
    if image {
        "The image could not be made".to_owned()
    } else {
        format!("{} could not answer", capitalized(&the(model, &ctx.kinds)))
    }
}

/// Why vramd gave up on a request before it ran.
fn refusal_line(f: &Finished, waiting_for: &str, ctx: &Ctx) -> String {
    let (needed, free, memory) = (size(f.needed_bytes), size(f.free_bytes), ctx.memory());
    match f.outcome.as_str() {
        "too_large" => format!("It needs {needed} of {memory}, more than vramd can ever give it"),
        "timed_out" => {
            let target = match waiting_for {
                "" => format!("{memory} to free up"),
                m => format!("{} to finish", the(m, &ctx.kinds)),
            };
            let mut line = format!("It gave up after waiting {} for {target}", seconds(f.waited_seconds));
            if f.needed_bytes > 0 {
                line.push_str(&format!(" (it needs {needed} and {free} is free)"));
            }
            line
        }
        _ => format!("It needs {needed} of {memory} and only {free} could be freed"),
    }
}

/// What was unloaded to make room, and what that costs the model that gave way.
fn freed_line(f: &Freed, ctx: &Ctx) -> String {
    let who = the(&f.model, &ctx.kinds);
    let next = next_use(&f.model, ctx);
    if f.mode == "soft" {
        format!(
            "To make room, {who} set aside its working memory ({}); {next} may start a little slower",
            size(f.bytes)
        )
    } else {
        format!(
            "To make room, {who} was unloaded ({}); {next} waits for it to load again",
            size(f.bytes)
        )
    }
}

/// The image's last step (its VAE decode) when it did not run whole on the device: how
/// much slower it was, from vramd's measurement, never from a guess.
fn last_step_line(f: &Finished, ctx: &Ctx) -> Option<String> {
    let how = match f.vae_placement.as_str() {
        "cpu" => "ran on the CPU".to_owned(),
        "tiled" => format!("ran in smaller pieces to fit in {}", ctx.memory()),
        _ => return None,
    };
    let start = format!("The last step of the image {how}");
    Some(if f.slower_seconds >= 0.5 {
        format!("{start}: about {} slower", seconds(f.slower_seconds))
    } else if f.slower_seconds >= 0.0 {
        format!("{start}: less than a second slower")
    } else if f.vae_seconds > 0.0 {
        format!("{start} and took {}", seconds(f.vae_seconds))
    } else {
        format!("{start}, which is slower")
    })
}

/// How long the request waited, when that was long enough to notice.
fn waited_line(waited: f64, waiting_for: &str, ctx: &Ctx) -> Option<String> {
    (waited >= WORTH_WAITING_SECS).then(|| match waiting_for {
        "" => format!("It waited {} for {} to free up", seconds(waited), ctx.memory()),
        m => format!("It waited {} for {} to finish", seconds(waited), the(m, &ctx.kinds)),
    })
}

/// A worker that died: always worth telling.
pub fn crashed(model: &str, ctx: &Ctx) -> Notification {
    note(
        format!("{} crashed", subject(model, &ctx.kinds)),
        &["It stopped unexpectedly; vramd starts it again with the next request (vramd's log has the details)".into()],
        CRITICAL,
    )
}

/// A model set aside for a request the agent told about has its working memory back.
pub fn restored(model: &str, bytes: u64, ctx: &Ctx) -> Notification {
    note(
        format!("{} has its memory back", subject(model, &ctx.kinds)),
        &[format!(
            "Its working memory ({}) is restored; {} starts at full speed",
            size(bytes),
            next_use(model, ctx)
        )],
        LOW,
    )
}

/// A load, or an unload for any cause but making room: routine, shown only when asked.
pub fn routine(signal: &Signal, ctx: &Ctx) -> Option<Notification> {
    let lines = match signal {
        Signal::Loaded {
            bytes,
            seconds,
            from_page_cache,
            ..
        } => vec![format!(
            "Loaded into {} in {seconds:.1} s ({}, {})",
            ctx.memory(),
            size(*bytes),
            if *from_page_cache {
                "its file was already in RAM"
            } else {
                "read from disk"
            }
        )],
        Signal::Unloaded { cause, freed_bytes, .. } => {
            let freed = size(*freed_bytes);
            vec![match cause.as_str() {
                "idle" => format!("After sitting idle, it gave back {freed}"),
                "requested" => format!("As asked, it gave back {freed}"),
                "interrupted" => format!("Its image was stopped, so it gave back {freed}"),
                _ => format!("It gave back {freed}"),
            }]
        }
        _ => return None,
    };
    let who = subject(signal.model(), &ctx.kinds);
    let summary = match signal {
        Signal::Unloaded { mode, .. } if mode == "soft" => format!("{who} set aside its working memory"),
        Signal::Unloaded { .. } => format!("{who} unloaded"),
        _ => format!("{who} loaded"),
    };
    Some(note(summary, &lines, LOW))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn ctx(gpu: bool) -> Ctx {
        Ctx {
            kinds: [("chat", "llm"), ("sd", "image")]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect(),
            gpu,
        }
    }

    fn image(outcome: &str) -> Finished {
        Finished {
            model: "sd".into(),
            request_id: "r1".into(),
            kind: "image".into(),
            outcome: outcome.into(),
            vae_placement: "gpu".into(),
            ..Finished::default()
        }
    }

    fn soft(bytes: u64) -> Freed {
        Freed {
            model: "chat".into(),
            mode: "soft".into(),
            bytes,
        }
    }

    fn text(n: &Notification) -> (&str, &str, u8) {
        (&n.summary, &n.body, n.urgency)
    }

    #[test]
    fn an_image_that_made_room_says_what_it_cost_the_chat() {
        let f = Finished {
            freed: vec![soft(512 * MIB)],
            ..image("done")
        };
        let n = finished(&f, "", &ctx(true)).unwrap();
        assert_eq!(
            text(&n),
            (
                "Image ready",
                "To make room, the chat model set aside its working memory (512 MiB); its next answer may start a little slower",
                NORMAL
            )
        );
        let f = Finished {
            freed: vec![Freed {
                mode: "hard".into(),
                ..soft(4 * GIB + GIB / 10)
            }],
            ..image("done")
        };
        assert_eq!(
            finished(&f, "", &ctx(true)).unwrap().body,
            "To make room, the chat model was unloaded (4.1 GiB); its next answer waits for it to load again"
        );
    }

    #[test]
    fn the_last_step_is_told_from_what_vramd_measured() {
        let cpu = |slower: f64, vae: f64| Finished {
            vae_placement: "cpu".into(),
            slower_seconds: slower,
            vae_seconds: vae,
            ..image("done")
        };
        let body = |f: Finished, gpu: bool| finished(&f, "", &ctx(gpu)).unwrap().body;
        assert_eq!(
            body(cpu(28.4, 30.0), true),
            "The last step of the image ran on the CPU: about 28 s slower"
        );
        assert_eq!(
            body(cpu(-1.0, 30.0), true),
            "The last step of the image ran on the CPU and took 30 s"
        );
        assert_eq!(
            body(cpu(0.2, 1.0), true),
            "The last step of the image ran on the CPU: less than a second slower"
        );
        assert_eq!(
            body(cpu(-1.0, 0.0), true),
            "The last step of the image ran on the CPU, which is slower"
        );
        let tiled = Finished {
            vae_placement: "tiled".into(),
            slower_seconds: 1.6,
            ..image("done")
        };
        assert_eq!(
            body(tiled.clone(), true),
            "The last step of the image ran in smaller pieces to fit in GPU memory: about 2 s slower"
        );
        assert_eq!(
            body(tiled, false),
            "The last step of the image ran in smaller pieces to fit in memory: about 2 s slower"
        );
    }

    #[test]
    fn a_request_with_nothing_to_tell_says_nothing() {
        let c = ctx(true);
        assert_eq!(finished(&image("done"), "", &c), None);
        let brief_wait = Finished {
            waited_seconds: 1.5,
            ..image("done")
        };
        assert_eq!(finished(&brief_wait, "chat", &c), None);
        assert_eq!(finished(&image("cancelled"), "chat", &c), None);
        assert_eq!(finished(&image("interrupted"), "", &c), None);
        assert_eq!(finished(&image("something new"), "", &c), None);
        let waited = Finished {
            waited_seconds: 12.2,
            ..image("done")
        };
        assert_eq!(
            finished(&waited, "chat", &c).unwrap().body,
            "It waited 12 s for the chat model to finish"
        );
        assert_eq!(
            finished(&waited, "", &ctx(false)).unwrap().body,
            "It waited 12 s for memory to free up"
        );
        let stopped = Finished {
            freed: vec![soft(GIB)],
            ..image("interrupted")
        };
        assert_eq!(finished(&stopped, "", &c).unwrap().summary, "Image stopped");
    }

    #[test]
    fn requests_that_did_not_run_are_critical_and_say_why() {
        let c = ctx(true);
        let refused = Finished {
            needed_bytes: GIB + GIB / 5,
            free_bytes: 300 * MIB,
            ..image("refused")
        };
        assert_eq!(
            text(&finished(&refused, "", &c).unwrap()),
            (
                "The image could not be made",
                "It needs 1.2 GiB of GPU memory and only 300 MiB could be freed",
                CRITICAL
            )
        );
        let timed_out = Finished {
            waited_seconds: 60.0,
            needed_bytes: GIB,
            free_bytes: 300 * MIB,
            ..image("timed_out")
        };
        assert_eq!(
            finished(&timed_out, "chat", &c).unwrap().body,
            "It gave up after waiting 1 min for the chat model to finish (it needs 1 GiB and 300 MiB is free)"
        );
        let too_large = Finished {
            needed_bytes: 9 * GIB,
            kind: String::new(),
            ..image("too_large")
        };
        assert_eq!(
            text(&finished(&too_large, "", &ctx(false)).unwrap()),
            (
                "The image could not be made",
                "It needs 9 GiB of memory, more than vramd can ever give it",
                CRITICAL
            )
        );
        let failed = Finished {
            model: "chat".into(),
            kind: "text".into(),
            error: "worker said: CUDA error 700".into(),
            ..image("failed")
        };
        let n = finished(&failed, "", &c).unwrap();
        assert_eq!(n.summary, "The chat model could not answer");
        assert_eq!(n.body, "The chat model reported an error; vramd's log has the details");
        assert!(!n.body.contains("CUDA"), "daemon reasons stay in the log");
    }

    #[test]
    fn waiting_crashes_restores_and_routine_events() {
        let c = ctx(true);
        assert_eq!(
            text(&waiting("sd", "chat", GIB, 0, &c)),
            ("Image waiting", "It starts when the chat model is finished", NORMAL)
        );
        assert_eq!(
            waiting("chat", "", GIB, 300 * MIB, &ctx(false)).body,
            "It needs 1 GiB of memory and 300 MiB is free; it starts as soon as there is room"
        );
        let n = crashed("chat", &c);
        assert_eq!((n.summary.as_str(), n.urgency), ("Chat model crashed", CRITICAL));
        assert_eq!(
            text(&restored("chat", 512 * MIB, &c)),
            (
                "Chat model has its memory back",
                "Its working memory (512 MiB) is restored; its next answer starts at full speed",
                LOW
            )
        );
        let loaded = Signal::Loaded {
            model: "sd".into(),
            bytes: 2 * GIB,
            seconds: 0.94,
            from_page_cache: true,
        };
        assert_eq!(
            text(&routine(&loaded, &c).unwrap()),
            (
                "Image model loaded",
                "Loaded into GPU memory in 0.9 s (2 GiB, its file was already in RAM)",
                LOW
            )
        );
        let idle = Signal::Unloaded {
            model: "chat".into(),
            mode: "hard".into(),
            cause: "idle".into(),
            freed_bytes: 4 * GIB,
        };
        assert_eq!(
            text(&routine(&idle, &c).unwrap()),
            ("Chat model unloaded", "After sitting idle, it gave back 4 GiB", LOW)
        );
    }

    #[test]
    fn the_budget_backend_never_says_gpu() {
        let c = ctx(false);
        let all = Finished {
            freed: vec![soft(GIB)],
            vae_placement: "tiled".into(),
            slower_seconds: 3.0,
            waited_seconds: 5.0,
            needed_bytes: GIB,
            ..image("done")
        };
        let mut said = vec![finished(&all, "", &c).unwrap().body];
        for outcome in ["refused", "too_large", "timed_out", "failed"] {
            let f = Finished {
                outcome: outcome.into(),
                ..all.clone()
            };
            said.push(finished(&f, "", &c).unwrap().body);
        }
        said.push(waiting("sd", "", GIB, 0, &c).body);
        let load = Signal::Loaded {
            model: "chat".into(),
            bytes: 1,
            seconds: 1.0,
            from_page_cache: false,
        };
        said.push(routine(&load, &c).unwrap().body);
        for s in said {
            assert!(!s.contains("GPU") && !s.contains("VAE"), "{s}");
        }
    }

    #[test]
    fn names_sizes_and_seconds() {
        let mut k = ctx(true).kinds;
        k.insert("big".into(), "llm".into());
        assert_eq!(subject("chat", &k), "Chat model “chat”");
        assert_eq!(subject("sd", &k), "Image model");
        assert_eq!(subject("ghost", &k), "Model “ghost”");
        assert_eq!(the("chat", &k), "the chat model “chat”");
        assert_eq!(the("ghost", &k), "the model “ghost”");
        assert_eq!(size(512 * MIB), "512 MiB");
        assert_eq!(size(GIB + GIB / 5), "1.2 GiB");
        assert_eq!(seconds(0.2), "1 s");
        assert_eq!(seconds(125.0), "2 min 5 s");
        let q = Quiet::parse(["image", "other, x"]);
        assert!(q.silences("sd", &ctx(true).kinds));
        assert!(q.silences("x", &ctx(true).kinds));
        assert!(!q.silences("chat", &ctx(true).kinds));
    }
}
