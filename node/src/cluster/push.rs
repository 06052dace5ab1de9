//! Push replication: one task per live peer sends the registers of every local write as soon
//! as it is durable, batching what piles up while a push is in flight.

use super::{Shared, PUSH_BYTES, PUSH_TIMEOUT};
use crate::store::digest;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Pushes the registers of local writes to peer `id` while it is alive. Changes that pile up
/// while a push is in flight go together in the next one; if the peer fails or falls behind
/// the feed, what it missed is left to anti-entropy and the task ends.
pub(super) async fn push_loop(shared: Arc<Shared>, id: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut rx = shared.db.changes();
    let peer = format!("{id:016x}");
    'outer: loop {
        if !shared.members.is_alive(id) {
            break;
        }
        let first = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = rx.recv() => r,
            // Wake now and then to notice that the peer died.
            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
        };
        let mut batch = match first {
            Ok(c) => vec![c],
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(%peer, missed = n, "push feed lagged; anti-entropy repairs");
                shared.members.with_peer(id, |p| p.needs_repair = true);
                continue;
            }
            Err(RecvError::Closed) => break,
        };
        let mut bytes: usize = batch[0]
            .iter()
            .map(|(k, r)| digest::register_len(k, r))
            .sum();
        while bytes < PUSH_BYTES {
            match rx.try_recv() {
                Ok(c) => {
                    bytes += c
                        .iter()
                        .map(|(k, r)| digest::register_len(k, r))
                        .sum::<usize>();
                    batch.push(c);
                }
                Err(TryRecvError::Lagged(_)) => {
                    shared.members.with_peer(id, |p| p.needs_repair = true);
                }
                Err(_) => break,
            }
        }
        if !shared.s.push {
            continue;
        }
        if !shared.members.is_alive(id) {
            // It failed meanwhile (a probe found it unreachable): leave this to anti-entropy
            // rather than queue a push behind a silent cut.
            shared.members.with_peer(id, |p| p.needs_repair = true);
            break;
        }
        let n: usize = batch.iter().map(|c| c.len()).sum();
        let mut body = Vec::with_capacity(bytes + 8);
        digest::encode_register_iter(
            n,
            batch.iter().flat_map(|c| c.iter().map(|(k, r)| (&**k, r))),
            &mut body,
        );
        let since = Instant::now();
        shared
            .members
            .with_peer(id, |p| p.unacked_since = p.unacked_since.or(Some(since)));
        let client = match shared.members.get(id) {
            Some(p) => shared.client(p.addr),
            None => break,
        };
        let body_len = body.len();
        let result = tokio::select! {
            _ = shared.cancel.cancelled() => break 'outer,
            r = client.call("/peer/v1/push", body.into(), PUSH_TIMEOUT) => r,
        };
        match result {
            Ok((_, answer)) => {
                shared.collect_told(&answer).await;
                shared.stats.pushes.fetch_add(1, Relaxed);
                shared.stats.pushed_registers.fetch_add(n as u64, Relaxed);
                shared.stats.push_bytes.fetch_add(body_len as u64, Relaxed);
                shared.members.with_peer(id, |p| {
                    p.pushed += batch.len() as u64;
                    p.unacked_since = None;
                });
                shared.members.contact(id);
            }
            Err(e) => {
                shared.members.with_peer(id, |p| {
                    p.needs_repair = true;
                    p.unacked_since = None;
                });
                shared.failure(id, &e);
                break;
            }
        }
    }
    shared
        .pushing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    tracing::debug!(%peer, "push task ended");
}
