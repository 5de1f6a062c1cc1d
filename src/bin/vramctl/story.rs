//! Which notifications the agent shows, replaces and closes for a sequence of vramd's
//! signals: pure, with the clock as an input, tested on values.
//!
//! One request is one notification, keyed by its request id: a `RequestQueued` opens a
//! "waiting" notice (once the request has waited [`Settings::wait_notice_after`], so a short
//! wait never flashes one), and its `RequestFinished` replaces that notice with the outcome,
//! or closes it when the outcome has nothing worth telling. What was done for a request
//! (models unloaded to make room, the image's last step off the device) is told in its
//! `RequestFinished`, never from the separate `ModelUnloaded` and `VaeOffloaded` signals, and
//! never by guessing which signals belong together. Notifications under different keys never
//! replace each other, so a routine load right after an image cannot hide what that image
//! cost. Loads and unloads for other causes are routine: quiet unless asked for.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::sentences::{self, Ctx, Finished, Notification, Quiet, Signal};

/// What a notification is about: a new one under the same key replaces the old one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// A request, by its id.
    Request(String),
    /// A request without an id (vramd had none to give), by its model.
    Unnamed(String),
    /// A model's crash.
    Crash(String),
    /// A model's routine loads and unloads.
    Routine(String),
    /// A model getting its working memory back.
    Restored(String),
}

/// What the agent does with the notification server.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Show `note`, replacing what was last shown under `key`; `last`: nothing more will
    /// be shown under `key`, so its notification id can be forgotten.
    Show { key: Key, note: Notification, last: bool },
    /// Close what was shown under the key.
    Close(Key),
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub quiet: Quiet,
    /// `--show-routine`: loads, and unloads that made room for nothing in particular.
    pub routine: bool,
    /// A request's waiting notice appears once it has waited this long.
    pub wait_notice_after: Duration,
}

/// A request that waits.
#[derive(Clone, Debug)]
struct Waiting {
    model: String,
    waiting_for: String,
    needed: u64,
    free: u64,
    since: Instant,
    /// Its notice is on screen (else it is still due).
    shown: Option<Notification>,
}

/// What the agent remembers between signals.
#[derive(Debug)]
pub struct Story {
    settings: Settings,
    waiting: BTreeMap<Key, Waiting>,
    /// Models whose working memory the agent said was set aside (so their restore is news).
    told_aside: BTreeSet<String>,
}

fn request_key(model: &str, id: &str) -> Key {
    if id.is_empty() {
        Key::Unnamed(model.to_owned())
    } else {
        Key::Request(id.to_owned())
    }
}

impl Story {
    pub fn new(settings: Settings) -> Story {
        Story {
            settings,
            waiting: BTreeMap::new(),
            told_aside: BTreeSet::new(),
        }
    }

    /// What a signal changes on screen.
    pub fn signal(&mut self, signal: &Signal, ctx: &Ctx, now: Instant) -> Vec<Action> {
        let model = signal.model();
        self.forget_aside(signal);
        if self.settings.quiet.silences(model, &ctx.kinds) {
            return Vec::new();
        }
        match signal {
            Signal::Queued {
                request_id,
                waiting_for,
                needed_bytes,
                free_bytes,
                ..
            } => {
                let key = request_key(model, request_id);
                let w = self.waiting.entry(key).or_insert_with(|| Waiting {
                    model: model.to_owned(),
                    waiting_for: String::new(),
                    needed: 0,
                    free: 0,
                    since: now,
                    shown: None,
                });
                (w.waiting_for, w.needed, w.free) = (waiting_for.clone(), *needed_bytes, *free_bytes);
                self.tick(ctx, now)
            }
            Signal::Finished(f) => self.finished(f, ctx),
            Signal::Crashed { .. } => vec![Action::Show {
                key: Key::Crash(model.to_owned()),
                note: sentences::crashed(model, ctx),
                last: false,
            }],
            Signal::Restored { bytes, .. } if self.told_aside.remove(model) => vec![Action::Show {
                key: Key::Restored(model.to_owned()),
                note: sentences::restored(model, *bytes, ctx),
                last: true,
            }],
            Signal::Unloaded { cause, .. } if cause == "room" => Vec::new(),
            Signal::Loaded { .. } | Signal::Unloaded { .. } if self.settings.routine => sentences::routine(signal, ctx)
                .map(|note| Action::Show {
                    key: Key::Routine(model.to_owned()),
                    note,
                    last: false,
                })
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A model whose working memory went away for another reason, or came back in full,
    /// will not be restored for the request the agent told about.
    fn forget_aside(&mut self, signal: &Signal) {
        let other = match signal {
            Signal::Loaded { .. } => true,
            Signal::Unloaded { mode, cause, .. } => mode == "hard" || cause != "room",
            _ => false,
        };
        if other {
            self.told_aside.remove(signal.model());
        }
    }

    fn finished(&mut self, f: &Finished, ctx: &Ctx) -> Vec<Action> {
        let key = request_key(&f.model, &f.request_id);
        let waited = self.waiting.remove(&key);
        let waiting_for = waited.as_ref().map_or("", |w| w.waiting_for.as_str());
        match sentences::finished(f, waiting_for, ctx) {
            Some(note) => {
                let aside = f.freed.iter().filter(|x| x.mode == "soft");
                self.told_aside.extend(aside.map(|x| x.model.clone()));
                vec![Action::Show { key, note, last: true }]
            }
            None if waited.is_some_and(|w| w.shown.is_some()) => vec![Action::Close(key)],
            None => Vec::new(),
        }
    }

    /// The waiting notices that are due by `now`, and those whose words changed.
    pub fn tick(&mut self, ctx: &Ctx, now: Instant) -> Vec<Action> {
        let after = self.settings.wait_notice_after;
        let mut actions = Vec::new();
        for (key, w) in &mut self.waiting {
            if now < w.since + after {
                continue;
            }
            let note = sentences::waiting(&w.model, &w.waiting_for, w.needed, w.free, ctx);
            if w.shown.as_ref() != Some(&note) {
                w.shown = Some(note.clone());
                actions.push(Action::Show {
                    key: key.clone(),
                    note,
                    last: false,
                });
            }
        }
        actions
    }

    /// When [`Story::tick`] has something to show next.
    pub fn next_due(&self) -> Option<Instant> {
        let after = self.settings.wait_notice_after;
        self.waiting
            .values()
            .filter(|w| w.shown.is_none())
            .map(|w| w.since + after)
            .min()
    }

    /// vramd went away: no request it had will finish, and nothing set aside comes back.
    pub fn vramd_gone(&mut self) -> Vec<Action> {
        self.told_aside.clear();
        std::mem::take(&mut self.waiting)
            .into_iter()
            .filter(|(_, w)| w.shown.is_some())
            .map(|(key, _)| Action::Close(key))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sentences::{Freed, CRITICAL, LOW};

    const MIB: u64 = 1 << 20;
    const WAIT: Duration = Duration::from_secs(2);

    fn ctx() -> Ctx {
        Ctx {
            kinds: [("chat", "llm"), ("sd", "image")]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect(),
            gpu: true,
        }
    }

    fn story(routine: bool) -> Story {
        Story::new(Settings {
            quiet: Quiet::default(),
            routine,
            wait_notice_after: WAIT,
        })
    }

    fn queued(id: &str) -> Signal {
        Signal::Queued {
            model: "sd".into(),
            request_id: id.into(),
            waiting_for: "chat".into(),
            needed_bytes: 0,
            free_bytes: 0,
        }
    }

    fn finished(id: &str, outcome: &str) -> Signal {
        Signal::Finished(Finished {
            model: "sd".into(),
            request_id: id.into(),
            kind: "image".into(),
            outcome: outcome.into(),
            vae_placement: "gpu".into(),
            ..Finished::default()
        })
    }

    fn room(id: &str) -> Signal {
        let Signal::Finished(f) = finished(id, "done") else {
            unreachable!()
        };
        Signal::Finished(Finished {
            freed: vec![Freed {
                model: "chat".into(),
                mode: "soft".into(),
                bytes: 512 * MIB,
            }],
            ..f
        })
    }

    fn unloaded(cause: &str) -> Signal {
        Signal::Unloaded {
            model: "chat".into(),
            mode: "soft".into(),
            cause: cause.into(),
            freed_bytes: 512 * MIB,
        }
    }

    fn loaded(model: &str) -> Signal {
        Signal::Loaded {
            model: model.into(),
            bytes: MIB,
            seconds: 9.0,
            from_page_cache: false,
        }
    }

    /// Keys and summaries of what was shown, "close KEY" for closes.
    fn said(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Show { key, note, .. } => format!("{key:?} {}", note.summary),
                Action::Close(key) => format!("close {key:?}"),
            })
            .collect()
    }

    #[test]
    fn a_long_wait_shows_a_notice_that_the_outcome_replaces() {
        let (mut s, c, t0) = (story(false), ctx(), Instant::now());
        assert!(
            s.signal(&queued("r1"), &c, t0).is_empty(),
            "not yet: it may start at once"
        );
        assert_eq!(s.next_due(), Some(t0 + WAIT));
        assert!(s.tick(&c, t0 + WAIT / 2).is_empty());
        assert_eq!(said(&s.tick(&c, t0 + WAIT)), ["Request(\"r1\") Image waiting"]);
        assert!(s.tick(&c, t0 + WAIT * 2).is_empty(), "shown once");
        assert_eq!(s.next_due(), None);
        let a = s.signal(&finished("r1", "timed_out"), &c, t0 + WAIT * 30);
        assert_eq!(said(&a), ["Request(\"r1\") The image could not be made"]);
        assert!(matches!(&a[0], Action::Show { note, last: true, .. } if note.urgency == CRITICAL));
    }

    #[test]
    fn a_waiting_notice_with_nothing_to_follow_is_closed() {
        let (mut s, c, t0) = (story(false), ctx(), Instant::now());
        s.signal(&queued("r1"), &c, t0);
        s.tick(&c, t0 + WAIT);
        assert_eq!(
            said(&s.signal(&finished("r1", "cancelled"), &c, t0)),
            ["close Request(\"r1\")"]
        );
        // A short wait never showed anything, so there is nothing to close either.
        s.signal(&queued("r2"), &c, t0);
        assert!(s.signal(&finished("r2", "done"), &c, t0).is_empty());
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn a_changed_wait_replaces_its_own_notice() {
        let (mut s, c, t0) = (story(false), ctx(), Instant::now());
        s.signal(&queued("r1"), &c, t0);
        s.tick(&c, t0 + WAIT);
        let memory = Signal::Queued {
            model: "sd".into(),
            request_id: "r1".into(),
            waiting_for: String::new(),
            needed_bytes: MIB,
            free_bytes: 0,
        };
        let a = s.signal(&memory, &c, t0 + WAIT);
        assert!(matches!(&a[..], [Action::Show { key: Key::Request(id), note, .. }]
            if id == "r1" && note.body.contains("as soon as there is room")));
    }

    #[test]
    fn what_made_room_is_told_once_in_the_request_and_its_restore_after() {
        let (mut s, c, t0) = (story(true), ctx(), Instant::now());
        assert!(s.signal(&unloaded("room"), &c, t0).is_empty(), "told by the request");
        assert_eq!(said(&s.signal(&room("r1"), &c, t0)), ["Request(\"r1\") Image ready"]);
        let back = Signal::Restored {
            model: "chat".into(),
            bytes: 512 * MIB,
        };
        let a = s.signal(&back, &c, t0);
        assert_eq!(said(&a), ["Restored(\"chat\") Chat model has its memory back"]);
        assert!(matches!(&a[0], Action::Show { note, .. } if note.urgency == LOW));
        assert!(s.signal(&back, &c, t0).is_empty(), "only for an eviction it told about");
        // Told, then unloaded for another reason: a later restore is not that request's.
        s.signal(&room("r2"), &c, t0);
        s.signal(&unloaded("idle"), &c, t0);
        assert!(s.signal(&back, &c, t0).is_empty());
    }

    #[test]
    fn routine_events_are_quiet_unless_asked_and_never_replace_a_request() {
        let (c, t0) = (ctx(), Instant::now());
        let mut quiet = story(false);
        for signal in [loaded("sd"), unloaded("idle"), unloaded("requested")] {
            assert!(quiet.signal(&signal, &c, t0).is_empty(), "{signal:?}");
        }
        let mut s = story(true);
        let offload = Signal::Finished(Finished {
            vae_placement: "cpu".into(),
            slower_seconds: 28.0,
            ..match finished("r1", "done") {
                Signal::Finished(f) => f,
                _ => unreachable!(),
            }
        });
        let mut a = s.signal(&offload, &c, t0);
        a.extend(s.signal(&loaded("chat"), &c, t0));
        a.extend(s.signal(&unloaded("idle"), &c, t0));
        assert_eq!(
            said(&a),
            [
                "Request(\"r1\") Image ready",
                "Routine(\"chat\") Chat model loaded",
                "Routine(\"chat\") Chat model set aside its working memory",
            ]
        );
    }

    #[test]
    fn requests_never_share_a_notification() {
        let (mut s, c, t0) = (story(false), ctx(), Instant::now());
        s.signal(&queued("r1"), &c, t0);
        s.signal(&queued("r2"), &c, t0);
        assert_eq!(
            said(&s.tick(&c, t0 + WAIT)),
            ["Request(\"r1\") Image waiting", "Request(\"r2\") Image waiting"]
        );
        let a = s.signal(&room("r2"), &c, t0);
        assert_eq!(said(&a), ["Request(\"r2\") Image ready"]);
        // Without ids, requests are told apart by model.
        let anon = |model: &str| Signal::Queued {
            model: model.into(),
            request_id: String::new(),
            waiting_for: String::new(),
            needed_bytes: 0,
            free_bytes: 0,
        };
        s.signal(&anon("chat"), &c, t0);
        let keys = said(&s.tick(&c, t0 + WAIT));
        assert_eq!(keys, ["Unnamed(\"chat\") Chat model waiting"]);
    }

    #[test]
    fn crashes_quiet_models_and_a_vanished_daemon() {
        let (c, t0) = (ctx(), Instant::now());
        let mut s = Story::new(Settings {
            quiet: Quiet::parse(["image"]),
            routine: true,
            wait_notice_after: Duration::ZERO,
        });
        let crash = |model: &str| Signal::Crashed {
            model: model.into(),
            reason: "killed by signal 9".into(),
        };
        assert!(s.signal(&crash("sd"), &c, t0).is_empty(), "image models are quiet");
        assert!(s.signal(&queued("r1"), &c, t0).is_empty());
        assert!(s.signal(&room("r1"), &c, t0).is_empty());
        assert_eq!(
            said(&s.signal(&crash("chat"), &c, t0)),
            ["Crash(\"chat\") Chat model crashed"]
        );
        let mut s = story(false);
        s.signal(&queued("r1"), &c, t0);
        s.signal(&queued("r2"), &c, t0);
        s.tick(&c, t0 + WAIT);
        s.signal(&queued("r3"), &c, t0 + WAIT);
        assert_eq!(
            said(&s.vramd_gone()),
            ["close Request(\"r1\")", "close Request(\"r2\")"]
        );
        assert_eq!(s.next_due(), None);
    }
}
