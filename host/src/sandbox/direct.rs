//! RUN in container-root mode: the image is unpacked onto kiln's own `/`,
//! so the command runs as a plain child of kiln, in kiln's namespaces, as
//! the `USER` of the image. Nothing is mounted; that is the point of the
//! mode, which exists for containers that refuse mounts.

use super::SandboxError;
use super::init::{exec_failure, find_program, is_executable};
use super::run::{DEFAULT_PATH, exec_env, exit_code, read_in_root};
use super::user;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// How to run one command on the live root.
#[derive(Clone, Debug)]
pub struct DirectSpec {
    /// The command; `argv[0]` is looked up in `PATH` if it has no `/`.
    pub argv: Vec<String>,
    /// `K=V` entries in order; `PATH` and `HOME` are added when missing.
    pub env: Vec<String>,
    /// Absolute working directory; created (0755) if missing.
    pub cwd: String,
    /// `USER`: `name|uid[:group|gid]`; `None` is root.
    pub user: Option<String>,
}

/// Runs `spec` on `/` and returns its exit code (128+signal if killed).
/// Its stdin is `/dev/null` when that exists; stdout and stderr are kiln's.
pub fn run_direct(spec: &DirectSpec) -> Result<i32, SandboxError> {
    let root = Path::new("/");
    let Some(cmd) = spec.argv.first() else {
        return Err(SandboxError::InvalidSpec("the command is empty".into()));
    };
    if !spec.cwd.starts_with('/') {
        return Err(SandboxError::InvalidSpec(format!(
            "working directory {:?} is not absolute",
            spec.cwd
        )));
    }
    let passwd = read_in_root(root, "etc/passwd")?;
    let group = read_in_root(root, "etc/group")?;
    let user = user::resolve(
        spec.user.as_deref(),
        passwd.as_deref().unwrap_or(""),
        group.as_deref().unwrap_or(""),
    )?;
    std::fs::create_dir_all(&spec.cwd).map_err(|source| SandboxError::Io {
        op: "create working directory",
        path: spec.cwd.clone().into(),
        source,
    })?;
    let env = exec_env(&spec.env, &user.home);
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let Some(program) = find_program(cmd, path, is_executable) else {
        let (code, message) = exec_failure(cmd, &std::io::Error::from_raw_os_error(libc::ENOENT));
        eprintln!("kiln: RUN: {message}");
        return Ok(code);
    };
    let mut command = Command::new(&program);
    command
        .arg0(cmd)
        .args(&spec.argv[1..])
        .env_clear()
        .envs(env.iter().filter_map(|e| e.split_once('=')))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null());
    let (uid, gid, groups) = (user.uid, user.gid, user.groups.clone());
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (setgroups, setgid, setuid), on data prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match command.status() {
        Ok(status) => Ok(exit_code(status)),
        Err(e) => {
            let (code, message) = exec_failure(cmd, &e);
            eprintln!("kiln: RUN: {message}");
            Ok(code)
        }
    }
}

/// Why kiln believes it runs inside a container, or `None`: the
/// `container` variable that podman, systemd-nspawn and others set, being
/// PID 1 of its own pid namespace (as under `ctr run` or in a pod), the
/// marker files of Docker, podman and Kubernetes, or a container
/// runtime's cgroup.
pub fn container_evidence(
    env_container: Option<&str>,
    pid: u32,
    exists: impl Fn(&str) -> bool,
    cgroup: &str,
) -> Option<String> {
    if let Some(v) = env_container.filter(|v| !v.is_empty()) {
        return Some(format!("the environment sets container={v}"));
    }
    if pid == 1 {
        return Some("kiln is PID 1 of its own pid namespace".into());
    }
    for marker in [
        "/.dockerenv",
        "/run/.containerenv",
        "/var/run/secrets/kubernetes.io",
    ] {
        if exists(marker) {
            return Some(format!("{marker} exists"));
        }
    }
    ["kubepods", "docker", "containerd", "libpod", "lxc"]
        .into_iter()
        .find(|r| cgroup.contains(r))
        .map(|r| format!("/proc/1/cgroup names {r}"))
}

/// [`container_evidence`] for this process.
pub fn detect_container() -> Option<String> {
    container_evidence(
        std::env::var("container").ok().as_deref(),
        std::process::id(),
        |p| Path::new(p).exists(),
        &std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_comes_from_env_markers_or_cgroups() {
        let none = |_: &str| false;
        assert_eq!(container_evidence(None, 40, none, "0::/\n"), None);
        assert_eq!(
            container_evidence(Some(""), 40, none, "0::/init.scope\n"),
            None
        );
        assert_eq!(
            container_evidence(Some("podman"), 40, none, ""),
            Some("the environment sets container=podman".into())
        );
        assert_eq!(
            container_evidence(None, 1, none, "0::/\n"),
            Some("kiln is PID 1 of its own pid namespace".into())
        );
        assert_eq!(
            container_evidence(None, 40, |p| p == "/.dockerenv", ""),
            Some("/.dockerenv exists".into())
        );
        assert_eq!(
            container_evidence(None, 40, none, "0::/kubepods/besteffort/pod1/abc\n"),
            Some("/proc/1/cgroup names kubepods".into())
        );
    }

    #[test]
    fn a_missing_command_is_127_and_a_failing_one_keeps_its_code() {
        let spec = |argv: &[&str]| DirectSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/usr/bin:/bin".into()],
            cwd: "/".into(),
            user: None,
        };
        assert_eq!(run_direct(&spec(&["no-such-command-kiln"])).unwrap(), 127);
        assert_eq!(run_direct(&spec(&["sh", "-c", "exit 7"])).unwrap(), 7);
        assert_eq!(run_direct(&spec(&["true"])).unwrap(), 0);
    }
}
