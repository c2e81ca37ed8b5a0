//! A token issuer for the registry's `auth: token` mode: the Docker token
//! protocol (`GET /token` with basic credentials) and its OAuth2 form
//! (`POST /token` with a password or a refresh token), issuing ES256 JWTs
//! that `docker-registry` verifies against a certificate made at start.

use crate::wire::{self, Head};
use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::PublicKeyData;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tempfile::TempDir;

/// The `service` the registry names in its challenge and expects as `aud`.
pub const SERVICE: &str = "kiln-test";

/// The `iss` of every token; the registry trusts only this issuer.
pub const ISSUER: &str = "kiln-test-issuer";

/// How long an access token is valid.
const TOKEN_TTL: Duration = Duration::from_secs(300);

/// One request the issuer answered, for tests that check what a client asked.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `basic` (GET with credentials), `anonymous` (GET without), or the
    /// OAuth2 `grant_type` of a POST (`password`, `refresh_token`).
    pub grant: String,
    /// The user the credentials named, when they were valid.
    pub user: Option<String>,
    /// Every requested scope, e.g. `repository:a/b:pull,push`.
    pub scopes: Vec<String>,
    /// The HTTP status of the answer.
    pub status: u16,
}

/// A running token issuer on 127.0.0.1; stopped and joined on drop.
pub struct TokenIssuer {
    addr: SocketAddr,
    dir: TempDir,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    signer: Signer,
    users: Vec<(String, String)>,
    /// `(refresh token, user)`: one per user, made at start.
    refresh_tokens: Vec<(String, String)>,
    log: Mutex<Vec<TokenRequest>>,
    next_id: AtomicU64,
}

impl TokenIssuer {
    /// Starts an issuer that accepts the `(user, password)` pairs in `users`.
    pub fn start(users: &[(&str, &str)]) -> Result<TokenIssuer> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-token-issuer-")
            .tempdir()?;
        let key = rcgen::KeyPair::generate().context("cannot generate the issuer's key")?;
        let cert = rcgen::CertificateParams::new(vec![ISSUER.to_owned()])?
            .self_signed(&key)
            .context("cannot make the issuer's certificate")?;
        fs::write(dir.path().join("cert.pem"), cert.pem())?;
        let signer = Signer::new(&key.serialize_der(), &key.subject_public_key_info())?;
        let refresh_tokens = users
            .iter()
            .enumerate()
            .map(|(i, (user, _))| (format!("refresh-{i}-{}", signer.kid), (*user).to_owned()))
            .collect();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            signer,
            users: users
                .iter()
                .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
                .collect(),
            refresh_tokens,
            log: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let worker = Arc::clone(&shared);
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if worker.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let worker = Arc::clone(&worker);
                    // A client that hangs up early only affects its own request.
                    thread::spawn(move || {
                        let _ = serve(stream, &worker);
                    });
                }
            }
        });
        Ok(TokenIssuer {
            addr,
            dir,
            shared,
            thread: Some(thread),
        })
    }

    /// The `realm` of the registry's challenge: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The PEM certificate whose key signs the tokens (the registry's
    /// `rootcertbundle`).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The `auth:` section of a registry config that trusts this issuer.
    pub fn registry_auth_config(&self) -> String {
        format!(
            "auth: {{token: {{realm: {}, service: {SERVICE}, issuer: {ISSUER}, rootcertbundle: {}}}}}\n",
            self.realm(),
            self.cert_path().display()
        )
    }

    /// The OAuth2 refresh token of `user` (what `docker login` stores as
    /// `identitytoken`), or `None` for an unknown user.
    pub fn refresh_token(&self, user: &str) -> Option<String> {
        self.shared
            .refresh_tokens
            .iter()
            .find(|(_, u)| u == user)
            .map(|(token, _)| token.clone())
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Signs JWTs with ES256 under the key ID that distribution derives from the
/// public key (libtrust's format), so the registry finds the key in its
/// `rootcertbundle`.
struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl Signer {
    fn new(pkcs8: &[u8], spki_der: &[u8]) -> Result<Signer> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| anyhow::anyhow!("cannot load the issuer's P-256 key: {e}"))?;
        Ok(Signer {
            key,
            kid: libtrust_key_id(spki_der),
            rng,
        })
    }

    fn sign(&self, claims: &Value) -> Result<String> {
        let header = json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot sign a token: {e}"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// libtrust's key ID: the first 240 bits of the SHA-256 of the DER
/// SubjectPublicKeyInfo, in base32 (RFC 4648, 48 characters), as 12 groups
/// of 4 joined by `:`.
fn libtrust_key_id(spki_der: &[u8]) -> String {
    let hash = Sha256::digest(spki_der);
    let encoded = base32(&hash[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|group| String::from_utf8_lossy(group).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 4648 base32 without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The `access` claim granting every action a scope asks for.
fn access_claim(scopes: &[String]) -> Vec<Value> {
    scopes
        .iter()
        .flat_map(|scope| scope.split(' '))
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
            Some(json!({"type": kind, "name": name, "actions": actions}))
        })
        .collect()
}

fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let Some(head) = Head::read(&mut reader)? else {
        return Ok(());
    };
    let (method, target) = head.request_line();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/token" {
        return wire::respond(
            &mut out,
            404,
            "Not Found",
            &[],
            "text/plain",
            b"no such path\n",
        );
    }
    let answer = match method {
        "GET" => answer_get(&head, &wire::form_pairs(query), shared),
        "POST" => {
            let mut body = Vec::new();
            let length = match head.request_body() {
                wire::Body::Length(n) => n,
                wire::Body::Chunked => {
                    return wire::respond(
                        &mut out,
                        411,
                        "Length Required",
                        &[],
                        "text/plain",
                        b"send a Content-Length\n",
                    );
                }
            };
            (&mut reader).take(length).read_to_end(&mut body)?;
            answer_post(&wire::form_pairs(&String::from_utf8_lossy(&body)), shared)
        }
        _ => Answer::error(405, "GET or POST only", "unsupported"),
    };
    shared
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(answer.request.clone());
    let reason = match answer.request.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Error",
    };
    let extra: &[(&str, &str)] = if answer.request.status == 401 {
        &[("WWW-Authenticate", "Basic realm=\"kiln-test-issuer\"")]
    } else {
        &[]
    };
    wire::respond(
        &mut out,
        answer.request.status,
        reason,
        extra,
        "application/json",
        &serde_json::to_vec(&answer.body).unwrap_or_default(),
    )
}

struct Answer {
    request: TokenRequest,
    body: Value,
}

impl Answer {
    fn error(status: u16, message: &str, grant: &str) -> Answer {
        Answer {
            request: TokenRequest {
                grant: grant.to_owned(),
                user: None,
                scopes: Vec::new(),
                status,
            },
            body: json!({
                "errors": [{"code": "UNAUTHORIZED", "message": message}],
                "error": "invalid_grant",
                "error_description": message,
            }),
        }
    }
}

fn values(params: &[(String, String)], key: &str) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

fn answer_get(head: &Head, params: &[(String, String)], shared: &Shared) -> Answer {
    let scopes = values(params, "scope");
    if values(params, "service") != [SERVICE] {
        return Answer::error(400, "service must be kiln-test", "basic");
    }
    let (grant, user) = match head.header("Authorization") {
        None => ("anonymous", None),
        Some(auth) => match basic_user(auth, shared) {
            Some(user) => ("basic", Some(user)),
            None => return Answer::error(401, "invalid username or password", "basic"),
        },
    };
    let offline = values(params, "offline_token") == ["true"];
    issue(shared, grant, user, scopes, offline)
}

fn answer_post(params: &[(String, String)], shared: &Shared) -> Answer {
    let grant = values(params, "grant_type").concat();
    let scopes: Vec<String> = values(params, "scope");
    if values(params, "service") != [SERVICE] {
        return Answer::error(400, "service must be kiln-test", &grant);
    }
    let user = match grant.as_str() {
        "password" => {
            let user = values(params, "username").concat();
            let password = values(params, "password").concat();
            shared
                .users
                .iter()
                .any(|(u, p)| *u == user && *p == password)
                .then_some(user)
        }
        "refresh_token" => {
            let token = values(params, "refresh_token").concat();
            shared
                .refresh_tokens
                .iter()
                .find(|(t, _)| *t == token)
                .map(|(_, user)| user.clone())
        }
        _ => return Answer::error(400, "grant_type must be password or refresh_token", &grant),
    };
    match user {
        Some(user) => issue(shared, &grant, Some(user), scopes, true),
        None => Answer::error(400, "invalid credentials or refresh token", &grant),
    }
}

/// The user named by valid `Basic` credentials.
fn basic_user(authorization: &str, shared: &Shared) -> Option<String> {
    let encoded = authorization.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    shared
        .users
        .iter()
        .any(|(u, p)| u == user && p == password)
        .then(|| user.to_owned())
}

fn issue(
    shared: &Shared,
    grant: &str,
    user: Option<String>,
    scopes: Vec<String>,
    with_refresh: bool,
) -> Answer {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Anonymous clients get a valid token that grants nothing, as Docker
    // Hub does for private repositories: the registry then answers 401.
    let access = if user.is_some() {
        access_claim(&scopes)
    } else {
        Vec::new()
    };
    let claims = json!({
        "iss": ISSUER,
        "sub": user.clone().unwrap_or_default(),
        "aud": SERVICE,
        "exp": now + TOKEN_TTL.as_secs(),
        "nbf": now.saturating_sub(1),
        "iat": now,
        "jti": format!("kiln-test-{}", shared.next_id.fetch_add(1, Ordering::SeqCst)),
        "access": access,
    });
    let token = match shared.signer.sign(&claims) {
        Ok(token) => token,
        Err(e) => return Answer::error(500, &e.to_string(), grant),
    };
    let mut body = json!({
        "token": token,
        "access_token": token,
        "expires_in": TOKEN_TTL.as_secs(),
        "scope": scopes.join(" "),
    });
    let refresh = user.as_ref().filter(|_| with_refresh).and_then(|user| {
        shared
            .refresh_tokens
            .iter()
            .find(|(_, u)| u == user)
            .map(|(t, _)| t.clone())
    });
    if let Some(refresh) = refresh {
        body["refresh_token"] = json!(refresh);
    }
    Answer {
        request: TokenRequest {
            grant: grant.to_owned(),
            user,
            scopes,
            status: 200,
        },
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fo"), "MZXQ");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn key_id_has_twelve_groups_of_four() {
        let kid = libtrust_key_id(b"any der");
        let groups: Vec<&str> = kid.split(':').collect();
        assert_eq!(groups.len(), 12, "{kid}");
        assert!(groups.iter().all(|g| g.len() == 4), "{kid}");
    }

    #[test]
    fn access_claim_splits_type_name_and_actions() {
        let access = access_claim(&[
            "repository:a/b:pull,push".to_owned(),
            "repository:127.0.0.1:5000/x:pull repository:c:pull".to_owned(),
        ]);
        assert_eq!(
            access,
            vec![
                json!({"type": "repository", "name": "a/b", "actions": ["pull", "push"]}),
                json!({"type": "repository", "name": "127.0.0.1:5000/x", "actions": ["pull"]}),
                json!({"type": "repository", "name": "c", "actions": ["pull"]}),
            ]
        );
    }
}
