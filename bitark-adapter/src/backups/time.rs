//! Recovery times: RFC 3339 with any offset, read into microseconds since the Unix
//! epoch (the unit of a record's commit time), and written back in UTC.

use bitark_infra::backup::Manifest;
use std::time::{Duration, SystemTime};

/// A recovery time that is not an RFC 3339 time.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 time such as 2026-12-02T10:00:00Z or 2026-12-02T11:00:00+01:00")]
pub struct NotATime(pub String);

/// Parses an RFC 3339 time (`2026-12-02T10:00:00Z`, `2026-12-02T11:00:00.250+01:00`)
/// into microseconds since the Unix epoch.
pub fn parse_time(text: &str) -> Result<u64, NotATime> {
    let bad = || NotATime(text.to_string());
    let (local, offset_secs): (&str, i64) = if let Some(rest) = text.strip_suffix(['Z', 'z']) {
        (rest, 0)
    } else {
        let split = text.len().checked_sub(6).filter(|&at| text.is_char_boundary(at)).ok_or_else(bad)?;
        let (rest, zone) = text.split_at(split);
        let sign = match zone.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let (hours, minutes) = zone[1..].split_once(':').ok_or_else(bad)?;
        let hours: i64 = hours.parse().map_err(|_| bad())?;
        let minutes: i64 = minutes.parse().map_err(|_| bad())?;
        if hours > 23 || minutes > 59 {
            return Err(bad());
        }
        (rest, sign * (hours * 3600 + minutes * 60))
    };
    let at = humantime::parse_rfc3339(&format!("{local}Z")).map_err(|_| bad())?;
    let micros = at.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| bad())?.as_micros() as i64;
    u64::try_from(micros - offset_secs * 1_000_000).map_err(|_| bad())
}

/// When the snapshot of `manifest` was taken, in microseconds since the Unix epoch.
pub(super) fn snapshot_micros(manifest: &Manifest) -> Option<u64> {
    let at = humantime::parse_rfc3339(manifest.snapshot_created.as_deref()?).ok()?;
    at.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_micros() as u64)
}

/// `micros` since the Unix epoch as an RFC 3339 time in UTC.
pub(super) fn format_micros(micros: u64) -> String {
    humantime::format_rfc3339_micros(SystemTime::UNIX_EPOCH + Duration::from_micros(micros)).to_string()
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn recovery_times_are_rfc_3339_with_any_offset() {
        let utc = parse_time("2026-12-02T10:00:00Z").unwrap();
        assert_eq!(utc, 1_796_205_600_000_000);
        assert_eq!(parse_time("2026-12-02T11:00:00+01:00").unwrap(), utc);
        assert_eq!(parse_time("2026-12-02T04:30:00-05:30").unwrap(), utc);
        assert_eq!(parse_time("2026-12-02T10:00:00.000250Z").unwrap(), utc + 250);
        for bad in ["yesterday", "2026-12-02", "2026-12-02T10:00:00+1", "2026-12-02T10:00:00+25:00", "", "Z"] {
            let err = parse_time(bad).unwrap_err().to_string();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }
}
