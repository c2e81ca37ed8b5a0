//! The seed article's containerd flow: a private containerd (Debian's 1.6
//! with runc) per test, driven with `ctr`, and the kiln image it runs,
//! built by kiln from `deploy/Dockerfile`.

use crate::command;
use crate::container_root::kiln_static_bin;
use crate::kiln::{docker_config, run_kiln};
use crate::registry::Registry;
use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The namespace every container and image of the harness lives in.
const NAMESPACE: &str = "kiln-test";

/// A running containerd with its own config, root, state and sockets in a
/// temporary directory; killed, and its root removed, on drop.
pub struct Containerd {
    child: Child,
    socket: PathBuf,
    dir: TempDir,
}

/// One `ctr run`.
pub struct Run<'a> {
    /// The image, pulled before.
    pub image: &'a str,
    /// The container id, unique while it runs.
    pub name: &'a str,
    /// Bind mounts: host directory, path inside, writable.
    pub mounts: Vec<(&'a Path, &'a str, bool)>,
    /// `--seccomp`: containerd's default seccomp profile, as in Docker.
    pub seccomp: bool,
    /// The process's argv; empty runs the image's entrypoint.
    pub args: Vec<OsString>,
}

impl Containerd {
    /// Starts containerd (CRI plugin disabled) and waits until `ctr
    /// version` answers.
    pub fn start() -> Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-containerd-")
            .tempdir()?;
        let w = dir.path();
        let socket = w.join("containerd.sock");
        let config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"{debug}\"\n",
            root = w.join("root").display(),
            state = w.join("state").display(),
            sock = socket.display(),
            debug = w.join("debug.sock").display(),
        );
        fs::write(w.join("config.toml"), config)?;
        let log = fs::File::create(w.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(w.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "cannot start containerd: install the Debian packages `containerd` and `runc` \
                 (`cargo xtask test` does)",
            )?;
        let mut containerd = Containerd { child, socket, dir };
        containerd.wait_ready()?;
        Ok(containerd)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "containerd exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if self.socket.exists() && self.ctr().arg("version").output()?.status.success() {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "containerd did not answer on {} within {READY_TIMEOUT:?}:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// containerd's own log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` talking to this containerd, in the harness's namespace.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE]);
        cmd
    }

    /// `ctr images pull --plain-http` of `reference` from `registry`, with
    /// its credentials.
    pub fn pull(&self, registry: &Registry, reference: &str) -> Result<()> {
        let mut pull = self.ctr();
        pull.args(["images", "pull", "--plain-http"]);
        if let Some((user, password)) = registry.credentials() {
            pull.arg("--user").arg(format!("{user}:{password}"));
        }
        command::run(pull.arg(reference))
            .with_context(|| format!("ctr could not pull {reference}"))?;
        Ok(())
    }

    /// The `ctr run --rm --net-host` command of `run`, ready for stdio.
    pub fn run_command(&self, run: &Run<'_>) -> Command {
        let mut cmd = self.ctr();
        cmd.args(["run", "--rm", "--net-host"]);
        if run.seccomp {
            cmd.arg("--seccomp");
        }
        for (src, dst, rw) in &run.mounts {
            let mode = if *rw { "rw" } else { "ro" };
            cmd.arg("--mount").arg(format!(
                "type=bind,src={},dst={dst},options=rbind:{mode}",
                src.display()
            ));
        }
        cmd.arg(run.image).arg(run.name).args(&run.args);
        cmd
    }

    /// Runs `run` to completion with no standard input.
    pub fn run(&self, run: &Run<'_>) -> Result<Output> {
        command::output(self.run_command(run).stdin(Stdio::null()))
    }

    /// Runs `run` to completion with `input` piped to its standard input,
    /// as `producer | ctr run ...` does.
    ///
    /// ctr 1.6 passes the end of its standard input on to the task only if
    /// the end comes after the task exists; a small archive ends before
    /// that, and the task then waits for input forever. So the end is held
    /// back until `ctr tasks ls` lists the task as running.
    pub fn run_with_stdin(&self, run: &Run<'_>, mut input: impl Read + Send) -> Result<Output> {
        let mut child = self
            .run_command(run)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start ctr")?;
        let mut stdin = child.stdin.take().context("ctr has no stdin")?;
        thread::scope(|scope| {
            let feeder = scope.spawn(move || -> Result<()> {
                std::io::copy(&mut input, &mut stdin).context("cannot feed ctr's stdin")?;
                self.wait_running(run.name)?;
                drop(stdin);
                Ok(())
            });
            let output = child.wait_with_output().context("cannot wait for ctr")?;
            let fed = feeder
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the stdin feeder panicked")));
            // A run that failed says why in its output, which matters more
            // than the feeder's view of it.
            match fed {
                Err(e) if output.status.success() => Err(e),
                _ => Ok(output),
            }
        })
    }

    /// Waits until task `name` is running.
    fn wait_running(&self, name: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            let tasks = command::run(self.ctr().args(["tasks", "ls"]))?;
            let running = String::from_utf8_lossy(&tasks).lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.first() == Some(&name) && cols.get(2) == Some(&"RUNNING")
            });
            if running {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!("task {name} was not running within {READY_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A leftover task holds its rootfs mounted under the state
        // directory: kill containerd first, then unmount whatever is still
        // mounted below the temporary directory, so that it can go.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let root = self.dir.path();
        if let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") {
            let mut under: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| Path::new(m).starts_with(root))
                .collect();
            under.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in under {
                let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

/// The kiln image, built from `deploy/Dockerfile` by the kiln on this
/// machine and pushed to a registry.
pub struct KilnImage {
    /// Its reference in the registry.
    pub reference: String,
}

impl KilnImage {
    /// Builds stage `executor` of `deploy/Dockerfile` around the static
    /// kiln (`$KILN_STATIC_BIN`, stripped) and pushes it to `registry` as
    /// `repo_tag`. The context is laid out as `cargo xtask image` lays it
    /// out, with the built-in plugins precompiled by that same binary.
    pub fn build(registry: &Registry, repo_tag: &str) -> Result<KilnImage> {
        let dir = TempDir::new()?;
        let context = dir.path().join("context");
        let rootfs = context.join("rootfs");
        let kaniko = rootfs.join("kaniko");
        for sub in [
            rootfs.join("kiln/plugins"),
            kaniko.join(".docker"),
            kaniko.join("ssl/certs"),
            rootfs.join("workspace"),
            context.join("busybox"),
        ] {
            fs::create_dir_all(sub)?;
        }
        let kiln = rootfs.join("kiln/kiln");
        command::run(
            Command::new("strip")
                .arg("--strip-all")
                .arg("-o")
                .arg(&kiln)
                .arg(kiln_static_bin()?),
        )?;
        symlink("/kiln/kiln", kaniko.join("executor"))?;
        fs::copy(
            "/etc/ssl/certs/ca-certificates.crt",
            kaniko.join("ssl/certs/ca-certificates.crt"),
        )
        .context("cannot copy Debian's CA bundle (package ca-certificates)")?;
        precompile(&kiln, dir.path(), &rootfs.join("kiln/plugins"))?;

        let reference = registry.reference(repo_tag);
        let config = credentials_dir(registry)?;
        let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile");
        let envs = [("DOCKER_CONFIG", config.path().as_os_str())];
        run_kiln(
            [
                OsString::from("build"),
                "--context".into(),
                context.into(),
                "--dockerfile".into(),
                dockerfile.into(),
                "--target".into(),
                "executor".into(),
                "--destination".into(),
                reference.clone().into(),
            ],
            &envs,
        )?
        .ensure_success()
        .context("kiln could not build its own image from deploy/Dockerfile")?;
        Ok(KilnImage { reference })
    }
}

/// A docker config directory with `registry`'s credentials (or none).
pub fn credentials_dir(registry: &Registry) -> Result<TempDir> {
    match registry.credentials() {
        Some((user, password)) => docker_config(&registry.addr(), user, password),
        None => {
            let dir = TempDir::new()?;
            fs::write(dir.path().join("config.json"), "{}")?;
            Ok(dir)
        }
    }
}

/// Runs `kiln` once on a trivial `FROM scratch` build so that it
/// precompiles its built-in plugins, and copies them into `plugins`.
fn precompile(kiln: &Path, scratch: &Path, plugins: &Path) -> Result<()> {
    let probe = scratch.join("probe");
    fs::create_dir(&probe)?;
    fs::write(probe.join("Dockerfile"), "FROM scratch\nLABEL probe=1\n")?;
    let kiln_dir = scratch.join("precompile");
    command::run(
        Command::new(kiln)
            .arg("build")
            .arg("--context")
            .arg(&probe)
            .arg("--no-push")
            .arg("--kaniko-dir")
            .arg(&kiln_dir),
    )?;
    let mut copied = 0;
    for entry in fs::read_dir(kiln_dir.join("plugins"))? {
        let path = entry?.path();
        if let Some(name) = path
            .file_name()
            .filter(|n| n.to_string_lossy().ends_with(".cwasm"))
        {
            fs::copy(&path, plugins.join(name))?;
            copied += 1;
        }
    }
    if copied == 0 {
        bail!("kiln precompiled no plugin under {}", kiln_dir.display());
    }
    Ok(())
}
