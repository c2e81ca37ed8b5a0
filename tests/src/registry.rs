//! A private `docker-registry` (CNCF distribution) per test, on 127.0.0.1.

use crate::command;
use crate::image::Image;
use crate::token::TokenIssuer;
use anyhow::{Context, Result, bail};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts at finding a free port: another process may take the port between
/// our probe and the registry's bind.
const START_ATTEMPTS: usize = 3;

/// A running registry with filesystem storage in a temporary directory; the
/// process is killed and the storage removed on drop.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    credentials: Option<(String, String)>,
    issuer: Option<TokenIssuer>,
    _dir: TempDir,
}

impl Registry {
    /// Starts an anonymous registry (pull and push need no credentials).
    pub fn start() -> Result<Registry> {
        Registry::start_inner(None, None)
    }

    /// Starts a registry that requires HTTP basic auth for `user`/`password`.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Result<Registry> {
        Registry::start_inner(Some((user.to_owned(), password.to_owned())), None)
    }

    /// Starts a registry in `auth: token` mode behind a token issuer of our
    /// own that accepts `users`; the first user's credentials are the ones
    /// [`Registry::image`] and [`Registry::credentials`] use.
    pub fn start_with_token_auth(users: &[(&str, &str)]) -> Result<Registry> {
        let issuer = TokenIssuer::start(users)?;
        let credentials = users
            .first()
            .map(|(user, password)| ((*user).to_owned(), (*password).to_owned()));
        Registry::start_inner(credentials, Some(issuer))
    }

    /// The token issuer of a registry started with token auth.
    pub fn token_issuer(&self) -> Option<&TokenIssuer> {
        self.issuer.as_ref()
    }

    /// The registry process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:PORT`, as used in image references and `--insecure-registry`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The full reference of `repo_tag` (`repo:tag` or `repo@digest`) here.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// An image in this registry, inspected with this registry's credentials.
    pub fn image(&self, repo_tag: &str) -> Image {
        Image::remote(self.reference(repo_tag), self.credentials.clone())
    }

    /// The credentials this registry requires, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    fn start_inner(
        credentials: Option<(String, String)>,
        issuer: Option<TokenIssuer>,
    ) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()?;
        let auth = match (&issuer, &credentials) {
            (Some(issuer), _) => issuer.registry_auth_config(),
            (None, Some((user, password))) => {
                write_htpasswd(&dir.path().join("htpasswd"), user, password)?;
                format!(
                    "auth: {{htpasswd: {{realm: kiln-test, path: {}}}}}\n",
                    dir.path().join("htpasswd").display()
                )
            }
            (None, None) => String::new(),
        };
        let config_path = dir.path().join("config.yml");
        let log_path = dir.path().join("registry.log");
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let addr = free_port()?;
            let config = format!(
                "version: 0.1\n\
                 log: {{level: warn}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
                 http: {{addr: {addr}, secret: kiln-test}}\n\
                 {auth}",
                dir.path().join("data").display()
            );
            fs::write(&config_path, config)?;
            let log = fs::File::create(&log_path)?;
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context(
                    "cannot start docker-registry: install the Debian package `docker-registry` \
                     (`cargo xtask test` does)",
                )?;
            match wait_ready(&mut child, addr, &log_path) {
                Ok(()) => {
                    return Ok(Registry {
                        child,
                        addr,
                        credentials,
                        issuer,
                        _dir: dir,
                    });
                }
                Err(e) => {
                    stop(&mut child);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("START_ATTEMPTS is not zero"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Polls `GET /v2/` until the registry answers (401 counts: it is up).
fn wait_ready(child: &mut Child, addr: SocketAddr, log_path: &Path) -> Result<()> {
    let start = Instant::now();
    let log = || fs::read_to_string(log_path).unwrap_or_default();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "docker-registry exited with {status} before it was ready on {addr}:\n{}",
                log()
            );
        }
        if let Ok(200 | 401) = http_status(addr, "/v2/") {
            return Ok(());
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "docker-registry did not answer GET http://{addr}/v2/ within {READY_TIMEOUT:?}:\n{}",
                log()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn stop(child: &mut Child) {
    // The process may already have exited; either way it must be reaped.
    let _ = child.kill();
    let _ = child.wait();
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// The status code of a plain HTTP/1.1 GET; enough to probe readiness without
/// an HTTP client dependency.
fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let line = std::str::from_utf8(&head)?;
    match line
        .strip_prefix("HTTP/1.1 ")
        .or(line.strip_prefix("HTTP/1.0 "))
    {
        Some(code) => Ok(code.trim().parse()?),
        None => bail!("not an HTTP response from {addr}: {line:?}"),
    }
}

/// Writes an htpasswd file with one bcrypt entry (the only scheme the
/// registry accepts).
fn write_htpasswd(path: &Path, user: &str, password: &str) -> Result<()> {
    let entry = command::run(Command::new("htpasswd").args(["-Bbn", user, password]))
        .context("cannot run htpasswd: install the Debian package `apache2-utils`")?;
    fs::write(path, entry)?;
    Ok(())
}
