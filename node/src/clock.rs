//! The wall clock, read in one place: everything that needs the time takes it from here (and
//! the pure modules, `store` first, take it as a parameter), so there is one reading to reason
//! about.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
