//! The client commands' one way to call the node: a request whose error answer becomes
//! [`Error::Api`](super::Error::Api) and whose success answer is JSON.
//!
//! Must not know what any command does with the answer.

use bytes::Bytes;
use http::header::HeaderName;
use http::Method;
use serde_json::Value;

use super::discover::Target;
use super::Error;
use crate::client::Client;

pub use crate::client::paths::{KV, WATCH};

/// A connection to one node.
pub struct Api {
    client: Client,
}

impl Api {
    pub fn new(target: &Target) -> Result<Api, Error> {
        let client = Client::new(&target.url, target.token.clone(), &target.ca_pem)?;
        Ok(Api { client })
    }

    /// Sends a request; a 2xx answer's JSON body, else the node's error.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(HeaderName, String)],
        body: Option<String>,
    ) -> Result<Value, Error> {
        let response = self
            .client
            .request(method, path_and_query, headers, body.map(Bytes::from))
            .await?
            .error_for_status()?;
        Ok(response.json()?)
    }

    /// Sends raw bytes (a plugin file) with their content type; the 2xx answer's JSON.
    pub async fn call_bytes(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Value, Error> {
        let headers = [(http::header::CONTENT_TYPE, content_type.to_owned())];
        let response = self
            .client
            .request(method, path_and_query, &headers, Some(Bytes::from(body)))
            .await?
            .error_for_status()?;
        Ok(response.json()?)
    }

    /// `GET` without headers.
    pub async fn get(&self, path_and_query: &str) -> Result<Value, Error> {
        self.call(Method::GET, path_and_query, &[], None).await
    }
}

/// The `version` of a write's answer (`{"version": "...", "revision": N}`).
pub fn version_of(answer: &Value) -> Result<&str, Error> {
    answer
        .get("version")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::BadAnswer(format!("no version in {answer}")))
}
