//! The parent side of a RUN: resolve the user, prepare the `--mount`
//! sources, create the mount points the image lacks, start kiln again as the
//! helper (see `init`) with the decided spec on its stdin socket, and read
//! back either a setup error or nothing.

use super::SandboxError;
use super::init::INIT_ARG;
use super::mounts::{Capabilities, InitMount, MountSpec, PreparedMounts, mount_order};
use super::scaffold::Scaffold;
use super::user::{self, ExecUser};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// `PATH` for commands when the image sets none (Docker's default).
pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The helper's exit code when the sandbox could not be built (Docker uses
/// 125 for its own failures); `run` reports the message instead.
pub(super) const SETUP_FAILED: i32 = 125;
/// passwd and group files larger than this are not account databases.
const MAX_ACCOUNT_FILE: u64 = 16 << 20;

/// The network a RUN command sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The host's network namespace.
    Host,
    /// A namespace of its own with only loopback, up.
    None,
}

/// What to run and in which root.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The kiln executable to start as the helper (`/proc/self/exe`, resolved at start-up).
    pub init_exe: PathBuf,
    /// An already-mounted merged overlay directory.
    pub rootfs: PathBuf,
    /// The command; `argv[0]` is looked up in the image's `PATH` if it has no `/`.
    pub argv: Vec<String>,
    /// `K=V` entries in order; `PATH` and `HOME` are added when missing.
    pub env: Vec<String>,
    /// Absolute working directory in the image; created (0755) if missing.
    pub cwd: String,
    /// `USER`: `name|uid[:group|gid]`; `None` is root.
    pub user: Option<String>,
    /// Hostname inside the sandbox.
    pub hostname: String,
    /// Network namespace choice.
    pub network: Network,
    /// `RUN --mount`s; nothing of them (contents or mount points) stays in the image.
    pub mounts: Vec<MountSpec>,
    /// `--security`: the command's capabilities.
    pub capabilities: Capabilities,
}

/// Everything the helper needs, decided by the parent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct InitSpec {
    pub(super) rootfs: PathBuf,
    pub(super) argv: Vec<String>,
    pub(super) env: Vec<String>,
    pub(super) cwd: String,
    pub(super) hostname: String,
    pub(super) network: Network,
    pub(super) user: ExecUser,
    /// Names under `/etc` to bind from the host.
    pub(super) etc_binds: Vec<String>,
    /// `RUN --mount`s in mount order.
    pub(super) mounts: Vec<InitMount>,
    pub(super) capabilities: Capabilities,
}

/// Runs `spec.argv` in the sandbox and returns its exit code (128+signal if
/// it was killed). The command's stdin is `/dev/null`; its stdout and stderr
/// are kiln's.
pub fn run(spec: &RunSpec) -> Result<i32, SandboxError> {
    validate(spec)?;
    let ordered = mount_order(&spec.mounts)?;
    let passwd = read_in_root(&spec.rootfs, "etc/passwd")?;
    let group = read_in_root(&spec.rootfs, "etc/group")?;
    let user = user::resolve(
        spec.user.as_deref(),
        passwd.as_deref().unwrap_or(""),
        group.as_deref().unwrap_or(""),
    )?;
    let prepared = PreparedMounts::new(&spec.rootfs, &ordered)?;
    let scaffold = Scaffold::create(&spec.rootfs, &prepared.mount_points())?;
    let init = InitSpec {
        rootfs: spec.rootfs.clone(),
        argv: spec.argv.clone(),
        env: exec_env(&spec.env, &user.home),
        cwd: spec.cwd.clone(),
        hostname: spec.hostname.clone(),
        network: spec.network,
        user,
        etc_binds: scaffold.etc_binds.clone(),
        mounts: prepared.mounts.clone(),
        capabilities: spec.capabilities,
    };
    let code = spawn_init(&spec.init_exe, &init);
    let removed = scaffold.remove();
    drop(prepared);
    let code = code?;
    removed?;
    Ok(code)
}

fn validate(spec: &RunSpec) -> Result<(), SandboxError> {
    let invalid = |m: String| Err(SandboxError::InvalidSpec(m));
    if spec.argv.is_empty() {
        return invalid("the command is empty".into());
    }
    if !spec.cwd.starts_with('/') {
        return invalid(format!("working directory {:?} is not absolute", spec.cwd));
    }
    if spec.hostname.len() > 64 {
        return invalid(format!(
            "hostname {:?} is longer than 64 bytes",
            spec.hostname
        ));
    }
    let strings = spec
        .argv
        .iter()
        .chain(&spec.env)
        .chain([&spec.cwd, &spec.hostname]);
    if let Some(s) = strings.into_iter().find(|s| s.contains('\0')) {
        return invalid(format!("{s:?} contains a NUL byte"));
    }
    if !spec.rootfs.is_dir() {
        return invalid(format!(
            "root filesystem {} is not a directory",
            spec.rootfs.display()
        ));
    }
    Ok(())
}

/// The command's environment: `env` plus Docker's defaults for `PATH` and `HOME`.
pub(super) fn exec_env(env: &[String], home: &str) -> Vec<String> {
    let has = |key: &str| {
        env.iter()
            .any(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
    };
    let mut out = env.to_vec();
    if !has("PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOME") {
        out.push(format!("HOME={home}"));
    }
    out
}

/// Reads `rel` inside `rootfs`, resolving symlinks as if `rootfs` were `/`,
/// so an image cannot point kiln at a host file. `None` if it is absent.
pub(super) fn read_in_root(rootfs: &Path, rel: &str) -> Result<Option<String>, SandboxError> {
    let path = rootfs.join(rel);
    let io_err = |source: io::Error| SandboxError::Io {
        op: "read",
        path: path.clone(),
        source,
    };
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(e.into()))?;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let fd = match rustix::fs::openat2(
        &root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        resolve,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::NOSYS) => {
            return Err(io_err(io::Error::other(
                "this kernel lacks openat2 (Linux 5.6 or later is needed)",
            )));
        }
        Err(e) => return Err(io_err(e.into())),
    };
    let mut bytes = Vec::new();
    fs::File::from(fd)
        .take(MAX_ACCOUNT_FILE)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

pub(super) fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(SETUP_FAILED)
}

fn spawn_init(exe: &Path, init: &InitSpec) -> Result<i32, SandboxError> {
    let spawn_err = |source| SandboxError::Spawn {
        exe: exe.to_owned(),
        source,
    };
    let (mut ours, theirs) = UnixStream::pair().map_err(spawn_err)?;
    let mut child = Command::new(exe)
        .arg(INIT_ARG)
        .env_clear()
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()
        .map_err(spawn_err)?;
    let json = serde_json::to_vec(init).expect("InitSpec serializes to JSON");
    let sent = ours
        .write_all(&json)
        .and_then(|()| ours.shutdown(std::net::Shutdown::Write));
    let mut report = String::new();
    let received = ours.read_to_string(&mut report);
    let status = child.wait().map_err(spawn_err)?;
    if !report.is_empty() {
        return Err(SandboxError::Setup(report));
    }
    if let Err(e) = sent.and(received) {
        return Err(SandboxError::Setup(format!(
            "helper {} ({status}) did not take the RUN spec: {e}; is it kiln?",
            exe.display()
        )));
    }
    Ok(exit_code(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_gets_docker_defaults_only_when_missing() {
        let env = exec_env(&["A=1".into()], "/root");
        assert_eq!(env, ["A=1", &format!("PATH={DEFAULT_PATH}"), "HOME=/root"]);
        let given = vec!["HOME=/h".to_string(), "PATH=/x".into(), "PATHX=y".into()];
        assert_eq!(exec_env(&given, "/root"), given);
        assert_eq!(exec_env(&["PATHX=1".into()], "/").len(), 3);
    }

    #[test]
    fn exit_status_becomes_code_or_128_plus_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
    }

    fn run_spec(rootfs: &Path) -> RunSpec {
        RunSpec {
            init_exe: "/nonexistent".into(),
            rootfs: rootfs.into(),
            argv: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: None,
            hostname: "h".into(),
            network: Network::Host,
            mounts: vec![],
            capabilities: Capabilities::Default,
        }
    }

    #[test]
    fn invalid_specs_are_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let ok = run_spec(dir.path());
        assert!(validate(&ok).is_ok());
        for (spec, needle) in [
            (
                RunSpec {
                    argv: vec![],
                    ..ok.clone()
                },
                "empty",
            ),
            (
                RunSpec {
                    cwd: "rel".into(),
                    ..ok.clone()
                },
                "not absolute",
            ),
            (
                RunSpec {
                    env: vec!["A=\0".into()],
                    ..ok.clone()
                },
                "NUL",
            ),
            (
                RunSpec {
                    hostname: "x".repeat(65),
                    ..ok.clone()
                },
                "64 bytes",
            ),
            (
                RunSpec {
                    rootfs: dir.path().join("none"),
                    ..ok.clone()
                },
                "not a directory",
            ),
        ] {
            let e = validate(&spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn account_files_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(dir.path().join("secret"), "host:x:0:0::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("etc/passwd")).unwrap();
        fs::write(root.join("secret"), "image:x:1:1::/:/bin/sh\n").unwrap();
        assert_eq!(
            read_in_root(&root, "etc/passwd").unwrap().as_deref(),
            Some("image:x:1:1::/:/bin/sh\n")
        );
        assert_eq!(read_in_root(&root, "etc/group").unwrap(), None);
    }
}
