//! `herd watch`: one line per event of a node's watch stream, or with `--exec` a command run
//! once the watch has the current state and again after changes settle (`exec.rs`).
//!
//! Either way it follows the node by itself, until Ctrl-C or SIGTERM (exit 0) or an error no
//! retry can fix (a refused token, a bad path): a dropped stream resumes after the last
//! complete revision (`since`); a revision the node no longer has (410 `compacted`, as after a
//! restart) starts over from the current state; with several `--node`, a node that cannot be
//! reached is left for the next one, which starts over too (revisions are per node).
//!
//! Must not interpret events beyond printing them or handing them to the command.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::api::WATCH;
use super::args::WatchArgs;
use super::discover::Target;
use super::encoding::{api_path, printable};
use super::{print, Error};
use crate::client::{self, Client, EventStream, SseEvent};

mod exec;

use exec::{Exec, Reason};

/// A stream that brings nothing, not even the node's keep-alive comments (every 15 s), for this
/// long has failed.
const IDLE: Duration = Duration::from_secs(45);
/// The longest wait between attempts to reach a node.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A line on stderr about the watch itself.
fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "herd watch: {}", printable(message));
}

/// Notes a failure to reach a node, once per outage and then at most once a minute.
#[derive(Default)]
struct Outage {
    since: Option<std::time::Instant>,
    last: Option<std::time::Instant>,
    failures: u64,
}

impl Outage {
    fn failed(&mut self, message: &str) {
        let now = std::time::Instant::now();
        self.failures += 1;
        let since = *self.since.get_or_insert(now);
        if self.last.is_none_or(|l| now - l >= Duration::from_secs(60)) {
            let more = match self.failures {
                1 => String::new(),
                n => format!(" ({n} attempts in {} s)", (now - since).as_secs()),
            };
            note(&format!("{message}{more}; retrying"));
            self.last = Some(now);
        }
    }

    fn over(&mut self) {
        *self = Outage::default();
    }
}

pub async fn watch(targets: &[Target], args: &WatchArgs) -> Result<(), Error> {
    let clients = targets
        .iter()
        .map(|t| Client::new(&t.url, t.token.clone(), &t.ca_pem))
        .collect::<Result<Vec<_>, _>>()?;
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    let mut exec = args
        .exec
        .as_ref()
        .map(|cmd| Exec::new(cmd, args.wait.unwrap_or_default(), &args.path));
    let base = api_path(WATCH, &args.path);
    let mut at = Follow {
        node: 0,
        since: args.since,
        delivered: None,
        reason: Reason::Start,
    };
    let mut backoff = Duration::from_millis(100);
    let mut reached = true;
    let mut outage = Outage::default();
    loop {
        let url = match at.since {
            Some(rev) => format!("{base}?since={rev}"),
            None => base.clone(),
        };
        let client = &clients[at.node];
        let opened = tokio::select! {
            _ = stop.cancelled() => return finish(exec).await,
            opened = client.events(&url, &[]) => opened,
        };
        match opened {
            Ok(stream) => {
                backoff = Duration::from_millis(100);
                reached = true;
                outage.over();
                let end = follow(stream, &mut at, exec.as_mut(), client.base_url(), &stop).await?;
                match end {
                    End::Stopped => return finish(exec).await,
                    End::Dropped(why) => {
                        note(&format!("{}: {why}; reconnecting", client.base_url()))
                    }
                    End::Compacted => {
                        start_over(&mut at, client.base_url());
                        continue;
                    }
                }
            }
            Err(e) if e.code() == Some("compacted") => {
                start_over(&mut at, client.base_url());
                continue;
            }
            Err(e) if fatal(&e) => return Err(e.into()),
            Err(e) => {
                outage.failed(&e.to_string());
                if !reached && clients.len() > 1 {
                    // Reached neither on the first try nor again: the next node.
                    at.node = (at.node + 1) % clients.len();
                    at.restart(Reason::Resync);
                    note(&format!("failing over to {}", clients[at.node].base_url()));
                    outage.over();
                }
                reached = false;
            }
        }
        if reached {
            // A dropped stream: try the same node again at once.
            reached = false;
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return finish(exec).await,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Where the watch is: the node, the revision to resume after, and what the next `synced`
/// means for `--exec`.
struct Follow {
    node: usize,
    since: Option<u64>,
    /// The newest revision whose events were handed on, and how many of them: a resume after
    /// `since` sends that revision again, and those are skipped.
    delivered: Option<(u64, usize)>,
    reason: Reason,
}

impl Follow {
    /// From the node's current state: nothing to resume or skip.
    fn restart(&mut self, reason: Reason) {
        self.since = None;
        self.delivered = None;
        self.reason = reason;
    }
}

fn start_over(at: &mut Follow, url: &str) {
    match at.since {
        Some(rev) => note(&format!(
            "{url} no longer has revision {rev} (compacted, or restarted); starting over from the current state"
        )),
        None => note(&format!("{url}: starting over from the current state")),
    }
    at.restart(Reason::Resync);
}

/// Errors that reconnecting cannot fix.
fn fatal(e: &client::Error) -> bool {
    match e {
        client::Error::Status { status, .. } => {
            matches!(status.as_u16(), 400 | 401 | 403 | 404 | 405)
        }
        client::Error::BadUrl { .. }
        | client::Error::Ca(_)
        | client::Error::BadPath { .. }
        | client::Error::BadHeader { .. } => true,
        _ => false,
    }
}

/// How one stream ended.
enum End {
    /// Ctrl-C or SIGTERM.
    Stopped,
    /// The connection failed or the node closed it.
    Dropped(String),
    /// The node ended it because the watch fell behind its change log.
    Compacted,
}

/// What woke the loop of [`follow`].
enum Woke {
    Stop,
    Event(Option<Result<SseEvent, client::Error>>),
    Due,
    Ran(std::io::Result<std::process::ExitStatus>),
}

/// Follows one open stream until it ends.
async fn follow(
    mut stream: EventStream,
    at: &mut Follow,
    mut exec: Option<&mut Exec>,
    url: &str,
    stop: &CancellationToken,
) -> Result<End, Error> {
    // Before `synced`, a stream opened without `since` sends the current state.
    let mut synced = at.since.is_some();
    // The newest revision seen, and whether all its events are in (the next revision began).
    let mut newest: Option<u64> = None;
    // Events of a revision handed on before the stream dropped, sent again by the resume.
    let mut skip = at
        .delivered
        .filter(|(rev, _)| at.since.is_some_and(|since| *rev > since));
    loop {
        let due = exec.as_ref().and_then(|e| e.due());
        let running = exec.as_ref().is_some_and(|e| e.running());
        let woke = tokio::select! {
            _ = stop.cancelled() => Woke::Stop,
            ev = stream.next_within(Some(IDLE)) => Woke::Event(ev),
            _ = sleep_until(due), if due.is_some() && !running => Woke::Due,
            status = wait_run(&mut exec), if running => Woke::Ran(status),
        };
        let event = match woke {
            Woke::Stop => return Ok(End::Stopped),
            Woke::Due => {
                if let Some(e) = exec.as_mut() {
                    e.run(url).await;
                }
                continue;
            }
            Woke::Ran(status) => {
                if let Some(e) = exec.as_mut() {
                    e.ran(status);
                }
                continue;
            }
            Woke::Event(None) => return Ok(End::Dropped("the node closed the stream".into())),
            Woke::Event(Some(Err(e))) => return Ok(End::Dropped(e.to_string())),
            Woke::Event(Some(Ok(event))) => event,
        };
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(&event.event)
            .to_owned();
        let revision = revision(&event);
        match kind.as_str() {
            "error" => {
                let code = data.get("code").and_then(Value::as_str).unwrap_or_default();
                let message = data.get("message").and_then(Value::as_str).unwrap_or(code);
                return match code {
                    "compacted" => Ok(End::Compacted),
                    "invalid_token" => {
                        Err(Error::BadInput(format!("{url} ended the watch: {message}")))
                    }
                    _ => Ok(End::Dropped(message.to_owned())),
                };
            }
            "synced" => {
                synced = true;
                if let Some(rev) = revision {
                    at.since = Some(rev);
                    newest = Some(rev);
                }
                match exec.as_mut() {
                    Some(e) if at.reason != Reason::Change => {
                        e.start(at.reason, revision.unwrap_or(0));
                        at.reason = Reason::Change;
                    }
                    Some(_) => {}
                    None => print(&format!("{}\n", line(&event)))?,
                }
            }
            _ => {
                if synced {
                    if let Some(rev) = revision {
                        if let Some((r, n)) = skip.as_mut() {
                            if *r == rev && *n > 0 {
                                *n -= 1;
                                newest = Some(rev);
                                continue; // handed on before the stream dropped
                            }
                        }
                        skip = None;
                        // A revision is complete once the next one begins: resume after it.
                        if newest.is_some_and(|n| rev > n) {
                            at.since = newest;
                        }
                        newest = Some(rev);
                        at.delivered = match at.delivered {
                            Some((r, n)) if r == rev => Some((r, n + 1)),
                            _ => Some((rev, 1)),
                        };
                    }
                }
                match exec.as_mut() {
                    Some(e) if synced => {
                        let path = data.get("path").and_then(Value::as_str).unwrap_or("/");
                        e.change(&kind, path, revision.unwrap_or(0));
                    }
                    Some(_) => {} // the current state: the start run covers it
                    None => print(&format!("{}\n", line(&event)))?,
                }
            }
        }
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

async fn wait_run(exec: &mut Option<&mut Exec>) -> std::io::Result<std::process::ExitStatus> {
    match exec {
        Some(e) => e.wait().await,
        None => std::future::pending().await,
    }
}

/// Ctrl-C or SIGTERM: let a command that is running finish, then end.
async fn finish(exec: Option<Exec>) -> Result<(), Error> {
    if let Some(mut e) = exec {
        if e.running() {
            let status = e.wait().await;
            e.ran(status);
        }
    }
    Ok(())
}

async fn stop_on_signal(stop: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    stop.cancel();
}

/// `<type> <path> <compact value>` (`put /app/port 5433`, `delete /app/x`), or
/// `synced <revision>`; an event of unknown shape as `<event> <data>`.
pub fn line(event: &SseEvent) -> String {
    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
    let kind = data
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or(&event.event);
    if kind == "synced" {
        if let Some(revision) = data.get("revision") {
            return format!("synced {revision}");
        }
    }
    match data.get("path").and_then(Value::as_str).map(printable) {
        Some(path) => match data.get("value") {
            Some(value) => format!("{kind} {path} {value}"),
            None => format!("{kind} {path}"),
        },
        None => format!("{} {}", event.event, event.data),
    }
}

/// The revision an event brings the watcher to: its `id`, else the `revision` in its data.
fn revision(event: &SseEvent) -> Option<u64> {
    match event.id.as_deref().and_then(|id| id.parse().ok()) {
        Some(revision) => Some(revision),
        None => serde_json::from_str::<Value>(&event.data)
            .ok()?
            .get("revision")?
            .as_u64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: &str) -> SseEvent {
        SseEvent {
            event: kind.into(),
            id: Some("42".into()),
            data: data.into(),
        }
    }

    #[test]
    fn events_print_as_one_line_each() {
        let put =
            r#"{"type":"put","path":"/app/db/port","value":5433,"version":"1-0-ab","revision":42}"#;
        assert_eq!(line(&event("put", put)), "put /app/db/port 5433");
        let put = r#"{"type":"put","path":"/a","value":{"b": "x y"},"revision":3}"#;
        assert_eq!(line(&event("put", put)), r#"put /a {"b":"x y"}"#);
        let delete = r#"{"type":"delete","path":"/app/x","version":"1-0-ab","revision":43}"#;
        assert_eq!(line(&event("delete", delete)), "delete /app/x");
        let expire = r#"{"type":"expire","path":"/lock","revision":44}"#;
        assert_eq!(line(&event("expire", expire)), "expire /lock");
        let synced = r#"{"type":"synced","revision":41}"#;
        assert_eq!(line(&event("synced", synced)), "synced 41");
        assert_eq!(line(&event("message", "hello")), "message hello");
    }

    #[test]
    fn revision_comes_from_the_id_or_the_data() {
        assert_eq!(revision(&event("put", "{}")), Some(42));
        let synced = SseEvent {
            event: "synced".into(),
            id: None,
            data: r#"{"type":"synced","revision":41}"#.into(),
        };
        assert_eq!(revision(&synced), Some(41));
        let bare = SseEvent {
            id: None,
            ..event("message", "hello")
        };
        assert_eq!(revision(&bare), None);
    }
}
