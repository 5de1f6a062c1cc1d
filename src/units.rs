//! Byte sizes and durations as people write them in the configuration.
//!
//! Sizes are strings with a unit (`"8GiB"`, `"512MiB"`, `"1.5GB"`) or integers in bytes;
//! durations are strings (`"30s"`, `"5m"`, `"1h"`, `"250ms"`) where `"0"` means *never*.
//! Both print back in a form that parses to the same value, so `vramd --check-config`
//! output is itself a valid configuration.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Serialize, Serializer};

/// A number of bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// A duration where zero means "never" (an idle timeout of 0 disables it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout(pub Option<Duration>);

const UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("kB", 1_000),
    ("B", 1),
];

/// Parses `"8GiB"`, `"512 MiB"`, `"1.5GiB"`, `"4096"`. Units are case-sensitive on purpose:
/// `Mb` (megabit) and `MB` are different things and we refuse to guess.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim());
    if num.is_empty() {
        return Err(format!(
            "invalid size {text:?}: expected a number with a unit such as \"8GiB\""
        ));
    }
    let mult = if unit.is_empty() {
        1
    } else {
        UNITS.iter().find(|(u, _)| *u == unit).map(|(_, m)| *m).ok_or_else(|| {
            format!("invalid size {text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)")
        })?
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| format!("size {text:?} is too large"));
    }
    let f: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {text:?}: {num:?} is not a number"))?;
    let bytes = f * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("size {text:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Formats bytes exactly when a binary unit divides them (`8GiB`), else as plain bytes.
pub fn format_size_exact(bytes: u64) -> String {
    for (unit, mult) in UNITS.iter().filter(|(u, _)| u.ends_with("iB")) {
        if bytes >= *mult && bytes % mult == 0 {
            return format!("{}{unit}", bytes / mult);
        }
    }
    format!("{bytes}B")
}

/// Formats bytes for people, rounded to one decimal (`4.1 GiB`).
pub fn format_size_human(bytes: u64) -> String {
    for (unit, mult) in UNITS.iter().filter(|(u, _)| u.ends_with("iB")) {
        if bytes >= *mult {
            return format!("{:.1} {unit}", bytes as f64 / *mult as f64);
        }
    }
    format!("{bytes} B")
}

/// Parses `"30s"`, `"5m"`, `"1h"`, `"2d"`, `"250ms"`, `"1h30m"`; `"0"` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let err = || format!("invalid duration {text:?}: expected e.g. \"30s\", \"5m\", \"1h\" or \"0\"");
    let mut total = Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            "d" => Duration::from_secs(n.checked_mul(86_400).ok_or_else(err)?),
            _ => return Err(err()),
        };
        total = total.checked_add(part).ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Formats a duration with the largest units that divide it exactly (`5m`, `1h30m`, `0`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0".into();
    }
    let mut ms = d.as_millis();
    let mut out = String::new();
    for (unit, len) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= len {
            out.push_str(&format!("{}{unit}", ms / len));
            ms %= len;
        }
    }
    out
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size_exact(self.0))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size_exact(self.0))
    }
}

impl<'de> de::Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"8GiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("size must not be negative, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Timeout {
    pub const NEVER: Timeout = Timeout(None);

    pub fn from_duration(d: Duration) -> Self {
        Timeout((!d.is_zero()).then_some(d))
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0.unwrap_or(Duration::ZERO)))
    }
}

impl Serialize for Timeout {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> de::Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Timeout;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\", \"1h\" or \"0\" for never")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timeout, E> {
                match v {
                    0 => Ok(Timeout::NEVER),
                    _ => Err(E::custom(format!(
                        "duration {v} has no unit: write \"{v}s\", \"{v}m\" or \"0\" for never"
                    ))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timeout, E> {
                parse_duration(v).map(Timeout::from_duration).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn sizes_reject_nonsense() {
        assert!(parse_size("").unwrap_err().contains("expected a number"));
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("8Gb").unwrap_err().contains("unknown unit \"Gb\""));
        assert!(parse_size("1.2.3MiB").unwrap_err().contains("not a number"));
        assert!(parse_size("99999999999TiB").unwrap_err().contains("too large"));
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "m", "5x", "1.5h", "-1s", "5 m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formatting_is_exact_and_readable() {
        assert_eq!(format_size_exact(8 << 30), "8GiB");
        assert_eq!(format_size_exact(1536 << 20), "1536MiB");
        assert_eq!(format_size_exact(1000), "1000B");
        assert_eq!(format_size_exact(0), "0B");
        assert_eq!(format_size_human(4_402_341_478), "4.1 GiB");
        assert_eq!(format_size_human(12), "12 B");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_millis(3_601_500)), "1h1s500ms");
    }

    proptest! {
        #[test]
        fn size_roundtrips(n in any::<u64>()) {
            prop_assert_eq!(parse_size(&format_size_exact(n)), Ok(n));
        }

        #[test]
        fn duration_roundtrips(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
