//! The registry client: options, errors, and the transport that pull and
//! push share. A request goes through three small steps, as in
//! go-containerregistry: ping the registry once (which scheme answers, which
//! auth it wants), attach credentials (basic, or a cached bearer token for
//! the repository scope), then send; a 401 refreshes the token and sends
//! once more. Callers hand in a closure that builds the request, so the
//! request can be rebuilt (a body reopened) for that second attempt, or by
//! a retry wrapper around [`Registry::send`].

use super::auth::{self, Challenge, Credential, DockerConfig, Lookup, TokenAnswer, TokenCache};
use super::mirror;
use super::proxy::ProxyConfig;
use super::reference::{Reference, api_host};
use super::retry;
use super::tls::{self, Direction, Route, TlsChoice, TlsMaterial};
use crate::digest::Digest;
use crate::image::manifest::{Descriptor, Manifest, ManifestError};
use crate::store::StoreError;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A response whose status the caller inspects.
pub(super) type Response = ureq::http::Response<ureq::Body>;

/// Builds and sends one request, given the agent, the absolute URL and the
/// `Authorization` value to attach.
pub(super) type SendFn<'a> =
    dyn Fn(&ureq::Agent, &str, Option<&str>) -> Result<Response, ureq::Error> + 'a;

/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// Error bodies are read up to this size for their message.
const ERROR_BODY_MAX: u64 = 64 * 1024;
/// Token answers are small; anything bigger is not one.
const TOKEN_BODY_MAX: u64 = 1024 * 1024;

/// Retries per request when neither `--push-retry` nor `--image-download-retry` says otherwise.
pub const DEFAULT_RETRIES: u32 = 3;

/// How to reach registries and where credentials live.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`) that may fall back to plain http when
    /// https fails, both ways (`--insecure-registry`); loopback registries
    /// always may, as with Docker.
    pub insecure_registries: Vec<String>,
    /// Directory of `config.json`; default `$DOCKER_CONFIG`, else
    /// `/kaniko/.docker` if it exists, else `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// `User-Agent` sent with every request.
    pub user_agent: String,
    /// Pulls may fall back to plain http from any registry (`--insecure-pull`).
    pub insecure_pull: bool,
    /// Pushes may fall back to plain http to any registry (`--insecure`).
    pub insecure_push: bool,
    /// Pushes accept any TLS certificate (`--skip-tls-verify`).
    pub skip_tls_verify_push: bool,
    /// Pulls accept any TLS certificate (`--skip-tls-verify-pull`).
    pub skip_tls_verify_pull: bool,
    /// Registries whose certificates are not verified, both ways (`--skip-tls-verify-registry`).
    pub skip_tls_verify_registries: Vec<String>,
    /// Extra CA (PEM) trusted for a registry (`--registry-certificate reg=ca.pem`).
    pub registry_certificates: Vec<(String, PathBuf)>,
    /// Client certificate chain and key (PEM) for a registry's mTLS
    /// (`--registry-client-cert reg=cert.pem,key.pem`).
    pub registry_client_certs: Vec<(String, PathBuf, PathBuf)>,
    /// Docker Hub mirrors, `host[/path-prefix]`, tried in order before Docker
    /// Hub (`--registry-mirror`, `KANIKO_REGISTRY_MIRROR`).
    pub mirrors: Vec<String>,
    /// Mirrors of any registry, tried in order before it (`--registry-map`,
    /// `KANIKO_REGISTRY_MAP`; parse the flag with [`mirror::parse_registry_map`]).
    pub registry_map: Vec<(String, Vec<String>)>,
    /// Do not fall back to the original registry when mirrors apply
    /// (`--skip-default-registry-fallback`).
    pub skip_default_registry_fallback: bool,
    /// Retries of a failed push request (`--push-retry`).
    pub push_retries: u32,
    /// Retries of a failed pull request (`--image-download-retry`).
    pub pull_retries: u32,
    /// Proxy settings; `None` reads `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY`.
    pub proxy: Option<ProxyConfig>,
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            insecure_registries: Vec::new(),
            docker_config_dir: None,
            user_agent: String::new(),
            insecure_pull: false,
            insecure_push: false,
            skip_tls_verify_push: false,
            skip_tls_verify_pull: false,
            skip_tls_verify_registries: Vec::new(),
            registry_certificates: Vec::new(),
            registry_client_certs: Vec::new(),
            mirrors: Vec::new(),
            registry_map: Vec::new(),
            skip_default_registry_fallback: false,
            push_retries: DEFAULT_RETRIES,
            pull_retries: DEFAULT_RETRIES,
            proxy: None,
        }
    }
}

/// Registry failures, each saying what failed, where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "cannot reach registry {host}: {detail} (check the address, --insecure-registry for plain http)"
    )]
    Unreachable { host: String, detail: String },
    #[error(
        "unauthorized for {repository} at {host} (HTTP {status}: {message}): check credentials in {config}"
    )]
    Unauthorized {
        host: String,
        repository: String,
        status: u16,
        message: String,
        config: String,
    },
    #[error("image {reference} not found ({message})")]
    ManifestNotFound { reference: String, message: String },
    #[error("blob {digest} not found in {repository} at {host} ({message})")]
    BlobNotFound {
        host: String,
        repository: String,
        digest: Digest,
        message: String,
    },
    #[error("registry {host} answered {method} {path} with HTTP {status}: {message}")]
    Status {
        host: String,
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error(
        "registry {host} is busy: {method} {path} got HTTP {status}: {message} (raise --push-retry or --image-download-retry)"
    )]
    Throttled {
        host: String,
        method: &'static str,
        path: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("cannot use certificate file {path} for registry TLS: {detail}")]
    Certificate { path: PathBuf, detail: String },
    #[error("invalid registry mirror {spec:?}: {detail}")]
    BadMirror { spec: String, detail: String },
    #[error("invalid proxy URL in ${var}: {detail}")]
    BadProxy { var: &'static str, detail: String },
    #[error(
        "image {reference} could not be pulled from any mirror ({attempts}); drop --skip-default-registry-fallback to try the registry itself"
    )]
    MirrorsFailed { reference: String, attempts: String },
    #[error("{method} {url} failed: {source}")]
    Transport {
        method: &'static str,
        url: String,
        source: ureq::Error,
    },
    #[error("registry {host} broke the protocol: {detail}")]
    Protocol { host: String, detail: String },
    #[error("token server {realm} for registry {host} failed: {detail}")]
    Token {
        host: String,
        realm: String,
        detail: String,
    },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("invalid manifest for {reference}: {source}")]
    Manifest {
        reference: String,
        source: ManifestError,
    },
    #[error("{reference} is an index of indexes, which kiln does not follow")]
    NestedIndex { reference: String },
    #[error(
        "invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8"
    )]
    BadPlatform(String),
    #[error("image {reference} has no manifest for platform {platform} (available: {available})")]
    PlatformNotFound {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{what} is {size} bytes, more than the {max} kiln accepts")]
    TooLarge { what: String, size: u64, max: u64 },
    #[error("cannot read docker config {path}: {detail}")]
    DockerConfig { path: PathBuf, detail: String },
    #[error("credential helper docker-credential-{helper} failed for {server}: {detail}")]
    CredentialHelper {
        helper: String,
        server: String,
        detail: String,
    },
    #[error("blob {digest} for {repository} is neither in the local store nor in the destination")]
    BlobMissing { repository: String, digest: Digest },
    #[error("reading {what} failed: {source}")]
    Read {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a pull resolved: one platform's manifest and its verified config.
#[derive(Clone, Debug)]
pub struct PulledImage {
    /// Digest of the single-platform manifest (not of the index).
    pub manifest_digest: Digest,
    /// The manifest.
    pub manifest: Manifest,
    /// The raw config JSON, verified against the manifest.
    pub config: Vec<u8>,
}

/// Source of a blob the store lacks: brings `digest` into the store.
pub type BlobSource<'a> = &'a dyn Fn(&Digest) -> Result<(), RegistryError>;

/// An image to push. Blobs are read from the store; a blob that is in
/// neither the store nor the destination is asked of `source` first.
pub struct PushImage<'a> {
    /// The manifest bytes, pushed as they are.
    pub manifest: &'a [u8],
    /// The manifest's media type (`Content-Type` of the upload).
    pub manifest_media_type: &'a str,
    /// Every blob the manifest names: layers, then the config.
    pub blobs: Vec<&'a Descriptor>,
    /// Fetches a missing blob into the store (e.g. from the base image's repository).
    pub source: Option<BlobSource<'a>>,
}

/// What a request is for: the repository and the access it needs.
#[derive(Clone, Copy)]
pub(super) struct Repo<'a> {
    /// Registry host[:port] as in the reference.
    pub registry: &'a str,
    /// Repository path.
    pub repository: &'a str,
    /// Whether the request needs push access (else pull).
    pub push: bool,
}

impl Repo<'_> {
    fn scope(&self) -> String {
        let actions = if self.push { "pull,push" } else { "pull" };
        format!("repository:{}:{actions}", self.repository)
    }
}

/// How a registry answered the ping.
struct Endpoint {
    /// `scheme://host[:port]` of the registry API.
    base: String,
    /// What `/v2/` asked for; `None` when it let us in anonymously.
    challenge: Option<Challenge>,
}

/// A registry client; clones share connections, credentials and tokens.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    opts: RegistryOptions,
    proxy: ProxyConfig,
    tls: TlsMaterial,
    /// One agent per TLS setting and proxy: ureq fixes both per agent.
    agents: Mutex<HashMap<(TlsChoice, Option<String>), ureq::Agent>>,
    config_path: Option<PathBuf>,
    config: DockerConfig,
    credentials: Mutex<HashMap<String, Credential>>,
    endpoints: Mutex<HashMap<EndpointKey, Arc<Endpoint>>>,
    /// One gate per endpoint, held while it is pinged, so that threads
    /// starting together ping once instead of each on its own.
    pinging: Mutex<HashMap<EndpointKey, Arc<Mutex<()>>>>,
    tokens: Mutex<TokenCache>,
    /// Where each pulled image's manifest came from (original `repo_name`
    /// to the reference on the mirror that served it), so its blobs follow.
    sources: Mutex<HashMap<String, Reference>>,
    /// Blobs whose upload started while they were written, completing.
    in_flight: super::stream::InFlight,
}

impl Registry {
    /// The streamed uploads that pushes of the same blob wait for.
    pub(super) fn in_flight(&self) -> &super::stream::InFlight {
        &self.inner.in_flight
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("insecure", &self.inner.opts.insecure_registries)
            .field("mirrors", &self.inner.opts.mirrors)
            .field("config_path", &self.inner.config_path)
            .finish_non_exhaustive()
    }
}

/// A registry and the route to it: what one ping finds out about.
type EndpointKey = (String, Route);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `host[:port]` without the port.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Loopback registries may use plain http without being listed, as Docker allows.
pub(super) fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `Location` of an upload, made absolute against the registry's base URL.
pub(super) fn absolute_url(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        format!("{base}/{location}")
    }
}

/// The messages of a registry's error JSON (`{"errors":[{"code","message"}]}`),
/// or the start of the body when it is something else.
pub(super) fn describe_error_body(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body)
        && !e.errors.is_empty()
    {
        return e
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        _ if text.is_empty() => "no details".to_owned(),
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Adds `Authorization` when there is one.
pub(super) fn authorized<B>(
    rb: ureq::RequestBuilder<B>,
    auth: Option<&str>,
) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => rb.header("Authorization", a),
        None => rb,
    }
}

/// The message of an error response, read from its (bounded) body.
pub(super) fn error_message(resp: Response) -> String {
    match resp
        .into_body()
        .into_with_config()
        .limit(ERROR_BODY_MAX)
        .read_to_vec()
    {
        Ok(body) => describe_error_body(&body),
        Err(e) => format!("unreadable error body: {e}"),
    }
}

/// A header's value, if present and text.
pub(super) fn header<'r>(resp: &'r Response, name: &str) -> Option<&'r str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

impl Repo<'_> {
    /// Pushes and pulls have their own TLS and retry settings.
    pub(super) fn direction(&self) -> Direction {
        if self.push {
            Direction::Push
        } else {
            Direction::Pull
        }
    }
}

impl Registry {
    /// A client with the given options; reads the docker config, the
    /// certificate files and the proxy settings once, and checks the mirrors.
    pub fn new(opts: RegistryOptions) -> Result<Registry, RegistryError> {
        let config_path = opts
            .docker_config_dir
            .clone()
            .or_else(auth::default_config_dir)
            .map(|d| d.join("config.json"));
        let config = match &config_path {
            Some(p) => DockerConfig::load(p).map_err(|detail| RegistryError::DockerConfig {
                path: p.clone(),
                detail,
            })?,
            None => DockerConfig::default(),
        };
        let tls = TlsMaterial::load(&opts).map_err(|bad| RegistryError::Certificate {
            path: bad.path,
            detail: bad.detail,
        })?;
        let proxy = opts.proxy.clone().unwrap_or_else(ProxyConfig::from_env);
        for (var, url) in proxy.proxies() {
            ureq::Proxy::new(url).map_err(|e| RegistryError::BadProxy {
                var,
                detail: e.to_string(),
            })?;
        }
        let specs = opts
            .mirrors
            .iter()
            .chain(opts.registry_map.iter().flat_map(|(_, news)| news));
        for spec in specs {
            mirror::check_mirror(spec).map_err(|detail| RegistryError::BadMirror {
                spec: spec.clone(),
                detail,
            })?;
        }
        Ok(Registry {
            inner: Arc::new(Inner {
                opts,
                proxy,
                tls,
                agents: Mutex::new(HashMap::new()),
                config_path,
                config,
                credentials: Mutex::new(HashMap::new()),
                endpoints: Mutex::new(HashMap::new()),
                pinging: Mutex::new(HashMap::new()),
                tokens: Mutex::new(TokenCache::default()),
                sources: Mutex::new(HashMap::new()),
                in_flight: Default::default(),
            }),
        })
    }

    /// The options this client was made with.
    pub fn options(&self) -> &RegistryOptions {
        &self.inner.opts
    }

    /// Retries allowed per request in `direction`.
    pub(super) fn retries(&self, direction: Direction) -> u32 {
        match direction {
            Direction::Pull => self.inner.opts.pull_retries,
            Direction::Push => self.inner.opts.push_retries,
        }
    }

    /// The transport of `registry` in `direction`.
    pub(super) fn route(&self, registry: &str, direction: Direction) -> Route {
        tls::route(&self.inner.opts, registry, direction)
    }

    /// The agent for requests to `url` with TLS settings `choice`: the
    /// proxy is chosen per URL, so upload locations and token servers on
    /// other hosts get theirs.
    pub(super) fn agent(&self, choice: &TlsChoice, url: &str) -> ureq::Agent {
        let proxy = self.inner.proxy.proxy_for(url).map(str::to_owned);
        let key = (choice.clone(), proxy);
        let mut agents = lock(&self.inner.agents);
        if let Some(a) = agents.get(&key) {
            return a.clone();
        }
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(300)))
            .tls_config(self.inner.tls.config(choice))
            // Checked in `new`, so this cannot fail.
            .proxy(key.1.as_deref().and_then(|p| ureq::Proxy::new(p).ok()));
        if !self.inner.opts.user_agent.is_empty() {
            builder = builder.user_agent(self.inner.opts.user_agent.as_str());
        }
        let agent = builder.build().new_agent();
        agents.insert(key, agent.clone());
        agent
    }

    /// Remembers that `original`'s manifest came from `served`.
    pub(super) fn remember_source(&self, original: &Reference, served: &Reference) {
        lock(&self.inner.sources).insert(original.repo_name(), served.clone());
    }

    /// Where `r`'s blobs were served from, if a mirror served its manifest.
    pub(super) fn source_of(&self, r: &Reference) -> Option<Reference> {
        lock(&self.inner.sources).get(&r.repo_name()).cloned()
    }

    /// Where credentials are looked up, for error messages.
    fn config_hint(&self) -> String {
        match &self.inner.config_path {
            Some(p) => p.display().to_string(),
            None => "DOCKER_CONFIG/config.json (none found)".to_owned(),
        }
    }

    /// Pings `registry` once per route: https first, then plain http where allowed.
    fn endpoint(&self, registry: &str, route: &Route) -> Result<Arc<Endpoint>, RegistryError> {
        let key = (registry.to_owned(), route.clone());
        if let Some(ep) = lock(&self.inner.endpoints).get(&key) {
            return Ok(ep.clone());
        }
        let gate = lock(&self.inner.pinging)
            .entry(key.clone())
            .or_default()
            .clone();
        let _pinging = lock(&gate);
        if let Some(ep) = lock(&self.inner.endpoints).get(&key) {
            return Ok(ep.clone());
        }
        let host = api_host(registry);
        let schemes: &[&str] = if route.plain_http {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut failures = Vec::new();
        for scheme in schemes {
            let base = format!("{scheme}://{host}");
            let ping = format!("{base}/v2/");
            log::debug!("ping {ping}");
            let resp = match self.agent(&route.tls, &ping).get(&ping).call() {
                Ok(resp) => resp,
                Err(e) => {
                    failures.push(format!("{scheme}: {e}"));
                    continue;
                }
            };
            let challenge = match resp.status().as_u16() {
                200 => None,
                401 => auth::pick_challenge(
                    resp.headers()
                        .get_all("www-authenticate")
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(auth::parse_challenges)
                        .collect(),
                ),
                status => {
                    let mut message = error_message(resp);
                    if !failures.is_empty() {
                        // An https server asked in plain http answers 400: the https error is the real one.
                        message = format!("{message}; before that {}", failures.join("; "));
                    }
                    return Err(RegistryError::Status {
                        host: registry.to_owned(),
                        method: "GET",
                        path: "/v2/".to_owned(),
                        status,
                        message,
                    });
                }
            };
            let ep = Arc::new(Endpoint { base, challenge });
            lock(&self.inner.endpoints).insert(key, ep.clone());
            return Ok(ep);
        }
        Err(RegistryError::Unreachable {
            host: registry.to_owned(),
            detail: failures.join("; "),
        })
    }

    /// The credentials for `registry`, asking a helper at most once.
    fn credential(&self, registry: &str) -> Result<Credential, RegistryError> {
        let mut creds = lock(&self.inner.credentials);
        if let Some(c) = creds.get(registry) {
            return Ok(c.clone());
        }
        let lookup =
            self.inner
                .config
                .lookup(registry)
                .map_err(|detail| RegistryError::DockerConfig {
                    path: self.inner.config_path.clone().unwrap_or_default(),
                    detail: format!("entry for {registry}: {detail}"),
                })?;
        let cred = match lookup {
            Lookup::Found(c) => c,
            Lookup::Helper { helper, server } => {
                let program = PathBuf::from(format!("docker-credential-{helper}"));
                match auth::run_helper(&program, &server, HELPER_TIMEOUT) {
                    Ok(found) => found.unwrap_or(Credential::Anonymous),
                    Err(detail) => {
                        return Err(RegistryError::CredentialHelper {
                            helper,
                            server,
                            detail,
                        });
                    }
                }
            }
        };
        creds.insert(registry.to_owned(), cred.clone());
        Ok(cred)
    }

    /// The `Authorization` value for `repo` under `challenge`; `fresh`
    /// bypasses the token cache (the registry refused the cached token).
    fn authorization(
        &self,
        repo: &Repo<'_>,
        challenge: Option<&Challenge>,
        scopes: &[String],
        fresh: bool,
    ) -> Result<Option<String>, RegistryError> {
        let cred = self.credential(repo.registry)?;
        if let Credential::RegistryToken(t) = &cred {
            return Ok(Some(format!("Bearer {t}")));
        }
        let Some(challenge) = challenge else {
            return Ok(None);
        };
        match challenge.scheme.as_str() {
            "basic" => Ok(match &cred {
                Credential::Basic { username, password } => {
                    Some(auth::basic_header(username, password))
                }
                _ => None,
            }),
            "bearer" => {
                let key = scopes.join(" ");
                if !fresh
                    && let Some(t) =
                        lock(&self.inner.tokens).get(repo.registry, &key, Instant::now())
                {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let answer = self.fetch_token(repo, challenge, scopes, &cred)?;
                let bearer = format!("Bearer {}", answer.token);
                lock(&self.inner.tokens).insert(
                    repo.registry,
                    &key,
                    answer.token,
                    answer.expires_in,
                    Instant::now(),
                );
                Ok(Some(bearer))
            }
            other => Err(RegistryError::Protocol {
                host: repo.registry.to_owned(),
                detail: format!(
                    "it asks for the {other:?} auth scheme; kiln speaks basic and bearer"
                ),
            }),
        }
    }

    /// Asks the token server of `challenge` for a token covering `scopes`:
    /// the OAuth2 refresh-token grant for an identity token (GET if the
    /// server lacks it), else GET with basic auth when there are credentials.
    fn fetch_token(
        &self,
        repo: &Repo<'_>,
        challenge: &Challenge,
        scopes: &[String],
        cred: &Credential,
    ) -> Result<TokenAnswer, RegistryError> {
        let host = repo.registry.to_owned();
        let realm = challenge
            .param("realm")
            .ok_or_else(|| RegistryError::Protocol {
                host: host.clone(),
                detail: "its Bearer challenge has no realm".to_owned(),
            })?;
        let service = challenge.param("service");
        // The token server is part of the registry's deployment: same TLS trust.
        let agent = &self.agent(&self.route(repo.registry, repo.direction()).tls, realm);
        let get = |basic: Option<String>| {
            let mut rb = agent.get(realm);
            if let Some(s) = service {
                rb = rb.query("service", s);
            }
            for s in scopes {
                rb = rb.query("scope", s);
            }
            authorized(rb, basic.as_deref()).call()
        };
        let failed = |detail: String| RegistryError::Token {
            host: host.clone(),
            realm: realm.to_owned(),
            detail,
        };
        let result = match cred {
            Credential::IdentityToken(refresh) => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.as_str()),
                    ("client_id", "kiln"),
                ];
                form.extend(service.map(|s| ("service", s)));
                let scope = scopes.join(" ");
                form.push(("scope", scope.as_str()));
                match agent.post(realm).send_form(form) {
                    Ok(r) if matches!(r.status().as_u16(), 404 | 405) => get(None),
                    other => other,
                }
            }
            Credential::Basic { username, password } => {
                get(Some(auth::basic_header(username, password)))
            }
            Credential::Anonymous | Credential::RegistryToken(_) => get(None),
        };
        let resp = result.map_err(|e| failed(e.to_string()))?;
        match resp.status().as_u16() {
            200 => {
                let body = resp
                    .into_body()
                    .into_with_config()
                    .limit(TOKEN_BODY_MAX)
                    .read_to_vec()
                    .map_err(|e| failed(e.to_string()))?;
                auth::parse_token_answer(&body).map_err(failed)
            }
            status @ (401 | 403) => Err(RegistryError::Unauthorized {
                host,
                repository: repo.repository.to_owned(),
                status,
                message: format!("token server said {}", error_message(resp)),
                config: self.config_hint(),
            }),
            status => Err(failed(format!("HTTP {status}: {}", error_message(resp)))),
        }
    }

    /// Sends one request to `repo`'s registry with authorization; `path` is
    /// `/v2/...` or an absolute URL the registry gave (an upload location).
    /// Credentials go only to the registry's own host. `call` builds and
    /// sends the request; it runs again after a 401 with fresh credentials.
    pub(super) fn send(
        &self,
        repo: &Repo<'_>,
        method: &'static str,
        path: &str,
        call: &SendFn<'_>,
    ) -> Result<Response, RegistryError> {
        let route = self.route(repo.registry, repo.direction());
        let ep = self.endpoint(repo.registry, &route)?;
        let url = absolute_url(&ep.base, path);
        let agent = self.agent(&route.tls, &url);
        let ours = url
            .strip_prefix(&ep.base)
            .is_some_and(|rest| rest.starts_with('/'));
        let transport = |source| RegistryError::Transport {
            method,
            url: url.clone(),
            source,
        };
        let mut scopes = vec![repo.scope()];
        let auth = if ours {
            self.authorization(repo, ep.challenge.as_ref(), &scopes, false)?
        } else {
            None
        };
        log::debug!("{method} {url}");
        let resp = call(&agent, &url, auth.as_deref()).map_err(transport)?;
        if resp.status().as_u16() != 401 || !ours {
            return Ok(resp);
        }
        let challenge = auth::pick_challenge(
            resp.headers()
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(auth::parse_challenges)
                .collect(),
        );
        let Some(challenge) = challenge else {
            return Ok(resp);
        };
        for s in challenge.param("scope").unwrap_or_default().split(' ') {
            if !s.is_empty() && !scopes.iter().any(|have| have == s) {
                scopes.push(s.to_owned());
            }
        }
        let retry = self.authorization(repo, Some(&challenge), &scopes, true)?;
        if retry.is_none() || retry == auth {
            return Ok(resp);
        }
        log::debug!("{method} {url} (again, with refreshed credentials)");
        call(&agent, &url, retry.as_deref()).map_err(transport)
    }

    /// The error for an unexpected response: 401/403 as unauthorized, 429
    /// (or 503 with `Retry-After`) as throttled with the wait it asks for,
    /// anything else with its status and the registry's message.
    pub(super) fn status_error(
        &self,
        repo: &Repo<'_>,
        method: &'static str,
        path: &str,
        resp: Response,
    ) -> RegistryError {
        let status = resp.status().as_u16();
        let retry_after = header(&resp, "retry-after").and_then(retry::parse_retry_after);
        let message = error_message(resp);
        match status {
            429 | 503 if status == 429 || retry_after.is_some() => RegistryError::Throttled {
                host: repo.registry.to_owned(),
                method,
                path: path.to_owned(),
                status,
                message,
                retry_after,
            },
            401 | 403 => RegistryError::Unauthorized {
                host: repo.registry.to_owned(),
                repository: repo.repository.to_owned(),
                status,
                message,
                config: self.config_hint(),
            },
            _ => RegistryError::Status {
                host: repo.registry.to_owned(),
                method,
                path: path.to_owned(),
                status,
                message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Registry>();
    }

    #[test]
    fn registry_errors_are_described_from_their_json() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}},{"code":"NAME_UNKNOWN","message":""}]}"#;
        assert_eq!(
            describe_error_body(body),
            "MANIFEST_UNKNOWN: manifest unknown; NAME_UNKNOWN"
        );
        assert_eq!(
            describe_error_body(b"  upstream timed out\n"),
            "upstream timed out"
        );
        assert_eq!(describe_error_body(b""), "no details");
        let long = "x".repeat(500);
        assert_eq!(
            describe_error_body(long.as_bytes()),
            format!("{}...", "x".repeat(200))
        );
        assert_eq!(describe_error_body(br#"{"errors":[]}"#), r#"{"errors":[]}"#);
    }

    #[test]
    fn upload_locations_are_made_absolute() {
        let base = "https://r.io:5000";
        assert_eq!(
            absolute_url(base, "/v2/a/blobs/uploads/u?_state=s"),
            "https://r.io:5000/v2/a/blobs/uploads/u?_state=s"
        );
        assert_eq!(
            absolute_url(base, "https://cdn.example/u"),
            "https://cdn.example/u"
        );
        assert_eq!(
            absolute_url(base, "v2/a/blobs/uploads/u"),
            "https://r.io:5000/v2/a/blobs/uploads/u"
        );
    }

    #[test]
    fn loopback_registries_may_use_plain_http() {
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "gcr.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[fe80::1]:5000",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
        let reg = Registry::new(RegistryOptions {
            insecure_registries: vec!["my.reg:5000".into(), "registry-1.docker.io".into()],
            docker_config_dir: Some(tempfile::tempdir().unwrap().path().to_owned()),
            ..RegistryOptions::default()
        })
        .unwrap();
        let plain = |r: &str| reg.route(r, Direction::Pull).plain_http;
        assert!(plain("my.reg:5000"));
        assert!(!plain("my.reg"));
        assert!(plain("index.docker.io"));
        assert!(!plain("gcr.io"));
    }

    #[test]
    fn a_malformed_docker_config_fails_early_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        let err = Registry::new(RegistryOptions {
            docker_config_dir: Some(dir.path().to_owned()),
            ..RegistryOptions::default()
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(&dir.path().join("config.json").display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn unreachable_registries_are_named_with_a_hint() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let reg = Registry::new(RegistryOptions {
            docker_config_dir: Some(tempfile::tempdir().unwrap().path().to_owned()),
            ..RegistryOptions::default()
        })
        .unwrap();
        let registry = format!("127.0.0.1:{port}");
        let repo = Repo {
            registry: &registry,
            repository: "a",
            push: false,
        };
        let err = reg
            .send(&repo, "GET", "/v2/a/tags/list", &|a, u, _| a.get(u).call())
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RegistryError::Unreachable { .. }), "{msg}");
        assert!(
            msg.contains(&registry) && msg.contains("--insecure-registry"),
            "{msg}"
        );
    }
}
