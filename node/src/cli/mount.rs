//! `herd mount DIR`: the node's store as files, through HTTPS, until Ctrl-C or SIGTERM; then
//! the directory is unmounted.
//!
//! Must not know the file view's rules (`fuse_mount` does) nor the store's (the node does).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::args::MountArgs;
use super::discover::Target;
use super::{note, Error};
use crate::client::Client;
use crate::mount::remote::Remote;

pub fn run(target: &Target, args: &MountArgs) -> Result<(), Error> {
    // Several threads: the file view's threads block on requests that this runtime drives.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let client = Client::new(&target.url, target.token.clone(), &target.ca_pem)?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let remote = Remote::connect(
        client,
        runtime.handle().clone(),
        cancel.clone(),
        tracker.clone(),
    )
    .map_err(Error::MountBackend)?;
    let opts = fuse_mount::MountOptions {
        allow_other: args.allow_other,
        read_only: args.read_only,
        ..Default::default()
    };
    let mount =
        fuse_mount::mount(Arc::new(remote), &args.dir, opts).map_err(|cause| Error::Mount {
            dir: args.dir.clone(),
            cause,
        })?;
    note(&format!(
        "mounted {} at {}; Ctrl-C or SIGTERM unmounts",
        target.url,
        args.dir.display()
    ));
    let signalled = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    });
    cancel.cancel();
    let unmounted = mount.unmount();
    tracker.close();
    runtime.block_on(tracker.wait());
    runtime.shutdown_background();
    signalled.map_err(Error::Runtime)?;
    unmounted.map_err(|cause| Error::Mount {
        dir: args.dir.clone(),
        cause,
    })
}
