//! The `herd` command line: `herd serve` runs a node, every other command is a client of a
//! node's REST API (`docs/api.md`). Data goes to stdout, messages to stderr as `error: ...` with
//! a `hint: ...` line where one helps.
//!
//! Layout: `args` (clap types), `serve` (flags → [`Config`](crate::config::Config), start the
//! node), `discover` (finding the node, token and CA), `encoding` (paths and values into request
//! parts), `api` (one request helper), `error` (messages, hints, exit codes), and `kv`, `watch`
//! and `tokens` (the client commands).
//!
//! Must not know the store's rules: paths and values are judged by the node, and the node's
//! error is what the user sees.
//!
//! # Exit codes
//!
//! Scripts can rely on these:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other error |
//! | 2 | usage error: bad flags or arguments (clap's code) |
//! | 3 | not found (404) |
//! | 4 | precondition failed or conflict (409, 412) |
//! | 5 | authentication or permission (401, 403) |
//! | 6 | cannot reach the node: connection refused or broken, timeout, TLS failure |
//! | 7 | rejected input (400, 413, 415, 422, or an input file that is not usable) |

pub(crate) mod api;
mod args;
mod discover;
pub(crate) mod encoding;
mod error;
mod kv;
mod mount;
mod plugin;
mod serve;
mod tokens;
mod watch;

use anyhow::Context as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use args::Args;
use args::{
    ClientCommand, ClusterCommand, Command, ConnectionArgs, MembersArgs, MembersCommand,
    PluginCommand, TokenCommand,
};
pub use error::{
    status_exit_code, Error, EXIT_AUTH, EXIT_CONFLICT, EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_REJECTED,
    EXIT_UNREACHABLE, EXIT_USAGE,
};

/// Runs the parsed command line to completion.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Serve(serve) => serve::run(&serve, args.connection.data_dir.as_deref()),
        Command::Cluster(ClusterCommand::Init { out, force }) => {
            let path = out.unwrap_or_else(|| {
                args.connection
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(discover::DEFAULT_DATA_DIR))
                    .join("cluster.secret")
            });
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            crate::cluster::trust::ClusterSecret::create(&path, force)?;
            print(&format!("{}\n", path.display()))?;
            eprintln!(
                "wrote a new cluster secret; copy it (mode 0600) to every node of the cluster"
            );
            Ok(())
        }
        Command::Client(command) => Ok(run_client(&args.connection, command)?),
    }
}

/// Prints an error of [`run`] to stderr (`error: ...`, then `hint: ...` where one helps) and
/// returns the exit code for it. A closed stdout (`herd watch / | head -1`) ends quietly.
pub fn report(error: &anyhow::Error) -> ExitCode {
    ExitCode::from(report_to(error, &mut io::stderr().lock()))
}

fn report_to(error: &anyhow::Error, stderr: &mut impl Write) -> u8 {
    let cli_error = error.chain().find_map(|e| e.downcast_ref::<Error>());
    if let Some(Error::Output(cause)) = cli_error {
        if cause.kind() == io::ErrorKind::BrokenPipe {
            return 0;
        }
    }
    let message = format!("{error:#}");
    let _ = writeln!(stderr, "error: {}", encoding::printable(&message));
    if let Some(hint) = cli_error.and_then(Error::hint) {
        let _ = writeln!(stderr, "hint: {}", encoding::printable(&hint));
    }
    cli_error.map_or(EXIT_FAILURE, Error::exit_code)
}

fn run_client(connection: &ConnectionArgs, command: ClientCommand) -> Result<(), Error> {
    if let ClientCommand::Plugin(PluginCommand::Test(args)) = &command {
        return plugin::test(args);
    }
    if let ClientCommand::Watch(args) = &command {
        let targets = discover::discover_all(connection, Path::new("."))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        return runtime.block_on(watch::watch(&targets, args));
    }
    let target = discover::discover(connection, Path::new("."))?;
    if let ClientCommand::Mount(args) = &command {
        return mount::run(&target, args);
    }
    let api = api::Api::new(&target)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(async {
        match command {
            ClientCommand::Get(args) => kv::get(&api, &args).await,
            ClientCommand::Put(args) => kv::put(&api, &args).await,
            ClientCommand::Rm(args) => kv::rm(&api, &args).await,
            ClientCommand::Ls(args) => kv::ls(&api, &args).await,
            ClientCommand::Watch(_) => unreachable!("watch connects to its nodes itself"),
            ClientCommand::Export(args) => kv::export(&api, &args).await,
            ClientCommand::Import(args) => kv::import(&api, &args).await,
            ClientCommand::Mount(_) => unreachable!("mount runs on its own runtime"),
            ClientCommand::Status => {
                let status = api.get("/v1/status").await?;
                print(&format!("{}\n", pretty(&status)))
            }
            ClientCommand::Members(MembersArgs {
                command: Some(MembersCommand::Remove { member, force }),
                ..
            }) => {
                let url = format!(
                    "/v1/members/{}{}",
                    crate::client::paths::encode_component(&member),
                    if force { "?force" } else { "" }
                );
                let answer = api.call(http::Method::DELETE, &url, &[], None).await?;
                print(&format!(
                    "removed member {}: deletions no longer wait for it\n",
                    answer["node_id"].as_str().unwrap_or(&member)
                ))
            }
            ClientCommand::Members(args) => {
                let view = api.get("/v1/members").await?;
                if args.json {
                    print(&format!("{}\n", pretty(&view)))
                } else {
                    print(&members_table(&view))
                }
            }
            ClientCommand::Token(TokenCommand::Create { name, role, prefix }) => {
                tokens::create(&api, &name, role, prefix.as_deref()).await
            }
            ClientCommand::Token(TokenCommand::List) => tokens::list(&api).await,
            ClientCommand::Plugin(PluginCommand::Add(args)) => {
                plugin::install(&api, &args, false).await
            }
            ClientCommand::Plugin(PluginCommand::Update(args)) => {
                plugin::install(&api, &args, true).await
            }
            ClientCommand::Plugin(PluginCommand::Ls { json }) => plugin::list(&api, json).await,
            ClientCommand::Plugin(PluginCommand::Rm { name }) => plugin::remove(&api, &name).await,
            ClientCommand::Plugin(PluginCommand::Test(_)) => unreachable!("runs without a node"),
            ClientCommand::Token(TokenCommand::Revoke { name }) => {
                tokens::revoke(&api, &name).await
            }
        }
    })
}

/// Writes data to stdout (and flushes, so a reader of a pipe sees each line at once).
fn print(text: &str) -> Result<(), Error> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(Error::Output)
}

/// Writes a message for the user to stderr; a failure to do so is not worth failing for.
/// Control characters (from keys or names in it) are escaped.
fn note(text: &str) {
    let _ = writeln!(io::stderr(), "{}", encoding::printable(text));
}

/// Rows as aligned columns, two spaces apart, control characters escaped; the last column is
/// not padded.
fn columns<R: AsRef<[String]>>(rows: &[R]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.as_ref().iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(encoding::printable(cell).chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let row = row.as_ref();
        for (i, cell) in row.iter().enumerate() {
            let cell = encoding::printable(cell);
            if i + 1 == row.len() {
                out.push_str(&cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

/// The members view as a table: this node first, then each peer.
fn members_table(view: &serde_json::Value) -> String {
    let me = &view["self"];
    let mut out = format!(
        "node {} cluster {} env {}\n",
        me["node_id"].as_str().unwrap_or("?"),
        me["cluster"].as_str().unwrap_or("?"),
        me["env"].as_str().unwrap_or("?"),
    );
    if let Some(why) = view["clustering"].as_str() {
        out.push_str(&format!("clustering {why}\n"));
        return out;
    }
    out.push_str(&format!(
        "{:<16}  {:<15}  {:<21}  {:<7}  {:>10}  {:>8}  {:>9}\n",
        "NODE", "STATE", "ADDRESS", "SOURCE", "SEEN", "LAG", "CLOCK"
    ));
    for m in view["members"].as_array().into_iter().flatten() {
        let seen = m["last_seen_ago_ms"]
            .as_u64()
            .map_or("never".to_owned(), |ms| {
                format!("{:.1}s ago", ms as f64 / 1000.0)
            });
        let clock = m["clock_offset_ms"]
            .as_i64()
            .map_or("?".to_owned(), |ms| format!("{:+.1}s", ms as f64 / 1000.0));
        let state = match m["state"].as_str() {
            _ if m["clock_refused"] == true => "refused (clock)".to_owned(),
            Some("refused") => format!(
                "refused ({} {})",
                m["cluster"].as_str().unwrap_or("?"),
                m["env"].as_str().unwrap_or("?")
            ),
            s => s.unwrap_or("?").to_owned(),
        };
        out.push_str(&format!(
            "{:<16}  {:<15}  {:<21}  {:<7}  {:>10}  {:>6}ms  {:>9}\n",
            m["node_id"].as_str().unwrap_or("?"),
            state,
            m["addr"].as_str().unwrap_or("?"),
            m["source"].as_str().unwrap_or("?"),
            seen,
            m["replication_lag_ms"].as_u64().unwrap_or(0),
            clock,
        ));
    }
    let t = &view["tombstones"];
    if let (Some(n), Some(list)) = (t["waiting"].as_u64(), t["waiting_for"].as_array()) {
        if n > 0 && !list.is_empty() {
            let ids: Vec<&str> = list.iter().filter_map(|v| v.as_str()).collect();
            out.push_str(&format!(
                "{n} deletion(s) kept (the oldest {} old) until these members are seen holding them: {}\n\
                 a member gone for good: herd members remove NODE\n",
                t["oldest_age"].as_str().unwrap_or("?"),
                ids.join(", ")
            ));
        }
    }
    for s in view["seeds"].as_array().into_iter().flatten() {
        if s["node_id"].is_null() {
            out.push_str(&format!(
                "seed {} not reached: {}\n",
                s["target"].as_str().unwrap_or("?"),
                s["last_error"].as_str().unwrap_or("not tried yet")
            ));
        }
    }
    out
}

/// Indented JSON, as printed for directories, export and status.
fn pretty(value: &serde_json::Value) -> String {
    // Invariant: serialising a `Value` cannot fail (its map keys are strings).
    serde_json::to_string_pretty(value).expect("a json value serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn api_error(status: u16, code: &str) -> Error {
        Error::Api {
            status: StatusCode::from_u16(status).unwrap(),
            code: Some(code.into()),
            message: "nothing at /app/x".into(),
        }
    }

    #[test]
    fn report_prints_error_and_hint_and_finds_the_exit_code_under_context() {
        let check = |error: anyhow::Error, code: u8, text: &str| {
            let mut stderr = Vec::new();
            assert_eq!(report_to(&error, &mut stderr), code);
            assert_eq!(String::from_utf8(stderr).unwrap(), text);
        };
        let precondition = api_error(412, "precondition_failed");
        check(
            anyhow::Error::from(precondition).context("cannot write /a"),
            EXIT_CONFLICT,
            "error: cannot write /a: nothing at /app/x (precondition_failed)\n",
        );
        check(
            anyhow::Error::from(api_error(401, "unauthorized")),
            EXIT_AUTH,
            "error: nothing at /app/x (unauthorized)\n\
             hint: pass a token with --token or HERD_TOKEN\n",
        );
        let closed = Error::Output(io::ErrorKind::BrokenPipe.into());
        check(anyhow::Error::from(closed), 0, "");
        check(anyhow::anyhow!("boom"), EXIT_FAILURE, "error: boom\n");
    }
}
