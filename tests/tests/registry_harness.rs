//! The registry test services checked with an independent client (skopeo)
//! before kiln relies on them: the token issuer really gates the registry,
//! and the proxy forwards faithfully.

use anyhow::{Context, Result, bail};
use kiln_e2e::{BaseImage, Fault, FaultProxy, Faults, Registry};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const USER: &str = "token-user";
const PASSWORD: &str = "tok-Secret-2291";

fn skopeo(args: &[&str]) -> Result<std::process::Output> {
    Command::new("skopeo")
        .args(args)
        .output()
        .context("cannot run skopeo: install the Debian package `skopeo`")
}

#[test]
fn token_auth_registry_gates_skopeo_by_credentials() -> Result<()> {
    let registry = Registry::start_with_token_auth(&[(USER, PASSWORD), ("other", "other-pw")])?;
    let base = BaseImage::busybox()?.push(&registry, "a/base:latest")?;
    let good = format!("{USER}:{PASSWORD}");
    let copy = skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        &good,
        "--dest-creds",
        "other:other-pw",
        &format!("docker://{base}"),
        &format!("docker://{}", registry.reference("b/copy:latest")),
    ])?;
    if !copy.status.success() {
        bail!(
            "skopeo copy with valid token credentials failed:\n{}",
            String::from_utf8_lossy(&copy.stderr)
        );
    }
    assert_eq!(
        registry.image("b/copy:latest").digest()?,
        registry.image("a/base:latest").digest()?
    );

    let denied = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &format!("{USER}:wrong"),
        &format!("docker://{base}"),
    ])?;
    assert!(!denied.status.success(), "a wrong password was accepted");
    let anonymous = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--no-creds",
        &format!("docker://{base}"),
    ])?;
    assert!(
        !anonymous.status.success(),
        "an anonymous pull was accepted"
    );
    let stderr = String::from_utf8_lossy(&anonymous.stderr).to_lowercase();
    assert!(
        stderr.contains("unauthorized") || stderr.contains("authentication required"),
        "{stderr}"
    );

    let issuer = registry.token_issuer().context("no token issuer")?;
    let requests = issuer.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.user.as_deref() == Some(USER)
                && r.scopes.iter().any(|s| s.contains("a/base"))),
        "{requests:?}"
    );
    Ok(())
}

#[test]
fn proxy_without_faults_is_transparent_and_records_requests() -> Result<()> {
    let registry = Registry::start()?;
    let proxy = FaultProxy::start(&registry.addr(), Faults::none())?;
    let layout = tempfile::tempdir()?;
    let base = BaseImage::busybox()?;
    base.push(&registry, "a/base:latest")?;
    let via_proxy = format!("docker://{}", proxy.reference("b/copy:latest"));
    let copy = skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{}", registry.reference("a/base:latest")),
        &via_proxy,
    ])?;
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let back = skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &via_proxy,
        &format!("oci:{}:x", layout.path().display()),
    ])?;
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    assert_eq!(
        registry.image("b/copy:latest").digest()?,
        registry.image("a/base:latest").digest()?
    );
    let journal = proxy.journal();
    assert!(
        journal.iter().any(|e| e.method == "PUT"
            && e.target.starts_with("/v2/b/copy/manifests/")
            && e.status == Some(201)),
        "{journal:?}"
    );
    assert!(journal.iter().all(|e| e.fault.is_none()));
    Ok(())
}

#[test]
fn proxy_injects_each_fault_as_described() -> Result<()> {
    let registry = Registry::start()?;
    let faults = Faults::random(11, 100);
    let proxy = FaultProxy::start(&registry.addr(), faults)?;
    let addr: SocketAddr = proxy.addr().parse()?;
    let mut seen = Vec::new();
    for index in 0..12 {
        let fault = faults
            .fault_for(index)
            .context("percent 100 faults every request")?;
        let start = Instant::now();
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: keep-alive\r\n\r\n"
        )?;
        let mut response = Vec::new();
        let read = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        match fault {
            Fault::Status(code) => {
                assert!(text.starts_with(&format!("HTTP/1.1 {code} ")), "{text}")
            }
            Fault::TooManyRequests => {
                assert!(text.starts_with("HTTP/1.1 429 "), "{text}");
                assert!(text.contains("Retry-After: 1\r\n"), "{text}");
            }
            Fault::Reset => assert!(
                matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
                "{read:?} {text}"
            ),
            Fault::Stall => {
                assert!(start.elapsed() >= Duration::from_millis(1900));
                assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
                assert!(text.contains("Connection: close\r\n"), "{text}");
            }
        }
        seen.push(fault);
    }
    for kind in [
        Fault::Status(500),
        Fault::Status(503),
        Fault::TooManyRequests,
        Fault::Reset,
        Fault::Stall,
    ] {
        if !seen.contains(&kind) {
            bail!("seed 11 did not produce {kind:?} in 12 requests: {seen:?}");
        }
    }
    Ok(())
}
