//! kiln's context source for archives fetched over the network: plain
//! `http(s)://` tarballs, `s3://`, `gs://` and Azure Blob URLs.
//!
//! The host resolves a cloud URL to the HTTP URL of its object (it owns the
//! endpoint settings and the credentials), passes it as the `get` option,
//! and signs the request on its way out; this plugin only ever sees the URL
//! and the bytes. The archive is streamed to the host as it arrives.

use kiln_plugin_sdk::{ContextSource, KeyValue, Opened, PluginError, register_context_source};

/// The remote context source.
struct RemoteSource;

/// What the host tells the plugin about one URL.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    /// The HTTP(S) URL to fetch.
    get: String,
    /// What the URL names, for messages: "S3", "GCS", "Azure Blob", "HTTP".
    source: String,
    /// How to fix an authentication failure.
    credentials: Option<String>,
}

fn request(url: &str, options: Vec<KeyValue>) -> Result<Request, PluginError> {
    let mut req = Request {
        get: url.to_owned(),
        source: "HTTP".into(),
        credentials: None,
    };
    for KeyValue { key, value } in options {
        match key.as_str() {
            "get" => req.get = value,
            "source" => req.source = value,
            "credentials" => req.credentials = Some(value),
            _ => {
                return Err(PluginError::new(format!(
                    "the remote context source takes the options get, source and credentials, not `{key}`"
                )));
            }
        }
    }
    if !(req.get.starts_with("http://") || req.get.starts_with("https://")) {
        return Err(PluginError::new(format!(
            "{url}: the host gave no http(s) URL to fetch"
        )));
    }
    Ok(req)
}

/// The error for a response that is not the archive.
// Natively (unit tests) there is no network to answer with a status.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn status_error(url: &str, req: &Request, status: u16) -> PluginError {
    let head = format!("{} context {url}: the server answered {status}", req.source);
    match status {
        401 | 403 => PluginError::new(format!("{head}: authentication failed")).with_hint(
            req.credentials
                .clone()
                .unwrap_or_else(|| "the object is not public; check the URL".into()),
        ),
        404 => PluginError::new(format!("{head}: no such object"))
            .with_hint("check the bucket, container and object names in --context"),
        429 | 500..=599 => {
            PluginError::new(format!("{head}: the server is unavailable")).with_hint("retry later")
        }
        _ => PluginError::new(head),
    }
}

impl ContextSource for RemoteSource {
    fn schemes() -> Vec<String> {
        ["http", "https", "s3", "gs"].map(String::from).to_vec()
    }

    fn open(url: String, options: Vec<KeyValue>) -> Result<Opened, PluginError> {
        let req = request(&url, options)?;
        fetch(&url, &req)
    }
}

#[cfg(target_arch = "wasm32")]
fn fetch(url: &str, req: &Request) -> Result<Opened, PluginError> {
    use kiln_plugin_sdk::http;
    let response = http::get(&req.get, &[("accept", "*/*")])
        .map_err(|e| PluginError::new(format!("{} context {url}: {}", req.source, e.message)))?;
    if response.status != 200 {
        return Err(status_error(url, req, response.status));
    }
    Ok(Opened::Tar(Box::new(response)))
}

#[cfg(not(target_arch = "wasm32"))]
fn fetch(url: &str, req: &Request) -> Result<Opened, PluginError> {
    Err(PluginError::new(format!(
        "{} context {url}: the network is only reachable inside the WebAssembly component",
        req.source
    )))
}

register_context_source!(RemoteSource);

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn the_host_options_name_what_to_fetch() {
        let req = request(
            "s3://b/k.tgz",
            vec![
                kv("get", "http://127.0.0.1:9000/b/k.tgz"),
                kv("source", "S3"),
                kv("credentials", "set AWS_ACCESS_KEY_ID"),
            ],
        )
        .unwrap();
        assert_eq!(req.get, "http://127.0.0.1:9000/b/k.tgz");
        assert_eq!(req.source, "S3");
        let plain = request("https://h/c.tar.gz", vec![]).unwrap();
        assert_eq!(plain.get, "https://h/c.tar.gz");
        assert_eq!(plain.source, "HTTP");
        assert!(request("s3://b/k", vec![]).is_err());
        let err = request("https://h/x", vec![kv("region", "eu")]).unwrap_err();
        assert!(err.message.contains("`region`"), "{}", err.message);
    }

    #[test]
    fn failures_say_what_to_do() {
        let req = Request {
            get: "http://x/b/k".into(),
            source: "S3".into(),
            credentials: Some("check AWS_SECRET_ACCESS_KEY".into()),
        };
        let e = status_error("s3://b/k", &req, 403);
        assert!(e.message.contains("S3 context s3://b/k"), "{}", e.message);
        assert!(e.message.contains("authentication failed"));
        assert_eq!(e.hint.as_deref(), Some("check AWS_SECRET_ACCESS_KEY"));
        assert!(
            status_error("s3://b/k", &req, 404)
                .message
                .contains("no such object")
        );
        assert!(status_error("s3://b/k", &req, 503).hint.is_some());
    }
}
