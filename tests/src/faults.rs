//! A fault-injecting HTTP proxy in front of a registry: on a seeded
//! pseudo-random share of requests it answers 500, 503 or 429, resets the
//! connection, or stalls; everything else is forwarded byte for byte. It
//! records every exchange, so with no faults it is also a request recorder.
//!
//! Each request gets its own upstream connection and every response is sent
//! with `Connection: close`: clients reconnect per request, which keeps the
//! proxy simple and correct for keep-alive and chunked bodies alike.

use crate::wire::{self, Body, Head};
use anyhow::{Context, Result, bail};
use socket2::SockRef;
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a stalled response is held back.
const STALL: Duration = Duration::from_secs(2);

/// Which requests fail, and how.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    seed: u64,
    percent: u64,
    hold_after: Option<u64>,
}

impl Faults {
    /// No faults: a transparent, recording proxy.
    pub fn none() -> Faults {
        Faults {
            seed: 0,
            percent: 0,
            hold_after: None,
        }
    }

    /// `percent` of requests, chosen by a generator seeded with `seed`,
    /// fail with one of the [`Fault`] kinds.
    pub fn random(seed: u64, percent: u64) -> Faults {
        Faults {
            seed,
            percent: percent.min(100),
            hold_after: None,
        }
    }

    /// After forwarding `bytes` of one request's body, the proxy stops
    /// forwarding and holds the connection open until it is dropped: an
    /// upload frozen half way, for killing the client mid-push.
    pub fn hold_request_bodies_after(self, bytes: u64) -> Faults {
        Faults {
            hold_after: Some(bytes),
            ..self
        }
    }

    /// The fault for the `index`th request (0-based), if any: a pure
    /// function of the seed, so a run's fault sequence is reproducible.
    pub fn fault_for(&self, index: u64) -> Option<Fault> {
        let x = splitmix64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if x % 100 >= self.percent {
            return None;
        }
        Some(match (x >> 32) % 5 {
            0 => Fault::Status(500),
            1 => Fault::Status(503),
            2 => Fault::TooManyRequests,
            3 => Fault::Reset,
            _ => Fault::Stall,
        })
    }
}

/// One injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// This 5xx status, without forwarding the request.
    Status(u16),
    /// 429 with `Retry-After: 1`, without forwarding the request.
    TooManyRequests,
    /// The request is read, not forwarded, and the connection reset.
    Reset,
    /// The request is forwarded and the response delayed by ~2 s.
    Stall,
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The request method.
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// The fault injected, if any.
    pub fault: Option<Fault>,
    /// The status the client received (`None`: reset, held, or upstream failed).
    pub status: Option<u16>,
}

/// A running proxy on 127.0.0.1; its accept loop stops on drop, and held
/// connections are released.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    proxy: SocketAddr,
    faults: Faults,
    next_index: AtomicU64,
    stop: AtomicBool,
    journal: Mutex<Vec<Exchange>>,
    /// Number of request bodies currently held, with a condvar to wait on.
    holding: Mutex<u64>,
    held: Condvar,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`127.0.0.1:PORT`) applying `faults`.
    pub fn start(upstream: &str, faults: Faults) -> Result<FaultProxy> {
        let upstream: SocketAddr = upstream
            .parse()
            .with_context(|| format!("upstream {upstream:?} is not an IP:PORT address"))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            proxy: addr,
            faults,
            next_index: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            journal: Mutex::new(Vec::new()),
            holding: Mutex::new(0),
            held: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if worker.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let worker = Arc::clone(&worker);
                    // A connection that fails only affects its own request.
                    thread::spawn(move || {
                        let _ = handle(stream, &worker);
                    });
                }
            }
        });
        Ok(FaultProxy {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT` of the proxy, for image references.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The full reference of `repo_tag` through the proxy.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// Every exchange so far, in the order the requests arrived.
    pub fn journal(&self) -> Vec<Exchange> {
        self.shared
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until some request body is being held (see
    /// [`Faults::hold_request_bodies_after`]).
    pub fn wait_for_hold(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut holding = self
            .shared
            .holding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *holding == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no request body reached the hold point within {timeout:?}; requests seen: {:?}",
                    self.journal()
                );
            }
            holding = self
                .shared
                .held
                .wait_timeout(holding, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.held.notify_all();
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// splitmix64: a tiny, well-mixed generator step, enough for fault choice.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn handle(client: TcpStream, shared: &Shared) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut out = client;
    let Some(mut head) = Head::read(&mut reader)? else {
        return Ok(());
    };
    let index = shared.next_index.fetch_add(1, Ordering::SeqCst);
    let fault = shared.faults.fault_for(index);
    let (method, target) = head.request_line();
    let entry = {
        let mut journal = shared
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        journal.push(Exchange {
            method: method.to_owned(),
            target: target.to_owned(),
            fault,
            status: None,
        });
        journal.len() - 1
    };
    let body = head.request_body();
    let status = match fault {
        Some(Fault::Status(code)) => {
            wire::copy_body(body, &mut reader, &mut io::sink())?;
            let reason = if code == 503 {
                "Service Unavailable"
            } else {
                "Internal Server Error"
            };
            fault_response(&mut out, code, reason, &[])?;
            Some(code)
        }
        Some(Fault::TooManyRequests) => {
            wire::copy_body(body, &mut reader, &mut io::sink())?;
            fault_response(&mut out, 429, "Too Many Requests", &[("Retry-After", "1")])?;
            Some(429)
        }
        Some(Fault::Reset) => {
            wire::copy_body(body, &mut reader, &mut io::sink())?;
            // Linger 0 turns the close into a real RST, as a dying load
            // balancer sends.
            SockRef::from(&out).set_linger(Some(Duration::ZERO))?;
            drop(out);
            None
        }
        Some(Fault::Stall) | None => {
            if fault == Some(Fault::Stall) {
                thread::sleep(STALL);
            }
            forward(&mut head, body, &mut reader, &mut out, shared)?
        }
    };
    if let Some(exchange) = shared
        .journal
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(entry)
    {
        exchange.status = status;
    }
    Ok(())
}

fn fault_response(
    out: &mut TcpStream,
    code: u16,
    reason: &str,
    headers: &[(&str, &str)],
) -> io::Result<()> {
    let body = format!(
        r#"{{"errors":[{{"code":"UNAVAILABLE","message":"fault injected by the kiln test proxy ({code})"}}]}}"#
    );
    wire::respond(
        out,
        code,
        reason,
        headers,
        "application/json",
        body.as_bytes(),
    )
}

/// Sends the request upstream, then streams the response back with
/// `Location` rewritten to the proxy. Returns the upstream status.
fn forward(
    head: &mut Head,
    body: Body,
    reader: &mut BufReader<TcpStream>,
    out: &mut TcpStream,
    shared: &Shared,
) -> io::Result<Option<u16>> {
    let upstream = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5))?;
    upstream.set_read_timeout(Some(Duration::from_secs(120)))?;
    head.remove("Connection");
    head.remove("Keep-Alive");
    head.headers.push(("Connection".into(), "close".into()));
    let mut to_upstream = io::BufWriter::new(upstream.try_clone()?);
    head.write_to(&mut to_upstream)?;
    match shared.faults.hold_after {
        Some(limit) => {
            let mut holder = Holder {
                inner: &mut to_upstream,
                left: limit,
                shared,
            };
            wire::copy_body(body, reader, &mut holder)?;
        }
        None => {
            wire::copy_body(body, reader, &mut to_upstream)?;
        }
    }
    to_upstream.flush()?;
    let mut from_upstream = BufReader::new(upstream);
    let Some(mut response) = Head::read(&mut from_upstream)? else {
        return Ok(None);
    };
    let upstream_url = format!("http://{}", shared.upstream);
    let proxy_url = format!("http://{}", shared.proxy);
    for (name, value) in &mut response.headers {
        if name.eq_ignore_ascii_case("Location") {
            *value = value.replace(&upstream_url, &proxy_url);
        }
    }
    response.remove("Connection");
    response.remove("Keep-Alive");
    response.headers.push(("Connection".into(), "close".into()));
    response.write_to(out)?;
    // The upstream closes after this response: copy to its end.
    io::copy(&mut from_upstream, out)?;
    out.flush()?;
    Ok(Some(response.status()))
}

/// Forwards body bytes until `left` reaches zero, then blocks until the
/// proxy is dropped and fails the request.
struct Holder<'a, W: Write> {
    inner: &'a mut W,
    left: u64,
    shared: &'a Shared,
}

impl<W: Write> Write for Holder<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            self.inner.flush()?;
            let mut holding = self
                .shared
                .holding
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *holding += 1;
            self.shared.held.notify_all();
            while !self.shared.stop.load(Ordering::SeqCst) {
                holding = self
                    .shared
                    .held
                    .wait_timeout(holding, Duration::from_millis(200))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            return Err(io::Error::other(
                "request body held until the proxy stopped",
            ));
        }
        let n = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let written = self.inner.write(&buf[..n])?;
        self.left -= written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_a_fifth_of_requests_fail_with_every_kind() {
        let faults = Faults::random(42, 20);
        let chosen: Vec<Fault> = (0..10_000).filter_map(|i| faults.fault_for(i)).collect();
        assert!((1_800..2_200).contains(&chosen.len()), "{}", chosen.len());
        for kind in [
            Fault::Status(500),
            Fault::Status(503),
            Fault::TooManyRequests,
            Fault::Reset,
            Fault::Stall,
        ] {
            assert!(chosen.contains(&kind), "{kind:?} never chosen");
        }
        assert_eq!(
            (0..100).map(|i| faults.fault_for(i)).collect::<Vec<_>>(),
            (0..100)
                .map(|i| Faults::random(42, 20).fault_for(i))
                .collect::<Vec<_>>()
        );
        assert!((0..1000).all(|i| Faults::none().fault_for(i).is_none()));
    }
}
