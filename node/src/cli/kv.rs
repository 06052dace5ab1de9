//! The key-value commands: `get`, `put`, `rm`, `ls`, `export` and `import`.
//!
//! Must not judge paths or values (the node does); it only shapes requests and prints answers.

use std::io::Read;
use std::path::Path;

use http::header::{IF_MATCH, IF_NONE_MATCH};
use http::Method;
use serde_json::{json, Value};

use super::api::{version_of, Api, KV};
use super::args::{ExportArgs, GetArgs, ImportArgs, LsArgs, PutArgs, RmArgs};
use super::encoding::{api_path, encode_component, if_match, put_body, strip_one_newline};
use super::{note, pretty, print, Error};

/// The top-level key the node keeps for itself; `import --replace` never deletes it.
const RESERVED: &str = ".herd";

pub async fn get(api: &Api, args: &GetArgs) -> Result<(), Error> {
    let value = api.get(&api_path(KV, &args.path)).await?;
    print(&render(&value, args.json))
}

/// How `get` shows a value: a string leaf as its raw text (unless `json`), another leaf as
/// compact JSON, a directory as indented JSON; always one trailing newline.
pub fn render(value: &Value, json: bool) -> String {
    match value {
        Value::String(text) if !json => format!("{text}\n"),
        Value::Object(_) => format!("{}\n", pretty(value)),
        leaf => format!("{leaf}\n"),
    }
}

pub async fn put(api: &Api, args: &PutArgs) -> Result<(), Error> {
    let text = match (&args.file, &args.value) {
        (Some(file), _) => strip_one_newline(&read_input(file)?).to_string(),
        (None, Some(value)) => value.clone(),
        (None, None) => return Err(Error::BadInput("put needs a VALUE or -f FILE".into())),
    };
    let mut url = api_path(KV, &args.path);
    if let Some(ttl) = &args.ttl {
        url.push_str(&format!("?ttl={}", encode_component(ttl)));
    }
    let mut headers = Vec::new();
    if let Some(version) = &args.if_match {
        headers.push((IF_MATCH, if_match(version)));
    }
    if args.create {
        headers.push((IF_NONE_MATCH, "*".to_string()));
    }
    let answer = api
        .call(Method::PUT, &url, &headers, Some(put_body(&text)))
        .await?;
    print(&format!("{}\n", version_of(&answer)?))
}

pub async fn rm(api: &Api, args: &RmArgs) -> Result<(), Error> {
    let headers: Vec<_> = args
        .if_match
        .iter()
        .map(|version| (IF_MATCH, if_match(version)))
        .collect();
    let url = api_path(KV, &args.path);
    let answer = api.call(Method::DELETE, &url, &headers, None).await?;
    print(&format!("{}\n", version_of(&answer)?))
}

pub async fn ls(api: &Api, args: &LsArgs) -> Result<(), Error> {
    let keys = keys(api, &args.path).await?;
    print(
        &keys
            .iter()
            .map(|key| format!("{}\n", super::encoding::printable(key)))
            .collect::<String>(),
    )
}

pub async fn export(api: &Api, args: &ExportArgs) -> Result<(), Error> {
    let value = api.get(&api_path(KV, &args.path)).await?;
    print(&format!("{}\n", pretty(&value)))
}

/// Writes every top-level key of a JSON object file as one atomic batch; with `replace`, the
/// same batch deletes the top-level keys the file does not name. Prints the batch's version.
pub async fn import(api: &Api, args: &ImportArgs) -> Result<(), Error> {
    let name = args.file.display();
    let text = read_input(&args.file)?;
    let document: Value = serde_json::from_str(&text)
        .map_err(|e| Error::BadInput(format!("{name} is not json: {e}")))?;
    let Value::Object(mut document) = document else {
        return Err(Error::BadInput(format!(
            "{name} must hold a json object: its keys become the top-level keys"
        )));
    };
    // An export holds the derived keys too; they are the node's to compute, not to write.
    for prefix in derived_prefixes(api).await {
        if strip(&mut document, &prefix) {
            note(&format!(
                "skipped {prefix}: derived by a plugin, not imported"
            ));
        }
    }
    let mut ops = Vec::new();
    for (key, value) in &document {
        // A `/` would turn one key into a nested path: a different write than the file says.
        if key.contains('/') {
            return Err(Error::BadInput(format!(
                "key {key:?} in {name} contains '/'; nest objects instead"
            )));
        }
        ops.push(json!({"op": "put", "path": format!("/{key}"), "value": value}));
    }
    let mut removed = 0;
    if args.replace {
        for key in keys(api, "/").await? {
            let key = key.strip_suffix('/').unwrap_or(&key);
            if key != RESERVED && !document.contains_key(key) {
                ops.push(json!({"op": "delete", "path": format!("/{key}")}));
                removed += 1;
            }
        }
    }
    if !ops.is_empty() {
        let body = json!({ "ops": ops }).to_string();
        let answer = api.call(Method::POST, "/v1/batch", &[], Some(body)).await?;
        print(&format!("{}\n", version_of(&answer)?))?;
    }
    note(&format!("imported {} keys", document.len()));
    if args.replace {
        note(&format!("removed {removed} keys"));
    }
    Ok(())
}

/// The output prefixes of derive plugins, as `/` + segments; empty if the token may not list
/// plugins (an import with derived keys is then refused by the node, saying which).
async fn derived_prefixes(api: &Api) -> Vec<String> {
    let Ok(answer) = api.get("/v1/plugins").await else {
        return Vec::new();
    };
    answer
        .get("outputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("prefix").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// Removes `prefix` (`/a/b`) from `document` (the root's object); true if it was there.
fn strip(document: &mut serde_json::Map<String, Value>, prefix: &str) -> bool {
    let segments: Vec<&str> = prefix.trim_start_matches('/').split('/').collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = document;
    for segment in parents {
        match at.get_mut(*segment).and_then(Value::as_object_mut) {
            Some(next) => at = next,
            None => return false,
        }
    }
    at.remove(*last).is_some()
}

/// The children of a directory, as `?keys` lists them.
async fn keys(api: &Api, path: &str) -> Result<Vec<String>, Error> {
    let answer = api.get(&format!("{}?keys", api_path(KV, path))).await?;
    let keys = answer.get("keys").and_then(Value::as_array);
    let keys = keys.ok_or_else(|| Error::BadAnswer(format!("no keys in {answer}")))?;
    Ok(keys
        .iter()
        .map(|key| match key {
            Value::String(key) => key.clone(),
            other => other.to_string(),
        })
        .collect())
}

/// The text of a file, or of stdin for `-`.
fn read_input(file: &Path) -> Result<String, Error> {
    let read_error = |cause| Error::Read {
        what: "input",
        file: file.to_path_buf(),
        cause,
    };
    let bytes = if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        bytes
    } else {
        std::fs::read(file).map_err(read_error)?
    };
    String::from_utf8(bytes)
        .map_err(|_| Error::BadInput(format!("{} is not utf-8 text", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_renders_strings_raw_and_directories_indented() {
        assert_eq!(render(&json!("hi there"), false), "hi there\n");
        assert_eq!(render(&json!("hi"), true), "\"hi\"\n");
        assert_eq!(render(&json!(8080), false), "8080\n");
        assert_eq!(render(&json!([1, "a"]), false), "[1,\"a\"]\n");
        assert_eq!(render(&json!(null), true), "null\n");
        assert_eq!(render(&json!({"a": 1}), false), "{\n  \"a\": 1\n}\n");
        assert_eq!(render(&json!({}), true), "{}\n");
    }

    #[test]
    fn input_files_must_be_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("value");
        std::fs::write(&file, "8080\n").unwrap();
        assert_eq!(read_input(&file).unwrap(), "8080\n");
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_input(&file), Err(Error::BadInput(_))));
        let missing = dir.path().join("missing");
        assert!(matches!(read_input(&missing), Err(Error::Read { .. })));
    }
}
