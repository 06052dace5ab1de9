//! `herd plugin add|update|ls|rm` through `/v1/plugins`, and `herd plugin test`, which runs a
//! plugin's hook in this process (the node's own host) without a node.

use http::Method;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;

use super::api::Api;
use super::args::{PluginInstallArgs, PluginTestArgs};
use super::encoding::{encode_component, put_body, store_path};
use super::{note, print, Error};
use crate::plugin::host::{CallError, Change, Host, StoreView};
use crate::plugin::manifest::{Hook, Limits};
use crate::plugin::sha256_hex;
use crate::plugin::view::{at, child_names, set_at};
use crate::store::Path;

fn read_file(file: &PathBuf) -> Result<Vec<u8>, Error> {
    std::fs::read(file).map_err(|cause| Error::Read {
        what: "plugin file",
        file: file.clone(),
        cause,
    })
}

/// Uploads the file (if given), then stores the manifest; `update` keeps the fields not given.
pub async fn install(api: &Api, args: &PluginInstallArgs, update: bool) -> Result<(), Error> {
    let url = format!("/v1/plugins/{}", encode_component(&args.name));
    let mut manifest = if update {
        let mut m = api.get(&url).await?;
        if let Value::Object(o) = &mut m {
            o.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "sha256" | "prefixes" | "hooks" | "output" | "limits"
                )
            });
        }
        m
    } else {
        json!({})
    };
    match &args.file {
        Some(file) => {
            let bytes = read_file(file)?;
            let answer = api
                .call_bytes(Method::POST, "/v1/plugins/files", "application/wasm", bytes)
                .await?;
            manifest["sha256"] = answer["sha256"].clone();
        }
        None if !update => return Err(Error::BadInput("plugin add needs the plugin FILE".into())),
        None => {}
    }
    if !args.prefixes.is_empty() {
        manifest["prefixes"] = json!(args
            .prefixes
            .iter()
            .map(|p| store_path(p))
            .collect::<Vec<_>>());
    }
    if !args.hooks.is_empty() {
        manifest["hooks"] = json!(args.hooks);
    }
    if let Some(o) = &args.output {
        manifest["output"] = json!(store_path(o));
    }
    if let Some(spec) = &args.limits {
        let base: Limits = serde_json::from_value(manifest["limits"].clone()).unwrap_or_default();
        let l = base.parse_over(spec).map_err(Error::BadInput)?;
        manifest["limits"] = serde_json::to_value(l).unwrap_or_default();
    }
    if !update {
        for (field, flag) in [("prefixes", "--prefix"), ("hooks", "--hooks")] {
            if manifest.get(field).is_none() {
                return Err(Error::BadInput(format!("plugin add needs {flag}")));
            }
        }
    }
    let header = if update {
        (http::header::IF_MATCH, "*".to_owned())
    } else {
        (http::header::IF_NONE_MATCH, "*".to_owned())
    };
    let answer = api
        .call(Method::PUT, &url, &[header], Some(manifest.to_string()))
        .await?;
    let p = &answer["plugin"];
    note(&format!(
        "{} plugin {} (sha256 {}), state {}",
        if update { "updated" } else { "installed" },
        args.name,
        p["sha256"].as_str().unwrap_or("?"),
        p["state"].as_str().unwrap_or("?")
    ));
    print(&format!("{}\n", answer["version"].as_str().unwrap_or("")))
}

pub async fn list(api: &Api, json: bool) -> Result<(), Error> {
    let answer = api.get("/v1/plugins").await?;
    if json {
        return print(&format!("{}\n", super::pretty(&answer)));
    }
    let empty = Vec::new();
    let plugins = answer["plugins"].as_array().unwrap_or(&empty);
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut rows = vec![[
        "NAME",
        "HOOKS",
        "PREFIXES",
        "OUTPUT",
        "STATE",
        "CALLS",
        "FAILURES",
        "SHA256",
        "LAST ERROR",
    ]
    .map(String::from)];
    for p in plugins {
        let sha = text(&p["sha256"]);
        rows.push([
            text(&p["name"]),
            text(&p["hooks"]),
            text(&p["prefixes"]),
            text(&p["output"]),
            text(&p["state"]),
            text(&p["calls"]),
            text(&p["failures"]),
            sha.chars().take(12).collect(),
            text(&p["last_error"]["message"]),
        ]);
    }
    print(&super::columns(&rows))
}

pub async fn remove(api: &Api, name: &str) -> Result<(), Error> {
    let url = format!("/v1/plugins/{}", encode_component(name));
    api.call(Method::DELETE, &url, &[], None).await?;
    note(&format!("removed plugin {name} from every node"));
    Ok(())
}

/// A JSON document as the store a plugin reads.
struct Doc(Value);

impl Doc {
    fn find(&self, path: &str) -> Option<&Value> {
        let p = Path::parse(path).ok()?;
        let segs: Vec<&str> = p.segments().collect();
        at(&self.0, &segs)
    }
}

impl StoreView for Doc {
    fn get(&self, path: &str) -> Option<String> {
        self.find(path).map(|v| v.to_string())
    }
    fn list(&self, path: &str) -> Vec<String> {
        self.find(path).map_or_else(Vec::new, child_names)
    }
}

fn json_arg(text: &str) -> Result<Value, Error> {
    serde_json::from_str(&put_body(text)).map_err(|e| Error::BadInput(e.to_string()))
}

/// `herd plugin test`: loads the file with the node's own host and runs one hook.
pub fn test(args: &PluginTestArgs) -> Result<(), Error> {
    let bytes = read_file(&args.file)?;
    let sha = sha256_hex(&bytes);
    let limits = match &args.limits {
        Some(spec) => Limits::default()
            .parse_over(spec)
            .map_err(Error::BadInput)?,
        None => Limits::default(),
    };
    let bad = |e: String| Error::BadInput(e);
    let cache = std::env::temp_dir().join("herd-plugin-test-cache");
    let host = Host::new(cache).map_err(|e| bad(format!("cannot start the plugin host: {e:#}")))?;
    let program = host
        .load(
            "test",
            &sha,
            &args.file,
            &[],
            limits,
            crate::plugin::environment("test", args.output.as_deref()),
        )
        .map_err(|e| bad(format!("cannot load {}: {e:#}", args.file.display())))?;
    let hook = match &args.hook {
        Some(h) => Hook::parse(h).map_err(bad)?,
        None => [Hook::Validate, Hook::Transform, Hook::Derive]
            .into_iter()
            .find(|h| program.has(*h))
            .ok_or_else(|| bad("the component exports no hook of the contract".into()))?,
    };
    if !program.has(hook) {
        return Err(bad(format!(
            "the component does not export the {hook} hook"
        )));
    }
    let mut doc = match &args.store {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|cause| Error::Read {
                what: "store document",
                file: f.clone(),
                cause,
            })?;
            serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", f.display())))?
        }
        None => Value::Object(Map::new()),
    };
    let outcome = if hook == Hook::Derive {
        let view: Arc<dyn StoreView> = Arc::new(Doc(doc));
        program.derive(view, &[]).map(|run| {
            for problem in &run.problems {
                note(&format!("the plugin reported: {problem}"));
            }
            let m: Map<String, Value> = run
                .outputs
                .into_iter()
                .map(|o| {
                    let v = serde_json::from_str(&o.value).unwrap_or(Value::String(o.value));
                    (o.path, v)
                })
                .collect();
            Value::Object(m).to_string()
        })
    } else {
        let path = args
            .path
            .as_deref()
            .ok_or_else(|| bad(format!("the {hook} hook needs --path")))?;
        let p = Path::parse(&store_path(path)).map_err(|e| bad(e.to_string()))?;
        let value = args.value.as_deref().map(json_arg).transpose()?;
        let old = args.old.as_deref().map(json_arg).transpose()?;
        let segs: Vec<&str> = p.segments().collect();
        set_at(&mut doc, &segs, value.clone());
        let change = Change {
            path: p.to_string(),
            value: value.map(|v| v.to_string()),
            old: old.map(|v| v.to_string()),
            version: None,
            token: "test".into(),
        };
        let view: Arc<dyn StoreView> = Arc::new(Doc(doc));
        match hook {
            Hook::Validate => program.validate(view, &change).map(|()| "accepted".into()),
            _ => program.transform(view, &change),
        }
    };
    match outcome {
        Ok(text) => print(&format!("{text}\n")),
        Err(CallError::Refused(m)) => Err(bad(format!("rejected: {m}"))),
        Err(CallError::Failed(m)) => Err(bad(format!("the plugin {m}"))),
    }
}
