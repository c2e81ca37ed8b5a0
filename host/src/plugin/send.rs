//! Sends a plugin request that kiln's hooks allowed and signed: TCP, then
//! TLS that trusts Mozilla's roots and the CAs of `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` (as kiln's registry client does, so one mounted CA bundle
//! serves both), or that verifies nothing when the context asked for it
//! (`--git=insecure-skip-tls=true`), then HTTP/1.1.
//!
//! wasmtime-wasi-http's own sender trusts Mozilla's roots only, and a
//! private git server or object store behind a company CA is the common
//! case this exists for.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// A response and the future that drives its connection to the end.
pub(super) type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// Why a TLS handshake failed, kept for the build's error: the plugin only
/// learns that TLS failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFailure {
    /// `host:port`.
    pub server: String,
    /// rustls' reason, e.g. `invalid peer certificate: UnknownIssuer`.
    pub detail: String,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Sends `request` to `authority` (`host:port`, the port explicit).
pub(super) async fn send(
    mut request: http::Request<WasiBody>,
    authority: String,
    options: RequestOptions,
    verify: bool,
) -> Result<Sent, (Error, Option<TlsFailure>)> {
    let connect_timeout = options.connect_timeout.unwrap_or(Duration::from_secs(600));
    let first_byte_timeout = options
        .first_byte_timeout
        .unwrap_or(Duration::from_secs(600));
    let between_bytes = options
        .between_bytes_timeout
        .unwrap_or(Duration::from_secs(600))
        .max(Duration::from_nanos(1));
    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(&authority))
        .await
        .map_err(|_| (Error::ConnectionTimeout, None))?
        .map_err(|e| (Error::Connect(e), None))?;
    let io: Box<dyn Stream> = if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
        let name = server_name(&authority).map_err(|_| (Error::HttpRequestUriInvalid, None))?;
        let connector = tokio_rustls::TlsConnector::from(client_config(verify));
        let tls = tokio::time::timeout(connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| (Error::ConnectionTimeout, None))?
            .map_err(|e| {
                let failure = TlsFailure {
                    server: authority.clone(),
                    detail: e.to_string(),
                };
                (Error::Tls(e), Some(failure))
            })?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await
    .map_err(|_| (Error::ConnectionTimeout, None))?
    .map_err(|e| (Error::from(e), None))?;
    // On the wire the target is origin-form: scheme and authority only go
    // to proxies.
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| (Error::HttpRequestUriInvalid, None))?;
    *request.uri_mut() = target;

    let mut response = Box::pin(tokio::time::timeout(
        first_byte_timeout,
        sender.send_request(request),
    ));
    let mut conn = Some(conn);
    // hyper's connection must be polled for the request to make progress;
    // once the response head is in, the caller drives what is left of it.
    let head = poll_fn(|cx| {
        if let Poll::Ready(r) = response.as_mut().poll(cx) {
            return Poll::Ready(r.map_err(|_| Error::ConnectionReadTimeout));
        }
        if let Some(c) = conn.as_mut()
            && let Poll::Ready(done) = Pin::new(c).poll(cx)
        {
            conn = None;
            if let Err(e) = done {
                return Poll::Ready(Err(Error::from(e)));
            }
        }
        Poll::Pending
    })
    .await
    .map_err(|e| (e, None))?
    .map_err(|e| (Error::from(e), None))?;
    let mut gap = tokio::time::interval(between_bytes);
    gap.reset();
    let response = head.map(|incoming| TimedBody { incoming, gap }.boxed_unsync());
    let rest = async move {
        match conn {
            Some(c) => c.await.map_err(Error::from),
            None => Ok(()),
        }
    };
    Ok((response, Box::new(rest)))
}

/// A response body that fails when the server goes quiet for too long.
struct TimedBody {
    incoming: hyper::body::Incoming,
    gap: tokio::time::Interval,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.gap.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(self.gap.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

/// The name a certificate must carry: an IP address or a DNS name.
fn server_name(
    authority: &str,
) -> Result<ServerName<'static>, rustls::pki_types::InvalidDnsNameError> {
    if let Ok(addr) = authority.parse::<std::net::SocketAddr>() {
        return Ok(ServerName::from(addr.ip()));
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    Ok(ServerName::try_from(host)?.to_owned())
}

/// The client configuration, made once per process for each way of
/// verifying: reading a CA directory costs milliseconds.
fn client_config(verify: bool) -> Arc<ClientConfig> {
    static VERIFIED: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    static UNVERIFIED: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if verify {
        VERIFIED
            .get_or_init(|| {
                let mut roots = RootCertStore::empty();
                let public = webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned();
                let environment = crate::registry::environment_cas()
                    .into_iter()
                    .map(CertificateDer::from);
                roots.add_parsable_certificates(public.chain(environment));
                Arc::new(
                    ClientConfig::builder()
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                )
            })
            .clone()
    } else {
        UNVERIFIED
            .get_or_init(|| {
                let provider = rustls::crypto::ring::default_provider();
                let verifier = AnyServer(provider.signature_verification_algorithms);
                Arc::new(
                    ClientConfig::builder_with_provider(Arc::new(provider))
                        .with_safe_default_protocol_versions()
                        .expect("ring supports TLS 1.2 and 1.3")
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(verifier))
                        .with_no_client_auth(),
                )
            })
            .clone()
    }
}

/// Accepts any server certificate (`insecure-skip-tls`), but still checks
/// that the server holds the key of the certificate it showed.
#[derive(Debug)]
struct AnyServer(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_ip_addresses_or_dns_names_without_the_port() {
        assert_eq!(
            server_name("git.example.com:443").unwrap(),
            ServerName::try_from("git.example.com").unwrap()
        );
        assert_eq!(
            server_name("127.0.0.1:8443").unwrap(),
            ServerName::from(std::net::Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            server_name("[::1]:443").unwrap(),
            ServerName::from(std::net::Ipv6Addr::LOCALHOST)
        );
        assert!(server_name("bad name:443").is_err());
    }

    #[test]
    fn one_configuration_per_way_of_verifying() {
        assert!(Arc::ptr_eq(&client_config(true), &client_config(true)));
        assert!(!Arc::ptr_eq(&client_config(true), &client_config(false)));
    }
}
