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
    let (config, notes) = config(args, data_dir)?;
    if args.check_config {
        for note in &notes {
            super::note(&format!("config file: {note}"));
        }
        return Ok(super::print(&format!("{config:#?}\n"))?);
    }
    let filter = EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("bad --log-level / HERD_LOG {:?}", args.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    for note in notes {
        tracing::warn!("config file: {note}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(crate::node::run(config))
}

/// The node's configuration: the config file (or the defaults) with every given flag on top,
/// and the notes about the file to log (keys in the old flat format).
pub fn config(
    args: &ServeArgs,
    data_dir: Option<&Path>,
) -> Result<(Config, Vec<String>), config::Error> {
    let (mut config, notes) = match &args.config {
        Some(file) => Config::from_file(file)?,
        None => (Config::default(), Vec::new()),
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir.to_path_buf();
    }
    apply_flags(args, &mut config);
    config.validate()?;
    Ok((config, notes))
}

/// Where each flag (and its `HERD_*` variable, which clap reads for it) goes in the
/// configuration: the one place that maps them. A flag not given leaves the file's value.
fn apply_flags(a: &ServeArgs, c: &mut Config) {
    fn set<T: Clone>(flag: &Option<T>, field: &mut T) {
        if let Some(v) = flag {
            *field = v.clone();
        }
    }
    fn some<T: Clone>(flag: &Option<T>, field: &mut Option<T>) {
        if let Some(v) = flag {
            *field = Some(v.clone());
        }
    }
    fn list(flag: &[String], field: &mut Vec<String>) {
        if !flag.is_empty() {
            *field = flag.to_vec();
        }
    }
    fn switch(given: bool, field: &mut bool, to: bool) {
        if given {
            *field = to;
        }
    }
    set(&a.api_addr, &mut c.api.addr);
    some(&a.tls_cert, &mut c.api.tls_cert);
    some(&a.tls_key, &mut c.api.tls_key);
    list(&a.tls_san, &mut c.api.tls_san);
    set(&a.max_value_bytes, &mut c.api.max_value_bytes);
    some(&a.mount, &mut c.mount.dir);
    switch(a.mount_read_only, &mut c.mount.read_only, true);
    set(&a.cluster, &mut c.cluster.name);
    set(&a.env, &mut c.cluster.env);
    set(&a.peer_addr, &mut c.cluster.addr);
    some(&a.cluster_secret, &mut c.cluster.secret);
    some(&a.peer_ca, &mut c.cluster.ca);
    some(&a.peer_cert, &mut c.cluster.cert);
    some(&a.peer_key, &mut c.cluster.key);
    list(&a.peers, &mut c.cluster.peers);
    switch(a.no_mdns, &mut c.cluster.mdns, false);
    list(&a.mdns_interfaces, &mut c.cluster.mdns_interfaces);
    set(
        &a.anti_entropy_interval,
        &mut c.cluster.anti_entropy_interval,
    );
    switch(a.no_push, &mut c.cluster.push, false);
    set(&a.member_expiry, &mut c.cluster.member_expiry);
    set(&a.tombstone_grace, &mut c.storage.tombstone_grace);
    // A batch must hold at least one value: raising the value limit raises it too.
    if a.max_value_bytes.is_some() {
        c.api.max_batch_bytes = c.api.max_batch_bytes.max(c.api.max_value_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::path::PathBuf;

    #[test]
    fn defaults_without_file_or_flags() {
        let (config, _) = config(&ServeArgs::default(), None).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("herd-data"));
        assert_eq!(config.api.addr, SocketAddr::from(([0, 0, 0, 0], 7440)));
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herd.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\n[api]\naddr = \"127.0.0.1:9000\"\n\
             tls_san = [\"file.example\"]\nmax_watchers = 3\n",
        )
        .unwrap();
        let mut args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        let (from_file, _) = config(&args, None).unwrap();
        assert_eq!(from_file.data_dir, PathBuf::from("/from/file"));
        assert_eq!(from_file.api.addr.port(), 9000);
        assert_eq!(from_file.api.tls_san, ["file.example"]);
        assert_eq!(from_file.api.max_watchers, 3);

        args.api_addr = Some("127.0.0.1:9100".parse().unwrap());
        args.tls_san = vec!["a".into(), "b".into()];
        args.max_value_bytes = Some(64 << 20);
        args.no_mdns = true;
        args.peers = vec!["10.0.0.2:7441".into()];
        let (flagged, _) = config(&args, Some(Path::new("/from/flag"))).unwrap();
        assert_eq!(flagged.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(flagged.api.addr.port(), 9100);
        assert_eq!(flagged.api.tls_san, ["a", "b"]);
        assert_eq!(flagged.api.max_value_bytes, 64 << 20);
        assert_eq!(flagged.api.max_batch_bytes, 64 << 20);
        assert_eq!(flagged.api.max_watchers, 3);
        assert!(!flagged.cluster.mdns);
        assert_eq!(flagged.cluster.peers, ["10.0.0.2:7441"]);
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
