//! Discovery of herd peers on the local network over mDNS / DNS-SD, with the `mdns-sd` crate.
//!
//! A node announces the service `_herd._tcp.local.` under its node id (16 hex digits) with the
//! peer port as the service port, and TXT records `id`, `cluster`, `env`, `api`, `peer`,
//! `proto` and `boot`. At the same time it browses for that service type and reports every
//! other herd node it resolves as a [`Found`], whatever its cluster or environment: deciding
//! whether to talk to a peer (and logging "seen but not merged") is the caller's job.
//!
//! Threads and tasks: `mdns-sd` runs its own daemon thread and talks over flume channels. One
//! tokio task (spawned by [`Discovery::start`], so that must run inside a runtime) bridges the
//! daemon's events to a bounded tokio `mpsc`, logs the daemon's own errors, and ends on
//! [`Discovery::shutdown`] (or when the daemon stops). `shutdown` sends the goodbye packets,
//! stops the daemon thread and waits for the task.
//!
//! Restarts: `mdns-sd` reports a service only when its records change. A node that restarts
//! with the same id and ports within a record's lifetime (after a crash: up to 2 minutes; after
//! a goodbye: about 1 second) would announce identical records and not be reported again, so
//! every start announces a fresh `boot` number: a restarted peer is always reported anew.
//!
//! Interfaces: mDNS runs only on the interfaces the operator names; with none named, on every
//! interface but loopback. Starting with no interface to run on is an error.
//!
//! Invariant: this module reports what it sees and nothing else. It knows nothing of trust, of
//! the store or of which cluster the node belongs to beyond what it announces; a `Found` is a
//! hint where to connect, never a proof of membership (the peer port's mutual TLS is).

use mdns_sd::{DaemonEvent, IfKind, Receiver, ServiceDaemon, ServiceEvent, ServiceInfo};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[cfg(test)]
mod tests;
mod txt;

use txt::{found_from, txt_records};

/// The DNS-SD service type every herd node announces and browses for.
pub const SERVICE_TYPE: &str = "_herd._tcp.local.";
/// The peer protocol version this node announces in its `proto` TXT record.
pub const PROTOCOL_VERSION: u32 = 1;
/// How many `Found` reports may wait for the caller before the bridge task waits in turn
/// (the daemon then queues up to 1,000 events of its own before it drops the browse).
const FOUND_CAPACITY: usize = 64;
/// How long `shutdown` waits for the daemon thread to confirm it stopped (it sends the goodbye
/// packets first, which takes well under a second).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
/// Where Linux lists the network interfaces: one entry per interface, with its `flags`.
const SYS_CLASS_NET: &str = "/sys/class/net";
/// `IFF_LOOPBACK` in an interface's `flags` (linux/if.h).
const IFF_LOOPBACK: u32 = 0x8;
/// Interface names are at most 15 bytes on Linux (`IFNAMSIZ` - 1).
const IFNAME_MAX: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network interface name {0:?} is not valid (expected a name like \"eth0\")")]
    BadInterfaceName(String),
    #[error("network interface {0:?} does not exist (see `ip link` for the names on this host)")]
    NoSuchInterface(String),
    #[error(
        "no network interface to run mDNS on: this host has only loopback \
         (name one explicitly, or use static seed peers)"
    )]
    NoInterface,
    #[error("cannot list network interfaces in {SYS_CLASS_NET}: {0}")]
    ListInterfaces(std::io::Error),
    #[error("mDNS discovery must start inside a tokio runtime")]
    NoRuntime,
    #[error("mDNS {action}: {cause}")]
    Daemon {
        action: &'static str,
        cause: mdns_sd::Error,
    },
}

/// What this node announces about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The node's stable id; also the service instance name (16 hex digits).
    pub node_id: u64,
    /// The cluster name: peers of another cluster see us but never merge with us.
    pub cluster: String,
    /// The environment (`production`, `testing`, ...): same rule as the cluster.
    pub env: String,
    /// The HTTPS API port, announced for tools and operators.
    pub api_port: u16,
    /// The peer port (mutual TLS): the service port, where peers connect.
    pub peer_port: u16,
}

/// A herd node seen on the network. Reported once when it is first resolved and again each
/// time its records change (an address added, a restart after a goodbye or an expiry): the
/// caller de-duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The node id from its `id` TXT record.
    pub node_id: u64,
    /// Its cluster name; may differ from ours.
    pub cluster: String,
    /// Its environment; may differ from ours.
    pub env: String,
    /// The peer protocol version it speaks.
    pub proto: u32,
    /// A number that changes at every start of its discovery: a new value means the peer
    /// restarted.
    pub boot: u64,
    /// Its HTTPS API port.
    pub api_port: u16,
    /// Where its peer port can be reached: every IPv4 and IPv6 address it announced, with the
    /// peer port (IPv6 link-local addresses carry the scope of the interface they were seen
    /// on), sorted, IPv4 first.
    pub peer_addrs: Vec<SocketAddr>,
}

/// A running mDNS announcer and browser. Stop it with [`Discovery::shutdown`]; dropping it
/// also stops the daemon (and the goodbye packets still go out) but does not wait.
pub struct Discovery {
    /// The handle to the `mdns-sd` daemon thread; `None` once it was told to stop.
    daemon: Option<ServiceDaemon>,
    /// Stops the bridge task.
    cancel: CancellationToken,
    /// The bridge task, awaited by `shutdown`.
    bridge: Option<tokio::task::JoinHandle<()>>,
}

impl Discovery {
    /// Starts announcing `me` and browsing for peers on `interfaces` (names like "eth0"; empty
    /// means every interface but loopback). Must be called inside a tokio runtime. Returns the
    /// handle and the receiver of the peers found; our own announcement is never reported.
    ///
    /// Fails if a named interface does not exist, or if none is named and the host has no
    /// interface but loopback. Problems the daemon meets later (a socket it cannot bind, an
    /// interface whose multicast join fails) are logged, not returned.
    pub fn start(
        me: &Announce,
        interfaces: &[String],
    ) -> Result<(Discovery, mpsc::Receiver<Found>), Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let chosen = choose_interfaces(Path::new(SYS_CLASS_NET), interfaces)?;
        let service = service_info(me, boot_number())?;
        let daemon = ServiceDaemon::new().map_err(|cause| Error::Daemon {
            action: "start",
            cause,
        })?;
        // From here on, a failure must stop the daemon thread again.
        let mut discovery = Discovery {
            daemon: Some(daemon),
            cancel: CancellationToken::new(),
            bridge: None,
        };
        // The daemon runs its commands in order, so the interface selection is in force before
        // the first query or announcement goes out. (When it starts, the daemon joins the mDNS
        // group on every interface and leaves the unselected ones on this first command.)
        let daemon = discovery.daemon.as_ref().expect("set just above");
        let daemon_call = |action, result: mdns_sd::Result<()>| {
            result.map_err(|cause| Error::Daemon { action, cause })
        };
        match &chosen {
            Interfaces::Named(names) => {
                daemon_call("disable interfaces", daemon.disable_interface(IfKind::All))?;
                let kinds: Vec<IfKind> = names.iter().map(|n| IfKind::Name(n.clone())).collect();
                daemon_call("enable interfaces", daemon.enable_interface(kinds))?;
            }
            Interfaces::AllButLoopback(_) => {
                daemon_call(
                    "disable loopback",
                    daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6]),
                )?;
            }
        }
        let monitor = daemon.monitor().map_err(|cause| Error::Daemon {
            action: "monitor",
            cause,
        })?;
        let events = daemon.browse(SERVICE_TYPE).map_err(|cause| Error::Daemon {
            action: "browse",
            cause,
        })?;
        daemon_call("register", daemon.register(service))?;

        let (tx, rx) = mpsc::channel(FOUND_CAPACITY);
        discovery.bridge = Some(runtime.spawn(bridge(
            me.node_id,
            events,
            monitor,
            tx,
            discovery.cancel.clone(),
        )));
        tracing::info!(
            node_id = %format_node_id(me.node_id),
            interfaces = %chosen,
            "mDNS discovery started"
        );
        Ok((discovery, rx))
    }

    /// Sends the goodbye packets, stops the daemon thread and the bridge task, and waits for
    /// both (the daemon at most a few seconds).
    pub async fn shutdown(mut self) {
        let status = self.stop();
        if let Some(status) = status {
            match tokio::time::timeout(SHUTDOWN_WAIT, status.recv_async()).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => tracing::debug!("mDNS daemon stopped without a status"),
                Err(_) => tracing::warn!(
                    "mDNS daemon did not confirm its shutdown within {SHUTDOWN_WAIT:?}"
                ),
            }
        }
        if let Some(bridge) = self.bridge.take() {
            if let Err(e) = bridge.await {
                tracing::warn!("mDNS bridge task failed: {e}");
            }
        }
    }

    /// Tells the bridge and the daemon to stop; returns the daemon's status channel.
    fn stop(&mut self) -> Option<Receiver<mdns_sd::DaemonStatus>> {
        self.cancel.cancel();
        let daemon = self.daemon.take()?;
        match daemon.shutdown() {
            Ok(status) => Some(status),
            Err(e) => {
                tracing::warn!("cannot stop the mDNS daemon: {e}");
                None
            }
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        // Without `shutdown`: stop without waiting (the task ends on its own).
        self.stop();
    }
}

/// The interfaces mDNS runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Interfaces {
    /// Exactly these, as the operator named them.
    Named(Vec<String>),
    /// Every interface but loopback, including ones that appear later; these exist now.
    AllButLoopback(Vec<String>),
}

impl std::fmt::Display for Interfaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interfaces::Named(names) => write!(f, "{}", names.join(",")),
            Interfaces::AllButLoopback(names) => {
                write!(f, "all but loopback ({})", names.join(","))
            }
        }
    }
}

/// Checks the named interfaces exist (under `sys_class_net`), or, with none named, finds the
/// interfaces that are not loopback and fails if there are none.
fn choose_interfaces(sys_class_net: &Path, names: &[String]) -> Result<Interfaces, Error> {
    if names.is_empty() {
        let mut found = Vec::new();
        let entries = std::fs::read_dir(sys_class_net).map_err(Error::ListInterfaces)?;
        for entry in entries {
            let entry = entry.map_err(Error::ListInterfaces)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let flags = std::fs::read_to_string(entry.path().join("flags")).unwrap_or_default();
            let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok();
            // An interface whose flags cannot be read is taken as not loopback: mdns-sd
            // checks again itself and skips loopback addresses.
            if flags.is_none_or(|f| f & IFF_LOOPBACK == 0) {
                found.push(name);
            }
        }
        if found.is_empty() {
            return Err(Error::NoInterface);
        }
        found.sort();
        return Ok(Interfaces::AllButLoopback(found));
    }
    let mut chosen: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let valid = !name.is_empty()
            && name.len() <= IFNAME_MAX
            && name != "."
            && name != ".."
            && !name.contains(['/', '\0'])
            && !name.chars().any(char::is_whitespace);
        if !valid {
            return Err(Error::BadInterfaceName(name.clone()));
        }
        if !sys_class_net.join(name).exists() {
            return Err(Error::NoSuchInterface(name.clone()));
        }
        if !chosen.contains(name) {
            chosen.push(name.clone());
        }
    }
    Ok(Interfaces::Named(chosen))
}

/// The service record this node announces: addresses are filled in (and kept up to date) by
/// the daemon from the selected interfaces.
fn service_info(me: &Announce, boot: u64) -> Result<ServiceInfo, Error> {
    let id = format_node_id(me.node_id);
    // The host name is ours alone, so it never clashes with the machine's own mDNS name.
    let host = format!("herd-{id}.local.");
    let txt = txt_records(me, boot);
    let info = ServiceInfo::new(SERVICE_TYPE, &id, &host, (), me.peer_port, &txt[..]).map_err(
        |cause| Error::Daemon {
            action: "service record",
            cause,
        },
    )?;
    Ok(info.enable_addr_auto())
}

/// A number for this start that differs from the previous start's: the wall clock in
/// nanoseconds (a restart takes longer than that), mixed with the process id in case the
/// clock was set back.
fn boot_number() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 48)
}

fn format_node_id(id: u64) -> String {
    format!("{id:016x}")
}

/// The bridge task: daemon events in, `Found`s out, until cancelled, the daemon stops, or
/// nobody listens any more.
async fn bridge(
    me: u64,
    events: Receiver<ServiceEvent>,
    monitor: Receiver<DaemonEvent>,
    tx: mpsc::Sender<Found>,
    cancel: CancellationToken,
) {
    let mut monitoring = true;
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.recv_async() => match event {
                Ok(event) => event,
                Err(_) => {
                    tracing::debug!("mDNS browse ended");
                    return;
                }
            },
            daemon_event = monitor.recv_async(), if monitoring => {
                match daemon_event {
                    Ok(daemon_event) => log_daemon_event(daemon_event),
                    Err(_) => monitoring = false,
                }
                continue;
            }
        };
        let service = match event {
            ServiceEvent::ServiceResolved(service) => service,
            ServiceEvent::ServiceRemoved(_, name) => {
                tracing::debug!(service = %name, "mDNS service gone");
                continue;
            }
            other => {
                tracing::trace!(event = ?other, "mDNS event");
                continue;
            }
        };
        let found = match found_from(&service) {
            Ok(found) => found,
            Err(e) => {
                let service = &service.fullname;
                tracing::debug!(%service, "mDNS: skipping a malformed herd service: {e}");
                continue;
            }
        };
        if found.node_id == me {
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            sent = tx.send(found) => if sent.is_err() {
                tracing::debug!("mDNS: nobody receives peers any more; still announcing");
                return;
            }
        }
    }
}

fn log_daemon_event(event: DaemonEvent) {
    match event {
        DaemonEvent::Error(e) => tracing::warn!("mDNS daemon: {e}"),
        DaemonEvent::IpAdd(ip) => tracing::debug!(%ip, "mDNS: interface address added"),
        DaemonEvent::IpDel(ip) => tracing::debug!(%ip, "mDNS: interface address removed"),
        DaemonEvent::NameChange(change) => tracing::info!(
            original = %change.original,
            new = %change.new_name,
            "mDNS: name conflict resolved by renaming"
        ),
        other => tracing::trace!(event = ?other, "mDNS daemon event"),
    }
}
