//! What makes nodes one cluster. So far: the trust between peers (`trust`): a shared cluster
//! secret from which every node derives the same cluster CA and issues its own node
//! certificate, and the mutual-TLS configurations of the peer port built from them.
//!
//! Invariant: nothing here touches the store; peers are trusted only through certificates
//! issued under the cluster CA.

pub mod trust;
