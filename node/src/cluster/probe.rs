//! The prober: says hello to the seeds and peers that are due (see `members` for when), learns
//! peers from their answers, and reports contacts and failures to the membership table.

use super::members::{Due, Source};
use super::peer::PeerError;
use super::{Shared, PROBE_TICK};
use std::net::SocketAddr;
use std::sync::Arc;

/// Looks for seeds and peers that are due and probes each in its own task.
pub(super) async fn probe_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PROBE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        shared.clocks.tick(crate::clock::now_ms());
        for due in shared.members.due() {
            let shared2 = shared.clone();
            shared.tracker.spawn(async move {
                tokio::select! {
                    _ = shared2.cancel.cancelled() => {}
                    _ = probe(&shared2, &due) => {}
                }
                shared2.members.probed(&due);
            });
        }
    }
}

async fn probe(shared: &Arc<Shared>, due: &Due) {
    match due {
        Due::Seed(target) => {
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(target.as_str()).await {
                Ok(a) => a.collect(),
                Err(e) => {
                    shared
                        .members
                        .seed_result(target, Err(format!("cannot resolve: {e}")));
                    return;
                }
            };
            let mut last = String::from("resolved to no address");
            for addr in addrs {
                match shared.say_hello(addr, None).await {
                    Ok(them) if them.node_id == shared.s.me.node_id => {
                        shared.members.seed_result(target, Ok(them.node_id));
                        return;
                    }
                    Ok(them) => {
                        let me = &shared.s.me;
                        shared.members.learn(
                            them.node_id,
                            addr,
                            Source::Seed,
                            &me.cluster,
                            &me.env,
                        );
                        shared.contact(them.node_id);
                        shared.members.seed_result(target, Ok(them.node_id));
                        return;
                    }
                    Err(PeerError::Identity(why)) => {
                        tracing::warn!(seed = %target, "seed refused: {why}");
                        last = why;
                    }
                    // A peer of this cluster whose clock is off (a member, shown with its
                    // offset, probed until the clock is fixed), or that says this node was
                    // removed (it resets itself and says hello again).
                    Err(e @ (PeerError::Clock { node, .. } | PeerError::Removed { node, .. })) => {
                        let me = &shared.s.me;
                        shared
                            .members
                            .learn(node, addr, Source::Seed, &me.cluster, &me.env);
                        shared.failure(node, &e);
                        shared.members.seed_result(target, Ok(node));
                        return;
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            shared.members.seed_result(target, Err(last));
        }
        Due::Peer(id, addr) => match shared.say_hello(*addr, Some(*id)).await {
            Ok(them) if them.node_id == *id => shared.contact(*id),
            Ok(them) => {
                // Another node answers at that address now.
                shared.failure(
                    *id,
                    &PeerError::Identity(format!("{addr} is now node {:016x}", them.node_id)),
                );
                let me = &shared.s.me;
                shared
                    .members
                    .learn(them.node_id, *addr, Source::Peer, &me.cluster, &me.env);
            }
            Err(e) => shared.failure(*id, &e),
        },
    }
}
