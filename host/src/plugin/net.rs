//! The network of one plugin call: `wasi:http` requests reach only the
//! hosts the call's policy names, and the host adds credentials to them on
//! their way out, so no secret enters the plugin.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::send::{self, TlsFailure};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Adds credentials to an outgoing request.
pub trait Signer: Send + Sync {
    /// Signs `request` (method, URI and headers; the body is never signed).
    fn sign(&self, request: &mut http::request::Parts) -> Result<(), String>;
}

/// Where one plugin call may connect, and who signs its requests.
#[derive(Clone, Default)]
pub struct NetPolicy {
    /// `host:port` authorities, ports explicit.
    pub allowed: Vec<String>,
    /// Signs every allowed request.
    pub signer: Option<Arc<dyn Signer>>,
    /// Accept any TLS certificate (`--git=insecure-skip-tls=true`).
    pub skip_tls_verify: bool,
}

impl fmt::Debug for NetPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetPolicy")
            .field("allowed", &self.allowed)
            .field("signed", &self.signer.is_some())
            .field("skip_tls_verify", &self.skip_tls_verify)
            .finish()
    }
}

/// The `host:port` of an absolute URI, the port made explicit.
pub fn authority(uri: &http::Uri) -> Option<String> {
    let host = uri.host()?.to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    Some(format!("{host}:{port}"))
}

impl NetPolicy {
    /// A policy that allows the hosts of `urls`.
    pub fn for_urls<'a>(urls: impl IntoIterator<Item = &'a str>) -> NetPolicy {
        let mut allowed: Vec<String> = urls
            .into_iter()
            .filter_map(|u| authority(&u.parse().ok()?))
            .collect();
        allowed.sort();
        allowed.dedup();
        NetPolicy {
            allowed,
            ..NetPolicy::default()
        }
    }

    /// True if `authority` (`host:port`) may be reached.
    pub fn allows(&self, authority: &str) -> bool {
        self.allowed.iter().any(|a| a == authority)
    }
}

/// How long a plugin's request may wait to connect, for the first byte
/// (a git server packs before it answers), and between bytes, unless the
/// plugin asks for other limits.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);
const BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(120);

/// What the network did to a call that the plugin cannot tell the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum NetFault {
    /// The plugin tried this `host:port`, which its policy does not allow.
    Refused(String),
    /// A server's certificate was not accepted.
    Untrusted(TlsFailure),
}

/// The `wasi:http` hooks of one call.
pub(super) struct NetHooks {
    pub policy: NetPolicy,
    /// What went wrong underneath the plugin, first first, for the error.
    pub faults: Arc<Mutex<Vec<NetFault>>>,
}

type SendFuture = Box<dyn Future<Output = Result<send::Sent, Error>> + Send>;

impl WasiHttpHooks for NetHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let target = authority(request.uri()).unwrap_or_else(|| request.uri().to_string());
        if !self.policy.allows(&target) {
            log::debug!(
                "refused a plugin request to {target}: allowed {:?}",
                self.policy.allowed
            );
            self.faults
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(NetFault::Refused(target));
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let (mut parts, body) = request.into_parts();
        if let Some(signer) = &self.policy.signer
            && let Err(message) = signer.sign(&mut parts)
        {
            return Box::new(async move { Err(Error::InternalError(Some(message))) });
        }
        let request = http::Request::from_parts(parts, body);
        let options = options.unwrap_or(RequestOptions {
            connect_timeout: Some(CONNECT_TIMEOUT),
            first_byte_timeout: Some(FIRST_BYTE_TIMEOUT),
            between_bytes_timeout: Some(BETWEEN_BYTES_TIMEOUT),
        });
        let (verify, faults) = (!self.policy.skip_tls_verify, Arc::clone(&self.faults));
        Box::new(async move {
            send::send(request, target, options, verify)
                .await
                .map_err(|(error, failure)| {
                    if let Some(failure) = failure {
                        faults
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(NetFault::Untrusted(failure));
                    }
                    error
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_carry_explicit_ports_and_policies_match_them_exactly() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert_eq!(
            authority(&uri("https://Bucket.S3.example.com/k")).as_deref(),
            Some("bucket.s3.example.com:443")
        );
        assert_eq!(
            authority(&uri("http://127.0.0.1:9000/b/k")).as_deref(),
            Some("127.0.0.1:9000")
        );
        assert_eq!(authority(&uri("http://h/x")).as_deref(), Some("h:80"));
        let policy = NetPolicy::for_urls(["http://127.0.0.1:9000/b/k", "https://h/x"]);
        assert!(policy.allows("127.0.0.1:9000"));
        assert!(policy.allows("h:443"));
        assert!(!policy.allows("h:80"));
        assert!(!policy.allows("127.0.0.1:9001"));
        assert!(!policy.allows("evil.example:443"));
    }
}
