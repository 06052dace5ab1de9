//! Finding the node a client command talks to: its URL, the token and the CA certificate, from
//! flags and `HERD_*` variables first, then from the node's data directory (`node.json`,
//! `admin.token`, `tls/ca.crt`), which is `--data-dir` or else `./herd-data` when it exists.
//!
//! Must not know about requests: it only reads files.

use std::io;
use std::path::{Path, PathBuf};

use super::args::ConnectionArgs;
use super::Error;

/// The data directory used when `--data-dir` is not given, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "herd-data";

/// What a client needs to talk to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Base URL of the node's API, e.g. `https://127.0.0.1:7440`.
    pub url: String,
    /// Bearer token; `None` sends none (the node answers 401 where one is needed).
    pub token: Option<String>,
    /// PEM of the CA the node's certificate must be issued by.
    pub ca_pem: Vec<u8>,
}

/// Resolves flags against the data directory. `cwd` is where `./herd-data` is looked for.
///
/// - URL: `--node`, else the `api` field of `DATA/node.json` (written by a running node).
/// - token: `--token`, else the first line of `DATA/admin.token` if that file exists.
/// - CA: `--ca-cert`, else `DATA/tls/ca.crt` if it exists; without either it is an error.
///
/// Only `herd watch` fails over between nodes: several `--node` are refused here.
pub fn discover(args: &ConnectionArgs, cwd: &Path) -> Result<Target, Error> {
    if args.node.len() > 1 {
        return Err(Error::BadInput(
            "several --node are only for `herd watch` (to fail over); give one".into(),
        ));
    }
    let mut all = discover_all(args, cwd)?;
    Ok(all.remove(0))
}

/// As [`discover`], one target per `--node` (at least one), all with the same token and CA.
pub fn discover_all(args: &ConnectionArgs, cwd: &Path) -> Result<Vec<Target>, Error> {
    let data_dir = match &args.data_dir {
        Some(dir) => Some(cwd.join(dir)),
        None => Some(cwd.join(DEFAULT_DATA_DIR)).filter(|dir| dir.is_dir()),
    };
    let urls = match (args.node.is_empty(), &data_dir) {
        (false, _) => args.node.clone(),
        (true, Some(dir)) => vec![node_url(dir)?],
        (true, None) => return Err(Error::NoNode),
    };
    let url = urls[0].clone();
    let token = match (&args.token, &data_dir) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(dir)) => read_token(&dir.join("admin.token"))?,
        (None, None) => None,
    };
    let ca_pem = match (&args.ca_cert, &data_dir) {
        (Some(file), _) => read("ca certificate", &cwd.join(file))?,
        (None, Some(dir)) => match read_if_exists("ca certificate", &dir.join("tls/ca.crt"))? {
            Some(pem) => pem,
            None => return Err(Error::NoCa { url }),
        },
        (None, None) => return Err(Error::NoCa { url }),
    };
    Ok(urls
        .into_iter()
        .map(|url| Target {
            url,
            token: token.clone(),
            ca_pem: ca_pem.clone(),
        })
        .collect())
}

/// The `api` URL in `DIR/node.json`.
fn node_url(dir: &Path) -> Result<String, Error> {
    let file = dir.join("node.json");
    let Some(bytes) = read_if_exists("node file", &file)? else {
        return Err(Error::NoNodeFile {
            dir: dir.to_path_buf(),
        });
    };
    let bad = |reason: &str| Error::BadNodeFile {
        file: file.clone(),
        reason: reason.to_string(),
    };
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(&format!("not json: {e}")))?;
    match value.get("api").and_then(|api| api.as_str()) {
        Some(url) if !url.is_empty() => Ok(url.to_string()),
        _ => Err(bad("no \"api\" url in it")),
    }
}

/// The token in a token file (first line, surrounding whitespace dropped); `None` when the file
/// does not exist or is empty.
fn read_token(file: &Path) -> Result<Option<String>, Error> {
    let Some(bytes) = read_if_exists("token file", file)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let token = text.lines().next().unwrap_or_default().trim();
    Ok(Some(token.to_string()).filter(|t| !t.is_empty()))
}

fn read(what: &'static str, file: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(file).map_err(|cause| Error::Read {
        what,
        file: file.to_path_buf(),
        cause,
    })
}

fn read_if_exists(what: &'static str, file: &Path) -> Result<Option<Vec<u8>>, Error> {
    match std::fs::read(file) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(cause) if cause.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(Error::Read {
            what,
            file: PathBuf::from(file),
            cause,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A working directory holding `herd-data` with the three files a running node writes.
    fn node_dir() -> tempfile::TempDir {
        let cwd = tempfile::tempdir().unwrap();
        let data = cwd.path().join(DEFAULT_DATA_DIR);
        fs::create_dir_all(data.join("tls")).unwrap();
        fs::write(
            data.join("node.json"),
            r#"{"api": "https://127.0.0.1:7440", "node_id": "3f2a9c1e5b7d4e60", "pid": 1}"#,
        )
        .unwrap();
        fs::write(data.join("admin.token"), "herd_admin\n").unwrap();
        fs::write(data.join("tls/ca.crt"), "LOCAL CA").unwrap();
        cwd
    }

    fn args(node: Option<&str>, token: Option<&str>, ca: Option<&str>) -> ConnectionArgs {
        ConnectionArgs {
            node: node.map(String::from).into_iter().collect(),
            token: token.map(String::from),
            ca_cert: ca.map(PathBuf::from),
            data_dir: None,
        }
    }

    #[test]
    fn herd_data_in_the_working_directory_gives_everything() {
        let cwd = node_dir();
        let target = discover(&args(None, None, None), cwd.path()).unwrap();
        assert_eq!(
            target,
            Target {
                url: "https://127.0.0.1:7440".into(),
                token: Some("herd_admin".into()),
                ca_pem: b"LOCAL CA".to_vec(),
            }
        );
    }

    #[test]
    fn flags_win_over_the_data_directory() {
        let cwd = node_dir();
        fs::write(cwd.path().join("other.crt"), "OTHER CA").unwrap();
        let given = args(Some("https://h:1"), Some("t"), Some("other.crt"));
        let target = discover(&given, cwd.path()).unwrap();
        assert_eq!(target.url, "https://h:1");
        assert_eq!(target.token.as_deref(), Some("t"));
        assert_eq!(target.ca_pem, b"OTHER CA");
        // Only --node: token and CA still come from the data directory.
        let target = discover(&args(Some("https://h:1"), None, None), cwd.path()).unwrap();
        assert_eq!(target.token.as_deref(), Some("herd_admin"));
        assert_eq!(target.ca_pem, b"LOCAL CA");
    }

    #[test]
    fn data_dir_flag_replaces_the_working_directory_default() {
        let elsewhere = node_dir();
        let cwd = tempfile::tempdir().unwrap();
        let mut given = args(None, None, None);
        given.data_dir = Some(elsewhere.path().join(DEFAULT_DATA_DIR));
        let target = discover(&given, cwd.path()).unwrap();
        assert_eq!(target.url, "https://127.0.0.1:7440");
        assert_eq!(target.token.as_deref(), Some("herd_admin"));
        // A --data-dir without a running node's files is an error, even next to herd-data.
        let here = node_dir();
        given.data_dir = Some(PathBuf::from("empty"));
        fs::create_dir(here.path().join("empty")).unwrap();
        let error = discover(&given, here.path()).unwrap_err();
        assert!(matches!(error, Error::NoNodeFile { .. }), "{error}");
    }

    #[test]
    fn missing_pieces_are_errors_or_absent() {
        let cwd = tempfile::tempdir().unwrap();
        let error = discover(&args(None, None, None), cwd.path()).unwrap_err();
        assert!(matches!(error, Error::NoNode), "{error}");
        let error = discover(&args(Some("https://h:1"), None, None), cwd.path()).unwrap_err();
        assert!(matches!(error, Error::NoCa { .. }), "{error}");
        fs::write(cwd.path().join("ca.crt"), "CA").unwrap();
        let remote = args(Some("https://h:1"), None, Some("ca.crt"));
        assert_eq!(discover(&remote, cwd.path()).unwrap().token, None);
        let missing = args(Some("https://h:1"), None, Some("missing.crt"));
        let error = discover(&missing, cwd.path()).unwrap_err();
        assert!(matches!(error, Error::Read { .. }), "{error}");

        let cwd = node_dir();
        let data = cwd.path().join(DEFAULT_DATA_DIR);
        fs::remove_file(data.join("admin.token")).unwrap();
        fs::remove_file(data.join("tls/ca.crt")).unwrap();
        let with_ca = args(None, None, Some("herd-data/node.json"));
        assert_eq!(discover(&with_ca, cwd.path()).unwrap().token, None);
        let error = discover(&args(None, None, None), cwd.path()).unwrap_err();
        assert!(matches!(error, Error::NoCa { .. }), "{error}");
        fs::write(data.join("node.json"), r#"{"pid": 1}"#).unwrap();
        let error = discover(&args(None, None, None), cwd.path()).unwrap_err();
        assert!(matches!(error, Error::BadNodeFile { .. }), "{error}");
    }
}
