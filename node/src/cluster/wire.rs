//! What travels between peers besides registers and digest messages (whose binary encoding,
//! checked on decode, is `store::digest`'s): the identity headers every peer request and
//! response carries, and the hello document.

use serde::{Deserialize, Serialize};

/// The version of the peer protocol this node speaks (also in mDNS TXT records).
pub const PROTO: u32 = 1;
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
    /// How long the sender has been running without a gap longer than the tombstone grace
    /// period (0 while it is stale after one); see `cluster::history`.
    #[serde(default)]
    pub history_ms: u64,
    /// The live peers the sender knows, so peers are learned from peers.
    #[serde(default)]
    pub peers: Vec<PeerInfo>,
}
