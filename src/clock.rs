//! The arbiter's wall clock, in Unix seconds, with one test hook.
//!
//! Idle times decide evictions (an LLM idle for 10 minutes goes first). Tests must not sleep
//! 10 minutes, so when `VRAMD_TEST_CLOCK_OFFSET_FILE` names a file, the number of seconds in
//! it is added to the time on every reading; the test advances the clock by rewriting it.
//! Unset (always, outside tests), this is the system clock.

use std::time::SystemTime;

pub const OFFSET_FILE_ENV: &str = "VRAMD_TEST_CLOCK_OFFSET_FILE";

pub fn now_unix() -> u64 {
    unix_secs(SystemTime::now()) + offset()
}

/// `t` in Unix seconds; 0 for a time before 1970.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Unix milliseconds on the system clock, without the test offset: for how long something
/// has run (image progress), which no test moves.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn offset() -> u64 {
    std::env::var_os(OFFSET_FILE_ENV)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}
