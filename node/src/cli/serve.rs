//! `herd serve`: turns flags (and their `HERD_*` variables) and the optional config file into a
//! validated [`Config`], sets up logging and runs the node until SIGINT or SIGTERM.
//!
//! Precedence, highest first: flags, environment variables, the config file, the defaults.
//! Must not know what the settings mean: [`Config`] documents and validates them.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use super::args::ServeArgs;
use crate::config::{self, Config};

pub fn run(args: &ServeArgs, data_dir: Option<&Path>) -> anyhow::Result<()> {
    let config = config(args, data_dir)?;
    if args.check_config {
        return Ok(super::print(&format!("{config:#?}\n"))?);
    }
    let filter = EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("bad --log-level / HERD_LOG {:?}", args.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(crate::node::run(config))
}

/// The node's configuration: the config file (or the defaults) with every given flag on top.
pub fn config(args: &ServeArgs, data_dir: Option<&Path>) -> Result<Config, config::Error> {
    let mut config = match &args.config {
        Some(file) => Config::from_file(file)?,
        None => Config::default(),
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir.to_path_buf();
    }
    if let Some(addr) = args.api_addr {
        config.api_addr = addr;
    }
    if let Some(cert) = &args.tls_cert {
        config.tls_cert = Some(cert.clone());
    }
    if let Some(key) = &args.tls_key {
        config.tls_key = Some(key.clone());
    }
    if !args.tls_san.is_empty() {
        config.tls_san = args.tls_san.clone();
    }
    if let Some(dir) = &args.mount {
        config.mount = Some(dir.clone());
    }
    if args.mount_read_only {
        config.mount_read_only = true;
    }
    if let Some(v) = &args.cluster {
        config.cluster = v.clone();
    }
    if let Some(v) = &args.env {
        config.env = v.clone();
    }
    if let Some(v) = args.peer_addr {
        config.peer_addr = v;
    }
    if let Some(v) = &args.cluster_secret {
        config.cluster_secret = Some(v.clone());
    }
    if let Some(v) = &args.peer_ca {
        config.peer_ca = Some(v.clone());
    }
    if let Some(v) = &args.peer_cert {
        config.peer_cert = Some(v.clone());
    }
    if let Some(v) = &args.peer_key {
        config.peer_key = Some(v.clone());
    }
    if !args.peers.is_empty() {
        config.peers = args.peers.clone();
    }
    if args.no_mdns {
        config.mdns = false;
    }
    if !args.mdns_interfaces.is_empty() {
        config.mdns_interfaces = args.mdns_interfaces.clone();
    }
    if let Some(v) = args.anti_entropy_interval {
        config.anti_entropy_interval = v;
    }
    if args.no_push {
        config.replication_push = false;
    }
    if let Some(bytes) = args.max_value_bytes {
        config.max_value_bytes = bytes;
        // A batch must hold at least one value: raising the value limit raises it too.
        config.max_batch_bytes = config.max_batch_bytes.max(bytes);
    }
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::path::PathBuf;

    #[test]
    fn defaults_without_file_or_flags() {
        let config = config(&ServeArgs::default(), None).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("herd-data"));
        assert_eq!(config.api_addr, SocketAddr::from(([0, 0, 0, 0], 7440)));
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herd.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\napi_addr = \"127.0.0.1:9000\"\n\
             tls_san = [\"file.example\"]\nmax_watchers = 3\n",
        )
        .unwrap();
        let mut args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        let from_file = config(&args, None).unwrap();
        assert_eq!(from_file.data_dir, PathBuf::from("/from/file"));
        assert_eq!(from_file.api_addr.port(), 9000);
        assert_eq!(from_file.tls_san, ["file.example"]);
        assert_eq!(from_file.max_watchers, 3);

        args.api_addr = Some("127.0.0.1:9100".parse().unwrap());
        args.tls_san = vec!["a".into(), "b".into()];
        args.max_value_bytes = Some(64 << 20);
        let flagged = config(&args, Some(Path::new("/from/flag"))).unwrap();
        assert_eq!(flagged.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(flagged.api_addr.port(), 9100);
        assert_eq!(flagged.tls_san, ["a", "b"]);
        assert_eq!(flagged.max_value_bytes, 64 << 20);
        assert_eq!(flagged.max_batch_bytes, 64 << 20);
        assert_eq!(flagged.max_watchers, 3);
    }

    #[test]
    fn invalid_combinations_are_refused() {
        let args = ServeArgs {
            tls_cert: Some("cert.pem".into()),
            ..ServeArgs::default()
        };
        assert!(matches!(
            config(&args, None),
            Err(config::Error::Invalid { .. })
        ));
        let args = ServeArgs {
            config: Some("/no/such/herd.toml".into()),
            ..ServeArgs::default()
        };
        assert!(matches!(
            config(&args, None),
            Err(config::Error::Read { .. })
        ));
    }
}
