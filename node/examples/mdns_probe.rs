//! A lab tool for `cluster::mdns`: announces one herd node over mDNS on the named interfaces,
//! prints every peer it finds as one JSON line on stdout for a while, then shuts down.
//!
//! ```sh
//! ip netns exec NS target/debug/examples/mdns_probe --id 00000000000000a1 \
//!     --cluster lab --env testing --iface eth0 --peer-port 7441 --secs 5
//! ```
//!
//! It refuses to run in the machine's root network namespace (multicast must stay inside the
//! lab: see tests/lab/), and it needs at least one `--iface`. Logs go to stderr (`RUST_LOG`).

use anyhow::{bail, Context};
use clap::Parser;
use node::cluster::mdns::{Announce, Discovery, Found};
use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Announce a herd node over mDNS and print the peers found, one JSON line each.
#[derive(Parser)]
struct Args {
    /// Node id: 16 hex digits.
    #[arg(long)]
    id: String,
    /// Cluster name to announce.
    #[arg(long)]
    cluster: String,
    /// Environment to announce.
    #[arg(long)]
    env: String,
    /// Interface to run mDNS on (repeatable; at least one).
    #[arg(long = "iface", required = true)]
    ifaces: Vec<String>,
    /// Peer port to announce (the service port).
    #[arg(long)]
    peer_port: u16,
    /// API port to announce.
    #[arg(long, default_value_t = 7440)]
    api_port: u16,
    /// How long to run, in seconds.
    #[arg(long)]
    secs: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mdns_probe: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mdns_probe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    refuse_root_namespace()?;
    if args.id.len() != 16 || !args.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--id {:?} is not 16 hex digits", args.id);
    }
    let node_id = u64::from_str_radix(&args.id, 16).context("--id")?;
    let me = Announce {
        node_id,
        cluster: args.cluster,
        env: args.env,
        api_port: args.api_port,
        peer_port: args.peer_port,
    };
    let (discovery, mut found) = Discovery::start(&me, &args.ifaces)?;
    eprintln!(
        "mdns_probe: {} announcing on {} for {}s",
        args.id,
        args.ifaces.join(","),
        args.secs
    );
    let deadline = tokio::time::sleep(Duration::from_secs(args.secs));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            peer = found.recv() => match peer {
                Some(peer) => println!("{}", json_line(&peer)),
                None => bail!("discovery stopped early"),
            },
        }
    }
    discovery.shutdown().await;
    Ok(())
}

fn json_line(peer: &Found) -> serde_json::Value {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    serde_json::json!({
        "id": format!("{:016x}", peer.node_id),
        "cluster": peer.cluster,
        "env": peer.env,
        "proto": peer.proto,
        "boot": format!("{:016x}", peer.boot),
        "api_port": peer.api_port,
        "addrs": peer.peer_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "at_ms": at_ms,
    })
}

/// Fails unless this process runs in a named network namespace (one made by `ip netns add`,
/// as the lab does): the way `ip netns identify` tells, by comparing the namespace's inode with
/// the files in `/run/netns`. (`/proc/1/ns/net` cannot be read in every sandbox, so "not init's
/// namespace" is not checked directly.)
fn refuse_root_namespace() -> anyhow::Result<()> {
    let ours = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::metadata(entry.path()).ok())
        .any(|ns| (ns.dev(), ns.ino()) == (ours.dev(), ours.ino()));
    if !named {
        bail!(
            "refusing to run outside a named network namespace (this looks like the root \
             network namespace, where multicast would reach the real network); run it in a \
             lab host: `ip netns exec NS ...`, see tests/lab/mdns_test.py"
        );
    }
    Ok(())
}
