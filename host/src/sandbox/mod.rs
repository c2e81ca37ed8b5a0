//! RUN steps in an isolated root: overlay mounts of the layers, then the
//! command in new mount, pid, ipc and uts namespaces after `pivot_root`,
//! with its `--mount`s and Docker's capability set.
//!
//! kiln first moves itself into a private mount namespace
//! ([`enter_private_mount_namespace`]) so that every mount it makes is
//! invisible to the host and vanishes with it. [`run`] re-executes kiln as a
//! helper ([`INIT_ARG`], handled by [`init_main`]) which builds the sandbox
//! and execs the command.

mod direct;
mod init;
mod mounts;
pub mod overlay;
mod run;
mod scaffold;
mod ssh;
mod syscall;
pub mod user;
mod userns;

pub use direct::{DirectSpec, container_evidence, detect_container, run_direct};
pub use init::{INIT_ARG, init_main};
pub use mounts::{Capabilities, DEFAULT_CAPABILITIES, MountSource, MountSpec};
pub use run::{Network, RunSpec, run};

use rustix::thread::UnshareFlags;
use std::io;
use std::path::{Path, PathBuf};
use syscall::{LinuxSyscall, Syscall};

/// Sandbox failures.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "cannot give kiln a private mount namespace: {0}; isolated RUN needs root (CAP_SYS_ADMIN) \
         or a user namespace, otherwise build in container-root mode"
    )]
    PrivateNamespace(io::Error),
    #[error(
        "kiln cannot isolate RUN steps here: no mount namespace ({mount}; that needs CAP_SYS_ADMIN) \
         and no user namespace to build in ({user})"
    )]
    NoIsolation { mount: io::Error, user: String },
    #[error("kiln entered a user namespace but cannot use it: {0}")]
    UserNamespace(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot mount overlay with {layers} lower layers on {target}: {reason}")]
    Overlay {
        target: PathBuf,
        layers: usize,
        reason: String,
    },
    #[error(
        "cannot mount overlay with {layers} lower layers: the mount options take {len} bytes, over the \
         kernel's limit of {limit}; Linux 6.8 or later takes any number of layers, or squash the base image"
    )]
    TooManyLayers {
        layers: usize,
        len: usize,
        limit: usize,
    },
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("invalid USER {spec:?}: {reason}")]
    InvalidUser { spec: String, reason: String },
    #[error("invalid RUN: {0}")]
    InvalidSpec(String),
    #[error("cannot start the RUN sandbox helper {exe}: {source}")]
    Spawn { exe: PathBuf, source: io::Error },
    #[error("cannot set up the RUN sandbox: {0}")]
    Setup(String),
}

/// How kiln isolates RUN steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// With CAP_SYS_ADMIN, in kiln's own mount namespace.
    Privileged,
    /// Without it, in a user namespace mapping every id to itself.
    UserNamespace,
}

/// Gives kiln the isolation RUN steps need: its own mount namespace with
/// every mount private, or, where CAP_SYS_ADMIN is missing but user
/// namespaces are allowed and overlayfs takes upper directories in
/// `scratch`, a user namespace with one. Call it while the process is
/// single-threaded: namespaces are entered by the calling thread and
/// inherited only by threads and processes created afterwards.
pub fn isolate(scratch: &Path) -> Result<Isolation, SandboxError> {
    let mount = match enter_private_mount_namespace() {
        Ok(()) => return Ok(Isolation::Privileged),
        Err(SandboxError::PrivateNamespace(e)) => e,
        Err(e) => return Err(e),
    };
    if let Err(user) = userns::probe(scratch) {
        return Err(SandboxError::NoIsolation { mount, user });
    }
    userns::enter().map_err(SandboxError::UserNamespace)?;
    crate::layer::use_user_xattrs();
    Ok(Isolation::UserNamespace)
}

/// Moves kiln into its own mount namespace with every mount private, so the
/// mounts it makes later never reach the host. Call it first thing in
/// `main`: the namespace belongs to the calling thread and is inherited only
/// by threads and processes created after it.
pub fn enter_private_mount_namespace() -> Result<(), SandboxError> {
    enter_private_mount_namespace_with(&LinuxSyscall)
}

fn enter_private_mount_namespace_with(sys: &impl Syscall) -> Result<(), SandboxError> {
    sys.unshare(UnshareFlags::NEWNS)
        .map_err(SandboxError::PrivateNamespace)?;
    sys.make_private(Path::new("/"))
        .map_err(SandboxError::PrivateNamespace)
}

#[cfg(test)]
mod tests {
    use super::syscall::fake::{Call, RecordingSyscall};
    use super::*;

    #[test]
    fn private_namespace_unshares_then_makes_root_private() {
        let sys = RecordingSyscall::default();
        enter_private_mount_namespace_with(&sys).unwrap();
        assert_eq!(
            *sys.calls.borrow(),
            [
                Call::Unshare(UnshareFlags::NEWNS),
                Call::MakePrivate("/".into())
            ]
        );
    }

    #[test]
    fn private_namespace_refusal_is_explained() {
        let sys = RecordingSyscall::default();
        sys.fail_at.set(Some(0));
        let e = enter_private_mount_namespace_with(&sys).unwrap_err();
        assert!(e.to_string().contains("container-root mode"), "{e}");
        assert!(sys.calls.borrow().is_empty());
    }
}
