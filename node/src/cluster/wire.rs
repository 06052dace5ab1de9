//! What travels between peers besides registers and digest messages (whose binary encoding,
//! checked on decode, is `store::digest`'s): the identity headers every peer request and
//! response carries, and the hello document.

use crate::store::Version;
use serde::{Deserialize, Serialize};

/// The version of the peer protocol this node speaks (also in mDNS TXT records).
pub const PROTO: u32 = 1;
/// `Hello::you` for a member in good standing.
pub const YOU_MEMBER: &str = "member";
/// The node id of the sender, 16 hex digits.
pub const H_NODE: &str = "herd-node";
/// The sender's cluster name.
pub const H_CLUSTER: &str = "herd-cluster";
/// The sender's environment.
pub const H_ENV: &str = "herd-env";
/// The sender's peer protocol version.
pub const H_PROTO: &str = "herd-proto";
/// The sender's wall clock when it sent the message, in milliseconds since the epoch (see
/// `cluster::clocks`). Optional: a node that does not send it is not measured.
pub const H_TIME: &str = "herd-time";
/// On a 410 `removed` answer: the version of the removal of the node that asked (see
/// `cluster::membership`).
pub const H_REMOVED: &str = "herd-removed";
/// On a 410 `removed` answer: every removal the answering node knows, `id:unix ms:1` (removed
/// now) or `:0` (back since), comma-separated: the removed node knows which of its peers'
/// copies no longer count, and admits none of those removed until its store knows.
pub const H_REMOVED_MEMBERS: &str = "herd-removed-members";

/// A peer as one node tells another about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Node id, 16 hex digits.
    pub id: String,
    /// Where its peer port answers.
    pub addr: std::net::SocketAddr,
}

/// The body of `POST /peer/v1/hello` and of its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's peer port (its address is the connection's).
    pub peer_port: u16,
    /// The removal (the version of its member record) the sender reset itself for, if it was
    /// ever removed: a node that holds that removal records it as a member again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoin: Option<String>,
    /// What the sender's store says of the receiver: `member` if it records it as a member in
    /// good standing (a node that was down past `member_expiry` waits for this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub you: Option<String>,
    /// The live peers the sender knows, so peers are learned from peers.
    #[serde(default)]
    pub peers: Vec<PeerInfo>,
}

/// Registers collected by the node that says so: (key in the store's encoding, version).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    #[serde(default)]
    pub collected: Vec<(String, String)>,
}

impl Collected {
    pub fn new(regs: &[(Box<str>, Version)]) -> Collected {
        Collected {
            collected: regs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The registers named (entries that do not parse are skipped).
    pub fn registers(self) -> Vec<(Box<str>, Version)> {
        self.collected
            .into_iter()
            .filter_map(|(k, v)| Some((k.into_boxed_str(), v.parse().ok()?)))
            .collect()
    }
}

/// The answer to a push: how many registers were applied, and those left out because the
/// receiver collected them (the sender collects them too).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushAnswer {
    pub applied: usize,
    #[serde(flatten)]
    pub collected: Collected,
}

impl From<crate::db::Merged> for PushAnswer {
    fn from(m: crate::db::Merged) -> PushAnswer {
        PushAnswer {
            applied: m.applied,
            collected: Collected::new(&m.collected),
        }
    }
}
