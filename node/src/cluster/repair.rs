//! Anti-entropy: every interval a round with one live peer that compares digests
//! (`store::digest`) and exchanges only the registers that differ; and the answer to a peer's
//! round. Equal roots, at the start or the end of a round, are what `membership` counts as a
//! peer holding what this node held.

use super::peer::PeerError;
use super::{Shared, DIGEST_BUDGET, DIGEST_TIMEOUT, PUSH_TIMEOUT};
use crate::store::digest::{self, Reply, Request, Session};
use crate::transport::error_response;
use crate::transport::Body;
use bytes::Bytes;
use http::{Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// Every interval (with jitter), one anti-entropy round with a live peer: one that missed
/// pushes if there is one, else a random one.
pub(super) async fn anti_entropy_loop(shared: Arc<Shared>) {
    loop {
        let base = shared.s.anti_entropy_interval;
        let jitter = base.mul_f64(random_unit() * 0.2);
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(base - base / 10 + jitter) => {}
        }
        let alive = shared.members.alive();
        if alive.is_empty() {
            continue;
        }
        let needy: Vec<(u64, SocketAddr)> = alive
            .iter()
            .copied()
            .filter(|(id, _)| shared.members.get(*id).is_some_and(|p| p.needs_repair))
            .collect();
        // While tombstones wait, the peer seen holding the least goes first, so every member
        // is compared in turn.
        let waiting: Vec<(u64, SocketAddr)> =
            if needy.is_empty() && shared.db.read().store.tombstone_count() > 0 {
                let least = alive
                    .iter()
                    .map(|(id, _)| shared.membership.acked_revision(*id).unwrap_or(0))
                    .min()
                    .unwrap_or(0);
                alive
                    .iter()
                    .copied()
                    .filter(|(id, _)| shared.membership.acked_revision(*id).unwrap_or(0) == least)
                    .collect()
            } else {
                Vec::new()
            };
        let pool = [&needy, &waiting, &alive]
            .into_iter()
            .find(|p| !p.is_empty())
            .unwrap_or(&alive);
        let (id, addr) = pool[(random_unit() * pool.len() as f64) as usize % pool.len()];
        if shared.membership.is_suspect() {
            continue;
        }
        let round = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = anti_entropy_round(&shared, id, addr) => r,
        };
        match round {
            Ok(equal) => {
                shared.members.contact(id);
                if equal {
                    shared.members.with_peer(id, |p| {
                        p.synced_at = Some(SystemTime::now());
                        p.needs_repair = false;
                    });
                }
            }
            Err(e) => shared.failure(id, &e),
        }
    }
}

/// A number in [0, 1) from the system random source.
pub(super) fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// What a root comparison needs of this node's state, read at one moment: the revision, the
/// root, and the newest own version.
fn root_now(shared: &Shared) -> (u64, digest::Root, crate::store::Version) {
    let st = shared.db.read();
    (st.revision, st.store.digest().root(), st.own_high)
}

/// Answers one anti-entropy request from the current store (off the async workers: a leaf
/// stage hashes every key). A round that starts with equal roots counts as the peer holding
/// what this node holds.
pub(super) async fn digest_answer(shared: &Arc<Shared>, them: u64, body: &Bytes) -> Response<Body> {
    if shared.resyncing.load(std::sync::atomic::Ordering::SeqCst) || shared.membership.is_suspect()
    {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "resyncing",
            "this node may have been removed from its cluster (it was down past member_expiry, or is forgetting what it held): it waits until a peer says",
        );
    }
    let req = match Request::decode(body) {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    if let Request::Root(theirs) = &req {
        let (revision, mine, own_high) = root_now(shared);
        if *theirs == mine {
            shared.acked(them, revision, own_high);
        }
    }
    let db = shared.db.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let st = db.read();
        digest::respond(&st.store, &req, DIGEST_BUDGET)
    })
    .await;
    match answered {
        Ok(Ok(reply)) => {
            let mut out = Vec::with_capacity(reply.encoded_len());
            reply.encode(&mut out);
            Response::new(Body::full(Bytes::from(out)))
        }
        Ok(Err(e)) => error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

/// One anti-entropy round with peer `id` at `addr`: compares roots, descends to the buckets
/// that differ, merges what the peer has and we lack, pushes what we have and it lacks, then
/// compares roots again. Returns whether the two stores were equal at the start.
async fn anti_entropy_round(
    shared: &Arc<Shared>,
    id: u64,
    addr: SocketAddr,
) -> Result<bool, PeerError> {
    use std::sync::atomic::Ordering::Relaxed;
    let salt = (random_unit() * (1u64 << 53) as f64) as u64 ^ id;
    let (started, (revision, my_root, own_high)) = {
        let st = shared.db.read();
        let root = st.store.digest().root();
        (
            Session::start(&st.store, salt, DIGEST_BUDGET, None),
            (st.revision, root, st.own_high),
        )
    };
    let Some((mut session, mut req)) = started else {
        return Ok(true);
    };
    let client = shared.client(addr);
    let mut first = true;
    let mut equal = false;
    shared.stats.digest_rounds.fetch_add(1, Relaxed);
    loop {
        let mut out = Vec::with_capacity(req.encoded_len());
        req.encode(&mut out);
        shared
            .stats
            .digest_bytes
            .fetch_add(out.len() as u64, Relaxed);
        let (_, answer) = client
            .call("/peer/v1/digest", out.into(), DIGEST_TIMEOUT)
            .await?;
        shared
            .stats
            .digest_bytes
            .fetch_add(answer.len() as u64, Relaxed);
        let reply = Reply::decode(&answer).map_err(|e| PeerError::Protocol(e.to_string()))?;
        if first {
            equal = matches!(&reply, Reply::Root(r) if *r == my_root);
            if equal {
                shared.acked(id, revision, own_high);
            }
            first = false;
        }
        let db = shared.db.clone();
        let (step, session_back) = tokio::task::spawn_blocking(move || {
            let st = db.read();
            let step = session.step(&st.store, reply);
            drop(st);
            (step, session)
        })
        .await
        .map_err(|e| PeerError::Protocol(e.to_string()))?;
        session = session_back;
        let step = step.map_err(|e| PeerError::Protocol(e.to_string()))?;
        if !step.merge.is_empty() {
            let merged = shared.db.merge(step.merge).await.map_err(|e| {
                PeerError::Protocol(format!("cannot store what the peer sent: {e}"))
            })?;
            shared
                .stats
                .merged_registers
                .fetch_add(merged.applied as u64, Relaxed);
            if !merged.collected.is_empty() {
                // It sent what this node collected: it may collect it too.
                let told = serde_json::to_vec(&super::wire::Collected::new(&merged.collected))
                    .expect("serialises");
                client
                    .call("/peer/v1/collected", told.into(), PUSH_TIMEOUT)
                    .await?;
            }
        }
        if !step.push.is_empty() {
            let mut out = Vec::with_capacity(digest::registers_len(&step.push));
            digest::encode_registers(&step.push, &mut out);
            shared
                .stats
                .digest_bytes
                .fetch_add(out.len() as u64, Relaxed);
            let (_, answer) = client
                .call("/peer/v1/push", out.into(), PUSH_TIMEOUT)
                .await?;
            shared.collect_told(&answer).await;
        }
        match step.next {
            Some(r) => req = r,
            None => break,
        }
    }
    if !equal {
        // Equal now? Then the peer holds what this node holds at this revision.
        let (revision, root, own_high) = root_now(shared);
        let mut out = Vec::new();
        Request::Root(root).encode(&mut out);
        let (_, answer) = client
            .call("/peer/v1/digest", out.into(), DIGEST_TIMEOUT)
            .await?;
        if matches!(Reply::decode(&answer), Ok(Reply::Root(r)) if r == root) {
            shared.acked(id, revision, own_high);
        }
    }
    tracing::debug!(peer = %format!("{id:016x}"), equal, "anti-entropy round done");
    Ok(equal)
}
