//! herd's one integration test binary: real nodes, real HTTPS on loopback.

mod api;
