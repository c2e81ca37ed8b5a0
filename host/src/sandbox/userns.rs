//! Isolated mode without CAP_SYS_ADMIN, as in a container that keeps root's
//! other capabilities (containerd's and Docker's defaults without seccomp's
//! namespace rule): kiln moves into a user namespace whose ids map one to
//! one onto the container's, so files keep their owners, and there gets the
//! mounts such a namespace allows: overlay with `userxattr`, bind, tmpfs and
//! `pivot_root`.
//!
//! A namespace's map may only name ids beyond its creator's own when written
//! by a process with CAP_SETUID in the parent namespace, which a process
//! that entered the new one no longer has: so one process unshares and
//! another, still outside, writes its map. Whether overlayfs accepts an
//! upper directory in kiln's store is tried first in a throwaway child,
//! because a process cannot leave a namespace it entered, and a kiln that
//! cannot mount overlays there is better off in container-root mode outside.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::init::wait_for;
use super::overlay;
use super::syscall::{LinuxSyscall, Syscall};
use rustix::thread::UnshareFlags;

/// Every uid (and gid) maps to itself.
const IDENTITY_MAP: &[u8] = b"0 0 4294967295\n";
/// Sent by the process in the new namespace: map me.
const MAP_ME: u8 = b'u';
/// Sent back once the maps are written.
const MAPPED: u8 = b'm';
/// `statfs` type of overlayfs.
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// Tries, in a forked child, a user namespace with the identity map and an
/// overlay whose upper directory lies in `scratch`; the reason on failure.
/// Call it while the process is single-threaded.
pub(super) fn probe(scratch: &Path) -> Result<(), String> {
    fs::create_dir_all(scratch).map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let dirs = tempfile::Builder::new()
        .prefix("userns-probe-")
        .tempdir_in(scratch)
        .map_err(|e| format!("cannot create a directory in {}: {e}", scratch.display()))?;
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir(dirs.path().join(d))
            .map_err(|e| format!("cannot create {}: {e}", dirs.path().join(d).display()))?;
    }
    let (mut outside, mut inside) =
        UnixStream::pair().map_err(|e| format!("cannot create a socket pair: {e}"))?;
    // SAFETY: the caller is single-threaded, so the child may run any code.
    match unsafe { libc::fork() } {
        -1 => Err(format!("cannot fork: {}", io::Error::last_os_error())),
        0 => {
            drop(outside);
            let outcome =
                enter_mapped_by_parent(&mut inside).and_then(|()| try_overlay(dirs.path()));
            let report = outcome.err().unwrap_or_default();
            let _ = inside.write_all(report.as_bytes());
            // SAFETY: _exit skips the parent's atexit handlers and buffers,
            // which belong to the parent.
            unsafe { libc::_exit(0) }
        }
        child => {
            drop(inside);
            let outcome = map_when_asked(&mut outside, child);
            // Only its report matters; it exits right after sending it.
            let _ = wait_for(child);
            outcome
        }
    }
}

/// Moves this process into a new user and mount namespace whose ids map
/// onto the current ones one to one, with every mount private. Call it
/// while the process is single-threaded, after [`probe`] succeeded.
pub(super) fn enter() -> Result<(), String> {
    let (mut outside, mut inside) =
        UnixStream::pair().map_err(|e| format!("cannot create a socket pair: {e}"))?;
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: the caller is single-threaded, so the child may run any code.
    match unsafe { libc::fork() } {
        -1 => Err(format!("cannot fork: {}", io::Error::last_os_error())),
        0 => {
            drop(inside);
            let _ = map_when_asked(&mut outside, me);
            // SAFETY: as in `probe`.
            unsafe { libc::_exit(0) }
        }
        helper => {
            drop(outside);
            let entered = enter_mapped_by_parent(&mut inside);
            drop(inside);
            let _ = wait_for(helper);
            entered?;
            LinuxSyscall
                .make_private(Path::new("/"))
                .map_err(|e| format!("cannot make the mounts private: {e}"))
        }
    }
}

/// Unshares a user and mount namespace and waits for the process at the
/// other end of `channel` to map it.
fn enter_mapped_by_parent(channel: &mut UnixStream) -> Result<(), String> {
    LinuxSyscall
        .unshare(UnshareFlags::NEWUSER | UnshareFlags::NEWNS)
        .map_err(|e| format!("cannot create a user namespace: {e}"))?;
    channel
        .write_all(&[MAP_ME])
        .map_err(|e| format!("cannot ask for an id map: {e}"))?;
    let mut reply = Vec::new();
    channel
        .read_to_end(&mut reply)
        .map_err(|e| format!("cannot read the id map's outcome: {e}"))?;
    match reply.split_first() {
        Some((&MAPPED, _)) => Ok(()),
        _ => Err(String::from_utf8_lossy(&reply).into_owned()),
    }
}

/// Waits for `pid` to ask for its map, writes it and answers; then returns
/// what the other end reports last (empty: success).
fn map_when_asked(channel: &mut UnixStream, pid: libc::pid_t) -> Result<(), String> {
    let mut first = [0u8; 1];
    let asked = channel.read(&mut first).map_err(|e| e.to_string())?;
    if asked == 1 && first[0] == MAP_ME {
        let reply = match write_identity_map(pid) {
            Ok(()) => vec![MAPPED],
            Err(e) => format!(
                "cannot write the identity id map (it needs CAP_SETUID and CAP_SETGID): {e}"
            )
            .into_bytes(),
        };
        channel.write_all(&reply).map_err(|e| e.to_string())?;
        channel
            .shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let mut report = Vec::new();
        channel
            .read_to_end(&mut report)
            .map_err(|e| e.to_string())?;
        return match report.is_empty() {
            true => Ok(()),
            false => Err(String::from_utf8_lossy(&report).into_owned()),
        };
    }
    let mut rest = first[..asked].to_vec();
    channel.read_to_end(&mut rest).map_err(|e| e.to_string())?;
    Err(String::from_utf8_lossy(&rest).into_owned())
}

fn write_identity_map(pid: libc::pid_t) -> io::Result<()> {
    for file in ["uid_map", "gid_map"] {
        fs::write(format!("/proc/{pid}/{file}"), IDENTITY_MAP)?;
    }
    Ok(())
}

/// Mounts and unmounts an overlay of `dir`'s lower/upper/work on merged.
fn try_overlay(dir: &Path) -> Result<(), String> {
    LinuxSyscall
        .make_private(Path::new("/"))
        .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    crate::layer::use_user_xattrs();
    let lower = dir.join("lower");
    overlay::mount_overlay(
        &[lower.as_path()],
        &dir.join("upper"),
        &dir.join("work"),
        &dir.join("merged"),
    )
    .map(drop)
    .map_err(|e| {
        if rustix::fs::statfs(dir).is_ok_and(|s| s.f_type == OVERLAYFS_SUPER_MAGIC) {
            format!(
                "{} is on overlayfs (the container's own root, most likely), which cannot hold \
                 an overlay's upper directory: give kiln's directory a volume (--kaniko-dir or \
                 KANIKO_DIR) to build in isolated mode",
                dir.parent().unwrap_or(dir).display()
            )
        } else {
            e.to_string()
        }
    })
}
