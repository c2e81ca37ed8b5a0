//! Contexts fetched over the network. The host owns endpoints and secrets:
//! it resolves a cloud URL to the HTTP URL of its object, names the hosts
//! the plugin may reach, and signs each request in the `wasi:http` send
//! hook, so the plugin sees URLs and bytes but never a credential.

use crate::cloud::{self, CloudError, aws, azure, gcs};
use crate::plugin::{KeyValue, NetPolicy, Signer};
use base64::Engine as _;
use std::path::Path;
use std::sync::Arc;

/// Reads an environment variable; a parameter so resolution stays pure.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The variable that points Azure Blob URLs at an emulator such as
/// Azurite: `http://127.0.0.1:10000/devstoreaccount1`.
pub const AZURE_ENDPOINT_VAR: &str = "AZURE_STORAGE_BLOB_ENDPOINT";

/// What the host gives a network context plugin for one URL.
#[derive(Debug)]
pub struct Remote {
    /// The URL the plugin is opened with (credentials removed).
    pub url: String,
    /// The plugin's options.
    pub options: Vec<KeyValue>,
    /// Where the plugin may connect, and how its requests are signed.
    pub net: NetPolicy,
    /// True when the plugin needs a scratch directory.
    pub scratch: bool,
}

/// Remote-context failures.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(
        "GCS authentication for {url} failed: {reason}; check the service-account key in GOOGLE_APPLICATION_CREDENTIALS ({file})"
    )]
    GcsToken {
        url: String,
        file: String,
        reason: String,
    },
    #[error("cannot read GOOGLE_APPLICATION_CREDENTIALS file {file}: {source}")]
    GcsKeyFile {
        file: String,
        source: std::io::Error,
    },
    #[error("invalid git context URL {url:?}: {reason}")]
    GitUrl { url: String, reason: String },
    #[error("invalid --git option {option:?}: {reason}")]
    GitOption { option: String, reason: String },
}

fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
    }
}

/// Resolves a network context URL of the built-in schemes (`http(s)`,
/// `s3`, `gs`, `git`); `None` for other schemes. `now` (seconds since the
/// epoch) dates the GCS token request; `git` holds `--git` options.
pub fn resolve(
    scheme: &str,
    url: &str,
    git: &[String],
    env: Env<'_>,
    now: u64,
) -> Result<Option<Remote>, RemoteError> {
    Ok(Some(match scheme {
        "s3" => s3(url, env)?,
        "gs" => gs(url, env, now)?,
        "http" | "https" => match azure::blob(url, env(AZURE_ENDPOINT_VAR).as_deref()) {
            Some(blob) => azure_blob(url, blob, env),
            None => {
                let (bare, query) = split_query(url);
                let mut net = NetPolicy::for_urls([url]);
                if let Some(q) = query {
                    net.signer = Some(Arc::new(Query(q.into())));
                }
                fetch(
                    &redact_query(url),
                    bare,
                    "HTTP",
                    "the server wants credentials kiln cannot send: use a URL that grants access (a presigned or SAS URL)",
                    net,
                )
            }
        },
        "git" => git_remote(url, git, env)?,
        _ => return Ok(None),
    }))
}

fn fetch(url: &str, get: &str, source: &str, credentials: &str, net: NetPolicy) -> Remote {
    Remote {
        url: url.into(),
        options: vec![
            kv("get", get),
            kv("source", source),
            kv("credentials", credentials),
        ],
        net,
        scratch: false,
    }
}

fn s3(url: &str, env: Env<'_>) -> Result<Remote, RemoteError> {
    let object = aws::s3_object(url, env)?;
    let creds = aws::credentials(url, env, &|p: &Path| match std::fs::read_to_string(p) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    })?;
    let mut net = NetPolicy::for_urls([object.url.as_str()]);
    net.signer = Some(Arc::new(S3Signer {
        creds,
        region: object.region.clone(),
    }));
    Ok(fetch(
        url,
        &object.url,
        "S3",
        "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials) and the bucket policy",
        net,
    ))
}

fn gs(url: &str, env: Env<'_>, now: u64) -> Result<Remote, RemoteError> {
    let object = gcs::object(url, env("STORAGE_EMULATOR_HOST").as_deref())?;
    let mut net = NetPolicy::for_urls([object.url.as_str()]);
    if let Some(file) = env("GOOGLE_APPLICATION_CREDENTIALS").filter(|f| !f.is_empty()) {
        let token = gcs_token(url, &file, now)?;
        net.signer = Some(Arc::new(Bearer(token)));
    }
    Ok(fetch(
        url,
        &object.url,
        "GCS",
        "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key that may read the object",
        net,
    ))
}

/// Exchanges the service account's signed assertion for an access token.
fn gcs_token(url: &str, file: &str, now: u64) -> Result<String, RemoteError> {
    let json = std::fs::read(file).map_err(|source| RemoteError::GcsKeyFile {
        file: file.into(),
        source,
    })?;
    let account = gcs::ServiceAccount::parse(&json, file)?;
    let assertion = account.assertion(now)?;
    let failed = |reason: String| RemoteError::GcsToken {
        url: url.into(),
        file: file.into(),
        reason,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let mut response = agent
        .post(&account.token_uri)
        .content_type("application/x-www-form-urlencoded")
        .send(gcs::ServiceAccount::token_request(&assertion))
        .map_err(|e| failed(format!("cannot reach {}: {e}", account.token_uri)))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_string()
        .unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if status != 200 {
        let reason = parsed["error_description"]
            .as_str()
            .or(parsed["error"].as_str())
            .unwrap_or("no reason given");
        return Err(failed(format!(
            "the token endpoint {} answered {status} ({reason})",
            account.token_uri
        )));
    }
    parsed["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            failed(format!(
                "the token endpoint {} sent no access_token",
                account.token_uri
            ))
        })
}

fn azure_blob(url: &str, blob: azure::Blob, env: Env<'_>) -> Remote {
    let mut net = NetPolicy::for_urls([url]);
    let key = env("AZURE_STORAGE_ACCESS_KEY").filter(|k| !k.is_empty());
    let (bare, query) = split_query(&blob.url);
    let hint = if blob.sas {
        "the SAS token in the URL is not valid for this blob (expired, or wrong permissions)"
    } else {
        "set AZURE_STORAGE_ACCESS_KEY to the storage account's key, or add a SAS token to the URL"
    };
    match (query, key) {
        (Some(q), _) if blob.sas => net.signer = Some(Arc::new(Query(q.into()))),
        (_, Some(key)) => {
            net.signer = Some(Arc::new(AzureSigner {
                blob: blob.clone(),
                key,
            }));
        }
        _ => {}
    }
    // A key-signed request carries its query itself (it is signed too).
    let get = if blob.sas { bare } else { blob.url.as_str() };
    fetch(&redact_query(url), get, "Azure Blob", hint, net)
}

/// A URL without its query, and the query.
fn split_query(url: &str) -> (&str, Option<&str>) {
    match url.split_once('?') {
        Some((bare, q)) if !q.is_empty() => (bare, Some(q)),
        Some((bare, _)) => (bare, None),
        None => (url, None),
    }
}

/// Query parameters that grant access by themselves.
const SECRET_PARAMS: [&str; 8] = [
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-security-token",
    "x-amz-credential",
    "x-goog-signature",
    "x-goog-credential",
    "token",
];

/// `url` with the values of access-granting query parameters masked, for
/// logs and messages.
pub fn redact_query(url: &str) -> String {
    let (bare, Some(query)) = split_query(url) else {
        return url.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                format!("{k}=***")
            }
            _ => p.to_owned(),
        })
        .collect();
    format!("{bare}?{}", params.join("&"))
}

/// The parts of `git://[user[:password]@]host[:port]/path[#ref[#commit]]`.
#[derive(Debug, PartialEq, Eq)]
struct GitUrl {
    /// The URL without its credentials.
    url: String,
    /// `host[:port]`.
    host: String,
    user: Option<(String, String)>,
}

fn parse_git_url(url: &str) -> Result<GitUrl, RemoteError> {
    let bad = |reason: &str| RemoteError::GitUrl {
        url: redact_userinfo(url),
        reason: reason.into(),
    };
    let rest = url
        .strip_prefix("git://")
        .ok_or_else(|| bad("it must start with git://"))?;
    let (location, fragment) = match rest.split_once('#') {
        Some((l, f)) => (l, Some(f)),
        None => (rest, None),
    };
    let (authority, path) = location
        .split_once('/')
        .ok_or_else(|| bad("name the repository: git://host/org/repo.git"))?;
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if host.is_empty() || path.is_empty() {
        return Err(bad(
            "name the host and the repository: git://host/org/repo.git",
        ));
    }
    let user = userinfo.map(|u| {
        let (name, password) = u.split_once(':').unwrap_or((u, ""));
        (cloud::uri_decode(name), cloud::uri_decode(password))
    });
    let mut clean = format!("git://{host}/{path}");
    if let Some(f) = fragment {
        clean.push('#');
        clean.push_str(f);
    }
    Ok(GitUrl {
        url: clean,
        host: host.to_ascii_lowercase(),
        user,
    })
}

/// `url` with any `user:password@` replaced, for messages.
pub(super) fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[end..]),
        None => url.to_owned(),
    }
}

/// A boolean as Go's `strconv.ParseBool` (which kaniko and BuildKit use) reads it.
pub(super) fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// kaniko's `--git` keys the plugin understands.
const GIT_OPTIONS: [&str; 3] = ["branch", "single-branch", "recurse-submodules"];

fn git_remote(url: &str, git: &[String], env: Env<'_>) -> Result<Remote, RemoteError> {
    let parsed = parse_git_url(url)?;
    let method = match env("GIT_PULL_METHOD").as_deref() {
        None | Some("") | Some("https") => "https",
        Some("http") => "http",
        Some(other) => {
            return Err(RemoteError::GitUrl {
                url: parsed.url,
                reason: format!("GIT_PULL_METHOD must be https or http, not {other:?}"),
            });
        }
    };
    let mut options = vec![kv("pull-method", method)];
    let mut skip_tls_verify = false;
    for option in git
        .iter()
        .flat_map(|g| g.split(','))
        .filter(|o| !o.is_empty())
    {
        let (key, value) = option
            .split_once('=')
            .ok_or_else(|| RemoteError::GitOption {
                option: option.into(),
                reason: "write key=value, as in --git=branch=main,recurse-submodules=true".into(),
            })?;
        match key {
            "insecure-skip-tls" => {
                skip_tls_verify = parse_bool(value).ok_or_else(|| RemoteError::GitOption {
                    option: option.into(),
                    reason: "insecure-skip-tls takes true or false".into(),
                })?;
            }
            k if GIT_OPTIONS.contains(&k) => options.push(kv(k, value)),
            _ => {
                return Err(RemoteError::GitOption {
                    option: option.into(),
                    reason: format!("known keys: {}, insecure-skip-tls", GIT_OPTIONS.join(", ")),
                });
            }
        }
    }
    let origin = format!("{method}://{}/", parsed.host);
    let mut net = NetPolicy::for_urls([origin.as_str()]);
    net.skip_tls_verify = skip_tls_verify;
    if skip_tls_verify {
        log::warn!(
            "Not verifying the TLS certificate of {} (--git=insecure-skip-tls=true)",
            parsed.host
        );
    }
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let user = parsed.user.clone().or_else(|| match var("GIT_TOKEN") {
        Some(token) => Some((token, String::new())),
        None => match (var("GIT_USERNAME"), var("GIT_PASSWORD")) {
            (None, None) => None,
            (u, p) => Some((u.unwrap_or_default(), p.unwrap_or_default())),
        },
    });
    if let Some((name, password)) = user {
        net.signer = Some(Arc::new(Basic { name, password }));
    }
    Ok(Remote {
        url: parsed.url,
        options,
        net,
        scratch: true,
    })
}

/// SigV4 for S3 GETs.
struct S3Signer {
    creds: aws::AwsCredentials,
    region: String,
}

/// The request's `host` header, or its URI's authority.
fn host_of(parts: &http::request::Parts) -> Result<String, String> {
    if let Some(h) = parts.headers.get(http::header::HOST) {
        return h
            .to_str()
            .map(str::to_owned)
            .map_err(|_| "the request's Host header is not text".to_owned());
    }
    parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| "the request names no host".to_owned())
}

fn set_header(parts: &mut http::request::Parts, name: &str, value: &str) -> Result<(), String> {
    let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
    let mut value = http::HeaderValue::from_str(value).map_err(|e| e.to_string())?;
    value.set_sensitive(true);
    parts.headers.insert(name, value);
    Ok(())
}

/// Query parameters, decoded, in the order given.
fn query_pairs(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (cloud::uri_decode(k), cloud::uri_decode(v))
        })
        .collect()
}

impl Signer for S3Signer {
    fn sign(&self, parts: &mut http::request::Parts) -> Result<(), String> {
        let host = host_of(parts)?;
        let query = query_pairs(&parts.uri);
        let query: Vec<(&str, &str)> = query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let payload = if parts.method == http::Method::GET {
            aws::EMPTY_PAYLOAD_SHA256
        } else {
            "UNSIGNED-PAYLOAD"
        };
        let stamp = crate::image::config::rfc3339(now_secs()).replace(['-', ':'], "");
        let request = aws::Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: &query,
            headers: &[],
            host: &host,
            payload_sha256: payload,
        };
        for (name, value) in aws::sign_v4(&request, &self.creds, &self.region, "s3", &stamp) {
            set_header(parts, &name, &value)?;
        }
        Ok(())
    }
}

/// Shared Key for Azure Blob GETs.
struct AzureSigner {
    blob: azure::Blob,
    key: String,
}

impl Signer for AzureSigner {
    fn sign(&self, parts: &mut http::request::Parts) -> Result<(), String> {
        let date = cloud::http_date(now_secs());
        let ms = [
            ("x-ms-date", date.as_str()),
            ("x-ms-version", azure::API_VERSION),
        ];
        let query = query_pairs(&parts.uri);
        let query: Vec<(&str, &str)> = query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let auth =
            azure::shared_key(&self.blob, &ms, &query, &self.key).map_err(|e| e.to_string())?;
        for (name, value) in ms {
            set_header(parts, name, value)?;
        }
        set_header(parts, "authorization", &auth)
    }
}

/// A URL's query, kept out of the plugin and put back on the way out:
/// presigned and SAS URLs carry their credentials there.
struct Query(String);

impl Signer for Query {
    fn sign(&self, parts: &mut http::request::Parts) -> Result<(), String> {
        let path = parts.uri.path();
        let mut builder = http::Uri::builder().path_and_query(format!("{path}?{}", self.0));
        if let Some(scheme) = parts.uri.scheme() {
            builder = builder.scheme(scheme.clone());
        }
        if let Some(authority) = parts.uri.authority() {
            builder = builder.authority(authority.clone());
        }
        parts.uri = builder.build().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// An OAuth access token.
struct Bearer(String);

impl Signer for Bearer {
    fn sign(&self, parts: &mut http::request::Parts) -> Result<(), String> {
        set_header(parts, "authorization", &format!("Bearer {}", self.0))
    }
}

/// HTTP basic authentication (git).
struct Basic {
    name: String,
    password: String,
}

impl Signer for Basic {
    fn sign(&self, parts: &mut http::request::Parts) -> Result<(), String> {
        let pair = format!("{}:{}", self.name, self.password);
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        set_header(parts, "authorization", &format!("Basic {encoded}"))
    }
}

/// Seconds since the epoch, for signatures and token requests.
pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::authority;
    use std::collections::HashMap;

    #[test]
    fn userinfo_is_masked_in_the_authority_only() {
        assert_eq!(
            redact_userinfo("https://u:p@ss@h.example/r.git#main"),
            "https://***@h.example/r.git#main"
        );
        assert_eq!(
            redact_userinfo("https://h.example/a@b/r.git"),
            "https://h.example/a@b/r.git"
        );
        assert_eq!(redact_userinfo("git@h:r.git"), "git@h:r.git");
    }

    /// True if `policy` lets a request reach `url`.
    fn reaches(policy: &NetPolicy, url: &str) -> bool {
        authority(&url.parse().unwrap()).is_some_and(|a| policy.allows(&a))
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn option<'a>(r: &'a Remote, key: &str) -> Option<&'a str> {
        r.options
            .iter()
            .find(|o| o.key == key)
            .map(|o| o.value.as_str())
    }

    fn signed(signer: &dyn Signer, url: &str) -> http::request::Parts {
        let (mut parts, ()) = http::Request::get(url).body(()).unwrap().into_parts();
        signer.sign(&mut parts).unwrap();
        parts
    }

    #[test]
    fn s3_urls_resolve_to_the_endpoint_and_are_signed_there_only() {
        let env = env_of(&[
            ("S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("S3_FORCE_PATH_STYLE", "true"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
        ]);
        let r = resolve("s3", "s3://bkt/dir/ctx.tar.gz", &[], &env, 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            option(&r, "get"),
            Some("http://127.0.0.1:9000/bkt/dir/ctx.tar.gz")
        );
        assert_eq!(option(&r, "source"), Some("S3"));
        assert!(reaches(&r.net, "http://127.0.0.1:9000/x"));
        assert!(!reaches(&r.net, "http://127.0.0.1:9001/x"));
        let parts = signed(
            r.net.signer.as_deref().unwrap(),
            "http://127.0.0.1:9000/bkt/dir/ctx.tar.gz",
        );
        let auth = parts.headers["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(!auth.contains("s3cr3t"));
        assert_eq!(
            parts.headers["x-amz-content-sha256"],
            aws::EMPTY_PAYLOAD_SHA256
        );
        assert!(!format!("{r:?}").contains("s3cr3t"));
    }

    #[test]
    fn s3_without_credentials_says_where_they_go() {
        let env = env_of(&[("HOME", "/nonexistent")]);
        let err = resolve("s3", "s3://b/k", &[], &env, 0).unwrap_err();
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
    }

    #[test]
    fn gcs_emulators_take_no_token_and_plain_urls_no_signer() {
        let env = env_of(&[("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")]);
        let r = resolve("gs", "gs://bkt/dir/", &[], &env, 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            option(&r, "get"),
            Some("http://127.0.0.1:4443/storage/v1/b/bkt/o/dir%2Fcontext.tar.gz?alt=media")
        );
        assert!(r.net.signer.is_none());
        let plain = resolve("https", "https://h.example/c.tgz", &[], &env, 0)
            .unwrap()
            .unwrap();
        assert_eq!(option(&plain, "get"), Some("https://h.example/c.tgz"));
        assert!(plain.net.signer.is_none());
        let presigned = "https://h.example/c.tgz?X-Amz-Date=1&X-Amz-Signature=abc";
        let p = resolve("https", presigned, &[], &env, 0).unwrap().unwrap();
        assert_eq!(
            p.url,
            "https://h.example/c.tgz?X-Amz-Date=1&X-Amz-Signature=***"
        );
        assert_eq!(option(&p, "get"), Some("https://h.example/c.tgz"));
        assert!(reaches(&plain.net, "https://h.example/other"));
        assert!(!reaches(&plain.net, "http://h.example/c.tgz"));
        assert!(resolve("foo", "foo://x", &[], &env, 0).unwrap().is_none());
    }

    #[test]
    fn gcs_key_files_that_cannot_be_used_are_named() {
        let env = env_of(&[("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")]);
        let err = resolve("gs", "gs://b/k", &[], &env, 0).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/key.json"), "{err}");
    }

    #[test]
    fn azure_blobs_under_an_emulator_are_signed_with_the_shared_key() {
        let env = env_of(&[
            (
                AZURE_ENDPOINT_VAR,
                "http://127.0.0.1:10000/devstoreaccount1",
            ),
            ("AZURE_STORAGE_ACCESS_KEY", "a2V5"),
        ]);
        let url = "http://127.0.0.1:10000/devstoreaccount1/ctx/c.tar.gz";
        let r = resolve("http", url, &[], &env, 0).unwrap().unwrap();
        assert_eq!(option(&r, "source"), Some("Azure Blob"));
        let parts = signed(r.net.signer.as_deref().unwrap(), url);
        let auth = parts.headers["authorization"].to_str().unwrap();
        assert!(auth.starts_with("SharedKey devstoreaccount1:"), "{auth}");
        assert!(parts.headers.contains_key("x-ms-date"));
        let sas = resolve("http", &format!("{url}?sv=1&sig=s3cr3t"), &[], &env, 0)
            .unwrap()
            .unwrap();
        assert_eq!(option(&sas, "get"), Some(url));
        assert_eq!(sas.url, format!("{url}?sv=1&sig=***"));
        assert!(!format!("{:?}", sas.options).contains("s3cr3t"));
        let parts = signed(sas.net.signer.as_deref().unwrap(), url);
        assert_eq!(parts.uri.to_string(), format!("{url}?sv=1&sig=s3cr3t"));
        assert!(!parts.headers.contains_key("authorization"));
    }

    #[test]
    fn git_urls_lose_their_credentials_to_the_signer() {
        let env = env_of(&[("GIT_PULL_METHOD", "http")]);
        let r = resolve(
            "git",
            "git://user:p%40ss@127.0.0.1:8080/org/repo.git#main#abc",
            &["branch=dev,recurse-submodules=true".into()],
            &env,
            0,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.url, "git://127.0.0.1:8080/org/repo.git#main#abc");
        assert!(r.scratch);
        assert_eq!(option(&r, "pull-method"), Some("http"));
        assert_eq!(option(&r, "branch"), Some("dev"));
        assert_eq!(option(&r, "recurse-submodules"), Some("true"));
        assert!(reaches(
            &r.net,
            "http://127.0.0.1:8080/org/repo.git/info/refs"
        ));
        assert!(!reaches(&r.net, "http://127.0.0.1:8081/"));
        let parts = signed(r.net.signer.as_deref().unwrap(), "http://127.0.0.1:8080/x");
        let expected = base64::engine::general_purpose::STANDARD.encode("user:p@ss");
        assert_eq!(parts.headers["authorization"], format!("Basic {expected}"));
        assert!(parts.headers["authorization"].is_sensitive());
    }

    #[test]
    fn git_tokens_options_and_bad_input() {
        let env = env_of(&[("GIT_TOKEN", "tok")]);
        let r = resolve("git", "git://github.com/a/b.git", &[], &env, 0)
            .unwrap()
            .unwrap();
        assert_eq!(option(&r, "pull-method"), Some("https"));
        assert!(reaches(&r.net, "https://github.com/a/b.git"));
        let parts = signed(
            r.net.signer.as_deref().unwrap(),
            "https://github.com/a/b.git",
        );
        let expected = base64::engine::general_purpose::STANDARD.encode("tok:");
        assert_eq!(parts.headers["authorization"], format!("Basic {expected}"));
        let none = env_of(&[]);
        for (url, git) in [
            ("git://h", ""),
            ("git:///repo", ""),
            ("git://h/r.git", "depth=1"),
            ("git://h/r.git", "branch"),
            ("git://h/r.git", "insecure-skip-tls=yes"),
        ] {
            let git = if git.is_empty() {
                vec![]
            } else {
                vec![git.to_owned()]
            };
            assert!(
                resolve("git", url, &git, &none, 0).is_err(),
                "{url} {git:?}"
            );
        }
        for (value, skip) in [("false", false), ("F", false), ("true", true), ("1", true)] {
            let r = resolve(
                "git",
                "git://h/r.git",
                &[format!("branch=main,insecure-skip-tls={value}")],
                &none,
                0,
            )
            .unwrap()
            .unwrap();
            assert_eq!(r.net.skip_tls_verify, skip, "{value}");
            assert_eq!(option(&r, "branch"), Some("main"));
            assert_eq!(option(&r, "insecure-skip-tls"), None);
        }
        let https = resolve("https", "https://h/c.tar.gz", &[], &none, 0)
            .unwrap()
            .unwrap();
        assert!(!https.net.skip_tls_verify);
        let err = resolve("git", "git://u:secret@h", &[], &none, 0).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        let env = env_of(&[("GIT_PULL_METHOD", "ssh")]);
        assert!(resolve("git", "git://h/r.git", &[], &env, 0).is_err());
    }
}
