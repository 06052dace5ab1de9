//! herd's one integration test binary: real nodes, real HTTPS on loopback.

mod api;
mod cli;
mod clocks;
mod cluster;
mod crash;
mod damage;
mod disk;
mod inotify;
mod mount;
mod plugins;
mod tidy;
mod ttl;
mod watch;
mod watch_exec;
