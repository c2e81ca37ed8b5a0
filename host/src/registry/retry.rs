//! Retries with exponential backoff and jitter, as a wrapper around any
//! registry operation: the decisions (what is worth retrying, how long to
//! wait) are pure; [`Registry::with_retry`] sleeps and logs.

use super::client::{Registry, RegistryError};
use super::tls::Direction;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// First backoff delay.
const BASE: Duration = Duration::from_millis(100);
/// Longest backoff delay.
const CAP: Duration = Duration::from_secs(5);
/// Longest wait a `Retry-After` header can ask for; a registry asking for
/// more is overloaded beyond what a build should sit through per attempt.
pub(super) const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// Why an error is worth another attempt, and how long the server asked us to wait.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Transient {
    /// For the log line: `503 Service Unavailable`, `connection reset by peer`.
    pub reason: String,
    /// The server's `Retry-After`, capped.
    pub wait: Option<Duration>,
}

/// Whether an HTTP status is transient: 408, 429 and the 5xx that mean
/// "not now" (501 and 505 say the server never will).
pub(super) fn transient_status(status: u16) -> bool {
    matches!(status, 408 | 429) || ((500..600).contains(&status) && !matches!(status, 501 | 505))
}

/// `Retry-After` in seconds, capped at [`RETRY_AFTER_CAP`]. HTTP dates are
/// not honoured (registries send seconds); the backoff applies instead.
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(RETRY_AFTER_CAP))
}

/// `503 Service Unavailable`.
pub(super) fn status_text(status: u16) -> String {
    match ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

/// Whether a transport failure may heal: connection errors, resets and
/// timeouts do; TLS, URL and protocol-setup errors do not.
fn transient_transport(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_)
    )
}

/// Whether `e` is worth another attempt, and why.
pub(super) fn assess(e: &RegistryError) -> Option<Transient> {
    let transient = |reason: String| Some(Transient { reason, wait: None });
    match e {
        RegistryError::Transport { source, .. } if transient_transport(source) => {
            transient(source.to_string())
        }
        RegistryError::Unreachable { detail, .. } => transient(detail.clone()),
        RegistryError::Read { source, .. } => transient(source.to_string()),
        RegistryError::Status { status, .. } if transient_status(*status) => {
            transient(status_text(*status))
        }
        RegistryError::Throttled {
            status,
            retry_after,
            ..
        } => Some(Transient {
            reason: status_text(*status),
            wait: *retry_after,
        }),
        _ => None,
    }
}

/// The delay before retry number `retry` (1 for the first): 100 ms doubling
/// up to 5 s, of which a random half is kept (`jitter` in [0, 1)) so that
/// clients failing together do not come back together.
pub(super) fn backoff(retry: u32, jitter: f64) -> Duration {
    let full = BASE
        .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
        .min(CAP);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A number in [0, 1) from the process's random hasher keys; good enough to
/// spread retries, and no extra dependency.
fn jitter() -> f64 {
    let bits = RandomState::new().hash_one(std::time::Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

impl Registry {
    /// Runs `op` until it succeeds, fails for good, or the retries of
    /// `direction` (`push_retries`/`pull_retries`) are spent. Transient
    /// failures (connection errors, resets, timeouts, 408, 429, 5xx) are
    /// retried after a backoff, or after `Retry-After` when the registry
    /// sent one; each retry is logged as a warning naming `what`
    /// (e.g. `GET r.io/v2/a/blobs/sha256:...`). `op` must be safe to repeat.
    pub fn with_retry<T>(
        &self,
        direction: Direction,
        what: &str,
        mut op: impl FnMut() -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let retries = self.retries(direction);
        let mut retry = 0;
        loop {
            let err = match op() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(t) = assess(&err).filter(|_| retry < retries) else {
                return Err(err);
            };
            retry += 1;
            let delay = t.wait.unwrap_or_else(|| backoff(retry, jitter()));
            log::warn!(
                "Retrying {what}: {} (attempt {} of {})",
                t.reason,
                retry + 1,
                retries + 1
            );
            std::thread::sleep(delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_to_a_5s_cap_with_half_jitter() {
        assert_eq!(backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(2, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(3, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(6, 0.0), Duration::from_millis(1600));
        assert_eq!(backoff(7, 0.0), Duration::from_millis(2500));
        assert_eq!(backoff(8, 0.0), Duration::from_millis(2500));
        assert_eq!(backoff(40, 1.0), CAP);
        assert_eq!(backoff(u32::MAX, 0.5), CAP.mul_f64(0.75));
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(transient_status(s), "{s}");
        }
        for s in [200, 201, 400, 401, 403, 404, 405, 409, 416, 501, 505] {
            assert!(!transient_status(s), "{s}");
        }
    }

    #[test]
    fn retry_after_is_seconds_and_capped() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400"), Some(RETRY_AFTER_CAP));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    fn status(status: u16) -> RegistryError {
        RegistryError::Status {
            host: "r.io".into(),
            method: "GET",
            path: "/v2/a/manifests/x".into(),
            status,
            message: String::new(),
        }
    }

    #[test]
    fn errors_are_assessed_by_kind() {
        assert_eq!(
            assess(&status(503)),
            Some(Transient {
                reason: "503 Service Unavailable".into(),
                wait: None
            })
        );
        assert_eq!(assess(&status(404)), None);
        assert_eq!(assess(&status(401)), None);
        let throttled = RegistryError::Throttled {
            host: "r.io".into(),
            method: "GET",
            path: "/v2/".into(),
            status: 429,
            message: String::new(),
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            assess(&throttled),
            Some(Transient {
                reason: "429 Too Many Requests".into(),
                wait: Some(Duration::from_secs(2))
            })
        );
        let reset = RegistryError::Read {
            what: "blob".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        };
        assert!(assess(&reset).is_some());
        let transport = |source| RegistryError::Transport {
            method: "GET",
            url: "https://r.io/v2/".into(),
            source,
        };
        assert!(assess(&transport(ureq::Error::ConnectionFailed)).is_some());
        assert!(assess(&transport(ureq::Error::BadUri("x".into()))).is_none());
        assert!(assess(&transport(ureq::Error::Tls("bad certificate"))).is_none());
        let mismatch = RegistryError::DigestMismatch {
            what: "blob".into(),
            expected: crate::digest::Digest::of(b"a"),
            actual: crate::digest::Digest::of(b"b"),
        };
        assert!(assess(&mismatch).is_none());
    }

    #[test]
    fn statuses_read_as_code_and_reason() {
        assert_eq!(status_text(503), "503 Service Unavailable");
        assert_eq!(status_text(429), "429 Too Many Requests");
        assert_eq!(status_text(599), "599");
    }
}
