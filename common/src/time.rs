//! Wall-clock instants as integer milliseconds since the Unix epoch.
//!
//! The wire schema and the coordinator's deterministic core use this type instead of
//! `std::time::SystemTime`: it serialises compactly, compares cheaply and never reads a clock.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// Reads the system clock. Only adapters (agent, coordinator runtime) call this; the decision
    /// core receives `now` from its caller.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        UnixMillis(d.as_millis() as i64)
    }

    pub fn from_secs(s: i64) -> Self {
        UnixMillis(s.saturating_mul(1000))
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Self {
        UnixMillis(self.0.saturating_add(d.as_millis().min(i64::MAX as u128) as i64))
    }

    /// `self - earlier`, or zero when `earlier` is later than `self`.
    pub fn since(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1000);
        let ms = self.0.rem_euclid(1000) as u32;
        match std::time::UNIX_EPOCH.checked_add(Duration::new(secs.max(0) as u64, ms * 1_000_000)) {
            Some(t) if secs >= 0 => write!(f, "{}", humantime::format_rfc3339_millis(t)),
            _ => write!(f, "{}ms", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = UnixMillis(1_000);
        assert_eq!(t.plus(Duration::from_millis(500)), UnixMillis(1_500));
        assert_eq!(t.since(UnixMillis(2_000)), Duration::ZERO);
        assert_eq!(UnixMillis(2_500).since(t), Duration::from_millis(1_500));
    }

    #[test]
    fn displays_rfc3339() {
        assert_eq!(UnixMillis(1_661_724_000_123).to_string(), "2022-08-28T22:00:00.123Z");
    }
}
