//! The services a benchmark run starts: a `docker-registry` on 127.0.0.1
//! that can be reset to its base images between cold builds, and Debian's
//! Docker engine 20.10 (BuildKit built in) from its unpacked package. Both
//! stop, and their files go, when dropped.

use super::measure;
use anyhow::{Context, Result, bail};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a service may take to answer after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long dockerd gets to stop its containerd and itself on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A `docker-registry` on a fixed 127.0.0.1 port with filesystem storage.
pub struct Registry {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Registry {
    /// Starts an anonymous registry on a free port, keeping its config,
    /// storage and log under the new directory `dir`.
    pub fn start(dir: &Path) -> Result<Registry> {
        fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("cannot find a free port on 127.0.0.1")?;
        fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\n\
                 log: {{level: warn}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
                 http: {{addr: {addr}, secret: kiln-bench}}\n",
                dir.join("data").display()
            ),
        )?;
        let mut registry = Registry {
            child: None,
            addr,
            dir: dir.to_owned(),
        };
        registry.spawn()?;
        Ok(registry)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Keeps a copy of the storage as it is now (the base images), which
    /// [`Registry::reset`] brings back.
    pub fn snapshot(&mut self) -> Result<()> {
        self.stop();
        copy_tree(&self.dir.join("data"), &self.dir.join("pristine"))?;
        self.spawn()
    }

    /// Restarts the registry on the same port with the storage of the last
    /// [`Registry::snapshot`], so that no builder finds blobs pushed before.
    pub fn reset(&mut self) -> Result<()> {
        self.stop();
        let data = self.dir.join("data");
        fs::remove_dir_all(&data).with_context(|| format!("cannot remove {}", data.display()))?;
        copy_tree(&self.dir.join("pristine"), &data)?;
        self.spawn()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "cannot start docker-registry: install the Debian package `docker-registry`",
            )?;
        self.child = Some(child);
        let addr = self.addr;
        let log_path = self.dir.join("registry.log");
        wait_until(
            &format!("docker-registry on {addr}"),
            &log_path,
            self.child.as_mut(),
            || matches!(http_status(addr, "/v2/"), Ok(200)),
        )
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited already; either way it must be reaped.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies the directory tree `from` to the new path `to`, keeping modes.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("cannot run cp")?;
    if !status.success() {
        bail!("cp -a {} {} failed: {status}", from.display(), to.display());
    }
    Ok(())
}

/// Polls `ready` until it holds, failing with the log when `child` exits
/// or [`READY_TIMEOUT`] passes.
fn wait_until(
    what: &str,
    log: &Path,
    mut child: Option<&mut Child>,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let start = Instant::now();
    let log_text = || fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Some(child) = child.as_deref_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "{what} exited with {status} before it was ready:\n{}",
                log_text()
            );
        }
        if ready() {
            return Ok(());
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "{what} was not ready within {READY_TIMEOUT:?}:\n{}",
                log_text()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The status code of a plain HTTP/1.1 GET.
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
    match line.strip_prefix("HTTP/1.1 ") {
        Some(code) => Ok(code.trim().parse()?),
        None => bail!("not an HTTP response from {addr}: {line:?}"),
    }
}

/// Debian's Docker engine 20.10 run from its unpacked package, with
/// BuildKit enabled, private roots and no networking of its own.
pub struct Dockerd {
    child: Option<Child>,
    containerd: Vec<u32>,
    /// The unpacked package (`usr/bin/docker`, `usr/sbin/dockerd`).
    root: PathBuf,
    dir: PathBuf,
}

impl Dockerd {
    /// Starts dockerd from the unpacked `docker.io` package in `root`, with
    /// its data, state and socket under the new directory `dir`, allowing
    /// plain HTTP to `registry`.
    pub fn start(root: &Path, dir: &Path, registry: &str) -> Result<Dockerd> {
        for sub in ["data", "exec", "config"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        fs::write(
            dir.join("daemon.json"),
            serde_json::json!({
                "features": {"buildkit": true},
                "insecure-registries": [registry],
                "storage-driver": "overlay2",
            })
            .to_string(),
        )?;
        let log_path = dir.join("dockerd.log");
        let log = fs::File::create(&log_path)?;
        let child = Command::new(root.join("usr/sbin/dockerd"))
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args([
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
            ])
            .env("PATH", search_path(root))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}/usr/sbin/dockerd", root.display()))?;
        let mut dockerd = Dockerd {
            child: Some(child),
            containerd: Vec::new(),
            root: root.to_owned(),
            dir: dir.to_owned(),
        };
        let socket = dir.join("docker.sock");
        let probe = dockerd.docker();
        wait_until("dockerd", &log_path, dockerd.child.as_mut(), || {
            socket.exists()
                && probe
                    .command()
                    .args(["version", "--format", "{{.Server.Version}}"])
                    .output()
                    .is_ok_and(|out| out.status.success())
        })?;
        dockerd.containerd = measure::children_named(dockerd.pid(), "containerd")?;
        Ok(dockerd)
    }

    /// dockerd's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// dockerd and the containerd it manages: the processes whose CPU and
    /// memory count for BuildKit.
    pub fn daemon_pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        pids.extend(&self.containerd);
        pids
    }

    /// The package's own `docker` CLI (20.10), talking to this daemon with
    /// BuildKit and an empty client config.
    pub fn docker(&self) -> DockerCli {
        DockerCli {
            bin: self.root.join("usr/bin/docker"),
            socket: self.dir.join("docker.sock"),
            config: self.dir.join("config"),
        }
    }

    /// `dockerd --version`.
    pub fn version(&self) -> Result<String> {
        let out = Command::new(self.root.join("usr/sbin/dockerd"))
            .arg("--version")
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_TIMEOUT);
        }
        // dockerd stops its containerd itself; one left behind by a dockerd
        // that did not stop in time is stopped here.
        for pid in &self.containerd {
            if Path::new(&format!("/proc/{pid}")).exists() {
                // SAFETY: kill has no memory preconditions; the pid is the
                // containerd dockerd started, which this run owns.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        unmount_under(&self.dir);
    }
}

/// The `docker` CLI of a [`Dockerd`].
#[derive(Clone, Debug)]
pub struct DockerCli {
    bin: PathBuf,
    socket: PathBuf,
    config: PathBuf,
}

impl DockerCli {
    /// A `docker` command with this daemon's socket, BuildKit on and plain
    /// progress output.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_BUILDKIT", "1")
            .env("DOCKER_CONFIG", &self.config)
            .env("BUILDKIT_PROGRESS", "plain");
        cmd
    }

    /// The CLI binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }
}

/// `PATH` with the unpacked package's directories first (for `docker-init`
/// and `docker-proxy`), then the system's (containerd, runc).
fn search_path(root: &Path) -> String {
    format!(
        "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        root.join("usr/bin").display(),
        root.join("usr/sbin").display()
    )
}

/// Sends SIGTERM, waits up to `timeout`, then kills.
pub fn terminate(child: &mut Child, timeout: Duration) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory preconditions; the pid is our child,
        // not yet reaped, so it cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Detaches every mount at or below `dir`, deepest first, so that the
/// directory can be removed; best effort, for cleanup.
pub fn unmount_under(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    let mut mounts = mounts_under(
        &dir,
        &fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
    );
    mounts.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    for mount in mounts {
        if let Ok(path) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) {
            // SAFETY: the path is a valid NUL-terminated string.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// The mount points at or below `dir` in the text of a mountinfo file.
fn mounts_under(dir: &Path, mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mountinfo(point)))
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// Undoes the kernel's `\ooo` escaping of mountinfo fields.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match (bytes[i], code) {
            (b'\\', Some(code)) => {
                out.push(code);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_below_a_directory_are_found_with_escapes_undone() {
        let table = "22 1 8:1 / / rw - ext4 /dev/vda rw\n\
            90 22 0:50 / /w/bench/buildah/root/overlay/x/merged rw - overlay overlay rw\n\
            91 22 0:51 / /w/bench/a\\040b rw - tmpfs tmpfs rw\n\
            92 22 0:52 / /w/benchmark rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mounts_under(Path::new("/w/bench"), table),
            vec![
                PathBuf::from("/w/bench/buildah/root/overlay/x/merged"),
                PathBuf::from("/w/bench/a b")
            ]
        );
    }
}
