//! herd node library. Layout map:
//!
//! - `store`: the pure data model (paths, versions, registers, merge and visibility rules,
//!   change log).
pub mod store;
