//! Who belongs to the cluster, and what every member is known to hold: the rule that lets a
//! deletion be forgotten without ever coming back.
//!
//! **Members** are recorded in the store itself (`roster.rs`), so they replicate like any key
//! and every digest covers them. A node records a peer *before* it exchanges anything with it
//! (`admit`), so any node that holds registers from this cluster is a member in the record of
//! the node that gave them. A member is removed by writing its removal (`herd members remove`,
//! or this node's expiry after `member_expiry` without hearing from it, which a node decides
//! only while it is in touch with a majority of the members, so the two sides of a clean split
//! never remove each other); a removed node is answered 410 `removed` on every peer route but
//! hello.
//!
//! **Acknowledgements.** When this node's digest root equals a peer's (at the start or end of
//! an anti-entropy round, or when a peer's round starts with equal roots), the peer held
//! exactly what this node held at that revision. `acked[peer]` keeps the newest such revision.
//! The revision every member is known to have held is the least of them over the members
//! (`held`); a tombstone that arrived here by then is held everywhere and is collected
//! (`Db::set_held`), and a collected one is forgotten once every member was seen without it. A
//! member that stays away blocks collection until it comes back or is removed.
//!
//! **Coming back removed.** A node told it was removed (410, or its own removal found in its
//! store) forgets every register except the member keys and its own writes that no member in
//! good standing was seen holding (`shared`: per peer, the newest own version in a state it acknowledged and
//! when; a peer removed since does not count, as the 410's `herd-removed-members` or the
//! store says) and says in its next hellos which removal it reset itself for (`rejoin`); a node
//! that sees that records it as a member again (`/.herd/rejoined/<id>`). Until its store has the
//! removals back it admits none of the nodes the 410 listed as removed. Tombstones may have been
//! collected without it, so what it held from others must not come back; its own unshared
//! writes are kept and sent. A node that was *down* for longer than `member_expiry` may have
//! been removed without hearing of it: it is `suspect`, and takes part in no anti-entropy round
//! until a peer that records it as a member says so in a hello (or it is told it was removed).
//!
//! `DATA/cluster.members` keeps, across restarts: `shared`, the removal this node last reset
//! itself for, how long each member has not been heard from (counted only while this node
//! runs), and when it last ran. Acknowledgements are not kept: after a restart every member is
//! asked again.

use super::roster::{self, Member, Record, Removal};
use super::Shared;
use crate::db;
use crate::store::Version;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the state is saved while nothing else changes (and so how precisely the time a
/// node was down is known).
const SAVE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Saved {
    /// Per peer, the newest own version it was seen holding, and when (Unix ms).
    shared: HashMap<String, (String, u64)>,
    /// The removal this node last reset itself for.
    rejoined: Option<String>,
    /// Milliseconds (of this node running) since each member was last heard from.
    unseen_ms: HashMap<String, u64>,
    /// When the node last saved this (Unix ms): it ran until about then.
    last_ms: u64,
}

#[derive(Debug, Default)]
struct Local {
    acked: HashMap<u64, u64>,
    unseen_ms: HashMap<u64, u64>,
    shared: HashMap<u64, (Version, u64)>,
    rejoined: Version,
    suspect: bool,
    /// Nodes a 410 said are removed, before this node's store says so (it reset itself and
    /// has not got the removals back yet): not admitted meanwhile.
    told: HashSet<u64>,
    expired: Vec<u64>,
    last_tick: Option<Instant>,
    saved: Option<Instant>,
}

/// This node's side of membership: acknowledgements, expiry counts, what it shared.
#[derive(Debug)]
pub struct Membership {
    me: u64,
    file: PathBuf,
    expiry: Duration,
    local: Mutex<Local>,
}

fn hex_map<T, U>(m: &HashMap<String, T>, f: impl Fn(&T) -> Option<U>) -> HashMap<u64, U> {
    m.iter()
        .filter_map(|(k, v)| Some((u64::from_str_radix(k, 16).ok()?, f(v)?)))
        .collect()
}

impl Membership {
    /// Loads `DATA/cluster.members` (a missing or unreadable file starts afresh). A node that
    /// last ran longer than `expiry` ago starts suspect.
    pub fn open(data_dir: &std::path::Path, me: u64, expiry: Duration, now_ms: u64) -> Membership {
        let file = data_dir.join("cluster.members");
        let saved: Saved = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let down_ms = now_ms.saturating_sub(saved.last_ms);
        let suspect = saved.last_ms != 0 && u128::from(down_ms) > expiry.as_millis();
        if suspect {
            tracing::warn!(
                down = %span(down_ms),
                "this node was down for longer than member_expiry and may have been removed: it \
                 exchanges nothing with its peers until one confirms it is a member, or says \
                 it was removed (then it forgets what it held from others and rejoins)"
            );
        }
        let local = Local {
            shared: hex_map(&saved.shared, |(v, at)| Some((v.parse().ok()?, *at))),
            rejoined: saved
                .rejoined
                .as_deref()
                .and_then(|t| t.parse().ok())
                .unwrap_or(Version::ZERO),
            unseen_ms: hex_map(&saved.unseen_ms, |v| Some(*v)),
            suspect,
            ..Local::default()
        };
        // The history file of earlier versions (the fixed grace period) means nothing now.
        let _ = std::fs::remove_file(data_dir.join("cluster.history"));
        let m = Membership {
            me,
            file,
            expiry,
            local: Mutex::new(local),
        };
        m.save(&mut m.lock());
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, l: &mut Local) {
        let hex = |k: &u64| format!("{k:016x}");
        let saved = Saved {
            shared: l
                .shared
                .iter()
                .map(|(k, (v, at))| (hex(k), (v.to_string(), *at)))
                .collect(),
            rejoined: (l.rejoined != Version::ZERO).then(|| l.rejoined.to_string()),
            unseen_ms: l.unseen_ms.iter().map(|(k, v)| (hex(k), *v)).collect(),
            last_ms: crate::clock::now_ms(),
        };
        let text = serde_json::to_vec(&saved).expect("serialises");
        match crate::tls::write_atomic(&self.file, &text, 0o644) {
            Ok(()) => l.saved = Some(Instant::now()),
            Err(e) => tracing::warn!(error = %e, "cannot save the membership state"),
        }
    }

    /// `peer` held exactly what this node held at `revision`, when this node's newest own
    /// version was `own_high`.
    pub fn acked(&self, peer: u64, revision: u64, own_high: Version) {
        let mut l = self.lock();
        let a = l.acked.entry(peer).or_default();
        *a = (*a).max(revision);
        let shared = l.shared.entry(peer).or_insert((Version::ZERO, 0));
        if own_high > shared.0 {
            *shared = (own_high, crate::clock::now_ms());
            self.save(&mut l);
        }
    }

    /// The revision every member in good standing in `members` is known to have held
    /// (`u64::MAX` if there is none but this node).
    pub fn held(&self, members: &[Member]) -> u64 {
        let l = self.lock();
        members
            .iter()
            .filter(|m| m.id != self.me && m.is_member())
            .map(|m| l.acked.get(&m.id).copied().unwrap_or(0))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// True if a 410 said `id` is removed and this node's store does not know yet
    /// (`store_knows`: it holds a removal of `id`, from then on the store decides).
    pub fn told_removed(&self, id: u64, store_knows: bool) -> bool {
        let mut l = self.lock();
        if store_knows {
            l.told.remove(&id);
            return false;
        }
        l.told.contains(&id)
    }

    /// The revision `peer` was last seen holding, if it was since this node started.
    pub fn acked_revision(&self, peer: u64) -> Option<u64> {
        self.lock().acked.get(&peer).copied()
    }

    /// The newest own version a peer was seen holding, among the peers in good standing and
    /// not removed since (`removals`: peer → when its last removal was written, Unix ms, and
    /// whether it is removed now): this node's writes up to it are on a member in good
    /// standing.
    pub fn shared_to(&self, removals: &HashMap<u64, (u64, bool)>) -> Version {
        let l = self.lock();
        l.shared
            .iter()
            .filter(|(id, (_, at))| removals.get(id).is_none_or(|(r, now)| !now && r < at))
            .map(|(_, (v, _))| *v)
            .max()
            .unwrap_or(Version::ZERO)
    }

    pub fn rejoined(&self) -> Version {
        self.lock().rejoined
    }

    /// This node reset itself for the removal `v`: acknowledgements start over, and the
    /// nodes the 410 said are removed (`told`) are not admitted until the store says.
    pub fn reset_for(&self, v: Version, told: impl IntoIterator<Item = u64>) {
        let mut l = self.lock();
        l.rejoined = v;
        l.acked.clear();
        l.suspect = false;
        l.told.extend(told);
        self.save(&mut l);
    }

    /// While suspect (down past `member_expiry`), no anti-entropy round runs either way.
    pub fn is_suspect(&self) -> bool {
        self.lock().suspect
    }

    /// A peer that records this node as a member said so.
    pub fn confirmed(&self) {
        let mut l = self.lock();
        if l.suspect {
            l.suspect = false;
            tracing::info!("a peer confirmed this node is still a member");
        }
    }

    /// Counts the time since the last tick against every member not alive now; answers the
    /// members not heard from for `member_expiry` (and how long).
    pub fn tick(&self, members: &[Member], alive: impl Fn(u64) -> bool) -> Vec<(u64, u64)> {
        let mut l = self.lock();
        let now = Instant::now();
        let step = l
            .last_tick
            .map_or(0, |t| now.duration_since(t).as_millis() as u64);
        l.last_tick = Some(now);
        let current: HashSet<u64> = members
            .iter()
            .filter(|m| m.id != self.me && m.is_member())
            .map(|m| m.id)
            .collect();
        l.unseen_ms.retain(|id, _| current.contains(id));
        let mut expired = Vec::new();
        for id in current {
            let unseen = l.unseen_ms.entry(id).or_default();
            *unseen = if alive(id) { 0 } else { *unseen + step };
            if u128::from(*unseen) >= self.expiry.as_millis() {
                expired.push((id, *unseen));
            }
        }
        expired.sort_unstable();
        let ids: Vec<u64> = expired.iter().map(|e| e.0).collect();
        if ids != l.expired || l.saved.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
            l.expired = ids;
            self.save(&mut l);
        }
        expired
    }
}

/// Why a peer is not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// It was removed (its removal at this version) and has not reset itself since.
    Removed(Version),
    /// A 410 told this node it was removed, and its store does not know yet.
    Unconfirmed,
    /// Its record could not be written.
    Unavailable(db::Error),
}

impl Shared {
    /// The members as this node's store records them now.
    pub(super) fn member_records(&self) -> Vec<Member> {
        roster::members(&self.db.read().store, crate::clock::now_ms())
    }

    /// What this node's store says of `id`.
    pub(super) fn member(&self, id: u64) -> Member {
        roster::member(&self.db.read().store, id, crate::clock::now_ms())
    }

    /// Every removal this node knows of: node → (when it was written, Unix ms; whether the
    /// node is removed now).
    pub(super) fn removals(&self) -> HashMap<u64, (u64, bool)> {
        self.member_records()
            .into_iter()
            .filter_map(|m| {
                let now = m.removed().is_some();
                Some((m.id, (m.removal?.0.at_ms, now)))
            })
            .collect()
    }

    /// Admits `id` as a member before anything is exchanged with it: writes its record if
    /// there is none, or one naming its removal if it was removed and says it reset itself
    /// for that removal (`rejoin`).
    pub(super) async fn admit(
        &self,
        id: u64,
        addr: std::net::SocketAddr,
        rejoin: Option<Version>,
    ) -> Result<(), Refusal> {
        let m = self.member(id);
        if m.removed().is_none() && self.membership.told_removed(id, m.removal.is_some()) {
            return Err(Refusal::Unconfirmed);
        }
        let rejoined = match m.removed() {
            Some(v) if rejoin.is_none_or(|r| r < v) => return Err(Refusal::Removed(v)),
            Some(v) => {
                tracing::info!(peer = %format!("{id:016x}"), "a removed member reset itself and rejoins");
                Some(v)
            }
            None if m.record.is_some() => return Ok(()),
            None => None,
        };
        let record = Record {
            joined_ms: crate::clock::now_ms(),
            admitted_by: format!("{:016x}", self.s.me.node_id),
            addr: Some(addr.to_string()),
        };
        let req = match rejoined {
            Some(v) => roster::put_rejoined(id, &record, v),
            None => roster::put_record(id, &record),
        };
        self.db
            .write(req)
            .await
            .map(|_| ())
            .map_err(Refusal::Unavailable)
    }

    /// Removes member `id`: writes its removal.
    pub(super) async fn remove_member(&self, id: u64, why: &str) -> Result<Version, db::Error> {
        let removal = Removal {
            at_ms: crate::clock::now_ms(),
            by: format!("{:016x}", self.s.me.node_id),
            why: why.into(),
        };
        let w = self.db.write(roster::put_removal(id, &removal)).await?;
        self.members
            .failure(id, "removed from the cluster; waiting for it to rejoin");
        self.db
            .set_held(self.membership.held(&self.member_records()));
        Ok(w.version)
    }

    /// A push answer named registers the peer collected: collects them here too.
    pub(super) async fn collect_told(&self, answer: &[u8]) {
        let Ok(a) = serde_json::from_slice::<super::wire::PushAnswer>(answer) else {
            return;
        };
        let told = a.collected.registers();
        if told.is_empty() {
            return;
        }
        match self.db.collect_told(told).await {
            Ok(n) => tracing::debug!(collected = n, "collected what a peer had collected"),
            Err(e) => tracing::warn!(error = %e, "cannot collect what a peer had collected"),
        }
    }

    /// A root comparison found `peer` holding exactly what this node held at `revision`.
    pub(super) fn acked(&self, peer: u64, revision: u64, own_high: Version) {
        self.membership.acked(peer, revision, own_high);
        self.db
            .set_held(self.membership.held(&self.member_records()));
    }

    /// This node was removed (its removal at version `v`; `removals` are the removals the
    /// node that said so knows: node, when, removed now): unless it already did for that
    /// removal, forgets what it holds from others (keeping its own writes no member in good
    /// standing holds, and what it knows of who is a member), then says so in its hellos.
    pub(super) fn removed_self(self: &Arc<Self>, v: Version, removals: &[(u64, u64, bool)]) {
        if self.membership.rejoined() >= v || self.resyncing.swap(true, SeqCst) {
            return;
        }
        let mut gone = self.removals();
        for (id, at, now) in removals {
            let e = gone.entry(*id).or_insert((0, false));
            *e = (e.0.max(*at), e.1 || *now);
        }
        let told: Vec<u64> = gone
            .iter()
            .filter(|(id, (_, now))| *now && **id != self.s.me.node_id)
            .map(|(id, _)| *id)
            .collect();
        // Nothing is collected from here until members are seen holding what is left.
        self.db.set_held(0);
        let shared = self.clone();
        self.tracker.spawn(async move {
            let keep = shared.membership.shared_to(&gone);
            match shared.db.reset(keep, &roster::KEPT_BY_A_RESET).await {
                Ok(n) => {
                    shared.membership.reset_for(v, told);
                    shared.db.set_held(shared.membership.held(&shared.member_records()));
                    tracing::warn!(
                        forgotten = n,
                        removal = %v,
                        "this node was removed from its cluster: it forgot the registers it held from others (keeping its own writes no member was seen holding) and rejoins"
                    );
                }
                Err(e) => tracing::error!(error = %e, "cannot forget the registers held before the removal"),
            }
            shared.resyncing.store(false, SeqCst);
        });
    }

    /// Once a second: expiries, this node's own removal, removed peers cut off, and what
    /// every member holds.
    pub(super) async fn membership_tick(self: &Arc<Self>) {
        let records = self.member_records();
        let me = self.s.me.node_id;
        if let Some(v) = records
            .iter()
            .find(|m| m.id == me)
            .and_then(|m| m.removed())
        {
            self.removed_self(v, &[]);
        }
        for m in records.iter().filter(|m| m.removed().is_some()) {
            if self.members.is_alive(m.id) {
                self.members
                    .failure(m.id, "removed from the cluster; waiting for it to rejoin");
            }
        }
        let expired = self
            .membership
            .tick(&records, |id| self.members.is_alive(id));
        // Only a node in touch with a majority of the members removes one: the two sides of a
        // long split must not remove each other.
        let current: Vec<u64> = records
            .iter()
            .filter(|m| m.is_member() && m.id != me)
            .map(|m| m.id)
            .collect();
        let in_touch = 1 + current
            .iter()
            .filter(|id| self.members.is_alive(**id))
            .count();
        let majority = in_touch * 2 > current.len() + 1;
        for (id, unseen_ms) in expired.into_iter().filter(|_| majority) {
            let why = format!("not heard from for {} (member_expiry)", span(unseen_ms));
            match self.remove_member(id, &why).await {
                Ok(_) => tracing::warn!(peer = %format!("{id:016x}"), "member removed: {why}"),
                Err(e) => {
                    tracing::warn!(peer = %format!("{id:016x}"), error = %e, "cannot record an expired member's removal")
                }
            }
        }
        self.db.set_held(self.membership.held(&records));
    }
}

/// Runs the membership tick once a second until the node stops.
pub(super) async fn membership_loop(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => shared.membership_tick().await,
        }
    }
}

/// A span of milliseconds in its two largest units: `30d 0h`, `2h 5m`, `45s`.
pub(super) fn span(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {}s", s % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_in_two_units() {
        assert_eq!(span(45_900), "45s");
        assert_eq!(span(125_000), "2m 5s");
        assert_eq!(span(7_500_000), "2h 5m");
        assert_eq!(span(30 * 86_400_000 + 3_600_000), "30d 1h");
    }

    fn member(id: u64, removed: bool) -> Member {
        Member {
            id,
            record: Some(Record::default()),
            removal: removed.then(|| (Removal::default(), Version::ZERO)),
            rejoined: None,
        }
    }

    fn open(dir: &std::path::Path, expiry: Duration) -> Membership {
        Membership::open(dir, 1, expiry, crate::clock::now_ms())
    }

    #[test]
    fn held_is_the_least_acknowledgement_of_the_members_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(dir.path(), Duration::from_secs(10));
        assert_eq!(m.held(&[member(1, false)]), u64::MAX, "alone");
        let all = [member(1, false), member(2, false), member(3, false)];
        assert_eq!(m.held(&all), 0, "nobody acknowledged anything yet");
        m.acked(2, 10, Version::ZERO);
        m.acked(3, 7, Version::ZERO);
        m.acked(3, 5, Version::ZERO);
        assert_eq!(m.held(&all), 7);
        let three_removed = [member(1, false), member(2, false), member(3, true)];
        assert_eq!(
            m.held(&three_removed),
            10,
            "a removed member blocks nothing"
        );
    }

    #[test]
    fn shared_to_and_the_removal_survive_a_restart_and_acknowledgements_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let v = |millis| Version {
            millis,
            counter: 0,
            node: 1,
        };
        let m = open(dir.path(), Duration::from_secs(10));
        m.acked(2, 10, v(5));
        m.acked(2, 11, v(4));
        m.acked(3, 11, v(7));
        let none = HashMap::new();
        assert_eq!(m.shared_to(&none), v(7));
        let later = HashMap::from([(3, (crate::clock::now_ms() + 1_000, false))]);
        assert_eq!(
            m.shared_to(&later),
            v(5),
            "a peer removed since does not count"
        );
        let earlier = HashMap::from([(3, (1, false))]);
        assert_eq!(
            m.shared_to(&earlier),
            v(7),
            "one removed and back before does"
        );
        let now = HashMap::from([(3, (1, true))]);
        assert_eq!(m.shared_to(&now), v(5), "one removed now does not");
        m.reset_for(v(9), [4]);
        assert!(m.told_removed(4, false), "told; the store does not know");
        assert!(!m.told_removed(4, true), "the store knows: it decides");
        assert!(!m.told_removed(4, false));
        drop(m);
        let m = open(dir.path(), Duration::from_secs(10));
        assert_eq!((m.shared_to(&none), m.rejoined()), (v(7), v(9)));
        assert_eq!(m.acked_revision(2), None);
        assert!(!m.is_suspect());
        drop(m);
        let m = Membership::open(
            dir.path(),
            1,
            Duration::from_secs(10),
            crate::clock::now_ms() + 11_000,
        );
        assert!(m.is_suspect(), "down longer than the expiry");
        m.confirmed();
        assert!(!m.is_suspect());
    }

    #[test]
    fn a_member_expires_after_the_time_it_was_not_alive_while_this_node_ran() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(dir.path(), Duration::from_millis(50));
        let all = [member(1, false), member(2, false), member(3, false)];
        assert!(
            m.tick(&all, |_| false).is_empty(),
            "the first tick counts nothing"
        );
        std::thread::sleep(Duration::from_millis(60));
        let expired: Vec<u64> = m.tick(&all, |id| id == 3).iter().map(|e| e.0).collect();
        assert_eq!(expired, [2]);
        drop(m);
        // Saved: the count goes on after a restart, without the time the node was down.
        let m = open(dir.path(), Duration::from_millis(50));
        let expired: Vec<u64> = m.tick(&all, |_| false).iter().map(|e| e.0).collect();
        assert_eq!(expired, [2]);
    }
}
