//! Overlay mounts: extracted layers as read-only lowers and one writable
//! upper directory per step, which then is that step's layer.

use super::SandboxError;
use rustix::fs::{Mode, OFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Options that keep the upper directory plain (only files, directories and
/// whiteouts, no redirect/metacopy xattrs or index entries pointing at the
/// lowers), so it is portable as a layer. Older kernels lack some: each is
/// used only where accepted.
const PORTABLE_OPTIONS: [(&str, &str); 4] = [
    ("index", "off"),
    ("xino", "off"),
    ("redirect_dir", "off"),
    ("metacopy", "off"),
];

/// [`PORTABLE_OPTIONS`] for this process's overlays: with `userxattr` the
/// kernel takes only `redirect_dir=nofollow` (which creates no redirects
/// either) and calls any other value a conflict.
fn portable_options() -> [(&'static str, &'static str); 4] {
    let mut options = PORTABLE_OPTIONS;
    if crate::layer::user_xattrs() {
        options[2].1 = "nofollow";
    }
    options
}

/// `mount(2)` copies its data argument into one page; 4096 is the smallest
/// page Linux runs on, and the terminating NUL needs a byte of it.
const MOUNT_DATA_LIMIT: usize = 4095;

/// A mounted overlay (or bind mount); lazily unmounted when dropped.
#[derive(Debug)]
pub struct OverlayMount {
    target: PathBuf,
    mounted: bool,
}

impl OverlayMount {
    /// The directory the merged view is mounted on.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Leaves the overlay mounted for good, for a mount namespace that
    /// unmounts it by ending (the RUN sandbox's).
    pub(super) fn keep(mut self) {
        self.mounted = false;
    }

    /// Unmounts now, reporting a failure that dropping would only log.
    pub fn unmount(mut self) -> Result<(), SandboxError> {
        self.mounted = false;
        rustix::mount::unmount(&self.target, UnmountFlags::DETACH).map_err(|e| SandboxError::Io {
            op: "unmount overlay",
            path: self.target.clone(),
            source: e.into(),
        })
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = rustix::mount::unmount(&self.target, UnmountFlags::DETACH)
        {
            log::warn!("cannot unmount overlay at {}: {e}", self.target.display());
        }
    }
}

/// Mounts `lowers` (topmost first) under `upper` on `target`, with `work` as
/// overlayfs' scratch directory (same filesystem as `upper`). Without lowers
/// `upper` is bind-mounted instead, since overlayfs needs at least one.
pub fn mount_overlay(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<OverlayMount, SandboxError> {
    let fail = |reason: String| SandboxError::Overlay {
        target: target.to_owned(),
        layers: lowers.len(),
        reason,
    };
    if lowers.is_empty() {
        rustix::mount::mount_bind(upper, target).map_err(|e| {
            fail(format!(
                "cannot bind-mount upper directory {}: {e}",
                upper.display()
            ))
        })?;
    } else if lowerdir_append_supported() {
        mount_with_fs_context(lowers, upper, work, target).map_err(fail)?;
    } else {
        mount_with_option_string(lowers, upper, work, target)?;
    }
    Ok(OverlayMount {
        target: target.to_owned(),
        mounted: true,
    })
}

/// Whether the kernel takes lower layers one at a time (`lowerdir+`, Linux
/// 6.8), which lifts the one-page limit of the `lowerdir=` option string.
fn lowerdir_append_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .and_then(|fs| rustix::mount::fsconfig_set_string(&fs, "lowerdir+", "/"))
            .is_ok()
    })
}

/// Drains the messages the kernel left in a filesystem context, which say
/// far more than the bare errno of a failed `fsconfig`.
fn context_log(fs: BorrowedFd<'_>) -> String {
    let mut lines = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = rustix::io::read(fs, &mut buf) {
        if n == 0 {
            break;
        }
        lines.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned());
    }
    lines.join("; ")
}

fn mount_with_fs_context(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), String> {
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| format!("cannot open an overlay filesystem context: {e}"))?;
    let explain = |what: String, e: rustix::io::Errno| {
        let log = context_log(fs.as_fd());
        if log.is_empty() {
            format!("{what}: {e}")
        } else {
            format!("{what}: {e} ({log})")
        }
    };
    for lower in lowers {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", *lower)
            .map_err(|e| explain(format!("lower directory {}", lower.display()), e))?;
    }
    rustix::mount::fsconfig_set_string(&fs, "upperdir", upper)
        .map_err(|e| explain(format!("upper directory {}", upper.display()), e))?;
    rustix::mount::fsconfig_set_string(&fs, "workdir", work)
        .map_err(|e| explain(format!("work directory {}", work.display()), e))?;
    for (key, value) in portable_options() {
        if let Err(e) = rustix::mount::fsconfig_set_string(&fs, key, value) {
            log::debug!(
                "overlayfs does not take {key}={value} ({e}): {}",
                context_log(fs.as_fd())
            );
        }
    }
    if crate::layer::user_xattrs() {
        rustix::mount::fsconfig_set_flag(&fs, "userxattr")
            .map_err(|e| explain("overlayfs refuses userxattr".to_owned(), e))?;
    }
    // A step's upper dir becomes a layer or is thrown away, never mounted
    // again, so overlayfs need not sync the whole filesystem when it is
    // unmounted: without this, a snapshot waits for every dirty page of the
    // disk. A work dir that served a volatile mount keeps a marker that
    // makes overlayfs refuse it; the marker only guards against reusing a
    // possibly unsynced upper dir after a crash, and ours are kiln's own.
    let marker = work.join("work/incompat/volatile");
    if marker.exists() {
        std::fs::remove_dir_all(&marker)
            .map_err(|e| format!("cannot reuse work directory {}: {e}", work.display()))?;
    }
    if let Err(e) = rustix::mount::fsconfig_set_flag(&fs, "volatile") {
        log::debug!(
            "overlayfs does not take volatile ({e}): {}",
            context_log(fs.as_fd())
        );
    }
    rustix::mount::fsconfig_create(&fs)
        .map_err(|e| explain("cannot create the overlay".to_owned(), e))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| explain("cannot make a mount of the overlay".to_owned(), e))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| format!("cannot attach the overlay: {e}"))
}

/// The `mount(2)` data string. Directories are named through `/proc/self/fd`
/// links of descriptors held open by the caller, so each costs ~17 bytes
/// whatever its real path and never needs escaping.
fn option_string(
    lowers: &[String],
    upper: &str,
    work: &str,
    portable: bool,
) -> Result<String, SandboxError> {
    let mut s = format!(
        "lowerdir={},upperdir={upper},workdir={work}",
        lowers.join(":")
    );
    if portable {
        for (key, value) in portable_options() {
            s.push_str(&format!(",{key}={value}"));
        }
    }
    if crate::layer::user_xattrs() {
        s.push_str(",userxattr");
    }
    if s.len() > MOUNT_DATA_LIMIT {
        return Err(SandboxError::TooManyLayers {
            layers: lowers.len(),
            len: s.len(),
            limit: MOUNT_DATA_LIMIT,
        });
    }
    Ok(s)
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn mount_with_option_string(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), SandboxError> {
    static PORTABLE_ACCEPTED: OnceLock<bool> = OnceLock::new();
    let open = |p: &Path| {
        rustix::fs::open(
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SandboxError::Io {
            op: "open overlay directory",
            path: p.to_owned(),
            source: e.into(),
        })
    };
    let lower_fds = lowers
        .iter()
        .map(|p| open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let (upper_fd, work_fd) = (open(upper)?, open(work)?);
    let lower_paths: Vec<String> = lower_fds.iter().map(fd_path).collect();
    let attempt = |portable: bool| -> Result<io::Result<()>, SandboxError> {
        let data = option_string(
            &lower_paths,
            &fd_path(&upper_fd),
            &fd_path(&work_fd),
            portable,
        )?;
        let data = std::ffi::CString::new(data).expect("fd paths hold no NUL");
        Ok(rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(io::Error::from))
    };
    let result = match PORTABLE_ACCEPTED.get() {
        Some(&portable) => attempt(portable)?,
        None => match attempt(true)? {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let plain = attempt(false)?;
                if plain.is_ok() {
                    log::debug!(
                        "overlayfs refuses {:?}; mounting without them",
                        portable_options()
                    );
                    let _ = PORTABLE_ACCEPTED.set(false);
                }
                plain
            }
            other => {
                if other.is_ok() {
                    let _ = PORTABLE_ACCEPTED.set(true);
                }
                other
            }
        },
    };
    result.map_err(|e| SandboxError::Overlay {
        target: target.to_owned(),
        layers: lowers.len(),
        reason: format!(
            "mount(2) of upper {} over {} lowers: {e}",
            upper.display(),
            lowers.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("/proc/self/fd/{}", 100 + i))
            .collect()
    }

    #[test]
    fn option_string_keeps_lower_order_and_adds_portable_options() {
        let s = option_string(&paths(2), "/u", "/w", true).unwrap();
        assert_eq!(
            s,
            "lowerdir=/proc/self/fd/100:/proc/self/fd/101,upperdir=/u,workdir=/w,\
             index=off,xino=off,redirect_dir=off,metacopy=off"
        );
        assert_eq!(
            option_string(&paths(1), "/u", "/w", false).unwrap(),
            "lowerdir=/proc/self/fd/100,upperdir=/u,workdir=/w"
        );
    }

    #[test]
    fn option_string_over_one_page_names_the_layer_count() {
        assert!(option_string(&paths(200), "/u", "/w", true).is_ok());
        let e = option_string(&paths(260), "/u", "/w", true).unwrap_err();
        assert!(
            matches!(
                e,
                SandboxError::TooManyLayers {
                    layers: 260,
                    limit: 4095,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("260 lower layers"), "{e}");
    }

    /// The pre-6.8 path, which kernels that take `lowerdir+` never reach on
    /// their own. Needs root, as CI has.
    #[test]
    fn option_string_mount_stacks_lowers_topmost_first() {
        super::super::enter_private_mount_namespace().expect("this test needs root");
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        for d in ["top", "bottom", "upper", "work", "merged"] {
            std::fs::create_dir(p(d)).unwrap();
        }
        std::fs::write(p("top/f"), "top").unwrap();
        std::fs::write(p("bottom/f"), "bottom").unwrap();
        std::fs::write(p("bottom/g"), "g").unwrap();
        mount_with_option_string(
            &[&p("top"), &p("bottom")],
            &p("upper"),
            &p("work"),
            &p("merged"),
        )
        .unwrap();
        let mount = OverlayMount {
            target: p("merged"),
            mounted: true,
        };
        assert_eq!(std::fs::read_to_string(p("merged/f")).unwrap(), "top");
        std::fs::write(p("merged/g"), "changed").unwrap();
        mount.unmount().unwrap();
        assert_eq!(std::fs::read_to_string(p("upper/g")).unwrap(), "changed");
        assert_eq!(std::fs::read_to_string(p("bottom/g")).unwrap(), "g");
        assert!(!p("merged/f").exists());
    }
}
