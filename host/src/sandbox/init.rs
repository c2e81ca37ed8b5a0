//! The helper side of a RUN: kiln re-executed with [`INIT_ARG`] enters new
//! namespaces and forks PID 1, which builds the root, pivots into it, takes
//! the command's identity and execs it. Setup errors go back to `run` on the
//! stdin socket, which closes by itself once the command is exec'd.

use super::SandboxError;
use super::mounts::{Capabilities, DEFAULT_CAPABILITIES, InitMount, InitMountKind};
use super::run::{DEFAULT_PATH, InitSpec, Network, SETUP_FAILED};
use super::syscall::{LinuxSyscall, Syscall};
use rustix::fs::Mode;
use rustix::mount::MountFlags;
use rustix::thread::UnshareFlags;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Hidden first argument that makes kiln act as the sandbox helper.
pub const INIT_ARG: &str = "__kiln-sandbox-init";

/// Host devices bind-mounted into the sandbox's `/dev` (the OCI default set).
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
const DEV_LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Entry point of the helper process (`kiln __kiln-sandbox-init`); never
/// returns. Must run before kiln starts any thread, as it forks.
pub fn init_main() -> ! {
    let mut channel = match take_stdin_channel() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln: sandbox helper: cannot take its stdin: {e}");
            std::process::exit(SETUP_FAILED);
        }
    };
    let mut json = Vec::new();
    let spec = channel
        .read_to_end(&mut json)
        .map_err(|e| format!("cannot read the RUN spec: {e}"))
        .and_then(|_| {
            serde_json::from_slice::<InitSpec>(&json).map_err(|e| format!("invalid RUN spec: {e}"))
        });
    let spec = spec.unwrap_or_else(|e| report_and_exit(&mut channel, &e));
    reset_process_state();
    let sys = LinuxSyscall;
    if let Err(e) = sys.unshare(namespaces(spec.network)) {
        report_and_exit(&mut channel, &format!("cannot create namespaces: {e}"));
    }
    // SAFETY: the helper is single-threaded (it runs before anything could
    // start a thread), so the child may do anything the parent could.
    match unsafe { libc::fork() } {
        -1 => report_and_exit(
            &mut channel,
            &format!("cannot fork: {}", io::Error::last_os_error()),
        ),
        0 => {
            die_with_parent();
            if let Err(e) = prepare_root(&sys, &spec) {
                report_and_exit(&mut channel, &e.to_string());
            }
            drop(channel);
            exec(&spec)
        }
        pid => {
            drop(channel);
            std::process::exit(wait_for(pid).unwrap_or_else(|e| {
                eprintln!("kiln: sandbox helper: cannot wait for the command: {e}");
                SETUP_FAILED
            }))
        }
    }
}

/// Keeps the socket on stdin as the report channel (closed on exec) and puts
/// `/dev/null` on stdin, which the command inherits.
fn take_stdin_channel() -> io::Result<UnixStream> {
    let channel = rustix::io::fcntl_dupfd_cloexec(io::stdin().as_fd(), 3)?;
    let null = fs::File::open("/dev/null")?;
    // SAFETY: both are open descriptors; dup2 only replaces fd 0, which
    // `channel` no longer depends on.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(channel))
}

fn report_and_exit(channel: &mut UnixStream, message: &str) -> ! {
    if channel.write_all(message.as_bytes()).is_err() {
        eprintln!("kiln: sandbox helper: {message}");
    }
    std::process::exit(SETUP_FAILED)
}

/// Undoes what kiln's Rust runtime set up and the command must not inherit:
/// an ignored SIGPIPE (it would break `yes | head`), blocked signals, and
/// whatever umask kiln was started with (Docker uses 022).
fn reset_process_state() {
    // SAFETY: plain libc calls on a zeroed, then initialised, sigset.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    rustix::process::umask(Mode::from_raw_mode(0o022));
    die_with_parent();
}

/// Neither the helper nor the command may outlive the process that waits for
/// it. The signal follows the spawning thread, which is safe here because
/// `run` blocks that thread until the helper exits.
fn die_with_parent() {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
}

fn namespaces(network: Network) -> UnshareFlags {
    let base =
        UnshareFlags::NEWNS | UnshareFlags::NEWPID | UnshareFlags::NEWIPC | UnshareFlags::NEWUTS;
    match network {
        Network::Host => base,
        Network::None => base | UnshareFlags::NEWNET,
    }
}

/// Waits for child `pid` and returns its exit code (128 + the signal when
/// a signal ended it).
pub(super) fn wait_for(pid: libc::pid_t) -> Result<i32, rustix::io::Errno> {
    let pid = rustix::process::Pid::from_raw(pid).expect("fork returned a positive pid");
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return Ok(code);
                }
                if let Some(sig) = status.terminating_signal() {
                    return Ok(128 + sig);
                }
            }
            Err(rustix::io::Errno::INTR) | Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Builds the root for PID 1 of the new namespaces, enters it and takes on
/// the command's identity.
fn prepare_root(sys: &impl Syscall, spec: &InitSpec) -> Result<(), SandboxError> {
    let at = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| SandboxError::Io { op, path, source }
    };
    let root = spec.rootfs.as_path();
    let (proc, dev) = (root.join("proc"), root.join("dev"));

    sys.make_private(Path::new("/"))
        .map_err(at("make mounts private under", Path::new("/")))?;
    sys.set_hostname(&spec.hostname).map_err(|e| {
        SandboxError::Setup(format!("cannot set hostname {:?}: {e}", spec.hostname))
    })?;
    if spec.network == Network::None {
        sys.loopback_up()
            .map_err(at("bring up loopback in", Path::new("/proc/self/ns/net")))?;
    }
    // pivot_root needs the new root to be a mount point.
    sys.bind(root, root, true)
        .map_err(at("bind-mount root onto itself", root))?;
    match sys.mount_fs(
        "proc",
        &proc,
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    ) {
        Ok(()) => {}
        // In a user namespace the kernel refuses a new proc while the
        // container's has masked paths (containerd's default), since a fresh
        // one would reveal them: bind the container's, masks included, as
        // rootless BuildKit and buildah do. The step then sees kiln's pids.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => sys
            .bind(Path::new("/proc"), &proc, true)
            .map_err(at("bind-mount /proc (a new proc was refused) on", &proc))?,
        Err(e) => return Err(at("mount proc on", &proc)(e)),
    }
    sys.mount_fs("tmpfs", &dev, MountFlags::NOSUID, "mode=755,size=65536k")
        .map_err(at("mount tmpfs on", &dev))?;
    for name in DEVICES {
        let (host, target) = (Path::new("/dev").join(name), dev.join(name));
        sys.create_file(&target, 0o666)
            .map_err(at("create device mount point", &target))?;
        sys.bind(&host, &target, false)
            .map_err(at("bind-mount host device", &host))?;
    }
    let shm = dev.join("shm");
    sys.mkdir(&shm, 0o1777).map_err(at("create", &shm))?;
    sys.mount_fs(
        "tmpfs",
        &shm,
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "mode=1777",
    )
    .map_err(at("mount tmpfs on", &shm))?;
    for (name, target) in DEV_LINKS {
        let link = dev.join(name);
        sys.symlink(Path::new(target), &link)
            .map_err(at("create symlink", &link))?;
    }
    for name in &spec.etc_binds {
        let (host, target) = (Path::new("/etc").join(name), root.join("etc").join(name));
        sys.bind(&host, &target, false)
            .map_err(at("bind-mount host file", &host))?;
        sys.remount_bind(&target, MountFlags::RDONLY)
            .map_err(at("make read-only", &target))?;
    }
    for (i, m) in spec.mounts.iter().enumerate() {
        mount_one(sys, root, &dev, i, m)?;
    }

    // Stacking the old root on the new one and detaching it leaves no
    // directory behind in the image for the old root.
    sys.chdir(root).map_err(at("enter", root))?;
    sys.pivot_root(Path::new("."), Path::new("."))
        .map_err(at("pivot_root into", root))?;
    sys.unmount_detach(Path::new("."))
        .map_err(at("detach the old root from", root))?;
    let cwd = Path::new(&spec.cwd);
    sys.chdir(Path::new("/"))
        .map_err(at("enter", Path::new("/")))?;
    sys.mkdir_all(cwd, 0o755)
        .map_err(at("create working directory", cwd))?;
    sys.chdir(cwd).map_err(at("enter working directory", cwd))?;

    // Before the identity change: setuid to a non-root user then clears
    // the effective and permitted sets, and the bounding set stays for
    // setuid programs (no_new_privs is left off so that they work).
    if spec.capabilities == Capabilities::Default {
        sys.limit_capabilities(DEFAULT_CAPABILITIES)
            .map_err(|e| SandboxError::Setup(format!("cannot drop capabilities: {e}")))?;
    }
    let u = &spec.user;
    sys.set_groups(&u.groups)
        .map_err(|e| SandboxError::Setup(format!("cannot set groups {:?}: {e}", u.groups)))?;
    sys.set_gid(u.gid)
        .map_err(|e| SandboxError::Setup(format!("cannot set gid {}: {e}", u.gid)))?;
    sys.set_uid(u.uid)
        .map_err(|e| SandboxError::Setup(format!("cannot set uid {}: {e}", u.uid)))?;
    sys.close_fds_on_exec().map_err(|e| {
        SandboxError::Setup(format!(
            "cannot keep kiln's file descriptors from the command: {e} (Linux 5.11 or later is needed)"
        ))
    })?;
    Ok(())
}

/// Mounts one `RUN --mount` on its target (made inside an earlier mount if
/// it lies there; the parent made the others), before `pivot_root` while
/// host sources are still in reach.
fn mount_one(
    sys: &impl Syscall,
    root: &Path,
    dev: &Path,
    index: usize,
    m: &InitMount,
) -> Result<(), SandboxError> {
    let fail = |what: &str, e: io::Error| {
        SandboxError::Setup(format!("RUN --mount target {}: {what}: {e}", m.target))
    };
    let target = sys
        .mount_point(root, &m.target, m.kind.is_file())
        .map_err(|e| fail("cannot make the mount point", e))?;
    match &m.kind {
        InitMountKind::Bind {
            source, read_only, ..
        } => {
            sys.bind(source, &target, false)
                .map_err(|e| fail(&format!("cannot bind {}", source.display()), e))?;
            if *read_only {
                sys.remount_bind(&target, MountFlags::RDONLY)
                    .map_err(|e| fail("cannot make it read-only", e))?;
            }
        }
        InitMountKind::Overlay { lower, upper, work } => {
            sys.mount_overlay(lower, upper, work, &target)
                .map_err(|e| {
                    fail(
                        &format!("cannot mount a writable view of {}", lower.display()),
                        e,
                    )
                })?;
        }
        InitMountKind::Tmpfs { size } => {
            let data = size.map(|s| format!("size={s}")).unwrap_or_default();
            sys.mount_fs("tmpfs", &target, MountFlags::NOSUID, &data)
                .map_err(|e| fail("cannot mount tmpfs", e))?;
        }
        InitMountKind::Secret {
            source,
            mode,
            uid,
            gid,
        } => {
            // Staged in the sandbox's /dev tmpfs and unlinked once bound,
            // so the secret only ever sits in memory and under no other name.
            let staged = dev.join(format!(".kiln-secret-{index}"));
            sys.install_file(source, &staged, *mode, *uid, *gid)
                .map_err(|e| fail(&format!("cannot read secret {}", source.display()), e))?;
            sys.bind(&staged, &target, false)
                .map_err(|e| fail("cannot bind the secret", e))?;
            sys.remount_bind(
                &target,
                MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            )
            .map_err(|e| fail("cannot make the secret read-only", e))?;
            sys.remove_file(&staged)
                .map_err(|e| fail("cannot unlink the staged secret", e))?;
        }
    }
    Ok(())
}

/// Finds `cmd` the way a shell does: as given if it has a `/`, else the
/// first executable match in `path`'s directories (an empty entry is `.`).
pub(super) fn find_program(
    cmd: &str,
    path: &str,
    is_executable: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if cmd.contains('/') {
        return Some(PathBuf::from(cmd));
    }
    path.split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(cmd))
        .find(|candidate| is_executable(candidate))
}

pub(super) fn is_executable(p: &Path) -> bool {
    p.metadata().is_ok_and(|m| m.is_file())
        && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok()
}

/// The exit code and message for a command that could not be exec'd, as a
/// shell reports them.
pub(super) fn exec_failure(cmd: &str, err: &io::Error) -> (i32, String) {
    match err.raw_os_error() {
        Some(libc::ENOENT) if cmd.contains('/') => {
            (127, format!("{cmd}: no such file or directory"))
        }
        Some(libc::ENOENT) => (127, format!("{cmd}: command not found")),
        Some(libc::EACCES) => (126, format!("{cmd}: permission denied")),
        Some(libc::ENOEXEC) => (
            126,
            format!("{cmd}: exec format error (not a binary and no #! line)"),
        ),
        _ => (126, format!("{cmd}: cannot execute: {err}")),
    }
}

fn exec(spec: &InitSpec) -> ! {
    let cmd = &spec.argv[0];
    let path = spec
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let err = match find_program(cmd, path, is_executable) {
        None => io::Error::from_raw_os_error(libc::ENOENT),
        Some(program) => {
            let cstr = |s: &str| CString::new(s).expect("validated free of NUL by run");
            let program = cstr(&program.to_string_lossy());
            let argv: Vec<CString> = spec.argv.iter().map(|a| cstr(a)).collect();
            let envp: Vec<CString> = spec.env.iter().map(|e| cstr(e)).collect();
            let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
            argv_ptrs.push(std::ptr::null());
            let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
            envp_ptrs.push(std::ptr::null());
            // SAFETY: every pointer refers to a live NUL-terminated string and
            // both arrays end with a null pointer.
            unsafe { libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
            io::Error::last_os_error()
        }
    };
    let (code, message) = exec_failure(cmd, &err);
    eprintln!("kiln: RUN: {message}");
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::super::syscall::fake::{Call, RecordingSyscall};
    use super::super::user::ExecUser;
    use super::*;

    fn init_spec(network: Network, etc_binds: &[&str]) -> InitSpec {
        InitSpec {
            rootfs: "/m".into(),
            argv: vec!["sh".into()],
            env: vec![],
            cwd: "/work/dir".into(),
            hostname: "box".into(),
            network,
            user: ExecUser {
                uid: 1000,
                gid: 1001,
                groups: vec![10, 29],
                home: "/home/app".into(),
            },
            etc_binds: etc_binds.iter().map(|s| s.to_string()).collect(),
            mounts: vec![],
            capabilities: Capabilities::Default,
        }
    }

    fn bind(source: &str, target: &str, recursive: bool) -> Call {
        Call::Bind {
            source: source.into(),
            target: target.into(),
            recursive,
        }
    }

    fn mount_fs(fstype: &str, target: &str, flags: MountFlags, data: &str) -> Call {
        Call::MountFs {
            fstype: fstype.into(),
            target: target.into(),
            flags,
            data: data.into(),
        }
    }

    #[test]
    fn root_is_built_in_order_then_pivoted_then_identity_dropped() {
        let sys = RecordingSyscall::default();
        prepare_root(&sys, &init_spec(Network::Host, &["resolv.conf", "hosts"])).unwrap();
        let nosuid_nodev_noexec = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        let mut expected = vec![
            Call::MakePrivate("/".into()),
            Call::SetHostname("box".into()),
            bind("/m", "/m", true),
            mount_fs("proc", "/m/proc", nosuid_nodev_noexec, ""),
            mount_fs(
                "tmpfs",
                "/m/dev",
                MountFlags::NOSUID,
                "mode=755,size=65536k",
            ),
        ];
        for d in DEVICES {
            expected.push(Call::CreateFile(format!("/m/dev/{d}").into(), 0o666));
            expected.push(bind(&format!("/dev/{d}"), &format!("/m/dev/{d}"), false));
        }
        expected.extend([
            Call::Mkdir("/m/dev/shm".into(), 0o1777),
            mount_fs("tmpfs", "/m/dev/shm", nosuid_nodev_noexec, "mode=1777"),
            Call::Symlink("/proc/self/fd".into(), "/m/dev/fd".into()),
            Call::Symlink("/proc/self/fd/0".into(), "/m/dev/stdin".into()),
            Call::Symlink("/proc/self/fd/1".into(), "/m/dev/stdout".into()),
            Call::Symlink("/proc/self/fd/2".into(), "/m/dev/stderr".into()),
            bind("/etc/resolv.conf", "/m/etc/resolv.conf", false),
            Call::RemountBind("/m/etc/resolv.conf".into(), MountFlags::RDONLY),
            bind("/etc/hosts", "/m/etc/hosts", false),
            Call::RemountBind("/m/etc/hosts".into(), MountFlags::RDONLY),
            Call::Chdir("/m".into()),
            Call::PivotRoot(".".into(), ".".into()),
            Call::UnmountDetach(".".into()),
            Call::Chdir("/".into()),
            Call::MkdirAll("/work/dir".into(), 0o755),
            Call::Chdir("/work/dir".into()),
            Call::LimitCapabilities(DEFAULT_CAPABILITIES),
            Call::SetGroups(vec![10, 29]),
            Call::SetGid(1001),
            Call::SetUid(1000),
            Call::CloseFdsOnExec,
        ]);
        assert_eq!(*sys.calls.borrow(), expected);
    }

    #[test]
    fn network_none_brings_loopback_up_and_skipped_etc_files_are_not_bound() {
        let sys = RecordingSyscall::default();
        prepare_root(&sys, &init_spec(Network::None, &[])).unwrap();
        let calls = sys.calls.borrow();
        assert_eq!(calls[2], Call::LoopbackUp);
        assert!(!calls.iter().any(|c| matches!(c, Call::RemountBind(..))));
    }

    #[test]
    fn namespace_flags_follow_the_network_choice() {
        let base = UnshareFlags::NEWNS
            | UnshareFlags::NEWPID
            | UnshareFlags::NEWIPC
            | UnshareFlags::NEWUTS;
        assert_eq!(namespaces(Network::Host), base);
        assert_eq!(namespaces(Network::None), base | UnshareFlags::NEWNET);
    }

    #[test]
    fn a_refused_proc_is_bound_from_kilns_own() {
        let sys = RecordingSyscall::default();
        // After MakePrivate, SetHostname and the root's bind: the proc mount.
        sys.fail_at.set(Some(3));
        prepare_root(&sys, &init_spec(Network::Host, &[])).unwrap();
        let calls = sys.calls.borrow();
        assert_eq!(calls[3], bind("/proc", "/m/proc", true));
        assert!(calls.contains(&Call::SetUid(1000)), "{calls:?}");
    }

    #[test]
    fn a_failed_step_names_itself_and_stops_the_sequence() {
        let sys = RecordingSyscall::default();
        let spec = init_spec(Network::Host, &[]);
        let pivot_index = 5 + 2 * DEVICES.len() + 2 + DEV_LINKS.len() + 1;
        sys.fail_at.set(Some(pivot_index));
        let e = prepare_root(&sys, &spec).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pivot_root into /m: Operation not permitted (os error 1)"
        );
        assert_eq!(sys.calls.borrow().len(), pivot_index);
        assert!(
            !sys.calls
                .borrow()
                .iter()
                .any(|c| matches!(c, Call::SetUid(_)))
        );
    }

    fn with_mounts(mounts: Vec<InitMount>, capabilities: Capabilities) -> InitSpec {
        InitSpec {
            mounts,
            capabilities,
            ..init_spec(Network::Host, &[])
        }
    }

    /// The calls between the last fixed setup step (the `/dev` symlinks)
    /// and `pivot_root`.
    fn mount_calls(calls: &[Call]) -> Vec<Call> {
        let start = calls
            .iter()
            .position(|c| *c == Call::Symlink("/proc/self/fd/2".into(), "/m/dev/stderr".into()))
            .unwrap()
            + 1;
        let end = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot(..)))
            .unwrap()
            - 1;
        calls[start..end].to_vec()
    }

    fn m(target: &str, kind: InitMountKind) -> InitMount {
        InitMount {
            target: target.into(),
            kind,
        }
    }

    #[test]
    fn each_mount_kind_is_mounted_on_its_mount_point_before_pivot_root() {
        let sys = RecordingSyscall::default();
        let spec = with_mounts(
            vec![
                m(
                    "/cache",
                    InitMountKind::Bind {
                        source: "/k/cache".into(),
                        file: false,
                        read_only: false,
                    },
                ),
                m(
                    "/ctx",
                    InitMountKind::Bind {
                        source: "/k/ctx".into(),
                        file: false,
                        read_only: true,
                    },
                ),
                m(
                    "/src",
                    InitMountKind::Overlay {
                        lower: "/k/src".into(),
                        upper: "/k/s/upper".into(),
                        work: "/k/s/work".into(),
                    },
                ),
                m("/t", InitMountKind::Tmpfs { size: Some(4096) }),
                m("/u", InitMountKind::Tmpfs { size: None }),
                m(
                    "/run/secrets/id",
                    InitMountKind::Secret {
                        source: "/host/secret".into(),
                        mode: 0o400,
                        uid: 7,
                        gid: 8,
                    },
                ),
            ],
            Capabilities::Default,
        );
        prepare_root(&sys, &spec).unwrap();
        let point = |t: &str, file| Call::MountPoint {
            target: t.into(),
            file,
        };
        let staged = "/m/dev/.kiln-secret-5";
        assert_eq!(
            mount_calls(&sys.calls.borrow()),
            [
                point("/cache", false),
                bind("/k/cache", "/m/cache", false),
                point("/ctx", false),
                bind("/k/ctx", "/m/ctx", false),
                Call::RemountBind("/m/ctx".into(), MountFlags::RDONLY),
                point("/src", false),
                Call::MountOverlay {
                    lower: "/k/src".into(),
                    upper: "/k/s/upper".into(),
                    work: "/k/s/work".into(),
                    target: "/m/src".into(),
                },
                point("/t", false),
                mount_fs("tmpfs", "/m/t", MountFlags::NOSUID, "size=4096"),
                point("/u", false),
                mount_fs("tmpfs", "/m/u", MountFlags::NOSUID, ""),
                point("/run/secrets/id", true),
                Call::InstallFile {
                    source: "/host/secret".into(),
                    dest: staged.into(),
                    mode: 0o400,
                    uid: 7,
                    gid: 8,
                },
                bind(staged, "/m/run/secrets/id", false),
                Call::RemountBind(
                    "/m/run/secrets/id".into(),
                    MountFlags::RDONLY
                        | MountFlags::NOSUID
                        | MountFlags::NODEV
                        | MountFlags::NOEXEC
                ),
                Call::RemoveFile(staged.into()),
            ]
        );
    }

    #[test]
    fn a_file_bind_asks_for_a_file_mount_point() {
        let sys = RecordingSyscall::default();
        let spec = with_mounts(
            vec![m(
                "/run/buildkit/ssh_agent.0",
                InitMountKind::Bind {
                    source: "/k/ssh-0".into(),
                    file: true,
                    read_only: false,
                },
            )],
            Capabilities::Default,
        );
        prepare_root(&sys, &spec).unwrap();
        assert_eq!(
            mount_calls(&sys.calls.borrow()),
            [
                Call::MountPoint {
                    target: "/run/buildkit/ssh_agent.0".into(),
                    file: true
                },
                bind("/k/ssh-0", "/m/run/buildkit/ssh_agent.0", false),
            ]
        );
    }

    #[test]
    fn a_failed_mount_names_its_target_and_nothing_runs_after_it() {
        let sys = RecordingSyscall::default();
        let spec = with_mounts(
            vec![m("/t", InitMountKind::Tmpfs { size: None })],
            Capabilities::Default,
        );
        let mount_index = 5 + 2 * DEVICES.len() + 2 + DEV_LINKS.len() + 1;
        sys.fail_at.set(Some(mount_index));
        let e = prepare_root(&sys, &spec).unwrap_err().to_string();
        assert_eq!(
            e,
            "cannot set up the RUN sandbox: RUN --mount target /t: cannot mount tmpfs: \
             Operation not permitted (os error 1)"
        );
        assert!(
            !sys.calls
                .borrow()
                .iter()
                .any(|c| matches!(c, Call::PivotRoot(..)))
        );
    }

    #[test]
    fn insecure_keeps_capabilities_and_fds_are_closed_last() {
        let sys = RecordingSyscall::default();
        prepare_root(&sys, &with_mounts(vec![], Capabilities::All)).unwrap();
        let calls = sys.calls.borrow();
        assert!(
            !calls
                .iter()
                .any(|c| matches!(c, Call::LimitCapabilities(_)))
        );
        assert_eq!(calls.last(), Some(&Call::CloseFdsOnExec));
    }

    #[test]
    fn program_lookup_follows_path_like_a_shell() {
        let exists = |p: &Path| p == Path::new("/usr/bin/tool") || p == Path::new("./local");
        assert_eq!(
            find_program("tool", "/bin:/usr/bin", exists),
            Some("/usr/bin/tool".into())
        );
        assert_eq!(
            find_program("local", "/bin::/usr/bin", exists),
            Some("./local".into())
        );
        assert_eq!(find_program("missing", "/bin:/usr/bin", exists), None);
        assert_eq!(
            find_program("./rel/x", "/bin", exists),
            Some("./rel/x".into())
        );
    }

    #[test]
    fn exec_failures_map_to_shell_exit_codes() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(
            exec_failure("nope", &e(libc::ENOENT)),
            (127, "nope: command not found".into())
        );
        assert_eq!(exec_failure("/x/nope", &e(libc::ENOENT)).0, 127);
        assert_eq!(exec_failure("/x", &e(libc::EACCES)).0, 126);
        assert_eq!(exec_failure("/x", &e(libc::ENOEXEC)).0, 126);
    }

    #[test]
    fn init_spec_survives_json() {
        let spec = init_spec(Network::None, &["hosts"]);
        let back: InitSpec = serde_json::from_slice(&serde_json::to_vec(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }
}
