//! herd node library. Layout map:
//!
//! - `store`: the pure data model (paths, versions, registers, merge and visibility rules,
//!   change log).
//! - `storage`: durable registers and counters in redb.
//! - `db`: the live database: committed state, change log, the group-committing writer thread.
pub mod db;
pub mod storage;
pub mod store;
