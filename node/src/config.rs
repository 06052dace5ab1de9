//! The node's validated configuration: one struct per subsystem, every field with its meaning,
//! unit and default (these comments are the configuration reference), read from an optional
//! TOML file with one section per subsystem (`[api]`, `[storage]`, `[mount]`, `[cluster]`) and
//! overridden by command-line flags and `HERD_*` environment variables (`cli::serve` maps them
//! in one table). Files in the old flat format (every setting at the top level) still load:
//! each flat key is moved to its section, with a note that says how to write it.
//!
//! Must not know about clap or how the values are used.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// Everything a node needs to start. `Config::default()` is the embedded default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding the database, TLS material, `admin.token` and `node.id`.
    /// Default `./herd-data`.
    pub data_dir: PathBuf,
    pub api: Api,
    pub storage: Storage,
    pub mount: Mount,
    pub cluster: Cluster,
}

/// `[api]`: the HTTPS client API and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Api {
    /// Address of the HTTPS client API. Default `0.0.0.0:7440`.
    pub addr: SocketAddr,
    /// PEM certificate chain for the API, instead of the self-signed one made in
    /// `DATA/tls/` on first start. Needs `tls_key`. Default none.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`. Default none.
    pub tls_key: Option<PathBuf>,
    /// Extra names or IP addresses the self-signed API certificate is valid for (besides
    /// `localhost`, `127.0.0.1`, `::1` and the host name). Default none.
    pub tls_san: Vec<String>,
    /// Largest value accepted in one write, in bytes of JSON. Default 1 MiB.
    pub max_value_bytes: usize,
    /// Largest `POST /v1/batch` body, in bytes. Default 8 MiB.
    pub max_batch_bytes: usize,
    /// Most operations in one batch. Default 10,000.
    pub max_batch_ops: usize,
    /// Most simultaneous client connections; past them, 16 spare ones answer only
    /// `/v1/health` and the rest are closed at once.
    /// Default 1,024.
    pub max_connections: usize,
    /// Most simultaneous connections from one client address, so that one client cannot take
    /// every connection; more are closed as soon as they are accepted. Past
    /// `max_connections` in all, 16 more are accepted that answer only `/v1/health` (others
    /// get 503 `busy`). Default 256.
    pub max_connections_per_client: usize,
    /// Most simultaneous watch streams; more get 429. Default 256.
    pub max_watchers: usize,
    /// Most simultaneous watch streams of one token, so that one client cannot take every
    /// slot; more get 429. Default 64.
    pub max_watchers_per_token: usize,
    /// Bytes of watches' initial state (the leaves under a watched path, as events) that may
    /// wait to be sent at once, node-wide: this bounds the memory that watchers slow to read
    /// can hold. A watch whose state does not fit waits up to 10 s, then gets 503 `busy`; one
    /// larger than this waits until it alone is sent. Default 64 MiB.
    pub watch_snapshot_bytes: usize,
    /// Time a client may take for its TLS handshake and for sending request headers, in
    /// seconds. Default 10.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Time a client may take to send a request body, in seconds. Default 30.
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    /// Time a response write may make no progress (a client that stopped reading, e.g. a
    /// watcher) before the connection is closed, in seconds. Default 30.
    #[serde(with = "duration")]
    pub write_timeout: Duration,
}

/// `[storage]`: the database, its change log and how long deletions are remembered.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// Events kept for watchers to resume from (`?since=`), in memory and in `changes.log` in
    /// the data directory, so resuming works across restarts. Default 10,000.
    pub log_events: usize,
    /// Bytes of events (paths and values) kept for watchers to resume from, at most: with
    /// `log_events`, whichever is reached first, this bounds the change log's memory (and
    /// `changes.log` to about twice as much).
    /// Default 16 MiB.
    pub log_bytes: usize,
    /// The least time a deletion (or an expired value) is remembered, e.g. `1h`. A deletion is
    /// forgotten only once every member of the cluster is known to hold it, however long that
    /// takes (so no late replica brings a deleted key back), and not before this: a
    /// directory's ETag stays its newest version, deletions included, for at least this long.
    /// Default 1 hour.
    #[serde(with = "duration")]
    pub tombstone_grace: Duration,
    /// redb page cache in bytes. The store keeps its own copy in memory, so this is small.
    /// Default 16 MiB.
    pub cache_bytes: usize,
}

/// `[mount]`: the file view of `herd serve` (README "The file view").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mount {
    /// Directory where the node mounts its store as files (FUSE). Default none: no mount.
    pub dir: Option<PathBuf>,
    /// Make that mount read-only: writes through it fail with EROFS, and the kernel serves
    /// reads of unchanged keys from its caches without asking the node. Default false.
    pub read_only: bool,
}

/// `[cluster]` (README "Running a cluster"). Clustering is on when the node has a cluster
/// secret (or an operator CA); without one it runs alone and opens no peer port.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// Name of the cluster; nodes of another cluster are never merged with. Default `herd`.
    pub name: String,
    /// Environment: `production`, `staging`, `testing`, `development` or any name; nodes of
    /// another environment are never merged with. Default `development`.
    pub env: String,
    /// Address of the peer port (HTTPS with mutual TLS only). Default `0.0.0.0:7441`.
    pub addr: SocketAddr,
    /// The cluster secret file (`herd cluster init` writes one; copy it to every node).
    /// Default `DATA/cluster.secret` when that file exists.
    pub secret: Option<PathBuf>,
    /// Operator-provided trust instead of a secret: the cluster CA certificate (PEM), and
    /// this node's certificate chain and key issued by it. Default none.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Static seed peers, `host:port` of their peer ports (DNS names are resolved again at
    /// every attempt). Default none.
    pub peers: Vec<String>,
    /// Discover peers by mDNS (`_herd._tcp.local.`). Default true (when clustering is on).
    pub mdns: bool,
    /// Interfaces mDNS runs on, e.g. `eth0`. Default: every interface but loopback.
    pub mdns_interfaces: Vec<String>,
    /// Time between anti-entropy rounds with a random live peer, e.g. `2s`. Default 2 s.
    #[serde(with = "duration")]
    pub anti_entropy_interval: Duration,
    /// Longest wait between attempts to reach an unreachable peer (the wait doubles from 1 s
    /// up to this), 1 s to 5 minutes: a peer refused for its clock is measured at least this
    /// often. Default 5 minutes.
    #[serde(with = "duration")]
    pub retry_max: Duration,
    /// Push every local write to the live peers at once. Turning this off (a test hook)
    /// leaves replication to anti-entropy alone. Default true.
    pub push: bool,
    /// Peers whose wall clock differs from this node's by more than this, either way, are
    /// refused: nothing is exchanged with them until the clock is fixed. Versions order by
    /// wall clock, so a clock ahead would win every conflict. NTP keeps machines within a
    /// fraction of a second; 30 s also covers a typical crystal (20 ppm) running without NTP
    /// for over two weeks, while a clock set wrong by hand or at a boot without a real-time
    /// clock (minutes to decades off) is refused. Default 30 s.
    #[serde(with = "duration")]
    pub max_clock_offset: Duration,
    /// A member this node has not heard from for this long (counted while this node runs) is
    /// removed from the cluster, as `herd members remove` does: deletions stop waiting for
    /// it, and if it comes back it drops what it held from others and rejoins. At least 1 s.
    /// Default 30 days.
    #[serde(with = "duration")]
    pub member_expiry: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("herd-data"),
            api: Api::default(),
            storage: Storage::default(),
            mount: Mount::default(),
            cluster: Cluster::default(),
        }
    }
}

impl Default for Api {
    fn default() -> Api {
        Api {
            addr: SocketAddr::from(([0, 0, 0, 0], 7440)),
            tls_cert: None,
            tls_key: None,
            tls_san: Vec::new(),
            max_value_bytes: 1 << 20,
            max_batch_bytes: 8 << 20,
            max_batch_ops: 10_000,
            max_connections: 1024,
            max_connections_per_client: 256,
            max_watchers: 256,
            max_watchers_per_token: 64,
            watch_snapshot_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for Storage {
    fn default() -> Storage {
        Storage {
            log_events: 10_000,
            log_bytes: 16 << 20,
            tombstone_grace: Duration::from_secs(3600),
            cache_bytes: 16 << 20,
        }
    }
}

impl Default for Cluster {
    fn default() -> Cluster {
        Cluster {
            name: "herd".into(),
            env: "development".into(),
            addr: SocketAddr::from(([0, 0, 0, 0], 7441)),
            secret: None,
            ca: None,
            cert: None,
            key: None,
            peers: Vec::new(),
            mdns: true,
            mdns_interfaces: Vec::new(),
            anti_entropy_interval: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            push: true,
            max_clock_offset: Duration::from_secs(30),
            member_expiry: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A TOML error on one line: its message lines joined, the source snippet (`1 | a = `, `  ^`)
/// left out, since the line and column are named.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with('^'))
        .filter(|l| {
            !l.split_once(" |")
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// The old flat format's keys: (flat key, section, key in the section).
const FLAT: &[(&str, &str, &str)] = &[
    ("api_addr", "api", "addr"),
    ("tls_cert", "api", "tls_cert"),
    ("tls_key", "api", "tls_key"),
    ("tls_san", "api", "tls_san"),
    ("max_value_bytes", "api", "max_value_bytes"),
    ("max_batch_bytes", "api", "max_batch_bytes"),
    ("max_batch_ops", "api", "max_batch_ops"),
    ("max_connections", "api", "max_connections"),
    (
        "max_connections_per_client",
        "api",
        "max_connections_per_client",
    ),
    ("max_watchers", "api", "max_watchers"),
    ("max_watchers_per_token", "api", "max_watchers_per_token"),
    ("watch_snapshot_bytes", "api", "watch_snapshot_bytes"),
    ("handshake_timeout", "api", "handshake_timeout"),
    ("body_timeout", "api", "body_timeout"),
    ("write_timeout", "api", "write_timeout"),
    ("log_events", "storage", "log_events"),
    ("log_bytes", "storage", "log_bytes"),
    ("tombstone_grace", "storage", "tombstone_grace"),
    ("cache_bytes", "storage", "cache_bytes"),
    ("mount", "mount", "dir"),
    ("mount_read_only", "mount", "read_only"),
    ("cluster", "cluster", "name"),
    ("env", "cluster", "env"),
    ("peer_addr", "cluster", "addr"),
    ("cluster_secret", "cluster", "secret"),
    ("peer_ca", "cluster", "ca"),
    ("peer_cert", "cluster", "cert"),
    ("peer_key", "cluster", "key"),
    ("peers", "cluster", "peers"),
    ("mdns", "cluster", "mdns"),
    ("mdns_interfaces", "cluster", "mdns_interfaces"),
    ("anti_entropy_interval", "cluster", "anti_entropy_interval"),
    ("peer_retry_max", "cluster", "retry_max"),
    ("replication_push", "cluster", "push"),
];

/// Moves the keys of the old flat format into their sections; answers a note for each, which
/// says how to write it. A key given both ways is an error.
fn unflatten(t: &mut toml::Table) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    for (flat, section, key) in FLAT {
        // `cluster` and `mount` are both a flat key (a value) and a section (a table).
        if t.get(*flat).is_none_or(toml::Value::is_table) {
            continue;
        }
        let value = t.remove(*flat).expect("checked above");
        let sec = t
            .entry(*section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(sec) = sec.as_table_mut() else {
            return Err(format!("{section} must be a section ([{section}])"));
        };
        if sec.contains_key(*key) {
            return Err(format!(
                "{flat} is given twice: at the top level (the old flat format) and as {key} under [{section}]"
            ));
        }
        sec.insert((*key).into(), value);
        notes.push(format!(
            "`{flat}` at the top level is the old flat format; write it as `{key}` under [{section}]"
        ));
    }
    Ok(notes)
}

impl Config {
    /// Reads a TOML file; fields it does not name keep their defaults. Answers the config and
    /// a note for each key in the old flat format (it is read, and should be rewritten).
    pub fn from_file(path: &std::path::Path) -> Result<(Config, Vec<String>), Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        let parse = |message: String| Error::Parse {
            path: path.display().to_string(),
            message: one_line(&message),
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse(e.to_string()))?;
        let notes = unflatten(&mut table).map_err(parse)?;
        let config = table
            .try_into()
            .map_err(|e: toml::de::Error| parse(e.to_string()))?;
        Ok((config, notes))
    }

    /// Checks the values that could make a node misbehave.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, message: &str| {
            Err(Error::Invalid {
                field,
                message: message.into(),
            })
        };
        let api = &self.api;
        if api.tls_cert.is_some() != api.tls_key.is_some() {
            return invalid("api.tls_cert", "tls_cert and tls_key go together");
        }
        if api.max_value_bytes == 0 || api.max_batch_bytes < api.max_value_bytes {
            return invalid(
                "api.max_batch_bytes",
                "must be positive and at least max_value_bytes",
            );
        }
        if api.max_connections_per_client == 0 || api.write_timeout.is_zero() {
            return invalid(
                "api.max_connections_per_client",
                "max_connections_per_client and write_timeout must be positive",
            );
        }
        if api.max_watchers_per_token == 0 {
            return invalid("api.max_watchers_per_token", "must be positive");
        }
        if api.watch_snapshot_bytes < 1024 || api.watch_snapshot_bytes >> 10 > u32::MAX as usize {
            return invalid("api.watch_snapshot_bytes", "must be 1 KiB to 4 TiB");
        }
        if api.max_connections == 0 || api.max_batch_ops == 0 {
            return invalid("api.max_connections", "limits must be positive");
        }
        if self.storage.log_events == 0 || self.storage.log_bytes == 0 {
            return invalid(
                "storage.log_events",
                "log_events and log_bytes must be positive",
            );
        }
        let cluster = &self.cluster;
        for (field, name) in [
            ("cluster.name", &cluster.name),
            ("cluster.env", &cluster.env),
        ] {
            let ok = (1..=63).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return invalid(
                    field,
                    "must be 1 to 63 characters of letters, digits, '-', '_' or '.'",
                );
            }
        }
        let operator = [&cluster.ca, &cluster.cert, &cluster.key];
        if operator.iter().any(|p| p.is_some()) && operator.iter().any(|p| p.is_none()) {
            return invalid("cluster.ca", "ca, cert and key go together");
        }
        if cluster.ca.is_some() && cluster.secret.is_some() {
            return invalid(
                "cluster.ca",
                "use either a cluster secret or an operator CA, not both",
            );
        }
        if cluster.anti_entropy_interval < Duration::from_millis(10) {
            return invalid("cluster.anti_entropy_interval", "must be at least 10ms");
        }
        if cluster.member_expiry < Duration::from_secs(1) {
            return invalid("cluster.member_expiry", "must be at least 1s");
        }
        if cluster.retry_max < Duration::from_secs(1) {
            return invalid("cluster.retry_max", "must be at least 1s");
        }
        // A refused peer is probed at least this often, so its measurement stays recent
        // (`cluster::clocks::RECENT_MS`, 10 minutes).
        if cluster.retry_max > Duration::from_secs(5 * 60) {
            return invalid("cluster.retry_max", "must be at most 5m");
        }
        if cluster.max_clock_offset < Duration::from_secs(1) {
            return invalid("cluster.max_clock_offset", "must be at least 1s");
        }
        for p in &cluster.peers {
            if p.rsplit_once(':')
                .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
            {
                return invalid("cluster.peers", &format!("{p:?} is not host:port"));
            }
        }
        Ok(())
    }
}

/// Parses `500ms`, `30s`, `5m`, `2h`, `7d`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (expected e.g. 500ms, 30s, 5m, 2h, 7d)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit {unit:?} (expected ms, s, m, h or d)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=100.0 * 365.0 * 86400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Serde adapter: a duration written as a string (`"30s"`) or a number of seconds.
mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => super::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn the_example_file_is_the_default_configuration() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/herd.toml");
        let (c, notes) = Config::from_file(std::path::Path::new(example)).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        c.validate().unwrap();
        assert_eq!(format!("{c:?}"), format!("{:?}", Config::default()));
    }

    fn load(text: &str) -> Result<(Config, Vec<String>), Error> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("herd.toml");
        std::fs::write(&f, text).unwrap();
        Config::from_file(&f)
    }

    #[test]
    fn toml_file_overrides_defaults() {
        let (c, notes) = load(
            "[api]\naddr = \"127.0.0.1:9000\"\nbody_timeout = 5\n[storage]\ntombstone_grace = \"1h\"\n",
        )
        .unwrap();
        assert!(notes.is_empty());
        assert_eq!(c.api.addr.port(), 9000);
        assert_eq!(c.storage.tombstone_grace, Duration::from_secs(3600));
        assert_eq!(c.api.body_timeout, Duration::from_secs(5));
        assert_eq!(c.api.max_value_bytes, 1 << 20);
        assert!(matches!(
            load("no_such_field = 1\n"),
            Err(Error::Parse { .. })
        ));
        assert!(matches!(
            load("[api]\nport = 1\n"),
            Err(Error::Parse { .. })
        ));
    }

    #[test]
    fn old_flat_files_still_load_with_a_note_per_key() {
        let (c, notes) = load(
            "api_addr = \"127.0.0.1:9000\"\ncluster = \"site-1\"\nmount = \"/run/herd\"\n\
             peer_retry_max = \"10s\"\n[storage]\nlog_events = 5\n",
        )
        .unwrap();
        assert_eq!(c.api.addr.port(), 9000);
        assert_eq!(c.cluster.name, "site-1");
        assert_eq!(
            c.mount.dir.as_deref(),
            Some(std::path::Path::new("/run/herd"))
        );
        assert_eq!(c.cluster.retry_max, Duration::from_secs(10));
        assert_eq!(c.storage.log_events, 5);
        assert_eq!(notes.len(), 4);
        assert!(
            notes.contains(&"`peer_retry_max` at the top level is the old flat format; write it as `retry_max` under [cluster]".to_string()),
            "{notes:?}"
        );
        let twice = load("log_events = 5\n[storage]\nlog_events = 6\n").unwrap_err();
        assert!(twice.to_string().contains("given twice"), "{twice}");
    }
}
