//! herd node library. Layout map:
//!
//! - `store`: the pure data model (paths, versions, registers, merge and visibility rules,
//!   change log).
//! - `storage`: durable registers and counters in redb.
//! - `db`: the live database: committed state, change log, the group-committing writer thread.
//! - `auth`: access tokens (stored as hashes under `/.herd/tokens`), roles and prefixes.
//! - `config`: the validated node configuration and its defaults.
//! - `api`: the HTTPS REST API server (routing, auth, errors, kv, watch, admin handlers).
//! - `node`: the composition root: `start(config) -> NodeHandle`, `run(config)`.
//! - `serve`: the HTTPS server loop the API and the peer port share (limits, accept, TLS,
//!   HTTP/1.1 connections, graceful shutdown).
//! - `slots`: counted places per key (watch streams per token, connections per address).
//! - `cluster`: peers, discovery, replication and anti-entropy.
//! - `tls`: the local CA, the API certificate, rustls configs and the TLS accept step.
//! - `client`: the HTTPS client of the REST API (CLI, test harness): keep-alive pool, SSE.
//! - `cli`: the `herd` command line: `serve`, and the client commands over `client`.
pub mod admission;
pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod db;
pub mod mount;
pub mod node;
pub mod plugin;
pub mod serve;
pub mod slots;
pub mod storage;
pub mod store;
pub mod tls;
