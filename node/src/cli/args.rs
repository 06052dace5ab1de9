//! The parsed command line: clap types and nothing else. Every flag also reads a `HERD_*`
//! environment variable (a flag wins over its variable).
//!
//! Must not know how a command is carried out: turning `serve` flags into a
//! [`Config`](crate::config::Config) is `cli::serve`'s job, finding the node is `cli::discover`'s.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Shown at the end of `herd --help`; the same list as in the `cli` module documentation.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other error
  2  usage error (bad flags or arguments)
  3  not found (404)
  4  precondition failed or conflict (409, 412)
  5  authentication or permission (401, 403)
  6  cannot reach the node (connection, timeout or TLS failure)
  7  rejected input (400, 413, 415, 422, or an unusable input file)";

/// herd: a replicated JSON configuration store for the edge.
#[derive(Debug, Parser)]
#[command(name = "herd", version, arg_required_else_help = true, after_help = EXIT_CODES)]
pub struct Args {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// How a client command reaches its node. `--data-dir` is also the node's directory for `serve`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Node options (every command)")]
pub struct ConnectionArgs {
    /// API URL of the node, e.g. https://10.0.0.5:7440 [default: the `api` of DATA/node.json];
    /// `herd watch` takes several, to fail over from one to the next (comma-separated in
    /// HERD_NODE)
    #[arg(
        long,
        env = "HERD_NODE",
        value_name = "URL",
        global = true,
        value_delimiter = ','
    )]
    pub node: Vec<String>,

    /// Access token [default: DATA/admin.token]
    #[arg(
        long,
        env = "HERD_TOKEN",
        value_name = "TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// PEM file of the CA that issued the node's certificate [default: DATA/tls/ca.crt]
    #[arg(long, env = "HERD_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,

    /// The node's data directory [default: ./herd-data]
    #[arg(long, env = "HERD_DATA_DIR", value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node
    Serve(Box<ServeArgs>),
    /// Manage the cluster's shared secret
    #[command(subcommand)]
    Cluster(ClusterCommand),
    #[command(flatten)]
    Client(ClientCommand),
}

/// The commands that talk to a running node.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Print the value at PATH (a string as raw text, a directory as JSON)
    Get(GetArgs),
    /// Write a value at PATH and print its version
    Put(PutArgs),
    /// Delete PATH and everything below it, and print the version of the deletion
    Rm(RmArgs),
    /// List the children of PATH, directories with a trailing `/`
    Ls(LsArgs),
    /// Print changes at, below and above PATH as they happen, until Ctrl-C
    Watch(WatchArgs),
    /// Print the whole document, or the subtree at PATH, as JSON
    Export(ExportArgs),
    /// Write each top-level key of a JSON file, in one atomic batch
    Import(ImportArgs),
    /// Print the node's status as JSON
    Status,
    /// List the cluster's members as this node sees them: state, address, last seen, lag
    Members(MembersArgs),
    /// Mount the node's store as files at DIR until Ctrl-C or SIGTERM (FUSE)
    Mount(MountArgs),
    /// Manage access tokens (needs an admin token)
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage WebAssembly plugins for the whole cluster (needs an admin token); `test` runs a
    /// plugin locally without installing it
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Install a plugin on every node of the cluster: upload FILE, then store its manifest
    Add(PluginInstallArgs),
    /// Replace an installed plugin's file and/or manifest fields (hot reload, no restart)
    Update(PluginInstallArgs),
    /// List installed plugins: hooks, prefixes, state (healthy / unhealthy / not_loaded), last error
    Ls {
        /// Print the node's JSON answer instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Remove a plugin from every node
    Rm {
        /// The plugin's name
        name: String,
    },
    /// Run one hook of a plugin file here, without a node and without installing it
    Test(PluginTestArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct PluginInstallArgs {
    /// The plugin: a WebAssembly component (.wasm) [optional for update]
    pub file: Option<PathBuf>,
    /// The plugin's name (a-z, 0-9, -, _)
    #[arg(long)]
    pub name: String,
    /// Path prefix the hooks apply to (repeatable, or comma-separated)
    #[arg(long = "prefix", value_name = "PATH", value_delimiter = ',')]
    pub prefixes: Vec<String>,
    /// Hooks to run: validate, transform, derive (comma-separated)
    #[arg(long, value_name = "HOOKS", value_delimiter = ',')]
    pub hooks: Vec<String>,
    /// Where a derive plugin's keys go (read-only, computed on every node)
    #[arg(long, value_name = "PATH")]
    pub output: Option<String>,
    /// Limits over the defaults: memory=16MiB,time=100ms,output=4MiB,stack=1MiB
    #[arg(long, value_name = "LIMITS")]
    pub limits: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct PluginTestArgs {
    /// The plugin: a WebAssembly component (.wasm)
    pub file: PathBuf,
    /// The hook to run: validate, transform or derive [default: the first the plugin exports]
    #[arg(long)]
    pub hook: Option<String>,
    /// The changed key's path (validate, transform)
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// The new value, JSON or else a string (as `herd put`); absent means a delete
    #[arg(long, value_name = "VALUE")]
    pub value: Option<String>,
    /// The old value, JSON or else a string
    #[arg(long, value_name = "VALUE")]
    pub old: Option<String>,
    /// A JSON file whose document the plugin's store.get and store.list read (the new value
    /// is laid over it) [default: an empty store]
    #[arg(long, value_name = "FILE")]
    pub store: Option<PathBuf>,
    /// A derive plugin's output prefix, as installed (its `HERD_OUTPUT`)
    #[arg(long, value_name = "PATH")]
    pub output: Option<String>,
    /// Limits over the defaults: memory=16MiB,time=100ms
    #[arg(long, value_name = "LIMITS")]
    pub limits: Option<String>,
}

/// `herd serve`: flags override `HERD_*` variables, which override the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file; its settings apply where no flag or variable is given
    #[arg(long, env = "HERD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address of the HTTPS API [default: 0.0.0.0:7440]
    #[arg(long, env = "HERD_API_ADDR", value_name = "ADDR")]
    pub api_addr: Option<SocketAddr>,

    /// PEM certificate chain for the API, instead of the node's own CA [needs --tls-key]
    #[arg(long, env = "HERD_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert
    #[arg(long, env = "HERD_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Extra DNS name or IP address for the node's own API certificate (repeatable;
    /// comma-separated in HERD_TLS_SAN)
    #[arg(long, env = "HERD_TLS_SAN", value_name = "NAME", value_delimiter = ',')]
    pub tls_san: Vec<String>,

    /// Largest value accepted in one write, in bytes [default: 1048576]
    #[arg(long, env = "HERD_MAX_VALUE_BYTES", value_name = "N")]
    pub max_value_bytes: Option<usize>,

    /// Mount the store as files at DIR (FUSE) while the node runs [default: no mount]
    #[arg(long, env = "HERD_MOUNT", value_name = "DIR")]
    pub mount: Option<PathBuf>,

    /// Make --mount read-only (EROFS on writes; reads served from the kernel's caches)
    #[arg(long, env = "HERD_MOUNT_READ_ONLY")]
    pub mount_read_only: bool,

    /// Cluster name; nodes of another cluster are never merged with [default: herd]
    #[arg(long, env = "HERD_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,

    /// Environment (production, staging, testing, development or any name); nodes of another
    /// environment are never merged with [default: development]
    #[arg(long, env = "HERD_ENV", value_name = "ENV")]
    pub env: Option<String>,

    /// Address of the peer port (mutual TLS) [default: 0.0.0.0:7441]
    #[arg(long, env = "HERD_PEER_ADDR", value_name = "ADDR")]
    pub peer_addr: Option<SocketAddr>,

    /// Cluster secret file from `herd cluster init` [default: DATA/cluster.secret if present]
    #[arg(long, env = "HERD_CLUSTER_SECRET", value_name = "FILE")]
    pub cluster_secret: Option<PathBuf>,

    /// Operator CA certificate (PEM) for the peer port, instead of a cluster secret
    /// [needs --peer-cert and --peer-key]
    #[arg(long, env = "HERD_PEER_CA", value_name = "FILE")]
    pub peer_ca: Option<PathBuf>,

    /// This node's peer certificate chain (PEM), issued by --peer-ca
    #[arg(long, env = "HERD_PEER_CERT", value_name = "FILE")]
    pub peer_cert: Option<PathBuf>,

    /// Private key (PEM) of --peer-cert
    #[arg(long, env = "HERD_PEER_KEY", value_name = "FILE")]
    pub peer_key: Option<PathBuf>,

    /// Seed peer, host:port of its peer port (repeatable; comma-separated in HERD_PEERS)
    #[arg(
        long = "peer",
        env = "HERD_PEERS",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub peers: Vec<String>,

    /// Do not discover peers by mDNS
    #[arg(long, env = "HERD_NO_MDNS")]
    pub no_mdns: bool,

    /// Run mDNS only on this interface (repeatable; comma-separated in HERD_MDNS_INTERFACES)
    /// [default: every interface but loopback]
    #[arg(
        long = "mdns-interface",
        env = "HERD_MDNS_INTERFACES",
        value_name = "IFACE",
        value_delimiter = ','
    )]
    pub mdns_interfaces: Vec<String>,

    /// Time between anti-entropy rounds, e.g. 2s [default: 2s]
    #[arg(long, env = "HERD_ANTI_ENTROPY_INTERVAL", value_name = "DUR", value_parser = crate::config::parse_duration)]
    pub anti_entropy_interval: Option<std::time::Duration>,

    /// Remove a member not heard from for this long, e.g. 30d [default: 30d]
    #[arg(long, env = "HERD_MEMBER_EXPIRY", value_name = "DUR", value_parser = crate::config::parse_duration)]
    pub member_expiry: Option<std::time::Duration>,

    /// The least time a deletion is remembered, e.g. 1h [default: 1h]
    #[arg(long, env = "HERD_TOMBSTONE_GRACE", value_name = "DUR", value_parser = crate::config::parse_duration)]
    pub tombstone_grace: Option<std::time::Duration>,

    /// Test hook: do not push writes to peers (anti-entropy alone replicates)
    #[arg(long, env = "HERD_NO_PUSH", hide = true)]
    pub no_push: bool,

    /// Log level or tracing filter, e.g. `debug` or `info,node::db=trace`. The default leaves
    /// out rustls's warnings about a client's handshake quirks (e.g. an IP address sent as the
    /// TLS server name, once per connection from wrk or `openssl s_client`): herd itself logs
    /// refused handshakes at debug level
    #[arg(
        long,
        env = "HERD_LOG",
        value_name = "LEVEL",
        default_value = "info,rustls=error"
    )]
    pub log_level: String,

    /// Print the effective configuration and exit without starting the node
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MembersArgs {
    /// Print the node's JSON answer instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<MembersCommand>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum MembersCommand {
    /// Remove a member that is gone for good: deletions stop waiting for it. If it comes
    /// back, it forgets what it held from others (keeping its own writes no peer had) and
    /// rejoins
    Remove {
        /// Its node id, or a unique prefix of at least 4 hex digits
        #[arg(value_name = "NODE")]
        member: String,
        /// Remove it even if it is alive
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// Store path, e.g. /app/db/port
    pub path: String,
    /// Print JSON also for a string leaf (quoted)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct PutArgs {
    /// Store path, e.g. /app/db/port
    pub path: String,
    /// The value: stored as JSON if it parses as JSON (8080, true, {"a":1}, "\"quoted\""),
    /// else as a string (use `--` before a value starting with `-`)
    #[arg(required_unless_present = "file")]
    pub value: Option<String>,
    /// Read the value from FILE (`-` for stdin), one trailing newline dropped, same JSON rule
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "value"
    )]
    pub file: Option<PathBuf>,
    /// Expire the value after this long: 500ms, 30s, 5m, 2h, 1d or plain seconds
    #[arg(long, value_name = "DUR")]
    pub ttl: Option<String>,
    /// Write only if PATH's current version is VERSION (compare-and-set)
    #[arg(long, value_name = "VERSION")]
    pub if_match: Option<String>,
    /// Write only if nothing is at PATH yet
    #[arg(long, conflicts_with = "if_match")]
    pub create: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RmArgs {
    /// Store path, e.g. /app/db
    pub path: String,
    /// Delete only if PATH's current version is VERSION
    #[arg(long, value_name = "VERSION")]
    pub if_match: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LsArgs {
    /// Store path of a directory [default: the root]
    #[arg(default_value = "/")]
    pub path: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// Directory to mount on (must exist; a stale mount left there by a crash is replaced)
    pub dir: PathBuf,
    /// Let other users than the one mounting see the files (needs `user_allow_other` in
    /// /etc/fuse.conf unless run as root)
    #[arg(long)]
    pub allow_other: bool,
    /// Read-only view: writes fail with EROFS, and the kernel serves reads of unchanged keys
    /// from its caches without asking herd (fastest for programs that only read)
    #[arg(long)]
    pub read_only: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Store path to watch [default: the root]
    #[arg(default_value = "/")]
    pub path: String,
    /// Replay the changes after this revision of the node first
    #[arg(long, value_name = "REV")]
    pub since: Option<u64>,
    /// Run CMD (with `sh -c`) once the watch has the current state, and again after changes
    /// under PATH settle; never two runs at once. CMD gets the revision and the changed paths
    /// in HERD_REVISION, HERD_CHANGED (one per line), HERD_REASON (start, change or resync),
    /// HERD_NODE and HERD_WATCH_PATH, and the same as JSON on stdin
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// With --exec: run after no change came for MIN, or MAX after the first change not run
    /// yet, whichever is first (`0`: at once) [default: 200ms:2s]
    #[arg(long, value_name = "MIN[:MAX]", value_parser = parse_wait, requires = "exec")]
    pub wait: Option<Wait>,
}

/// `--wait MIN[:MAX]`: how long changes must settle before `--exec` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub min: std::time::Duration,
    pub max: std::time::Duration,
}

impl Default for Wait {
    fn default() -> Self {
        Wait {
            min: std::time::Duration::from_millis(200),
            max: std::time::Duration::from_secs(2),
        }
    }
}

/// `200ms:2s`, `1s` (MAX four times MIN, as consul-template), `0`.
fn parse_wait(s: &str) -> Result<Wait, String> {
    let (min, max) = match s.split_once(':') {
        Some((min, max)) => (
            crate::config::parse_duration(min)?,
            crate::config::parse_duration(max)?,
        ),
        None => {
            let min = crate::config::parse_duration(s)?;
            (min, min * 4)
        }
    };
    if max < min {
        return Err(format!("{s:?}: MAX is shorter than MIN"));
    }
    Ok(Wait { min, max })
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Store path of the subtree [default: the whole document]
    #[arg(default_value = "/")]
    pub path: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// JSON file holding an object (`-` for stdin)
    pub file: PathBuf,
    /// Also delete the top-level keys that are not in FILE
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Write a new random cluster secret (mode 0600) and print its path; copy the file to
    /// every node of the cluster
    Init {
        /// Where to write it [default: DATA/cluster.secret]
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace an existing secret (nodes that keep the old one no longer trust this one)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown only once)
    Create {
        /// Unique name of the token
        name: String,
        /// What the token may do
        #[arg(long, value_enum)]
        role: Role,
        /// Limit the token to this store path and everything below it
        #[arg(long, value_name = "PATH")]
        prefix: Option<String>,
    },
    /// List the tokens (never their secrets)
    List,
    /// Revoke a token on every node
    Revoke {
        /// Name of the token
        name: String,
    },
}

/// A token's role, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Read values, watch, status
    Read,
    /// Also write and delete values
    Write,
    /// Also manage tokens
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("herd").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let args = parse(&["--data-dir", "/d", "get", "/a", "--node", "https://h:1"]).unwrap();
        assert_eq!(args.connection.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(args.connection.node, ["https://h:1"]);
        let args = parse(&[
            "serve",
            "--data-dir",
            "/d",
            "--tls-san",
            "a,b",
            "--tls-san",
            "c",
        ]);
        let args = args.unwrap();
        assert_eq!(args.connection.data_dir, Some(PathBuf::from("/d")));
        let Command::Serve(serve) = args.command else {
            panic!("not serve")
        };
        assert_eq!(serve.tls_san, ["a", "b", "c"]);
        assert_eq!(serve.log_level, "info,rustls=error");
    }

    #[test]
    fn put_takes_a_value_or_a_file_and_negative_numbers() {
        let Command::Client(ClientCommand::Put(put)) = parse(&["put", "/a", "-5"]).unwrap().command
        else {
            panic!("not put")
        };
        assert_eq!(put.value.as_deref(), Some("-5"));
        let Command::Client(ClientCommand::Put(put)) =
            parse(&["put", "/a", "-f", "-"]).unwrap().command
        else {
            panic!("not put")
        };
        assert_eq!(put.file, Some(PathBuf::from("-")));
        assert!(parse(&["put", "/a"]).is_err());
        assert!(parse(&["put", "/a", "1", "-f", "x"]).is_err());
        assert!(parse(&["put", "/a", "1", "--create", "--if-match", "v"]).is_err());
    }

    #[test]
    fn usage_errors_exit_with_2() {
        let error = parse(&["token", "create", "ci", "--role", "root"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        let error = parse(&["watch", "/a", "--since", "x"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }
}
