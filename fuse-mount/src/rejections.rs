//! The record of rejected operations: the last 100 for `/.herd/errors`, and the last one per
//! path for the `user.herd.error` extended attribute. Knows nothing of FUSE or the store.

use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many rejections `/.herd/errors` shows.
const RECENT: usize = 100;

/// How many paths keep their last error before the per-path record starts over (a bound on
/// memory, far above what a person reads).
const PER_PATH: usize = 10_000;

/// The rejections of one mount.
#[derive(Debug, Default)]
pub(crate) struct Rejections {
    /// The newest last, one rendered line each.
    recent: VecDeque<String>,
    /// The last error per path: `TIME ERRNO message`.
    by_path: HashMap<Vec<String>, String>,
}

impl Rejections {
    /// Record a rejection of an operation on `path` at `now`.
    pub fn record(&mut self, now: SystemTime, path: &[String], errno: i32, message: &str) {
        let time = rfc3339(now);
        let name = errno_name(errno);
        let message = message.replace('\n', " ");
        tracing::warn!(path = %path_text(path), errno = name, "rejected: {message}");
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent
            .push_back(format!("{time} {} {name} {message}\n", path_text(path)));
        if self.by_path.len() >= PER_PATH {
            self.by_path.clear();
        }
        self.by_path
            .insert(path.to_vec(), format!("{time} {name} {message}"));
    }

    /// Forget the error of a path that was written successfully.
    pub fn clear(&mut self, path: &[String]) {
        self.by_path.remove(path);
    }

    /// The last error for `path`, if it has one.
    pub fn last(&self, path: &[String]) -> Option<&str> {
        self.by_path.get(path).map(String::as_str)
    }

    /// The content of `/.herd/errors`.
    pub fn render(&self) -> Vec<u8> {
        self.recent.iter().flat_map(|l| l.bytes()).collect()
    }
}

/// `/a/b` for `["a", "b"]`, `/` for the root.
pub(crate) fn path_text(path: &[String]) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    path.iter().map(|s| format!("/{s}")).collect()
}

/// The symbolic name of the errnos the mount returns.
pub(crate) fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "ENOENT",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::EROFS => "EROFS",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EAGAIN => "EAGAIN",
        libc::EIO => "EIO",
        libc::EEXIST => "EEXIST",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EISDIR => "EISDIR",
        libc::ENOTDIR => "ENOTDIR",
        libc::ENOTSUP => "ENOTSUP",
        libc::ENOSPC => "ENOSPC",
        _ => "E?",
    }
}

/// `2024-05-01T12:00:00Z` (UTC, whole seconds).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661);
        assert_eq!(rfc3339(t), "2000-02-29T01:01:01Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn keeps_the_last_hundred_and_the_last_per_path() {
        let mut r = Rejections::default();
        let a = vec!["a".to_owned()];
        for i in 0..150 {
            r.record(UNIX_EPOCH, &a, libc::EINVAL, &format!("bad {i}\nvalue"));
        }
        let text = String::from_utf8(r.render()).unwrap();
        assert_eq!(text.lines().count(), 100);
        assert_eq!(
            text.lines().last(),
            Some("1970-01-01T00:00:00Z /a EINVAL bad 149 value")
        );
        assert_eq!(
            r.last(&a),
            Some("1970-01-01T00:00:00Z EINVAL bad 149 value")
        );
        r.clear(&a);
        assert_eq!(r.last(&a), None);
    }
}
