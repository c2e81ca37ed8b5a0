//! S3: where an `s3://bucket/key` URL points, the credentials kaniko reads
//! (environment, then `~/.aws/credentials`), and Signature Version 4.

use super::{CloudError, hmac_sha256, uri_encode};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// The SHA-256 of an empty payload, which a GET sends.
pub const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// An access key, with the session token of temporary credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The `[profile]` section of an AWS shared credentials file.
pub fn parse_credentials_file(text: &str, profile: &str) -> Option<AwsCredentials> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = section.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = Some(v.trim().to_owned());
            match k.trim() {
                "aws_access_key_id" => id = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v,
                _ => {}
            }
        }
    }
    Some(AwsCredentials {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
    })
}

/// Credentials for `url`: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
/// (with `AWS_SESSION_TOKEN`), else the `AWS_PROFILE` (or `default`)
/// section of `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`.
pub fn credentials(
    url: &str,
    env: &dyn Fn(&str) -> Option<String>,
    read: &dyn Fn(&Path) -> std::io::Result<Option<String>>,
) -> Result<AwsCredentials, CloudError> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        return Ok(AwsCredentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: var("AWS_SESSION_TOKEN"),
        });
    }
    let file = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".aws/credentials")))
        .unwrap_or_else(|| PathBuf::from("/root/.aws/credentials"));
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let text = read(&file).map_err(|source| CloudError::AwsFile {
        path: file.clone(),
        source,
    })?;
    text.as_deref()
        .and_then(|t| parse_credentials_file(t, &profile))
        .ok_or_else(|| CloudError::NoAwsCredentials {
            url: url.to_owned(),
            profile,
            file: file.display().to_string(),
        })
}

/// Where an S3 object lives and how to sign for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Object {
    /// The full URL to GET.
    pub url: String,
    /// The `Host` header value.
    pub host: String,
    /// The URI-encoded path, as signed.
    pub path: String,
    /// The signing region.
    pub region: String,
}

/// Resolves `s3://bucket/key` with `S3_ENDPOINT` (an S3-compatible
/// server, `http://` allowed), `S3_FORCE_PATH_STYLE` and `AWS_REGION`
/// (or `AWS_DEFAULT_REGION`; default `us-east-1`).
pub fn s3_object(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<S3Object, CloudError> {
    let bad = |reason: &str| CloudError::Url {
        what: "S3 URL",
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("it must start with s3://"))?;
    let (bucket, key) = rest
        .split_once('/')
        .ok_or_else(|| bad("name the object: s3://bucket/path/context.tar.gz"))?;
    if bucket.is_empty() || key.is_empty() {
        return Err(bad(
            "name the bucket and the object: s3://bucket/path/context.tar.gz",
        ));
    }
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let path_style = var("S3_FORCE_PATH_STYLE").is_some_and(|v| v == "true" || v == "1");
    let endpoint =
        var("S3_ENDPOINT").unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let (scheme, authority) = match endpoint.split_once("://") {
        Some((s @ ("http" | "https"), a)) => (s, a.trim_end_matches('/')),
        _ => {
            return Err(CloudError::Url {
                what: "S3_ENDPOINT",
                url: endpoint.clone(),
                reason: "it must be an http:// or https:// URL".into(),
            });
        }
    };
    let key = uri_encode(key, true);
    let (host, path) = if path_style {
        (
            authority.to_owned(),
            format!("/{}/{key}", uri_encode(bucket, false)),
        )
    } else {
        (format!("{bucket}.{authority}"), format!("/{key}"))
    };
    Ok(S3Object {
        url: format!("{scheme}://{host}{path}"),
        host,
        path,
        region,
    })
}

/// A request to sign: the parts SigV4 covers.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The URI-encoded path.
    pub path: &'a str,
    /// Query parameters, not yet encoded.
    pub query: &'a [(&'a str, &'a str)],
    /// Headers to sign besides `host`, `x-amz-date`, `x-amz-content-sha256`
    /// and the session token, which are added.
    pub headers: &'a [(&'a str, &'a str)],
    pub host: &'a str,
    /// Hex SHA-256 of the body, or `UNSIGNED-PAYLOAD`.
    pub payload_sha256: &'a str,
}

/// The headers that sign `req` for `service` in `region` at `amz_date`
/// (`YYYYMMDDTHHMMSSZ`): `x-amz-date`, `x-amz-content-sha256`, the session
/// token if any, and `authorization`.
pub fn sign_v4(
    req: &Request<'_>,
    creds: &AwsCredentials,
    region: &str,
    service: &str,
    amz_date: &str,
) -> Vec<(String, String)> {
    let date = &amz_date[..amz_date.len().min(8)];
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    headers.push(("host".into(), req.host.to_owned()));
    headers.push(("x-amz-content-sha256".into(), req.payload_sha256.to_owned()));
    headers.push(("x-amz-date".into(), amz_date.to_owned()));
    if let Some(token) = &creds.session_token {
        headers.push(("x-amz-security-token".into(), token.clone()));
    }
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        req.method,
        req.path,
        query.join("&"),
        req.payload_sha256
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac_sha256(
        format!("AWS4{}", creds.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [region, service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
    let mut out: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(k, _)| k.starts_with("x-amz-"))
        .collect();
    out.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_creds() -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    /// The "GET Object" example of the S3 SigV4 documentation.
    #[test]
    fn signs_the_documented_get_object_example() {
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &[("Range", "bytes=0-9")],
            host: "examplebucket.s3.amazonaws.com",
            payload_sha256: EMPTY_PAYLOAD_SHA256,
        };
        let headers = sign_v4(
            &req,
            &example_creds(),
            "us-east-1",
            "s3",
            "20130524T000000Z",
        );
        let auth = &headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// The "GET Bucket Lifecycle" example: a query parameter without value.
    #[test]
    fn signs_the_documented_query_example() {
        let req = Request {
            method: "GET",
            path: "/",
            query: &[("lifecycle", "")],
            headers: &[],
            host: "examplebucket.s3.amazonaws.com",
            payload_sha256: EMPTY_PAYLOAD_SHA256,
        };
        let headers = sign_v4(
            &req,
            &example_creds(),
            "us-east-1",
            "s3",
            "20130524T000000Z",
        );
        let auth = &headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert!(
            auth.ends_with(
                "Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
            ),
            "{auth}"
        );
    }

    #[test]
    fn session_tokens_are_signed_and_credentials_never_printed() {
        let mut creds = example_creds();
        creds.session_token = Some("TOKEN".into());
        let req = Request {
            method: "GET",
            path: "/k",
            query: &[],
            headers: &[],
            host: "b.s3.amazonaws.com",
            payload_sha256: EMPTY_PAYLOAD_SHA256,
        };
        let headers = sign_v4(&req, &creds, "eu-west-1", "s3", "20240101T000000Z");
        assert!(headers.contains(&("x-amz-security-token".into(), "TOKEN".into())));
        let auth = &headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert!(
            auth.contains(
                "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
            )
        );
        let shown = format!("{creds:?}");
        assert!(
            !shown.contains("wJalr") && !shown.contains("TOKEN"),
            "{shown}"
        );
    }

    #[test]
    fn s3_urls_resolve_to_virtual_hosts_or_paths() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let aws = s3_object(
            "s3://bkt/ctx/a b.tar.gz",
            &env(&[("AWS_REGION", "eu-west-1")]),
        )
        .unwrap();
        assert_eq!(
            aws.url,
            "https://bkt.s3.eu-west-1.amazonaws.com/ctx/a%20b.tar.gz"
        );
        assert_eq!(aws.host, "bkt.s3.eu-west-1.amazonaws.com");
        assert_eq!(aws.region, "eu-west-1");
        let moto = s3_object(
            "s3://bkt/ctx.tgz",
            &env(&[
                ("S3_ENDPOINT", "http://127.0.0.1:5000/"),
                ("S3_FORCE_PATH_STYLE", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(moto.url, "http://127.0.0.1:5000/bkt/ctx.tgz");
        assert_eq!(
            (moto.path.as_str(), moto.region.as_str()),
            ("/bkt/ctx.tgz", "us-east-1")
        );
        for bad in ["s3://bkt", "s3:///key", "gs://b/k"] {
            assert!(s3_object(bad, &env(&[])).is_err(), "{bad}");
        }
        let err = s3_object("s3://b/k", &env(&[("S3_ENDPOINT", "ftp://x")])).unwrap_err();
        assert!(err.to_string().contains("S3_ENDPOINT"), "{err}");
    }

    #[test]
    fn credentials_come_from_env_then_the_profile() {
        let file = "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\
                    [ci]\naws_access_key_id=C\naws_secret_access_key=CS\naws_session_token=T\n";
        let read = |_: &Path| Ok(Some(file.to_owned()));
        let env_with = |vars: Vec<(&'static str, &'static str)>| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let from_env = credentials(
            "s3://b/k",
            &env_with(vec![
                ("AWS_ACCESS_KEY_ID", "E"),
                ("AWS_SECRET_ACCESS_KEY", "ES"),
            ]),
            &read,
        )
        .unwrap();
        assert_eq!(from_env.access_key_id, "E");
        let profile =
            credentials("s3://b/k", &env_with(vec![("AWS_PROFILE", "ci")]), &read).unwrap();
        assert_eq!(
            (
                profile.access_key_id.as_str(),
                profile.session_token.as_deref()
            ),
            ("C", Some("T"))
        );
        let none = credentials("s3://b/k", &env_with(vec![("AWS_PROFILE", "x")]), &|_| {
            Ok(None)
        })
        .unwrap_err();
        assert!(none.to_string().contains("AWS_ACCESS_KEY_ID"), "{none}");
    }
}
