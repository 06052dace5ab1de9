//! `herd watch --exec CMD`: CMD runs (with `sh -c`) once the watch has the current state, again
//! after a start over (a 410 or a failover), and after changes settle: no change for `--wait`'s
//! MIN, or MAX after the first change not run yet (as consul-template's `wait`). Never two runs
//! at once: changes that come during a run wait for it to end. CMD's failures are logged with
//! their exit status and do not stop the watch.
//!
//! CMD gets `HERD_REASON` (`start`, `change`, `resync`), `HERD_REVISION` (the node's revision
//! the run reflects), `HERD_CHANGED` (the changed paths, one per line; empty for start and
//! resync), `HERD_NODE` and `HERD_WATCH_PATH`, and the same as one JSON object on stdin:
//! `{"reason", "revision", "node", "path", "changes": [{"type", "path"}]}`.

use std::io;
use std::process::{ExitStatus, Stdio};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::note;
use crate::cli::args::Wait;

/// Why CMD runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The watch has the current state for the first time.
    Start,
    /// Changes settled.
    Change,
    /// The watch started over from the current state (a revision the node no longer had, or
    /// another node): what changed in between is unknown.
    Resync,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::Change => "change",
            Reason::Resync => "resync",
        }
    }
}

/// The command and the changes it has not seen yet.
pub struct Exec {
    cmd: String,
    wait: Wait,
    path: String,
    /// Why the next run is due, if one is.
    reason: Option<Reason>,
    /// The revision the next run reflects.
    revision: u64,
    /// Changes not run yet, in order, each path once (with its last type).
    pending: Vec<(String, String)>,
    /// When the first and the last of them came.
    first: Option<Instant>,
    last: Option<Instant>,
    /// The run in progress.
    child: Option<Child>,
}

impl Exec {
    pub fn new(cmd: &str, wait: Wait, path: &str) -> Exec {
        Exec {
            cmd: cmd.to_owned(),
            wait,
            path: path.to_owned(),
            reason: None,
            revision: 0,
            pending: Vec::new(),
            first: None,
            last: None,
            child: None,
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// When the next run is due (it starts then, or when the run in progress ends).
    pub fn due(&self) -> Option<Instant> {
        match self.reason? {
            Reason::Start | Reason::Resync => Some(Instant::now()),
            Reason::Change => {
                let (first, last) = (self.first?, self.last?);
                Some((last + self.wait.min).min(first + self.wait.max))
            }
        }
    }

    /// The watch has the current state (`Start`) or started over (`Resync`) at `revision`:
    /// run once, for everything.
    pub fn start(&mut self, reason: Reason, revision: u64) {
        self.reason = Some(reason);
        self.revision = revision;
        self.pending.clear();
    }

    /// A change under the watched path.
    pub fn change(&mut self, kind: &str, path: &str, revision: u64) {
        self.change_at(kind, path, revision, Instant::now());
    }

    fn change_at(&mut self, kind: &str, path: &str, revision: u64, now: Instant) {
        self.reason.get_or_insert(Reason::Change);
        self.revision = revision;
        self.pending.retain(|(_, p)| p != path);
        self.pending.push((kind.to_owned(), path.to_owned()));
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// Start CMD for what is due.
    pub async fn run(&mut self, node: &str) {
        let Some(reason) = self.reason.take() else {
            return;
        };
        let changes = std::mem::take(&mut self.pending);
        (self.first, self.last) = (None, None);
        let changed: Vec<&str> = changes.iter().map(|(_, p)| p.as_str()).collect();
        let input = json!({
            "reason": reason.as_str(),
            "revision": self.revision,
            "node": node,
            "path": self.path,
            "changes": changes
                .iter()
                .map(|(kind, path)| json!({"type": kind, "path": path}))
                .collect::<Vec<_>>(),
        });
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .env("HERD_REASON", reason.as_str())
            .env("HERD_REVISION", self.revision.to_string())
            .env("HERD_CHANGED", changed.join("\n"))
            .env("HERD_NODE", node)
            .env("HERD_WATCH_PATH", &self.path)
            .stdin(Stdio::piped())
            .spawn();
        match spawned {
            Ok(mut child) => {
                if let Some(mut stdin) = child.stdin.take() {
                    let mut bytes = input.to_string().into_bytes();
                    bytes.push(b'\n');
                    // A command that does not read its input must not block the watch.
                    tokio::spawn(async move {
                        let _ = stdin.write_all(&bytes).await;
                    });
                }
                self.child = Some(child);
            }
            Err(e) => note(&format!("cannot run `{}`: {e}", self.cmd)),
        }
    }

    /// Waits for the run in progress to end.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self.child.as_mut() {
            Some(child) => child.wait().await,
            None => std::future::pending().await,
        }
    }

    /// The run ended with `status`: a failure is logged, and the watch goes on.
    pub fn ran(&mut self, status: io::Result<ExitStatus>) {
        self.child = None;
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => note(&format!("`{}` failed: {status}", self.cmd)),
            Err(e) => note(&format!("cannot wait for `{}`: {e}", self.cmd)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn exec() -> Exec {
        let wait = Wait {
            min: Duration::from_millis(200),
            max: Duration::from_secs(2),
        };
        Exec::new("true", wait, "/app")
    }

    #[test]
    fn a_run_is_due_when_changes_settle_or_at_most_max_after_the_first() {
        let mut e = exec();
        assert_eq!(e.due(), None, "nothing to run yet");
        e.start(Reason::Start, 7);
        assert!(e.due().unwrap() <= Instant::now(), "the start runs at once");
        e.reason = None;
        let t0 = Instant::now();
        e.change_at("put", "/app/a", 8, t0);
        assert_eq!(e.due(), Some(t0 + Duration::from_millis(200)));
        let ms = |n: u64| t0 + Duration::from_millis(n);
        e.change_at("put", "/app/b", 9, ms(150));
        assert_eq!(e.due(), Some(ms(350)), "a new change postpones it");
        // Changes every 100 ms keep postponing it, up to 2 s after the first.
        for i in 0..30 {
            e.change_at(
                "put",
                &format!("/app/k{}", i % 3),
                10 + i,
                ms(200 + 100 * i),
            );
        }
        assert_eq!(e.due(), Some(t0 + Duration::from_secs(2)));
        let paths: Vec<&str> = e.pending.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(paths, ["/app/a", "/app/b", "/app/k0", "/app/k1", "/app/k2"]);
        assert_eq!(e.revision, 39);
    }

    #[test]
    fn a_resync_replaces_the_pending_changes() {
        let mut e = exec();
        e.change("put", "/app/a", 8);
        e.start(Reason::Resync, 20);
        assert!(e.pending.is_empty());
        assert!(e.due().unwrap() <= Instant::now());
        assert_eq!(e.reason, Some(Reason::Resync));
    }
}
