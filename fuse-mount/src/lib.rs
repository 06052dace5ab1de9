//! The herd file view: the store as a FUSE filesystem.
//!
//! Not built yet: it arrives with the filesystem issue. It will know the store only through a
//! small backend trait (get, put, delete, list, subscribe) that `node` implements in-process and
//! over HTTPS, and it must never depend on `node`.
