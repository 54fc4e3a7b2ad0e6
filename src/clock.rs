//! Wall-clock time as whole seconds since the Unix epoch, and its ISO 8601 form.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Seconds since the Unix epoch.
pub type Timestamp = i64;

pub fn now() -> Timestamp {
    now_millis().div_euclid(1000)
}

/// Milliseconds on a clock that never goes back (since boot on Linux), from the kernel's coarse
/// clock: for idle times of connections, which need no finer resolution.
pub fn monotonic_millis() -> i64 {
    #[cfg(target_os = "linux")]
    if let Some(ms) = coarse_millis(libc::CLOCK_MONOTONIC_COARSE) {
        return ms;
    }
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}

/// Milliseconds since the Unix epoch, for activity stamps, expiry and staleness checks: read
/// from the kernel's coarse clock on Linux (a few milliseconds of resolution, at a fraction of
/// the cost), as every request reads it several times.
pub fn now_millis() -> i64 {
    #[cfg(target_os = "linux")]
    if let Some(ms) = coarse_millis(libc::CLOCK_REALTIME_COARSE) {
        return ms;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One of the kernel's coarse clocks, in milliseconds.
#[cfg(target_os = "linux")]
fn coarse_millis(clock: libc::clockid_t) -> Option<i64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; the coarse clocks exist on Linux.
    (unsafe { libc::clock_gettime(clock, &mut ts) } == 0)
        .then(|| ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000)
}

/// `2026-11-22T19:00:00Z`.
pub fn iso(ts: Timestamp) -> String {
    OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A time for people who cannot see it localised (a label read by a screen reader):
/// "2026-12-07 06:50 UTC".
pub fn readable_utc(ts: Timestamp) -> String {
    let iso = iso(ts);
    match (iso.get(..10), iso.get(11..16)) {
        (Some(day), Some(time)) => format!("{day} {time} UTC"),
        _ => iso,
    }
}

/// ISO 8601 with milliseconds, as configurable-http-proxy reports `last_activity` (JavaScript's
/// `toISOString`): always three digits, so that the strings also sort in time order.
pub fn iso_millis(ms: i64) -> String {
    let seconds = iso(ms.div_euclid(1000));
    let whole = seconds.strip_suffix('Z').unwrap_or(&seconds);
    format!("{whole}.{:03}Z", ms.rem_euclid(1000))
}

/// Parses an RFC 3339 / ISO 8601 date-time into milliseconds since the epoch.
pub fn parse_iso_millis(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trips_through_the_parser() {
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_millis(1_500), "1970-01-01T00:00:01.500Z");
        assert_eq!(iso_millis(2_000), "1970-01-01T00:00:02.000Z");
        assert_eq!(iso_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(parse_iso_millis("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(parse_iso_millis(&iso_millis(1_234_567)), Some(1_234_567));
        assert_eq!(parse_iso_millis("not a date"), None);
    }
}
