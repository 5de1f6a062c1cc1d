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

/// A time as Go's RFC 3339 with nanoseconds, in UTC (`2024-05-20T10:31:09.123456789Z`,
/// trailing zeros of the fraction trimmed), which every Ollama client parses.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (days, rest) = (d.as_secs() / 86_400, d.as_secs() % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    let mut s = format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    );
    if d.subsec_nanos() > 0 {
        let frac = format!("{:09}", d.subsec_nanos());
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
