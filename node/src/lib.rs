//! herd node library. Layout map (ARCHITECTURE.md has the details):
//!
//! - `store`: the pure data model (paths, versions, registers, the merge rule `Store::plan`,
//!   visibility, the change log, the anti-entropy digest).
//! - `storage`: durable registers: the write-ahead log, checkpoints into redb, load.
//! - `db`: the live database: committed state, subscriptions, the writer and sync threads.
//! - `clock`: the wall clock, read in one place.
//! - `admission`: the one judgement of every client write (writer and paths, plugins, values).
//! - `auth`: access tokens (stored as hashes under `/.herd/tokens`), roles and prefixes.
//! - `plugin`: WebAssembly plugins: registry, hooks on the write path, derived keys, the host.
//! - `config`: the validated node configuration and its defaults.
//! - `transport`: HTTPS shared by the API and the peer port: the server loop, the response
//!   body, the one keep-alive client pool.
//! - `api`: the REST API server (routing, auth, errors, kv, watch, admin, plugins handlers).
//! - `cluster`: peers, discovery, replication and anti-entropy.
//! - `mount`: the file view's backends (in-process and remote).
//! - `tls`: the local CA, the API certificate, rustls configs and the TLS accept step.
//! - `slots`: counted places per key (watch streams per token, connections per address).
//! - `client`: the HTTPS client of the REST API (CLI, remote mount, test harness), SSE.
//! - `node`: the composition root: `start(config) -> NodeHandle`, `run(config)`.
//! - `cli`: the `herd` command line: `serve`, and the client commands over `client`. Nothing
//!   else in the library imports it.
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
pub mod slots;
pub mod storage;
pub mod store;
pub mod tls;
pub mod transport;
