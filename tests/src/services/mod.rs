//! Real servers for kiln's remote build contexts, each on 127.0.0.1 with a
//! free port, owned by the test that starts it and stopped on drop: moto
//! (S3), fake-gcs-server (GCS), Azurite (Azure Blob), `git http-backend`
//! behind a CGI server of our own, and a fixed-answer HTTP responder (an
//! OAuth token endpoint that refuses every grant).
//!
//! moto, fake-gcs-server and Azurite come from `cargo xtask test`, which
//! installs them under `<target>/test-tools` and names that directory in
//! `KILN_TEST_TOOLS`.

mod azurite;
mod gcs;
mod git_http;
mod moto;
mod responder;

pub use azurite::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite};
pub use gcs::FakeGcs;
pub use git_http::{GitServer, GitWork};
pub use moto::{AwsKey, Moto};
pub use responder::Responder;

use crate::command;
use anyhow::{Context, Result, bail};
use std::env;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a server may take to answer its readiness probe; moto and
/// Azurite take about a second on an idle machine, much more on a busy one.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding the installed servers: `$KILN_TEST_TOOLS`, else
/// `<target>/test-tools` above the test executable.
pub fn tools_dir() -> Result<PathBuf> {
    let dir = match env::var_os("KILN_TEST_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = env::current_exe().context("cannot locate the test executable")?;
            // <target>/<profile>/deps/<exe>
            match exe.ancestors().nth(3) {
                Some(target) => target.join("test-tools"),
                None => bail!("cannot find the target directory above {}", exe.display()),
            }
        }
    };
    if !dir.is_dir() {
        bail!(
            "the test tools directory {} does not exist: run `cargo xtask test`, which installs \
             moto, fake-gcs-server and Azurite there (or set KILN_TEST_TOOLS)",
            dir.display()
        );
    }
    Ok(dir)
}

/// The program `relative` under [`tools_dir`], which must exist.
fn tool(relative: &str) -> Result<PathBuf> {
    let path = tools_dir()?.join(relative);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo xtask test`, which installs the test servers",
            path.display()
        );
    }
    Ok(path)
}

/// The Python of the tools' virtualenv (moto, boto3, fake-gcs-server).
fn venv_python() -> Result<PathBuf> {
    tool("venv/bin/python")
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A server process, killed and reaped on drop, with its scratch directory
/// (data and log) removed after it.
struct Daemon {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
    // Declared last: removed after the process is gone.
    _scratch: TempDir,
}

impl Daemon {
    /// Starts the server `name` as `make(port, scratch)` on a free port and
    /// waits until `GET ready_path` answers 2xx (or anything at all when
    /// `any_status`, for servers that refuse every unsigned request); a server that dies at once
    /// (most likely a port taken in between) is started again on another.
    fn start(
        name: &'static str,
        ready_path: &str,
        any_status: bool,
        make: impl Fn(u16, &Path) -> Result<Command>,
    ) -> Result<Daemon> {
        let mut last_error = None;
        for _ in 0..3 {
            let scratch = tempfile::Builder::new()
                .prefix(&format!("kiln-{name}-"))
                .tempdir()?;
            let port = free_port()?;
            let log = scratch.path().join("server.log");
            let out = File::create(&log)?;
            let mut cmd = make(port, scratch.path())?;
            cmd.stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
            let mut daemon = Daemon {
                name,
                child,
                port,
                log,
                _scratch: scratch,
            };
            match daemon.wait_ready(ready_path, any_status) {
                Ok(()) => return Ok(daemon),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("{name} did not start")))
    }

    /// `http://127.0.0.1:PORT`.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self, path: &str, any_status: bool) -> Result<()> {
        let url = format!("{}{path}", self.url());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before answering {url}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            let probe = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}"])
                .arg(&url)
                .output()
                .context("cannot run curl (apt package curl)")?;
            let code = String::from_utf8_lossy(&probe.stdout);
            if code.starts_with('2') || (any_status && !code.is_empty() && code != "000") {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "{} did not answer {url} within {READY_TIMEOUT:?} (last status {code}):\n{}",
                    self.name,
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl quietly with `args`, failing (with the response body) on an
/// HTTP error; returns the response body.
fn curl<I, S>(args: I) -> Result<Vec<u8>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail-with-body", "-m", "120"])
        .args(args);
    command::run(&mut cmd)
}

/// Runs curl with `args` and returns the HTTP status and the body, whatever
/// the status.
fn curl_status<I, S>(args: I) -> Result<(u16, Vec<u8>)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let scratch = tempfile::tempdir()?;
    let body = scratch.path().join("body");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-m", "120", "-w", "%{http_code}", "-o"])
        .arg(&body)
        .args(args);
    let out = command::run(&mut cmd)?;
    let code = String::from_utf8_lossy(&out);
    let status = code
        .trim()
        .parse()
        .with_context(|| format!("curl printed no HTTP status: {code:?}"))?;
    Ok((status, fs::read(&body).unwrap_or_default()))
}
