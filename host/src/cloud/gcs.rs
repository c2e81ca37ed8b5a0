//! Google Cloud Storage: where a `gs://bucket/path` URL points, and the
//! OAuth assertion a service account (`GOOGLE_APPLICATION_CREDENTIALS`)
//! signs to get an access token. Emulators (`STORAGE_EMULATOR_HOST`) take
//! no credentials.

use super::{CloudError, uri_encode};
use base64::Engine as _;

/// The object a `gs://bucket` or `gs://bucket/dir/` URL means.
pub const DEFAULT_OBJECT: &str = "context.tar.gz";
/// The access a context needs.
pub const READ_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";

/// A GCS object and the URL that downloads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub bucket: String,
    pub name: String,
    /// The JSON API media download URL.
    pub url: String,
    /// True when the endpoint is an emulator, which needs no token.
    pub emulator: bool,
}

/// Resolves `gs://bucket[/path]` against `STORAGE_EMULATOR_HOST` (a host
/// and port, or a URL) or the public endpoint.
pub fn object(url: &str, emulator_host: Option<&str>) -> Result<Object, CloudError> {
    let rest = url.strip_prefix("gs://").ok_or_else(|| CloudError::Url {
        what: "GCS URL",
        url: url.to_owned(),
        reason: "it must start with gs://".into(),
    })?;
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(CloudError::Url {
            what: "GCS URL",
            url: url.to_owned(),
            reason: "name the bucket: gs://bucket/path/context.tar.gz".into(),
        });
    }
    let name = if path.is_empty() || path.ends_with('/') {
        format!("{path}{DEFAULT_OBJECT}")
    } else {
        path.to_owned()
    };
    let emulator = emulator_host.filter(|h| !h.is_empty());
    let endpoint = match emulator {
        Some(h) if h.contains("://") => h.trim_end_matches('/').to_owned(),
        Some(h) => format!("http://{}", h.trim_end_matches('/')),
        None => "https://storage.googleapis.com".to_owned(),
    };
    Ok(Object {
        url: format!(
            "{endpoint}/storage/v1/b/{}/o/{}?alt=media",
            uri_encode(bucket, false),
            uri_encode(&name, false)
        ),
        bucket: bucket.to_owned(),
        name,
        emulator: emulator.is_some(),
    })
}

/// The parts of a service-account key file kiln uses.
#[derive(Clone, serde::Deserialize)]
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key: String,
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key", &"<redacted>")
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

impl ServiceAccount {
    /// Parses a key file's JSON; `file` names it in errors.
    pub fn parse(json: &[u8], file: &str) -> Result<ServiceAccount, CloudError> {
        serde_json::from_slice(json).map_err(|e| CloudError::Url {
            what: "service-account key file",
            url: file.to_owned(),
            reason: format!(
                "{e}; GOOGLE_APPLICATION_CREDENTIALS must name a service account's JSON key"
            ),
        })
    }

    /// The signed JWT that the token endpoint exchanges for an access token
    /// valid one hour from `now` (seconds since the epoch).
    pub fn assertion(&self, now: u64) -> Result<String, CloudError> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": READ_SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let claims = b64.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let bad_key = |reason: String| CloudError::Url {
            what: "service-account private key",
            url: self.client_email.clone(),
            reason,
        };
        let der = pem_pkcs8(&self.private_key).ok_or_else(|| {
            bad_key("private_key is not a PEM \"PRIVATE KEY\" (PKCS#8) block".into())
        })?;
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| bad_key(format!("not an RSA key: {e}")))?;
        let mut signature = vec![0u8; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature,
        )
        .map_err(|e| bad_key(format!("signing failed: {e}")))?;
        Ok(format!("{signing_input}.{}", b64.encode(signature)))
    }

    /// The form body that exchanges `assertion` for a token.
    pub fn token_request(assertion: &str) -> String {
        format!(
            "grant_type={}&assertion={assertion}",
            uri_encode("urn:ietf:params:oauth:grant-type:jwt-bearer", false)
        )
    }
}

/// The DER inside a PEM `PRIVATE KEY` block.
fn pem_pkcs8(pem: &str) -> Option<Vec<u8>> {
    let body = pem
        .split("-----BEGIN PRIVATE KEY-----")
        .nth(1)?
        .split("-----END PRIVATE KEY-----")
        .next()?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("testdata/service-account-key.pem");

    #[test]
    fn urls_default_the_object_and_honour_emulators() {
        let o = object("gs://bkt", None).unwrap();
        assert_eq!(o.name, "context.tar.gz");
        assert_eq!(
            o.url,
            "https://storage.googleapis.com/storage/v1/b/bkt/o/context.tar.gz?alt=media"
        );
        assert!(!o.emulator);
        let dir = object("gs://bkt/a b/", Some("127.0.0.1:4443")).unwrap();
        assert_eq!(dir.name, "a b/context.tar.gz");
        assert_eq!(
            dir.url,
            "http://127.0.0.1:4443/storage/v1/b/bkt/o/a%20b%2Fcontext.tar.gz?alt=media"
        );
        assert!(dir.emulator);
        let full = object("gs://bkt/x.tgz", Some("https://gcs.local/")).unwrap();
        assert_eq!(
            full.url,
            "https://gcs.local/storage/v1/b/bkt/o/x.tgz?alt=media"
        );
        assert!(object("gs:///x", None).is_err());
    }

    #[test]
    fn the_assertion_is_a_jwt_the_public_key_verifies() {
        let json = serde_json::json!({
            "type": "service_account",
            "client_email": "kiln@project.iam.gserviceaccount.com",
            "private_key": KEY,
        });
        let sa = ServiceAccount::parse(json.to_string().as_bytes(), "key.json").unwrap();
        assert_eq!(sa.token_uri, "https://oauth2.googleapis.com/token");
        assert!(!format!("{sa:?}").contains("PRIVATE"));
        let jwt = sa.assertion(1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "kiln@project.iam.gserviceaccount.com");
        assert_eq!(claims["scope"], READ_SCOPE);
        assert_eq!(claims["exp"], 1_700_003_600);
        let der = pem_pkcs8(KEY).unwrap();
        let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            ring::signature::KeyPair::public_key(&pair)
                .as_ref()
                .to_vec(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        public
            .verify(signed.as_bytes(), &b64.decode(parts[2]).unwrap())
            .unwrap();
        assert!(
            public
                .verify(b"tampered", &b64.decode(parts[2]).unwrap())
                .is_err()
        );
    }

    #[test]
    fn bad_keys_are_named_without_their_content() {
        let sa = ServiceAccount {
            client_email: "x@y".into(),
            private_key: "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----"
                .into(),
            token_uri: default_token_uri(),
        };
        let err = sa.assertion(0).unwrap_err().to_string();
        assert!(err.contains("PKCS#8") && !err.contains("AAAA"), "{err}");
        assert!(ServiceAccount::parse(b"{}", "k.json").is_err());
        assert_eq!(
            ServiceAccount::token_request("a.b.c"),
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c"
        );
    }
}
