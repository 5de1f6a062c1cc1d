//! Each event in plain words: the one sentence every reader shows (the status page,
//! `vramctl events`, `vramctl top`), so that they never tell the same decision differently.
//!
//! Pure, from the event's structured fields only (never from its `reason`, which is the
//! planner's wording for the log); sizes are rounded as people read them ("512 MiB").

use super::{Cause, Ending, EventKind, Freed, Rejection, RequestKind};
use crate::units::format_size_human;
use vramd_protocol::VaePlacement;

/// The event in one sentence, without a final full stop.
pub fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::ModelLoading { model, bytes, .. } => format!("Loading {model} ({} expected)", size(*bytes)),
        EventKind::ModelLoaded {
            model,
            bytes,
            load_ms,
            from_page_cache,
        } => format!(
            "Loaded {model} ({}) in {}, {}",
            size(*bytes),
            duration(*load_ms),
            if *from_page_cache {
                "from the page cache"
            } else {
                "from disk"
            }
        ),
        EventKind::ModelSoftUnloaded {
            model,
            freed_bytes,
            kept_bytes,
            cause,
            ..
        } => format!(
            "Set aside the working memory of {model}{}{}{}",
            sized(*freed_bytes),
            why(cause),
            if *kept_bytes > 0 {
                format!("; its conversations are kept in RAM{}", sized(*kept_bytes))
            } else {
                String::new()
            }
        ),
        EventKind::ModelUnloaded {
            model,
            freed_bytes,
            cause: Cause::Interrupted,
            ..
        } => format!(
            "Stopped the worker of {model} to interrupt its image{}",
            sized(*freed_bytes)
        ),
        EventKind::ModelUnloaded {
            model,
            freed_bytes,
            cause,
            ..
        } => format!("Unloaded {model}{}{}", sized(*freed_bytes), why(cause)),
        EventKind::ModelRestored {
            model,
            bytes,
            context_ms,
            ..
        } => format!(
            "Gave {model} its working memory back ({}, {})",
            size(*bytes),
            duration(*context_ms)
        ),
        EventKind::VaeTiled {
            model, width, height, ..
        } => format!("Decoding the {width}×{height} image of {model} in tiles, to fit in memory"),
        EventKind::VaeOnCpu {
            model, width, height, ..
        } => format!("Decoding the last step of the {width}×{height} image of {model} on the CPU, to fit in memory"),
        EventKind::RequestQueued { .. } => queued(kind),
        EventKind::RequestRejected { .. } => rejected(kind),
        EventKind::RequestFinished { .. } => finished(kind),
        EventKind::WorkerCrashed { model, reason } => format!("The worker of {model} crashed: {reason}"),
        EventKind::WorkerRestarted { model, pid } => format!("Restarted the worker of {model} (pid {pid})"),
        EventKind::MemoryPressure {
            model,
            need_bytes,
            free_bytes,
            ..
        } => format!(
            "Making room for {model}: it needs {} and {} is free",
            size(*need_bytes),
            size(*free_bytes)
        ),
    }
}

fn queued(kind: &EventKind) -> String {
    let EventKind::RequestQueued {
        model,
        position,
        request_id,
        waiting_for,
        need_bytes,
        free_bytes,
        ..
    } = kind
    else {
        unreachable!("a request_queued event")
    };
    let what = match request_id {
        Some(_) => format!("A request for {model}"),
        None => format!("Loading {model}"),
    };
    match waiting_for {
        Some(busy) => format!("{what} waits for {busy} to finish (number {position} in the queue)"),
        None => format!(
            "{what} waits for memory: it needs {} and {} is free (number {position} in the queue)",
            size(*need_bytes),
            size(*free_bytes)
        ),
    }
}

fn rejected(kind: &EventKind) -> String {
    let EventKind::RequestRejected {
        model,
        kind,
        why,
        waited_ms,
        need_bytes,
        free_bytes,
        ..
    } = kind
    else {
        unreachable!("a request_rejected event")
    };
    let what = purpose(*kind, model);
    match why {
        Rejection::Refused => format!(
            "Refused {what}: it needs {}, {} is free and not enough could be freed",
            size(*need_bytes),
            size(*free_bytes)
        ),
        Rejection::TooLarge => format!(
            "Refused {what}: it needs {}, more than the whole memory budget",
            size(*need_bytes)
        ),
        Rejection::TimedOut => format!("Gave up on {what} after waiting {} for memory", duration(*waited_ms)),
    }
}

fn finished(kind: &EventKind) -> String {
    let EventKind::RequestFinished {
        model,
        kind,
        outcome,
        error,
        queued,
        waited_ms,
        vae,
        slower_ms,
        freed,
        ..
    } = kind
    else {
        unreachable!("a request_finished event")
    };
    let what = purpose(Some(*kind), model);
    let mut s = match outcome {
        Ending::Done if *kind == RequestKind::Image => format!("Made an image with {model}"),
        Ending::Done => format!("Answered with {model}"),
        Ending::Cancelled => format!("{} was cancelled: the client went away", capitalised(&what)),
        Ending::Interrupted => format!("{} was interrupted", capitalised(&what)),
        Ending::Failed => format!("{} failed", capitalised(&what)),
    };
    if *queued {
        s += &format!(" after waiting {}", duration(*waited_ms));
    }
    if *outcome == Ending::Failed {
        s += &format!(": {}", error.as_deref().unwrap_or("no reason given"));
    }
    for f in freed {
        s += &format!("; {}", freed_clause(f));
    }
    if let Some(clause) = vae.and_then(|p| vae_clause(p, *slower_ms)) {
        s += &format!("; {clause}");
    }
    s
}

fn freed_clause(f: &Freed) -> String {
    match f.mode {
        "soft" => format!("set aside the working memory of {}{}", f.model, sized(f.bytes)),
        _ => format!("unloaded {}{}", f.model, sized(f.bytes)),
    }
}

fn vae_clause(placement: VaePlacement, slower_ms: Option<u64>) -> Option<String> {
    let cost = slower_ms.map(|ms| format!(" (+{})", duration(ms))).unwrap_or_default();
    match placement {
        VaePlacement::Gpu => None,
        VaePlacement::Tiled => Some(format!(
            "decoded the image's last step in tiles{cost} so the other models could stay loaded"
        )),
        VaePlacement::Cpu => Some(format!(
            "decoded the image's last step on the CPU{cost} so the other models could stay loaded"
        )),
    }
}

/// Why a model gave memory back, as the end of a sentence.
fn why(cause: &Cause) -> String {
    match cause {
        Cause::Room {
            model, request_kind, ..
        } => format!(" to make room for {}", purpose(*request_kind, model)),
        Cause::Idle => ": unused for its keep_alive".into(),
        Cause::Requested => ", as asked".into(),
        Cause::Interrupted => " to interrupt its image".into(),
        Cause::Other => String::new(),
    }
}

/// What a request was for: "an image of sd", "an answer from chat", "loading chat".
fn purpose(kind: Option<RequestKind>, model: &str) -> String {
    match kind {
        Some(RequestKind::Image) => format!("an image of {model}"),
        Some(RequestKind::Text) => format!("an answer from {model}"),
        None => format!("loading {model}"),
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// A size as people read it: "512 MiB", "1.5 GiB".
fn size(bytes: u64) -> String {
    format_size_human(bytes).replace(".0 ", " ")
}

/// " (512 MiB)", or nothing for zero bytes.
fn sized(bytes: u64) -> String {
    if bytes == 0 {
        String::new()
    } else {
        format!(" ({})", size(bytes))
    }
}

/// "40 ms", "2.4 s", "3 min 5 s".
fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn room(kind: Option<RequestKind>) -> Cause {
        Cause::Room {
            model: "sd".into(),
            request_id: kind.map(|_| "r1".into()),
            request_kind: kind,
            need_bytes: 700 * MIB,
        }
    }

    #[test]
    fn unloads_say_what_was_freed_and_for_whom() {
        let soft = |cause| EventKind::ModelSoftUnloaded {
            model: "chat".into(),
            freed_bytes: 512 * MIB,
            kept_bytes: 0,
            reason: "the planner's words".into(),
            cause,
        };
        assert_eq!(
            describe(&soft(room(Some(RequestKind::Image)))),
            "Set aside the working memory of chat (512 MiB) to make room for an image of sd"
        );
        assert_eq!(
            describe(&soft(room(None))),
            "Set aside the working memory of chat (512 MiB) to make room for loading sd"
        );
        assert_eq!(
            describe(&soft(Cause::Requested)),
            "Set aside the working memory of chat (512 MiB), as asked"
        );
        let kept = EventKind::ModelSoftUnloaded {
            model: "chat".into(),
            freed_bytes: 512 * MIB,
            kept_bytes: 24 * MIB,
            reason: String::new(),
            cause: room(Some(RequestKind::Image)),
        };
        assert_eq!(
            describe(&kept),
            "Set aside the working memory of chat (512 MiB) to make room for an image of sd; \
             its conversations are kept in RAM (24 MiB)"
        );
        let hard = |cause, freed_bytes| EventKind::ModelUnloaded {
            model: "chat".into(),
            freed_bytes,
            reason: String::new(),
            cause,
        };
        assert_eq!(
            describe(&hard(room(Some(RequestKind::Text)), 3 * MIB / 2 * 1024)),
            "Unloaded chat (1.5 GiB) to make room for an answer from sd"
        );
        assert_eq!(
            describe(&hard(Cause::Idle, 0)),
            "Unloaded chat: unused for its keep_alive"
        );
        assert_eq!(describe(&hard(Cause::Other, 0)), "Unloaded chat");
        assert_eq!(
            describe(&hard(Cause::Interrupted, 100 * MIB)),
            "Stopped the worker of chat to interrupt its image (100 MiB)"
        );
    }

    #[test]
    fn loads_restores_and_vae_placements() {
        let loaded = EventKind::ModelLoaded {
            model: "chat".into(),
            bytes: 2 << 30,
            load_ms: 1234,
            from_page_cache: true,
        };
        assert_eq!(describe(&loaded), "Loaded chat (2 GiB) in 1.2 s, from the page cache");
        let restored = EventKind::ModelRestored {
            model: "chat".into(),
            bytes: 512 * MIB,
            context_ms: 40,
            reason: String::new(),
        };
        assert_eq!(
            describe(&restored),
            "Gave chat its working memory back (512 MiB, 40 ms)"
        );
        let cpu = EventKind::VaeOnCpu {
            model: "sd".into(),
            width: 512,
            height: 512,
            reason: String::new(),
            request_id: None,
        };
        assert_eq!(
            describe(&cpu),
            "Decoding the last step of the 512×512 image of sd on the CPU, to fit in memory"
        );
    }

    fn finished(outcome: Ending, vae: Option<VaePlacement>, freed: Vec<Freed>) -> EventKind {
        EventKind::RequestFinished {
            model: "sd".into(),
            request_id: "r1".into(),
            kind: RequestKind::Image,
            outcome,
            error: (outcome == Ending::Failed).then(|| "the worker crashed".into()),
            queued: true,
            waited_ms: 1500,
            vae,
            vae_ms: Some(3000),
            slower_ms: Some(2400),
            freed,
        }
    }

    #[test]
    fn a_finished_request_tells_its_whole_story() {
        let freed = vec![Freed {
            model: "chat".into(),
            mode: "soft",
            bytes: 512 * MIB,
        }];
        assert_eq!(
            describe(&finished(Ending::Done, Some(VaePlacement::Cpu), freed)),
            "Made an image with sd after waiting 1.5 s; set aside the working memory of chat (512 MiB); \
             decoded the image's last step on the CPU (+2.4 s) so the other models could stay loaded"
        );
        assert_eq!(
            describe(&finished(Ending::Failed, Some(VaePlacement::Gpu), vec![])),
            "An image of sd failed after waiting 1.5 s: the worker crashed"
        );
        let text = EventKind::RequestFinished {
            model: "chat".into(),
            request_id: "r2".into(),
            kind: RequestKind::Text,
            outcome: Ending::Done,
            error: None,
            queued: false,
            waited_ms: 0,
            vae: None,
            vae_ms: None,
            slower_ms: None,
            freed: vec![],
        };
        assert_eq!(describe(&text), "Answered with chat");
    }

    #[test]
    fn queued_and_rejected_requests() {
        let queued = EventKind::RequestQueued {
            model: "sd".into(),
            position: 1,
            reason: String::new(),
            request_id: Some("r1".into()),
            waiting_for: Some("chat".into()),
            need_bytes: MIB,
            free_bytes: 0,
        };
        assert_eq!(
            describe(&queued),
            "A request for sd waits for chat to finish (number 1 in the queue)"
        );
        let rejected = |why, waited_ms| EventKind::RequestRejected {
            model: "sd".into(),
            status: 503,
            reason: String::new(),
            request_id: Some("r1".into()),
            kind: Some(RequestKind::Image),
            why,
            waited_ms,
            need_bytes: 5 << 30,
            free_bytes: MIB,
        };
        assert_eq!(
            describe(&rejected(Rejection::TooLarge, 0)),
            "Refused an image of sd: it needs 5 GiB, more than the whole memory budget"
        );
        assert_eq!(
            describe(&rejected(Rejection::TimedOut, 60_000)),
            "Gave up on an image of sd after waiting 1 min 0 s for memory"
        );
    }

    #[test]
    fn names_are_kept_as_they_are() {
        // Escaping is each reader's business (the page uses textContent): the sentence keeps
        // the name, so every reader shows the same one.
        let crashed = EventKind::WorkerCrashed {
            model: "<script>alert(1)</script>".into(),
            reason: "signal 9".into(),
        };
        assert_eq!(
            describe(&crashed),
            "The worker of <script>alert(1)</script> crashed: signal 9"
        );
    }
}
