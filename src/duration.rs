//! Human durations (`30s`, `5m`, `1h30m`, `250ms`) for the command line and the manifest.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The longest duration accepted anywhere (timeouts, `watch`, `max_stale`): ten years. Every
/// duration is added to a clock reading; bounding it here is what keeps that from overflowing.
pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `base`, doubled for each attempt after the first, never more than `cap`: the one back-off
/// curve of secret-run (HTTP retries add jitter to it; restarts of a failing child do not).
pub fn exponential(base: Duration, attempt: u32, cap: Duration) -> Duration {
    base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(cap)
}

/// Seconds since the epoch: the clock of records that outlive a process (the cache's
/// confirmation times, restart slots' expiries).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A duration a server sent, bounded like any other (a lease of a hundred years is ten).
pub fn clamp(d: Duration) -> Duration {
    d.min(MAX)
}

pub fn parse(text: &str) -> Result<Duration, crate::error::Invalid> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 30s, 5m, 1h"))?;
    if d.is_zero() {
        return Err(format!("`{text}` is zero; a duration must be positive").into());
    }
    if d > MAX {
        return Err(format!(
            "`{text}` is longer than the longest duration accepted ({})",
            humantime::format_duration(MAX)
        )
        .into());
    }
    Ok(d)
}

/// For `#[serde(deserialize_with)]` on a duration field.
pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// For `#[serde(deserialize_with)]` on an optional duration field.
pub fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse(&s).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses() {
        assert_eq!(super::parse("30s").unwrap().as_secs(), 30);
        assert_eq!(super::parse("1h30m").unwrap().as_secs(), 5400);
        assert!(super::parse("0s").is_err());
        assert!(super::parse("soon").is_err());
        assert!(super::parse("3650d").is_ok());
        assert!(super::parse("3651d").is_err());
        assert!(super::parse("500000000000y").is_err());
    }
}
