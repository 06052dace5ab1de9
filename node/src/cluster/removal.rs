//! The operator's side of membership: `herd members remove` (`DELETE /v1/members/{id}`), and
//! the members view's records, what each member is known to hold and what deletions wait for.

use super::membership::span;
use super::roster::Member;
use crate::db;

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
    /// digits): replicated as a write of its removal; deletions stop waiting for it.
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
            .filter(|m| m.record.is_some() && format!("{:016x}", m.id).starts_with(&id))
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
        if let (Some(_), Some((r, _))) = (m.removed(), &m.removal) {
            return Err(RemoveError::Already(m.id, r.why.clone()));
        }
        if !force && shared.members.is_alive(m.id) {
            return Err(RemoveError::Alive(m.id));
        }
        let version = shared
            .remove_member(m.id, "removed by an operator (herd members remove)")
            .await?;
        tracing::warn!(peer = %format!("{:016x}", m.id), "member removed by an operator");
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
                        "addr": m.record.as_ref().and_then(|r| r.addr.clone()),
                        "state": "unseen",
                        "last_error": "not seen since this node started",
                    }));
                    list.len() - 1
                }
            };
            let e = &mut list[i];
            e["member_since_ms"] = m.record.as_ref().map(|r| r.joined_ms).into();
            e["held_revision"] = shared.membership.acked_revision(m.id).into();
            if let (Some(_), Some((r, _))) = (m.removed(), &m.removal) {
                e["state"] = "removed".into();
                e["removed"] = serde_json::json!({"at_ms": r.at_ms, "by": r.by, "why": r.why});
            }
        }
        let now = crate::clock::now_ms();
        let st = shared.db.read();
        let waiting = st.store.tombstone_count();
        // Members named only once a deletion has waited ten anti-entropy intervals past the
        // grace period: a younger one waits for its age or the next rounds, not for them.
        let slack = shared.s.tombstone_grace + shared.s.anti_entropy_interval * 10;
        let floor = now.saturating_sub(slack.as_millis() as u64);
        let oldest = st.store.oldest_tombstone_ms();
        let overdue = oldest.is_some_and(|t| t < floor);
        let waiting_for: Vec<String> = if !overdue {
            Vec::new()
        } else {
            records
                .iter()
                .filter(|m| m.id != me && m.is_member())
                .filter(|m| shared.membership.acked_revision(m.id).unwrap_or(0) == held)
                .map(|m| format!("{:016x}", m.id))
                .collect()
        };
        v["tombstones"] = serde_json::json!({
            "waiting": waiting,
            "oldest_age": oldest.map(|t| span(now.saturating_sub(t))),
            "collected_remembered": st.store.collected_count(),
            "held_revision": (held != u64::MAX).then_some(held),
            "revision": st.revision,
            "waiting_for": waiting_for,
        });
    }
}
