//! `herd token create|list|revoke`: access-token management through `/v1/tokens`.
//!
//! Must not keep or log a token's secret: `create` prints it once, on stdout only.

use http::Method;
use serde_json::{json, Value};

use super::api::Api;
use super::args::Role;
use super::encoding::{encode_component, store_path};
use super::{note, print, Error};

/// Creates a token and prints its secret alone on stdout, so `TOKEN=$(herd token create ...)`
/// captures it; the reminder that it is shown once goes to stderr.
pub async fn create(api: &Api, name: &str, role: Role, prefix: Option<&str>) -> Result<(), Error> {
    let mut body = json!({"name": name, "role": role.as_str()});
    if let Some(prefix) = prefix {
        body["prefix"] = Value::String(store_path(prefix));
    }
    let answer = api
        .call(Method::POST, "/v1/tokens", &[], Some(body.to_string()))
        .await?;
    let secret = answer.get("token").and_then(Value::as_str);
    let secret = secret.ok_or_else(|| Error::BadAnswer("no token in the answer".into()))?;
    print(&format!("{secret}\n"))?;
    note(&format!(
        "created token {name:?} ({}); its secret is shown only this once",
        role.as_str()
    ));
    Ok(())
}

pub async fn list(api: &Api) -> Result<(), Error> {
    let answer = api.get("/v1/tokens").await?;
    let tokens = answer.get("tokens").and_then(Value::as_array);
    let tokens = tokens.ok_or_else(|| Error::BadAnswer(format!("no tokens in {answer}")))?;
    print(&table(tokens))
}

pub async fn revoke(api: &Api, name: &str) -> Result<(), Error> {
    let url = format!("/v1/tokens/{}", encode_component(name));
    api.call(Method::DELETE, &url, &[], None).await?;
    note(&format!("revoked token {name:?}"));
    Ok(())
}

/// The token list as aligned columns NAME ROLE PREFIX CREATED; no prefix shows as `/`.
pub fn table(tokens: &[Value]) -> String {
    let field = |token: &Value, key: &str| match token.get(key) {
        Some(Value::String(text)) => text.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    };
    let mut rows = vec![["NAME", "ROLE", "PREFIX", "CREATED"].map(String::from)];
    for token in tokens {
        let mut prefix = field(token, "prefix");
        if prefix.is_empty() {
            prefix = "/".to_string();
        }
        rows.push([
            field(token, "name"),
            field(token, "role"),
            prefix,
            field(token, "created"),
        ]);
    }
    super::columns(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_list_is_an_aligned_table() {
        let tokens = [
            json!({"name": "admin", "role": "admin", "prefix": null, "created": "2025-11-21T08:00:00Z"}),
            json!({"name": "ci", "role": "write", "prefix": "/app", "created": 1763712000}),
            json!({"name": "x\ny\u{1b}", "role": "read", "prefix": "/a\tb", "created": 1}),
        ];
        // Control characters in a name or prefix are escaped: one line per token, no escape
        // sequence reaches the terminal.
        assert_eq!(
            table(&tokens),
            "NAME      ROLE   PREFIX  CREATED\n\
             admin     admin  /       2025-11-21T08:00:00Z\n\
             ci        write  /app    1763712000\n\
             x\\ny\\x1b  read   /a\\tb   1\n"
        );
    }
}
