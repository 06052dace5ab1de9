//! A plugin's manifest: what it is (name, pinned sha256), where it applies (prefixes), what it
//! does (hooks, output prefix) and what it may use (limits). Stored as JSON at
//! `/.herd/plugins/<name>`, so it replicates like any key and every node loads the same thing.

use crate::store::Path;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The largest plugin file accepted.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

/// The hooks of the contract (`wit/herd.wit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Validate,
    Transform,
    Derive,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Validate => "validate",
            Hook::Transform => "transform",
            Hook::Derive => "derive",
        }
    }

    pub fn parse(s: &str) -> Result<Hook, String> {
        match s {
            "validate" => Ok(Hook::Validate),
            "transform" => Ok(Hook::Transform),
            "derive" => Ok(Hook::Derive),
            other => Err(format!(
                "unknown hook {other:?} (expected validate, transform or derive)"
            )),
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one plugin may use. Defaults in the spirit of Redpanda's data transforms: a few MiB of
/// memory and a bounded time per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory cap, in bytes.
    pub memory: u64,
    /// Time per call, in milliseconds (an epoch deadline: the call traps when it is over).
    pub time_ms: u64,
    /// Most bytes a derive may return in all (paths and values).
    pub output_bytes: u64,
    /// The wasm stack, in bytes: deeper recursion traps as a stack overflow.
    pub stack: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory: 16 << 20,
            time_ms: 100,
            output_bytes: 4 << 20,
            stack: 1 << 20,
        }
    }
}

impl Limits {
    /// The largest memory cap a manifest may ask for.
    pub const MAX_MEMORY: u64 = 1 << 30;
    pub const MAX_TIME_MS: u64 = 10_000;
    pub const MAX_OUTPUT_BYTES: u64 = 64 << 20;
    /// Hooks run on the node's threads, whose native stacks are 2 MiB: the wasm stack must
    /// leave room for the host's own frames.
    pub const MAX_STACK: u64 = 1 << 20;
    pub const MIN_STACK: u64 = 64 << 10;

    pub fn time(&self) -> Duration {
        Duration::from_millis(self.time_ms)
    }

    /// Applies `memory=64MiB,time=200ms,output=8MiB` over these limits.
    pub fn parse_over(mut self, spec: &str) -> Result<Limits, String> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("limit {item:?} is not key=value"))?;
            match k.trim() {
                "memory" => self.memory = parse_bytes(v.trim())?,
                "output" => self.output_bytes = parse_bytes(v.trim())?,
                "stack" => self.stack = parse_bytes(v.trim())?,
                "time" => {
                    let d = crate::config::parse_duration(v.trim())
                        .map_err(|e| format!("limit time: {e}"))?;
                    self.time_ms = d.as_millis() as u64;
                }
                other => {
                    return Err(format!(
                        "unknown limit {other:?} (expected memory, time, output or stack)"
                    ))
                }
            }
        }
        self.check()?;
        Ok(self)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.memory < (1 << 20) || self.memory > Self::MAX_MEMORY {
            return Err(format!(
                "memory limit {} is outside 1MiB..={}MiB",
                self.memory,
                Self::MAX_MEMORY >> 20
            ));
        }
        if self.time_ms == 0 || self.time_ms > Self::MAX_TIME_MS {
            return Err(format!(
                "time limit {}ms is outside 1ms..={}ms",
                self.time_ms,
                Self::MAX_TIME_MS
            ));
        }
        if self.stack < Self::MIN_STACK || self.stack > Self::MAX_STACK {
            return Err(format!(
                "stack limit {} is outside 64KiB..=1MiB",
                self.stack
            ));
        }
        if self.output_bytes == 0 || self.output_bytes > Self::MAX_OUTPUT_BYTES {
            return Err(format!(
                "output limit {} is outside 1..={}MiB",
                self.output_bytes,
                Self::MAX_OUTPUT_BYTES >> 20
            ));
        }
        Ok(())
    }
}

/// `512KiB`, `64MiB`, `1GiB` or plain bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, mult) = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)]
        .iter()
        .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
        .unwrap_or((s, 1));
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size (like 512KiB, 64MiB or bytes)"))
}

/// A plugin's manifest, as stored and as `PUT /v1/plugins/{name}` takes it (`name`,
/// `installed` and `by` are filled in by the node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub name: String,
    /// Hex sha256 of the component: the file every node loads.
    pub sha256: String,
    /// Keys the hooks apply to (a write at, below or above one of them).
    pub prefixes: Vec<String>,
    pub hooks: Vec<Hook>,
    /// Where derived keys go (derive only): read-only for everybody else, not replicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Milliseconds since the epoch of the first install; hooks run in this order.
    #[serde(default)]
    pub installed: u64,
    /// The token that installed or last updated it.
    #[serde(default)]
    pub by: String,
}

/// A plugin name: what `/.herd/plugins/<name>` and messages use.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name {name:?} must be 1-64 of a-z, 0-9, - and _, starting with a letter or digit"
        ))
    }
}

/// Checks a sha256 in lower-case hex.
pub fn check_sha256(s: &str) -> Result<(), String> {
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!("{s:?} is not a sha256 in lower-case hex"))
    }
}

fn user_path(what: &str, s: &str) -> Result<Path, String> {
    let p = Path::parse(s).map_err(|e| format!("{what} {s:?}: {e}"))?;
    if p.first() == Some(crate::store::INTERNAL) {
        return Err(format!("{what} {s} is reserved for the node itself"));
    }
    Ok(p)
}

/// A manifest checked and with its paths parsed.
#[derive(Debug, Clone)]
pub struct Checked {
    pub manifest: Manifest,
    pub prefixes: Vec<Path>,
    pub output: Option<Path>,
}

impl Checked {
    pub fn has(&self, hook: Hook) -> bool {
        self.manifest.hooks.contains(&hook)
    }
}

impl Manifest {
    /// Checks every field; the paths come back parsed.
    pub fn check(self) -> Result<Checked, String> {
        check_name(&self.name)?;
        check_sha256(&self.sha256)?;
        if self.hooks.is_empty() {
            return Err("a plugin needs at least one hook".into());
        }
        let mut hooks = self.hooks.clone();
        hooks.sort();
        hooks.dedup();
        if hooks.len() != self.hooks.len() {
            return Err("a hook is named twice".into());
        }
        if self.prefixes.is_empty() {
            return Err("a plugin needs at least one prefix".into());
        }
        let prefixes = self
            .prefixes
            .iter()
            .map(|p| user_path("prefix", p))
            .collect::<Result<Vec<_>, _>>()?;
        let derive = self.hooks.contains(&Hook::Derive);
        let output = match (&self.output, derive) {
            (Some(o), true) => {
                let o = user_path("output", o)?;
                if o.is_root() {
                    return Err("the output prefix cannot be the root".into());
                }
                if let Some(p) = prefixes.iter().find(|p| p.contains(&o) || o.contains(p)) {
                    return Err(format!(
                        "the output prefix {o} overlaps the input prefix {p}: a derive would feed itself"
                    ));
                }
                Some(o)
            }
            (None, true) => return Err("a derive plugin needs an output prefix (--output)".into()),
            (Some(_), false) => return Err("an output prefix needs the derive hook".into()),
            (None, false) => None,
        };
        self.limits.check()?;
        Ok(Checked {
            manifest: self,
            prefixes,
            output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "schema".into(),
            sha256: "a".repeat(64),
            prefixes: vec!["/app".into()],
            hooks: vec![Hook::Validate],
            output: None,
            limits: Limits::default(),
            installed: 0,
            by: String::new(),
        }
    }

    #[test]
    fn a_manifest_is_checked_field_by_field() {
        assert!(manifest().check().is_ok());
        let bad = |f: fn(&mut Manifest), want: &str| {
            let mut m = manifest();
            f(&mut m);
            let e = m.check().unwrap_err();
            assert!(e.contains(want), "{e} lacks {want}");
        };
        bad(|m| m.name = "Bad Name".into(), "plugin name");
        bad(|m| m.sha256 = "xyz".into(), "sha256");
        bad(|m| m.hooks.clear(), "at least one hook");
        bad(|m| m.hooks.push(Hook::Validate), "twice");
        bad(|m| m.prefixes = vec!["/.herd/tokens".into()], "reserved");
        bad(|m| m.prefixes = vec!["no-slash".into()], "prefix");
        bad(|m| m.hooks.push(Hook::Derive), "needs an output prefix");
        bad(|m| m.output = Some("/out".into()), "needs the derive hook");
        bad(
            |m| {
                m.hooks = vec![Hook::Derive];
                m.output = Some("/app/out".into());
            },
            "overlaps",
        );
        bad(|m| m.limits.memory = 10, "memory limit");
        bad(|m| m.limits.time_ms = 0, "time limit");
    }

    #[test]
    fn limits_parse_sizes_and_durations() {
        let l = Limits::default()
            .parse_over("memory=64MiB, time=250ms,output=1MiB,stack=256KiB")
            .unwrap();
        assert_eq!(l.stack, 256 << 10);
        assert!(Limits::default().parse_over("stack=4MiB").is_err());
        assert_eq!(l.memory, 64 << 20);
        assert_eq!(l.time_ms, 250);
        assert_eq!(l.output_bytes, 1 << 20);
        assert!(Limits::default().parse_over("memory=lots").is_err());
        assert!(Limits::default().parse_over("cpu=1").is_err());
        assert!(Limits::default().parse_over("memory=4GiB").is_err());
        assert!(Hook::parse("derive").is_ok() && Hook::parse("render").is_err());
    }
}
