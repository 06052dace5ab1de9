//! `herd watch`: one line per event of a node's watch stream, until Ctrl-C or stdout closes.
//!
//! Must not interpret events beyond printing them; a stream that fails or ends is an error.

use serde_json::Value;

use super::api::{Api, WATCH};
use super::args::WatchArgs;
use super::encoding::{api_path, printable};
use super::{print, Error};
use crate::client::SseEvent;

pub async fn watch(api: &Api, args: &WatchArgs) -> Result<(), Error> {
    let mut url = api_path(WATCH, &args.path);
    if let Some(since) = args.since {
        url.push_str(&format!("?since={since}"));
    }
    let mut stream = api.events(&url).await?;
    let mut last_revision = args.since;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            event = stream.next() => event,
        };
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(error)) => return Err(error.into()),
            None => return Err(Error::StreamEnded { last_revision }),
        };
        print(&format!("{}\n", line(&event)))?;
        last_revision = revision(&event).or(last_revision);
    }
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
