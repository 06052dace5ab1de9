//! The members of the cluster as the store records them: a record per member at
//! `/.herd/members/<node id>` (written by the node that first talked to it), a removal per
//! removed member at `/.herd/removed/<node id>`, and, for a removed node that reset itself and
//! came back, the removal it reset for at `/.herd/rejoined/<node id>`. All replicate like any
//! key. Each is a key of its own, so a record written later by a node that knows neither (a new
//! node) undoes no removal and no rejoin. Reading only: `membership.rs` decides and writes.

use crate::db::{Condition, WriteRequest};
use crate::store::{Op, Path, Store, Version};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The key of the member records.
pub const MEMBERS_KEY: &str = ".herd\0members";
/// The key of the removals.
pub const REMOVED_KEY: &str = ".herd\0removed";
/// The key of the rejoins.
pub const REJOINED_KEY: &str = ".herd\0rejoined";
/// The member keys a removed node keeps through its reset (what it knew of who is a member).
pub const KEPT_BY_A_RESET: [&str; 3] = [MEMBERS_KEY, REMOVED_KEY, REJOINED_KEY];

/// A member's record. Every field has a default, so a record only partly merged (an object
/// whose fields are still on their way) still counts as a member.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Record {
    /// When it was recorded (Unix milliseconds).
    pub joined_ms: u64,
    /// The node that recorded it.
    pub admitted_by: String,
    /// Where its peer port answered then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
}

/// Why and when a member was removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Removal {
    pub at_ms: u64,
    /// The node that wrote the removal.
    pub by: String,
    pub why: String,
}

/// What the store says of one node.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: u64,
    pub record: Option<Record>,
    /// Its last removal and that removal's version, if it was ever removed.
    pub removal: Option<(Removal, Version)>,
    /// The removal it last reset itself for and rejoined after.
    pub rejoined: Option<Version>,
}

impl Member {
    /// The version of its removal if it is removed now (removed, and not rejoined since).
    pub fn removed(&self) -> Option<Version> {
        let (_, v) = self.removal.as_ref()?;
        match self.rejoined {
            Some(r) if r >= *v => None,
            _ => Some(*v),
        }
    }

    /// A member in good standing: recorded, not removed.
    pub fn is_member(&self) -> bool {
        self.record.is_some() && self.removed().is_none()
    }
}

fn key(base: &str, id: u64) -> String {
    format!("{base}\0{id:016x}")
}

fn read<T: serde::de::DeserializeOwned>(
    store: &Store,
    key: &str,
    now: u64,
) -> Option<(T, Version)> {
    let mut json = String::new();
    if !store.render(key, now, &mut json) {
        return None;
    }
    let value = serde_json::from_str(&json).ok()?;
    Some((value, store.etag(key, now)?))
}

fn ids(store: &Store, base: &str, now: u64) -> impl Iterator<Item = u64> {
    let children = match store.children(base, now) {
        Some(Ok(c)) => c,
        _ => Vec::new(),
    };
    children
        .into_iter()
        .filter_map(|(name, _)| u64::from_str_radix(&name, 16).ok())
}

/// What the store says of node `id`.
pub fn member(store: &Store, id: u64, now: u64) -> Member {
    Member {
        id,
        record: read(store, &key(MEMBERS_KEY, id), now).map(|(r, _)| r),
        removal: read(store, &key(REMOVED_KEY, id), now),
        rejoined: read::<String>(store, &key(REJOINED_KEY, id), now)
            .and_then(|(v, _)| v.parse().ok()),
    }
}

/// Every node the store has a record or a removal of, by id.
pub fn members(store: &Store, now: u64) -> Vec<Member> {
    let all: BTreeSet<u64> = ids(store, MEMBERS_KEY, now)
        .chain(ids(store, REMOVED_KEY, now))
        .collect();
    all.into_iter().map(|id| member(store, id, now)).collect()
}

/// A write of `value` at `/.herd/<segment>/<id>`.
fn write(segment: &str, id: u64, value: serde_json::Value) -> WriteRequest {
    let path =
        Path::parse(&format!("/.herd/{segment}/{id:016x}")).expect("a member key is a valid path");
    WriteRequest {
        ops: vec![Op::put(path, &value, None).expect("member records are valid")],
        condition: Condition::None,
    }
}

/// The write of `id`'s record.
pub fn put_record(id: u64, record: &Record) -> WriteRequest {
    let value = serde_json::to_value(record).expect("a member record serialises");
    write("members", id, value)
}

/// The write of `id`'s removal.
pub fn put_removal(id: u64, removal: &Removal) -> WriteRequest {
    let value = serde_json::to_value(removal).expect("a removal serialises");
    write("removed", id, value)
}

/// The writes of `id`'s record and of the removal it rejoined after, as one request.
pub fn put_rejoined(id: u64, record: &Record, removal: Version) -> WriteRequest {
    let mut req = put_record(id, record);
    req.ops
        .extend(write("rejoined", id, removal.to_string().into()).ops);
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Hlc;

    fn apply(store: &mut Store, clock: &mut Hlc, req: WriteRequest) -> Version {
        let v = clock.tick(1_000);
        for op in req.ops {
            let (regs, _) = store.plan_local(op, v, 1_000);
            let plan = store.plan(regs);
            store.apply(plan, 1);
        }
        v
    }

    #[test]
    fn a_removal_stands_until_a_record_names_it_and_a_later_record_does_not_undo_it() {
        let mut s = Store::new();
        let mut clock = Hlc::new(1, Version::ZERO);
        let rec = Record {
            joined_ms: 5,
            admitted_by: "a".into(),
            ..Record::default()
        };
        apply(&mut s, &mut clock, put_record(7, &rec));
        assert!(member(&s, 7, 1_000).is_member());
        let removal = Removal {
            at_ms: 9,
            by: "a".into(),
            why: "gone".into(),
        };
        apply(&mut s, &mut clock, put_removal(7, &removal));
        let v = member(&s, 7, 1_000).removed().expect("removed");
        // A node that never saw the removal records it afresh: it stays removed.
        apply(&mut s, &mut clock, put_record(7, &rec));
        assert_eq!(member(&s, 7, 1_000).removed(), Some(v));
        // It reset itself for that removal and said so: a member again.
        apply(&mut s, &mut clock, put_rejoined(7, &rec, v));
        assert!(member(&s, 7, 1_000).is_member());
        // A new node that never saw any of it records it afresh: still a member.
        apply(&mut s, &mut clock, put_record(7, &rec));
        assert!(member(&s, 7, 1_000).is_member());
        // Removed a second time: the old rejoin does not cover it.
        apply(&mut s, &mut clock, put_removal(7, &removal));
        assert!(member(&s, 7, 1_000).removed().is_some());
        let all: Vec<u64> = members(&s, 1_000).iter().map(|m| m.id).collect();
        assert_eq!(all, [7]);
    }
}
