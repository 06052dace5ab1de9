//! Mount an in-memory store to try the file view with real tools:
//!
//! ```sh
//! cargo run -p fuse-mount --example memfs -- /tmp/m
//! ```
//!
//! Values whose JSON contains `REJECT` are refused (as a plugin would), values over 2 MiB too,
//! and `/ro` is a read-only key. Ctrl-C or SIGTERM unmounts. `RUST_LOG=debug` shows more.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use fuse_mount::backend::{Backend, Error, ErrorKind, Op};
use fuse_mount::mem::MemBackend;
use fuse_mount::MountOptions;
use serde_json::json;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: memfs DIR");
        return ExitCode::from(2);
    };
    let store = MemBackend::new()
        .with_max_value_bytes(2 << 20)
        .with_validator(Box::new(|_, value| {
            if value.to_string().contains("REJECT") {
                Err(Error::new(ErrorKind::Invalid, "value contains REJECT"))
            } else {
                Ok(())
            }
        }));
    if let Err(e) = store.apply(vec![Op::Put(vec!["ro".to_owned()], json!("fixed"))]) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    store.set_read_only(&["ro".to_owned()]);
    let mount = match fuse_mount::mount(Arc::new(store), &dir, MountOptions::default()) {
        Ok(mount) => mount,
        Err(e) => {
            eprintln!("error: cannot mount at {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    println!("mounted at {}; Ctrl-C to unmount", dir.display());
    if let Err(e) = wait_for_signal() {
        eprintln!("error: waiting for a signal: {e}");
    }
    match mount.unmount() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: unmount: {e}");
            ExitCode::FAILURE
        }
    }
}

fn wait_for_signal() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    })
}
