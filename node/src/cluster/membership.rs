//! Who belongs to the cluster, and what every member is known to hold: the rule that lets a
//! deletion be forgotten without ever coming back.
//!
//! **Members** are recorded in the store itself, under `/.herd/members/<node id>`, so they
//! replicate like any key and every digest covers them. A node records a peer there *before*
//! it exchanges anything with it (`admit`), so any node that holds registers from this cluster
//! is a member in the record of the node that gave them. A member is removed by writing a
//! `removed` entry into its record (`herd members remove`, or this node's expiry after
//! `member_expiry` without hearing from it, which a node decides only while it is in touch with
//! a majority of the members, so the two sides of a split never remove each other); a removed
//! node is answered 410 `removed` on every peer route.
//!
//! **Acknowledgements.** When this node's digest root equals a peer's (at the start or end of
//! an anti-entropy round, or when a peer's round starts with equal roots), the peer held
//! exactly what this node held at that revision. `acked[peer]` keeps the newest such revision.
//! The revision every member is known to have held is the least of them over the members in
//! the record (`held`); a tombstone that arrived here by then is held everywhere and is
//! collected (`Db::set_held`), and a collected one is forgotten once every member was seen
//! without it. A member that stays away blocks collection until it comes back or is removed.
//!
//! **Coming back removed.** A node told it was removed (410, or its own record found removed)
//! forgets every register except its own writes that no member in good standing was seen
//! holding (`shared`: per peer, the newest own version in a state it acknowledged; peers
//! removed too, as the 410's `herd-removed-members` or the records say, do not count) and says
//! in its next hellos that it has done so for that removal (`rejoin`); a node that sees that
//! records it as a member again. Tombstones may have been collected without it, so what it
//! held from others must not come back; its own unshared writes are kept and sent.
//!
//! `DATA/cluster.members` keeps, across restarts: `shared`, the removal this node last reset
//! itself for, and how long each member has not been heard from (counted only while this node
//! runs). Acknowledgements are not kept: after a restart every member is asked again.

use super::Shared;
use crate::db::{self, Condition, WriteRequest};
use crate::store::{Lookup, Op, Path, Store, Version};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The key of the member records.
pub const MEMBERS_KEY: &str = ".herd\0members";
/// How often the expiry counts are saved while nothing else changes.
const SAVE_EVERY: Duration = Duration::from_secs(60);

/// A member's record, as stored at `/.herd/members/<node id>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// When it was first recorded (Unix milliseconds).
    pub joined_ms: u64,
    /// The node that recorded it.
    pub admitted_by: String,
    /// Where its peer port answered then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<Removal>,
}

/// Why and when a member was removed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Removal {
    pub at_ms: u64,
    /// The node that wrote the removal.
    pub by: String,
    pub why: String,
}

/// A record and its version (the newest at or below its key).
#[derive(Debug, Clone)]
pub struct Member {
    pub id: u64,
    pub record: Record,
    pub version: Version,
}

fn record_key(id: u64) -> String {
    format!("{MEMBERS_KEY}\0{id:016x}")
}

fn record_path(id: u64) -> Path {
    Path::parse(&format!("/.herd/members/{id:016x}")).expect("a member key is a valid path")
}

/// The member records in a store, by node id (records that do not parse are skipped).
pub fn members(store: &Store, now: u64) -> Vec<Member> {
    let Some(Ok(children)) = store.children(MEMBERS_KEY, now) else {
        return Vec::new();
    };
    children
        .into_iter()
        .filter_map(|(name, _)| {
            let id = u64::from_str_radix(&name, 16).ok()?;
            let key = record_key(id);
            let mut json = String::new();
            store.render(&key, now, &mut json);
            let record = serde_json::from_str(&json).ok()?;
            Some(Member {
                id,
                record,
                version: store.etag(&key, now)?,
            })
        })
        .collect()
}

/// The version of `id`'s removal, if its record says it was removed.
pub fn removed(store: &Store, id: u64, now: u64) -> Option<Version> {
    let key = record_key(id);
    if store.lookup(&format!("{key}\0removed"), now) == Lookup::Missing {
        return None;
    }
    store.etag(&key, now)
}

/// The write of a record.
fn put(id: u64, record: &Record) -> WriteRequest {
    let value = serde_json::to_value(record).expect("a member record serialises");
    WriteRequest {
        ops: vec![Op::put(record_path(id), &value, None).expect("member records are valid")],
        condition: Condition::None,
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// Per peer, the newest own version it was seen holding.
    #[serde(default)]
    shared: HashMap<String, String>,
    /// The removal this node last reset itself for.
    #[serde(default)]
    rejoined: Option<String>,
    /// Milliseconds (of this node running) since each member was last heard from.
    #[serde(default)]
    unseen_ms: HashMap<String, u64>,
}

#[derive(Debug, Default)]
struct Local {
    acked: HashMap<u64, u64>,
    unseen_ms: HashMap<u64, u64>,
    shared: HashMap<u64, Version>,
    rejoined: Version,
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

impl Membership {
    /// Loads `DATA/cluster.members` (a missing or unreadable file starts afresh).
    pub fn open(data_dir: &std::path::Path, me: u64, expiry: Duration) -> Membership {
        let file = data_dir.join("cluster.members");
        let saved: Saved = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let version = |v: &Option<String>| {
            v.as_deref()
                .and_then(|t| t.parse().ok())
                .unwrap_or(Version::ZERO)
        };
        let local = Local {
            shared: saved
                .shared
                .iter()
                .filter_map(|(k, v)| Some((u64::from_str_radix(k, 16).ok()?, v.parse().ok()?)))
                .collect(),
            rejoined: version(&saved.rejoined),
            unseen_ms: saved
                .unseen_ms
                .iter()
                .filter_map(|(k, v)| Some((u64::from_str_radix(k, 16).ok()?, *v)))
                .collect(),
            ..Local::default()
        };
        // The history file of earlier versions (the fixed grace period) means nothing now.
        let _ = std::fs::remove_file(data_dir.join("cluster.history"));
        Membership {
            me,
            file,
            expiry,
            local: Mutex::new(local),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, l: &mut Local) {
        let saved = Saved {
            shared: l
                .shared
                .iter()
                .map(|(k, v)| (format!("{k:016x}"), v.to_string()))
                .collect(),
            rejoined: (l.rejoined != Version::ZERO).then(|| l.rejoined.to_string()),
            unseen_ms: l
                .unseen_ms
                .iter()
                .map(|(k, v)| (format!("{k:016x}"), *v))
                .collect(),
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
        let shared = l.shared.entry(peer).or_default();
        if own_high > *shared {
            *shared = own_high;
            self.save(&mut l);
        }
    }

    /// The revision every member in `members` is known to have held (`u64::MAX` if this node
    /// is the only one).
    pub fn held(&self, members: &[Member]) -> u64 {
        let l = self.lock();
        members
            .iter()
            .filter(|m| m.id != self.me && m.record.removed.is_none())
            .map(|m| l.acked.get(&m.id).copied().unwrap_or(0))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The revision `peer` was last seen holding, if it was since this node started.
    pub fn acked_revision(&self, peer: u64) -> Option<u64> {
        self.lock().acked.get(&peer).copied()
    }

    /// The newest own version a peer not in `removed` was seen holding: this node's writes
    /// up to it are on a member in good standing.
    pub fn shared_to(&self, removed: &[u64]) -> Version {
        let l = self.lock();
        l.shared
            .iter()
            .filter(|(id, _)| !removed.contains(id))
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(Version::ZERO)
    }

    pub fn rejoined(&self) -> Version {
        self.lock().rejoined
    }

    /// This node reset itself for the removal `v`: acknowledgements start over.
    pub fn reset_for(&self, v: Version) {
        let mut l = self.lock();
        l.rejoined = v;
        l.acked.clear();
        self.save(&mut l);
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
        let current: Vec<u64> = members
            .iter()
            .filter(|m| m.id != self.me && m.record.removed.is_none())
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
        if !expired.is_empty() || l.saved.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
            self.save(&mut l);
        }
        expired
    }
}

/// Why a peer is not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// It was removed (at this version of its record) and has not reset itself since.
    Removed(Version),
    /// Its record could not be written.
    Unavailable(db::Error),
}

impl Shared {
    /// The member records as this node holds them now.
    pub(super) fn member_records(&self) -> Vec<Member> {
        members(&self.db.read().store, crate::clock::now_ms())
    }

    /// The version of `id`'s removal, if it was removed.
    pub(super) fn removal(&self, id: u64) -> Option<Version> {
        removed(&self.db.read().store, id, crate::clock::now_ms())
    }

    /// Admits `id` as a member before anything is exchanged with it: writes its record if
    /// there is none, or a new one if it was removed and says it reset itself for that removal
    /// (`rejoin`).
    pub(super) async fn admit(
        &self,
        id: u64,
        addr: std::net::SocketAddr,
        rejoin: Option<Version>,
    ) -> Result<(), Refusal> {
        let now = crate::clock::now_ms();
        let current = {
            let st = self.db.read();
            let key = record_key(id);
            match st.store.lookup(&key, now) {
                Lookup::Missing => None,
                _ => Some(removed(&st.store, id, now)),
            }
        };
        match current {
            Some(None) => return Ok(()),
            Some(Some(v)) if rejoin.is_none_or(|r| r < v) => return Err(Refusal::Removed(v)),
            Some(Some(_)) => {
                tracing::info!(peer = %format!("{id:016x}"), "a removed member reset itself and rejoins");
            }
            None => {}
        }
        let record = Record {
            joined_ms: now,
            admitted_by: format!("{:016x}", self.s.me.node_id),
            addr: Some(addr.to_string()),
            removed: None,
        };
        self.db
            .write(put(id, &record))
            .await
            .map(|_| ())
            .map_err(Refusal::Unavailable)
    }

    /// Removes member `id`: writes its removal into its record.
    pub(super) async fn remove_member(
        &self,
        member: &Member,
        why: &str,
    ) -> Result<Version, db::Error> {
        let record = Record {
            removed: Some(Removal {
                at_ms: crate::clock::now_ms(),
                by: format!("{:016x}", self.s.me.node_id),
                why: why.into(),
            }),
            ..member.record.clone()
        };
        self.db
            .write(put(member.id, &record))
            .await
            .map(|w| w.version)
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

    /// This node was removed (its record at version `v`; `removed` are the members removed
    /// as the node that said so knows them): unless it already did for that removal, forgets
    /// what it holds from others (keeping its own writes no member in good standing holds),
    /// then says so in its hellos.
    pub(super) fn removed_self(self: &std::sync::Arc<Self>, v: Version, removed: &[u64]) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.membership.rejoined() >= v || self.resyncing.swap(true, SeqCst) {
            return;
        }
        let mut gone: Vec<u64> = removed.to_vec();
        gone.extend(
            self.member_records()
                .iter()
                .filter(|m| m.record.removed.is_some())
                .map(|m| m.id),
        );
        let shared = self.clone();
        self.tracker.spawn(async move {
            let keep = shared.membership.shared_to(&gone);
            match shared.db.reset(keep).await {
                Ok(n) => {
                    shared.membership.reset_for(v);
                    tracing::warn!(
                        forgotten = n,
                        removal = %v,
                        "this node was removed from its cluster: it forgot the registers it held from others (keeping its own writes no peer was seen holding) and rejoins"
                    );
                }
                Err(e) => tracing::error!(error = %e, "cannot forget the registers held before the removal"),
            }
            shared.resyncing.store(false, SeqCst);
        });
    }

    /// Once a second: expiries, this node's own removal, removed peers cut off, and what
    /// every member holds.
    pub(super) async fn membership_tick(self: &std::sync::Arc<Self>) {
        let records = self.member_records();
        if let Some(me) = records.iter().find(|m| m.id == self.s.me.node_id) {
            if me.record.removed.is_some() {
                self.removed_self(me.version, &[]);
            }
        }
        for m in records.iter().filter(|m| m.record.removed.is_some()) {
            if self.members.is_alive(m.id) {
                self.members
                    .failure(m.id, "removed from the cluster; waiting for it to rejoin");
            }
        }
        let expired = self
            .membership
            .tick(&records, |id| self.members.is_alive(id));
        // Only a node in touch with a majority of the members removes one: the two sides of a
        // long split must not remove each other (each would then forget the other's writes).
        let me = self.s.me.node_id;
        let current: Vec<u64> = records
            .iter()
            .filter(|m| m.record.removed.is_none() && m.id != me)
            .map(|m| m.id)
            .collect();
        let in_touch = 1 + current
            .iter()
            .filter(|id| self.members.is_alive(**id))
            .count();
        let majority = in_touch * 2 > current.len() + 1;
        if !expired.is_empty() && !majority {
            tracing::debug!(
                in_touch,
                members = current.len() + 1,
                "members past member_expiry are kept: this node is not in touch with a majority"
            );
        }
        for (id, unseen_ms) in expired.into_iter().filter(|_| majority) {
            let Some(m) = records.iter().find(|m| m.id == id) else {
                continue;
            };
            let why = format!("not heard from for {} (member_expiry)", span(unseen_ms));
            match self.remove_member(m, &why).await {
                Ok(_) => tracing::warn!(peer = %format!("{id:016x}"), "member removed: {why}"),
                Err(e) => {
                    tracing::warn!(peer = %format!("{id:016x}"), error = %e, "cannot record an expired member's removal")
                }
            }
        }
        self.db.set_held(self.membership.held(&records));
    }
}

/// A span of milliseconds in its two largest units: `30d 0h`, `2h 5m`, `45s`.
fn span(ms: u64) -> String {
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
            record: Record {
                joined_ms: 1,
                admitted_by: "x".into(),
                addr: None,
                removed: removed.then(|| Removal {
                    at_ms: 2,
                    by: "y".into(),
                    why: "z".into(),
                }),
            },
            version: Version::ZERO,
        }
    }

    #[test]
    fn held_is_the_least_acknowledgement_of_the_members_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let m = Membership::open(dir.path(), 1, Duration::from_secs(10));
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
        let m = Membership::open(dir.path(), 1, Duration::from_secs(10));
        m.acked(2, 10, v(5));
        m.acked(2, 11, v(4));
        m.acked(3, 11, v(7));
        assert_eq!(m.shared_to(&[]), v(7));
        assert_eq!(
            m.shared_to(&[3]),
            v(5),
            "a removed peer's copy does not count"
        );
        m.reset_for(v(9));
        drop(m);
        let m = Membership::open(dir.path(), 1, Duration::from_secs(10));
        assert_eq!((m.shared_to(&[]), m.rejoined()), (v(7), v(9)));
        assert_eq!(m.acked_revision(2), None);
    }

    #[test]
    fn a_member_expires_after_the_time_it_was_not_alive_while_this_node_ran() {
        let dir = tempfile::tempdir().unwrap();
        let m = Membership::open(dir.path(), 1, Duration::from_millis(50));
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
        let m = Membership::open(dir.path(), 1, Duration::from_millis(50));
        let expired: Vec<u64> = m.tick(&all, |_| false).iter().map(|e| e.0).collect();
        assert_eq!(expired, [2]);
    }
}

/// Why `herd members remove` was refused.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("{0}")]
    BadId(String),
    #[error("no member {0} is recorded (see `herd members`)")]
    Unknown(String),
    #[error("{0:?} matches several members: {1}")]
    Ambiguous(String, String),
    #[error("this node cannot remove itself; remove it from another node")]
    Itself,
    #[error("member {0:016x} was already removed: {1}")]
    Already(u64, String),
    #[error("member {0:016x} is alive (it answered in the last seconds); removing it makes it forget what it holds from others and rejoin. Stop it first, or pass --force")]
    Alive(u64),
    #[error(transparent)]
    Db(#[from] db::Error),
}

impl super::Cluster {
    /// Removes the member named by `id` (its node id, or a unique prefix of at least 4 hex
    /// digits): replicated as a write of its record; tombstones stop waiting for it.
    pub async fn remove_member(
        &self,
        id: &str,
        force: bool,
    ) -> Result<serde_json::Value, RemoveError> {
        let shared = &self.shared;
        let id = id.trim().to_ascii_lowercase();
        if id.len() < 4 || id.len() > 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RemoveError::BadId(format!(
                "{id:?} is not a node id (16 hex digits, or a unique prefix of at least 4)"
            )));
        }
        let records = shared.member_records();
        let matching: Vec<&Member> = records
            .iter()
            .filter(|m| format!("{:016x}", m.id).starts_with(&id))
            .collect();
        let m = match matching.as_slice() {
            [] => return Err(RemoveError::Unknown(id)),
            [m] => *m,
            many => {
                let ids: Vec<String> = many.iter().map(|m| format!("{:016x}", m.id)).collect();
                return Err(RemoveError::Ambiguous(id, ids.join(", ")));
            }
        };
        if m.id == shared.s.me.node_id {
            return Err(RemoveError::Itself);
        }
        if let Some(r) = &m.record.removed {
            return Err(RemoveError::Already(m.id, r.why.clone()));
        }
        if !force && shared.members.is_alive(m.id) {
            return Err(RemoveError::Alive(m.id));
        }
        let version = shared
            .remove_member(m, "removed by an operator (herd members remove)")
            .await?;
        tracing::warn!(peer = %format!("{:016x}", m.id), "member removed by an operator");
        shared
            .members
            .failure(m.id, "removed from the cluster; waiting for it to rejoin");
        shared
            .db
            .set_held(shared.membership.held(&shared.member_records()));
        Ok(serde_json::json!({
            "node_id": format!("{:016x}", m.id),
            "removed": true,
            "version": version.to_string(),
        }))
    }

    /// Adds the member records and what each member is known to hold to the members view.
    pub(super) fn add_records(&self, v: &mut serde_json::Value) {
        let shared = &self.shared;
        let records = shared.member_records();
        let held = shared.membership.held(&records);
        let me = shared.s.me.node_id;
        let list = v["members"].as_array_mut().expect("the view lists members");
        for m in records.iter().filter(|m| m.id != me) {
            let hex = format!("{:016x}", m.id);
            let i = match list.iter().position(|e| e["node_id"] == hex.as_str()) {
                Some(i) => i,
                None => {
                    list.push(serde_json::json!({
                        "node_id": hex,
                        "addr": m.record.addr,
                        "state": "unseen",
                        "last_error": "not seen since this node started",
                    }));
                    list.len() - 1
                }
            };
            let e = &mut list[i];
            e["member_since_ms"] = m.record.joined_ms.into();
            e["held_revision"] = shared.membership.acked_revision(m.id).into();
            if let Some(r) = &m.record.removed {
                e["state"] = "removed".into();
                e["removed"] = serde_json::json!({"at_ms": r.at_ms, "by": r.by, "why": r.why});
            }
        }
        let st = shared.db.read();
        let waiting = st.store.tombstone_count();
        let blocked_by: Vec<String> = if waiting == 0 {
            Vec::new()
        } else {
            records
                .iter()
                .filter(|m| m.id != me && m.record.removed.is_none())
                .filter(|m| shared.membership.acked_revision(m.id).unwrap_or(0) == held)
                .map(|m| format!("{:016x}", m.id))
                .collect()
        };
        v["tombstones"] = serde_json::json!({
            "waiting": waiting,
            "collected_remembered": st.store.collected_count(),
            "held_revision": (held != u64::MAX).then_some(held),
            "revision": st.revision,
            "waiting_for": blocked_by,
        });
    }
}

/// Runs the membership tick once a second until the node stops.
pub(super) async fn membership_loop(shared: std::sync::Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => shared.membership_tick().await,
        }
    }
}
