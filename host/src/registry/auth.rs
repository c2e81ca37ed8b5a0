//! Registry credentials and the pieces of the token flow that need no
//! network: docker `config.json` lookup, credential helpers,
//! `WWW-Authenticate` parsing, token responses and the token cache.

use super::reference::DOCKER_HUB;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod challenge;
pub use challenge::{Challenge, parse_challenges, pick_challenge};

/// The key under which Docker stores Docker Hub credentials.
const DOCKER_HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";

/// What a credential helper answers when it holds nothing for a server.
const HELPER_NOT_FOUND: &str = "credentials not found";

/// Credentials for one registry. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// No credentials: anonymous access.
    Anonymous,
    /// User name and password (or personal access token).
    Basic { username: String, password: String },
    /// An OAuth2 refresh token, exchanged at the token endpoint.
    IdentityToken(String),
    /// A bearer token sent to the registry as is.
    RegistryToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(
                f,
                "Basic {{ username: {username:?}, password: <redacted> }}"
            ),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Credential::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// `Authorization: Basic` value for `username:password`.
pub fn basic_header(username: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{username}:{password}")))
}

/// A docker `config.json`: the parts kiln reads.
#[derive(Debug, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

/// One `auths` entry. Go's JSON decoder matches field names without regard
/// to case, and generated files use both spellings.
#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default, alias = "Auth")]
    auth: Option<String>,
    #[serde(default, alias = "Username")]
    username: Option<String>,
    #[serde(default, alias = "Password")]
    password: Option<String>,
    #[serde(default, alias = "IdentityToken", alias = "identityToken")]
    identitytoken: Option<String>,
    #[serde(default, alias = "RegistryToken", alias = "registryToken")]
    registrytoken: Option<String>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

/// Where a registry's credentials come from, decided from the config alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The config holds them.
    Found(Credential),
    /// Ask `docker-credential-<helper>` about `server`.
    Helper { helper: String, server: String },
}

impl DockerConfig {
    /// Reads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<DockerConfig, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerConfig::default()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Decides where the credentials of `registry` (host[:port]) come from:
    /// a `credHelpers` entry, else a non-empty `auths` entry, else `credsStore`.
    /// Docker asks `credsStore` before `auths`; kiln reads `auths` first
    /// because a mounted Kubernetes secret puts real credentials there.
    pub fn lookup(&self, registry: &str) -> Result<Lookup, String> {
        let server = server_address(registry);
        if let Some(helper) = find_entry(&self.cred_helpers, registry) {
            return Ok(Lookup::Helper {
                helper: helper.clone(),
                server,
            });
        }
        if let Some(entry) = find_entry(&self.auths, registry) {
            let cred = entry.credential()?;
            if cred != Credential::Anonymous {
                return Ok(Lookup::Found(cred));
            }
        }
        match &self.creds_store {
            Some(store) if !store.is_empty() => Ok(Lookup::Helper {
                helper: store.clone(),
                server,
            }),
            _ => Ok(Lookup::Found(Credential::Anonymous)),
        }
    }
}

impl AuthEntry {
    fn credential(&self) -> Result<Credential, String> {
        let nonempty = |s: &Option<String>| s.clone().filter(|v| !v.is_empty());
        if let Some(t) = nonempty(&self.registrytoken) {
            return Ok(Credential::RegistryToken(t));
        }
        if let Some(t) = nonempty(&self.identitytoken) {
            return Ok(Credential::IdentityToken(t));
        }
        if let Some(auth) = nonempty(&self.auth) {
            let decoded = BASE64
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or("an `auth` value is not base64 of user:password")?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or("an `auth` value decodes to no `user:password` pair")?;
            return Ok(Credential::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            });
        }
        match (nonempty(&self.username), nonempty(&self.password)) {
            (Some(username), Some(password)) => Ok(Credential::Basic { username, password }),
            _ => Ok(Credential::Anonymous),
        }
    }
}

/// The server name Docker hands to credential helpers for `registry`.
fn server_address(registry: &str) -> String {
    if registry == DOCKER_HUB {
        DOCKER_HUB_CONFIG_KEY.to_owned()
    } else {
        registry.to_owned()
    }
}

/// `https://host/v2/` → `host`, the way Docker compares config keys.
fn key_host(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or_default().to_ascii_lowercase()
}

fn same_registry(a: &str, b: &str) -> bool {
    let hub = |h: &str| matches!(h, "index.docker.io" | "docker.io" | "registry-1.docker.io");
    a == b || (hub(a) && hub(b))
}

/// The entry for `registry`, preferring a key spelled exactly as Docker
/// writes it over one that only names the same host.
fn find_entry<'a, T>(map: &'a BTreeMap<String, T>, registry: &str) -> Option<&'a T> {
    let exact = [
        server_address(registry),
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    let registry = registry.to_ascii_lowercase();
    exact.iter().find_map(|k| map.get(k)).or_else(|| {
        map.iter()
            .find(|(k, _)| same_registry(&key_host(k), &registry))
            .map(|(_, v)| v)
    })
}

/// A credential helper's answer to `get`.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `program get` with `server` on stdin, as Docker does. `Ok(None)`
/// when the helper knows nothing about the server; errors carry its stderr.
pub fn run_helper(
    program: &Path,
    server: &str,
    timeout: Duration,
) -> Result<Option<Credential>, String> {
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e} (is it on PATH?)", program.display()))?;
    let feed = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(server.as_bytes()));
    if let Some(Err(e)) = feed {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("cannot write to its stdin: {e}"));
    }
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {}s", timeout.as_secs()));
            }
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    let out_text = String::from_utf8_lossy(&out);
    if !status.success() {
        if out_text.contains(HELPER_NOT_FOUND) {
            return Ok(None);
        }
        let detail = String::from_utf8_lossy(if err.trim_ascii().is_empty() {
            &out
        } else {
            &err
        });
        return Err(format!("{status}: {}", detail.trim()));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out)
        .map_err(|e| format!("its output is not the expected JSON: {e}"))?;
    Ok(Some(match answer.username.as_str() {
        "<token>" => Credential::IdentityToken(answer.secret),
        _ => Credential::Basic {
            username: answer.username,
            password: answer.secret,
        },
    }))
}

/// A token endpoint's answer: `token` or `access_token`, and its lifetime.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenAnswer {
    /// The bearer token.
    pub token: String,
    /// Seconds it lives, when the server says.
    pub expires_in: Option<u64>,
}

/// Reads a token endpoint's JSON answer.
pub fn parse_token_answer(bytes: &[u8]) -> Result<TokenAnswer, String> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        token: String,
        #[serde(default)]
        access_token: String,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    let raw: Raw = serde_json::from_slice(bytes)
        .map_err(|e| format!("answer is not the expected JSON: {e}"))?;
    let token = if raw.token.is_empty() {
        raw.access_token
    } else {
        raw.token
    };
    if token.is_empty() {
        return Err("answer has neither `token` nor `access_token`".into());
    }
    Ok(TokenAnswer {
        token,
        expires_in: raw.expires_in,
    })
}

/// The lifetime the token spec assumes when a server gives none.
const DEFAULT_TOKEN_SECS: u64 = 60;

/// How long a token is reused: its lifetime less a margin (a tenth, at most
/// 30 s) so a request never leaves with a token about to expire.
fn usable_for(expires_in: Option<u64>) -> Duration {
    let secs = expires_in.filter(|s| *s > 0).unwrap_or(DEFAULT_TOKEN_SECS);
    Duration::from_secs(secs - (secs / 10).min(30))
}

/// Bearer tokens per (registry, scope), kept until shortly before they expire.
#[derive(Default)]
pub struct TokenCache {
    entries: HashMap<(String, String), (String, Instant)>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.keys()).finish()
    }
}

impl TokenCache {
    /// A still-valid token for `(registry, scope)` at `now`.
    pub fn get(&self, registry: &str, scope: &str, now: Instant) -> Option<String> {
        let (token, until) = self.entries.get(&(registry.to_owned(), scope.to_owned()))?;
        (now < *until).then(|| token.clone())
    }

    /// Keeps `token`, issued at `now` with `expires_in` seconds to live.
    pub fn insert(
        &mut self,
        registry: &str,
        scope: &str,
        token: String,
        expires_in: Option<u64>,
        now: Instant,
    ) {
        self.entries.retain(|_, (_, until)| now < *until);
        self.entries.insert(
            (registry.to_owned(), scope.to_owned()),
            (token, now + usable_for(expires_in)),
        );
    }
}

/// The default docker config directory: `$DOCKER_CONFIG`, else
/// `/kaniko/.docker` if it exists (kaniko's image), else `~/.docker`.
pub fn default_config_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let kaniko = Path::new("/kaniko/.docker");
    if kaniko.is_dir() {
        return Some(kaniko.to_owned());
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(json: &str) -> DockerConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        DockerConfig::load(&path).unwrap()
    }

    fn basic(u: &str, p: &str) -> Lookup {
        Lookup::Found(Credential::Basic {
            username: u.into(),
            password: p.into(),
        })
    }

    #[test]
    fn auth_entries_in_every_key_form() {
        let auth = BASE64.encode("u1:p:with:colons");
        let c = config(&format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{auth}"}},
                "plain.io": {{"username": "u2", "password": "p2"}},
                "https://secure.io": {{"Username": "u3", "Password": "p3"}},
                "http://insecure.io:5000": {{"auth": "{}"}},
                "v2.io/v2": {{"identitytoken": "refresh"}},
                "tok.io": {{"registrytoken": "bearer"}},
                "empty.io": {{}}
            }}}}"#,
            BASE64.encode("u4:p4")
        ));
        assert_eq!(
            c.lookup("index.docker.io").unwrap(),
            basic("u1", "p:with:colons")
        );
        assert_eq!(c.lookup("plain.io").unwrap(), basic("u2", "p2"));
        assert_eq!(c.lookup("secure.io").unwrap(), basic("u3", "p3"));
        assert_eq!(c.lookup("insecure.io:5000").unwrap(), basic("u4", "p4"));
        assert_eq!(
            c.lookup("v2.io").unwrap(),
            Lookup::Found(Credential::IdentityToken("refresh".into()))
        );
        assert_eq!(
            c.lookup("tok.io").unwrap(),
            Lookup::Found(Credential::RegistryToken("bearer".into()))
        );
        assert_eq!(
            c.lookup("empty.io").unwrap(),
            Lookup::Found(Credential::Anonymous)
        );
        assert_eq!(
            c.lookup("other.io").unwrap(),
            Lookup::Found(Credential::Anonymous)
        );
        assert_eq!(
            c.lookup("insecure.io").unwrap(),
            Lookup::Found(Credential::Anonymous)
        );
    }

    #[test]
    fn docker_hub_accepts_its_aliases_but_prefers_the_canonical_key() {
        let c = config(r#"{"auths": {"docker.io": {"username": "alias", "password": "x"}}}"#);
        assert_eq!(c.lookup("index.docker.io").unwrap(), basic("alias", "x"));
        let c = config(
            r#"{"auths": {"docker.io": {"username": "alias", "password": "x"},
                          "https://index.docker.io/v1/": {"username": "canon", "password": "y"}}}"#,
        );
        assert_eq!(c.lookup("index.docker.io").unwrap(), basic("canon", "y"));
    }

    #[test]
    fn helpers_take_precedence_and_store_is_the_fallback() {
        let c = config(
            r#"{"auths": {"a.io": {"username": "u", "password": "p"}, "gcr.io": {}},
                "credHelpers": {"gcr.io": "gcr", "a.io": "ecr-login"},
                "credsStore": "desktop"}"#,
        );
        assert_eq!(
            c.lookup("gcr.io").unwrap(),
            Lookup::Helper {
                helper: "gcr".into(),
                server: "gcr.io".into()
            }
        );
        assert_eq!(
            c.lookup("a.io").unwrap(),
            Lookup::Helper {
                helper: "ecr-login".into(),
                server: "a.io".into()
            }
        );
        assert_eq!(
            c.lookup("index.docker.io").unwrap(),
            Lookup::Helper {
                helper: "desktop".into(),
                server: "https://index.docker.io/v1/".into()
            }
        );
    }

    #[test]
    fn bad_configs_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert!(
            DockerConfig::load(&path).is_ok(),
            "a missing file is an empty config"
        );
        std::fs::write(&path, "{not json").unwrap();
        assert!(
            DockerConfig::load(&path)
                .unwrap_err()
                .contains("not valid JSON")
        );
        let c = config(r#"{"auths": {"x.io": {"auth": "%%%"}}}"#);
        assert!(c.lookup("x.io").unwrap_err().contains("base64"));
        let c = config(&format!(
            r#"{{"auths": {{"x.io": {{"auth": "{}"}}}}}}"#,
            BASE64.encode("nocolon")
        ));
        assert!(c.lookup("x.io").unwrap_err().contains("user:password"));
    }

    fn helper(dir: &Path, script: &str) -> PathBuf {
        let path = dir.join("docker-credential-test");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn credential_helpers_are_run_with_the_server_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(10);
        let echo = helper(
            dir.path(),
            r#"[ "$1" = get ] || exit 3; read s; printf '{"ServerURL":"%s","Username":"user-%s","Secret":"s3cret"}' "$s" "$s""#,
        );
        assert_eq!(
            run_helper(&echo, "reg.io", t).unwrap(),
            Some(Credential::Basic {
                username: "user-reg.io".into(),
                password: "s3cret".into()
            })
        );
        let token = helper(
            dir.path(),
            r#"cat >/dev/null; echo '{"Username":"<token>","Secret":"refresh"}'"#,
        );
        assert_eq!(
            run_helper(&token, "x", t).unwrap(),
            Some(Credential::IdentityToken("refresh".into()))
        );
        let none = helper(
            dir.path(),
            "cat >/dev/null; echo 'credentials not found in native keychain'; exit 1",
        );
        assert_eq!(run_helper(&none, "x", t).unwrap(), None);
        let fail = helper(
            dir.path(),
            "cat >/dev/null; echo 'token expired, run login' >&2; exit 2",
        );
        let err = run_helper(&fail, "x", t).unwrap_err();
        assert!(
            err.contains("token expired, run login") && err.contains("exit status: 2"),
            "{err}"
        );
        let garbage = helper(dir.path(), "cat >/dev/null; echo nope");
        assert!(run_helper(&garbage, "x", t).unwrap_err().contains("JSON"));
        let missing = run_helper(&dir.path().join("absent"), "x", t).unwrap_err();
        assert!(missing.contains("cannot run"), "{missing}");
    }

    #[test]
    fn a_hanging_helper_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let slow = helper(dir.path(), "exec sleep 30");
        let start = Instant::now();
        let err = run_helper(&slow, "x", Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let creds = [
            Credential::Basic {
                username: "me".into(),
                password: "hunter2".into(),
            },
            Credential::IdentityToken("hunter2".into()),
            Credential::RegistryToken("hunter2".into()),
        ];
        for c in creds {
            assert!(!format!("{c:?}").contains("hunter2"));
        }
        let c = config(r#"{"auths": {"x.io": {"username": "u", "password": "hunter2"}}}"#);
        assert!(!format!("{c:?}").contains("hunter2"));
        let mut cache = TokenCache::default();
        cache.insert("r", "s", "hunter2".into(), None, Instant::now());
        assert!(!format!("{cache:?}").contains("hunter2"));
    }

    #[test]
    fn token_answers_accept_both_field_names() {
        assert_eq!(
            parse_token_answer(br#"{"token":"t1","expires_in":300}"#).unwrap(),
            TokenAnswer {
                token: "t1".into(),
                expires_in: Some(300)
            }
        );
        assert_eq!(
            parse_token_answer(br#"{"access_token":"t2","issued_at":"2024-01-01T00:00:00Z"}"#)
                .unwrap(),
            TokenAnswer {
                token: "t2".into(),
                expires_in: None
            }
        );
        assert!(
            parse_token_answer(br#"{"expires_in":3}"#)
                .unwrap_err()
                .contains("neither")
        );
        assert!(parse_token_answer(b"<html>").unwrap_err().contains("JSON"));
    }

    #[test]
    fn cached_tokens_expire_before_the_server_says() {
        let t0 = Instant::now();
        let mut cache = TokenCache::default();
        cache.insert("r", "repository:a:pull", "short".into(), None, t0);
        cache.insert("r", "repository:a:pull,push", "long".into(), Some(3600), t0);
        assert_eq!(
            cache
                .get("r", "repository:a:pull", t0 + Duration::from_secs(53))
                .as_deref(),
            Some("short")
        );
        assert_eq!(
            cache.get("r", "repository:a:pull", t0 + Duration::from_secs(54)),
            None
        );
        assert_eq!(cache.get("other", "repository:a:pull", t0), None);
        let later = t0 + Duration::from_secs(3569);
        assert_eq!(
            cache.get("r", "repository:a:pull,push", later).as_deref(),
            Some("long")
        );
        assert_eq!(
            cache.get(
                "r",
                "repository:a:pull,push",
                t0 + Duration::from_secs(3570)
            ),
            None
        );
        assert_eq!(usable_for(Some(0)), Duration::from_secs(54));
        assert_eq!(usable_for(Some(5)), Duration::from_secs(5));
    }

    #[test]
    fn basic_header_is_base64_of_user_colon_password() {
        assert_eq!(
            basic_header("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
