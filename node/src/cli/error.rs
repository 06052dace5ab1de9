//! Errors of the client commands as the user sees them: the message, a hint where one helps,
//! and the exit code scripts rely on (the table is in the `cli` module documentation).
//!
//! Must not print anything: `cli::report` does.

use std::io;
use std::path::PathBuf;

use http::StatusCode;

use super::discover;
use crate::client;

/// Exit code: any error without a more specific code.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: bad flags or arguments (what clap exits with).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: nothing at the path, or no such token (404).
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code: a precondition failed or the request conflicts with the state (409, 412).
pub const EXIT_CONFLICT: u8 = 4;
/// Exit code: no valid token, or the token may not do this (401, 403).
pub const EXIT_AUTH: u8 = 5;
/// Exit code: the node cannot be reached (connect, timeout, TLS or a broken connection).
pub const EXIT_UNREACHABLE: u8 = 6;
/// Exit code: the node rejected the input (400, 413, 415, 422), or the input file is unusable.
pub const EXIT_REJECTED: u8 = 7;

/// What went wrong in a client command, worded for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node answered with an error status.
    #[error("{}", api_message(*.status, .code.as_deref(), .message))]
    Api {
        status: StatusCode,
        /// The stable error code of the JSON error body, if there was one.
        code: Option<String>,
        message: String,
    },

    /// The request did not get an answer (connection, TLS, bad URL, unreadable body).
    #[error(transparent)]
    Client(client::Error),

    #[error(
        "no node to talk to: --node is not set and there is no ./{} directory",
        discover::DEFAULT_DATA_DIR
    )]
    NoNode,

    #[error("no node.json in {}: no node has started with this data directory", .dir.display())]
    NoNodeFile { dir: PathBuf },

    #[error("{} is not a usable node file: {reason}", .file.display())]
    BadNodeFile { file: PathBuf, reason: String },

    #[error("no ca certificate to check {url} with")]
    NoCa { url: String },

    #[error("cannot read {what} {}: {}", .file.display(), io_reason(.cause))]
    Read {
        what: &'static str,
        file: PathBuf,
        cause: io::Error,
    },

    /// Input the CLI cannot turn into a request (e.g. an import file that is not an object).
    #[error("{0}")]
    BadInput(String),

    #[error("unexpected answer from the node: {0}")]
    BadAnswer(String),

    #[error("the node closed the watch stream")]
    StreamEnded {
        /// The last revision printed, to resume from.
        last_revision: Option<u64>,
    },

    #[error("cannot write to stdout: {}", io_reason(.0))]
    Output(io::Error),

    #[error("cannot start the async runtime: {}", io_reason(.0))]
    Runtime(io::Error),

    #[error("cannot mount at {}: {}", .dir.display(), io_reason(.cause))]
    Mount { dir: PathBuf, cause: io::Error },

    /// The node refused or failed the first calls of a mount.
    #[error("cannot mount: {0}")]
    MountBackend(fuse_mount::Error),
}

impl From<client::Error> for Error {
    fn from(error: client::Error) -> Error {
        match error {
            client::Error::Status {
                status,
                code,
                message,
            } => Error::Api {
                status,
                code,
                message,
            },
            other => Error::Client(other),
        }
    }
}

impl Error {
    /// The process exit code for this error (see the module documentation).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Api { status, .. } => status_exit_code(*status),
            Error::Client(
                client::Error::Connect { .. }
                | client::Error::Timeout { .. }
                | client::Error::Tls { .. }
                | client::Error::Http { .. },
            )
            | Error::StreamEnded { .. } => EXIT_UNREACHABLE,
            Error::BadInput(_) => EXIT_REJECTED,
            _ => EXIT_FAILURE,
        }
    }

    /// What the user could do about it, if something specific helps.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Error::Api { status, code, .. } => match (code.as_deref(), status.as_u16()) {
                (Some("unauthorized"), _) => "pass a token with --token or HERD_TOKEN",
                (Some("invalid_token"), _) | (_, 401) => {
                    "check --token / HERD_TOKEN (the node's DATA/admin.token holds its admin token)"
                }
                (Some("outside_prefix"), _) => "this token is limited to another path prefix",
                (Some("forbidden"), _) => "this token's role does not allow it",
                (Some("compacted"), _) => {
                    "that revision has left the node's change log: watch again without --since"
                }
                (Some("no_space"), _) => {
                    "free space on the node's data directory; GET /v1/health says whether \
                     writes then resume by themselves or after a restart"
                }
                (Some("outcome_unknown"), _) => {
                    "the node's disk failed this write: read the key again after the node restarts"
                }
                (Some("unavailable"), 503) => {
                    "GET /v1/health on the node says why (a failed disk needs a restart)"
                }
                _ => return None,
            },
            Error::Client(client::Error::Connect { .. } | client::Error::Timeout { .. }) => {
                "is `herd serve` running there? check --node / HERD_NODE"
            }
            Error::Client(client::Error::Ca(_)) => {
                "--ca-cert takes a PEM certificate file: the node's DATA/tls/ca.crt"
            }
            Error::Client(client::Error::Tls { .. }) => {
                "check --ca-cert / HERD_CA_CERT: it must be the CA that issued the node's \
                 certificate (DATA/tls/ca.crt on the node)"
            }
            Error::Client(client::Error::BadUrl { .. }) => {
                "--node takes the node's API URL, e.g. https://10.0.0.5:7440"
            }
            Error::NoNode => {
                "run this next to herd-data, or pass --node https://HOST:7440 --token … --ca-cert …"
            }
            Error::NoNodeFile { .. } => "start the node (herd serve), or pass --node URL",
            Error::NoCa { .. } => "pass --ca-cert FILE (HERD_CA_CERT): the node's DATA/tls/ca.crt",
            Error::Read { what, cause, .. }
                if *what == "token file" && cause.kind() == io::ErrorKind::PermissionDenied =>
            {
                "run as the user that runs the node, or pass --token / HERD_TOKEN"
            }
            Error::StreamEnded {
                last_revision: Some(revision),
            } => return Some(format!("resume with --since {revision}")),
            _ => return None,
        };
        Some(hint.to_string())
    }
}

/// The exit code for an error status of the node.
pub fn status_exit_code(status: StatusCode) -> u8 {
    match status.as_u16() {
        404 => EXIT_NOT_FOUND,
        409 | 412 => EXIT_CONFLICT,
        401 | 403 => EXIT_AUTH,
        400 | 413 | 415 | 422 => EXIT_REJECTED,
        _ => EXIT_FAILURE,
    }
}

fn api_message(status: StatusCode, code: Option<&str>, message: &str) -> String {
    match code {
        Some(code) => format!("{message} ({code})"),
        None => format!("the node answered {status}: {message}"),
    }
}

/// An I/O error as a short lowercase phrase, without the `(os error N)` suffix.
fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(status: u16, code: Option<&str>) -> Error {
        Error::from(client::Error::Status {
            status: StatusCode::from_u16(status).unwrap(),
            code: code.map(String::from),
            message: "nothing at /app/x".into(),
        })
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        let cases = [
            (404, EXIT_NOT_FOUND),
            (409, EXIT_CONFLICT),
            (412, EXIT_CONFLICT),
            (401, EXIT_AUTH),
            (403, EXIT_AUTH),
            (400, EXIT_REJECTED),
            (413, EXIT_REJECTED),
            (415, EXIT_REJECTED),
            (422, EXIT_REJECTED),
            (410, EXIT_FAILURE),
            (429, EXIT_FAILURE),
            (500, EXIT_FAILURE),
            (503, EXIT_FAILURE),
        ];
        for (status, code) in cases {
            assert_eq!(api_error(status, None).exit_code(), code, "status {status}");
        }
    }

    #[test]
    fn other_errors_map_to_exit_codes() {
        let refused = client::Error::Connect {
            url: "https://127.0.0.1:1".into(),
            cause: "connection refused".into(),
        };
        assert_eq!(Error::from(refused).exit_code(), EXIT_UNREACHABLE);
        let tls = client::Error::Tls {
            url: "https://127.0.0.1:1".into(),
            cause: "invalid peer certificate".into(),
        };
        assert_eq!(Error::from(tls).exit_code(), EXIT_UNREACHABLE);
        let ended = Error::StreamEnded {
            last_revision: Some(7),
        };
        assert_eq!(ended.exit_code(), EXIT_UNREACHABLE);
        assert_eq!(ended.hint().as_deref(), Some("resume with --since 7"));
        assert_eq!(Error::BadInput("x".into()).exit_code(), EXIT_REJECTED);
        assert_eq!(Error::NoNode.exit_code(), EXIT_FAILURE);
        let bad_url = client::Error::BadUrl {
            url: "x".into(),
            reason: "y".into(),
        };
        assert_eq!(Error::from(bad_url).exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn messages_and_hints() {
        let error = api_error(404, Some("not_found"));
        assert_eq!(error.to_string(), "nothing at /app/x (not_found)");
        assert_eq!(error.hint(), None);
        let error = api_error(502, None);
        assert_eq!(
            error.to_string(),
            "the node answered 502 Bad Gateway: nothing at /app/x"
        );
        let hint = api_error(401, Some("invalid_token")).hint().unwrap();
        assert!(hint.contains("--token"), "{hint}");
        let hint = api_error(410, Some("compacted")).hint().unwrap();
        assert!(hint.contains("without --since"), "{hint}");
        let hint = api_error(507, Some("no_space")).hint().unwrap();
        assert!(hint.contains("free space"), "{hint}");
        let hint = Error::NoNode.hint().unwrap();
        assert!(hint.starts_with("run this next to herd-data"), "{hint}");
    }

    #[test]
    fn io_reasons_are_short() {
        let error = io::Error::from_raw_os_error(2);
        assert_eq!(io_reason(&error), "no such file or directory");
    }
}
