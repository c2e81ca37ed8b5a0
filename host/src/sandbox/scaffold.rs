//! Mount points that the image lacks, created in the merged root before a
//! RUN and removed after it, so the step's upper directory records nothing
//! of kiln's own: `/proc`, `/dev`, the host files bound under `/etc`, and the
//! targets of `RUN --mount` with any parent directories they need.

use super::SandboxError;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Host files under `/etc` shown read-only to RUN so it resolves names as the host does.
const ETC_BINDS: [&str; 2] = ["resolv.conf", "hosts"];

/// A parent directory's times before kiln touched it (`before`) and right
/// after (`after`), to undo kiln's footprint if the command left it alone.
struct DirTimes {
    /// Relative to the root, free of symlinks.
    dir: PathBuf,
    before: rustix::fs::Timestamps,
    after: (i64, i64),
}

/// One entry kiln made, relative to the root and free of symlinks.
struct Created {
    path: PathBuf,
    is_dir: bool,
}

/// The mount points kiln created in the merged root, removed after the
/// command so the step's upper directory records none of them.
pub(super) struct Scaffold {
    /// The root, canonical, so resolved paths can be compared with it.
    root: PathBuf,
    created: Vec<Created>,
    times: Vec<DirTimes>,
    /// Names under `/etc` that RUN gets bound from the host.
    pub(super) etc_binds: Vec<String>,
    removed: bool,
}

fn timestamps(m: &fs::Metadata) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: m.atime(),
            tv_nsec: m.atime_nsec() as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: m.mtime(),
            tv_nsec: m.mtime_nsec() as _,
        },
    }
}

impl Scaffold {
    /// Creates the missing mount points in `rootfs` (a merged overlay):
    /// kiln's own, then each of `mounts` (clean absolute targets in mount
    /// order, with whether the mount point is a file).
    pub(super) fn create(rootfs: &Path, mounts: &[(&str, bool)]) -> Result<Scaffold, SandboxError> {
        let root = fs::canonicalize(rootfs).map_err(io_at("resolve", rootfs))?;
        let mut s = Scaffold {
            root,
            created: Vec::new(),
            times: Vec::new(),
            etc_binds: Vec::new(),
            removed: false,
        };
        let result = s.populate(mounts);
        match result {
            Ok(()) => Ok(s),
            Err(e) => {
                if let Err(cleanup) = s.remove_created() {
                    log::warn!("{cleanup}");
                }
                Err(e)
            }
        }
    }

    fn populate(&mut self, mounts: &[(&str, bool)]) -> Result<(), SandboxError> {
        for name in ["proc", "dev"] {
            let p = self.root.join(name);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(SandboxError::InvalidSpec(format!(
                        "the image's /{name} is not a directory, so it cannot hold the sandbox's {name} mount"
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.make(&p, false)?,
                Err(e) => return Err(io_at("inspect", &p)(e)),
            }
        }

        // An image without a real /etc gets no name service files rather
        // than a /etc made by kiln (a symlinked /etc could lead anywhere).
        let etc = self.root.join("etc");
        if fs::symlink_metadata(&etc).is_ok_and(|m| m.file_type().is_dir()) {
            for name in ETC_BINDS {
                if !Path::new("/etc").join(name).is_file() {
                    continue;
                }
                let p = etc.join(name);
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.file_type().is_file() => {}
                    Ok(_) => {
                        log::debug!(
                            "not binding host /etc/{name}: the image's is not a regular file"
                        );
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => self.make(&p, true)?,
                    Err(e) => return Err(io_at("inspect", &p)(e)),
                }
                self.etc_binds.push(name.to_owned());
            }
        }

        // A target inside an earlier mount gets its mount point there, from
        // the helper, once that mount is in place: never in the image.
        let mut mounted: Vec<PathBuf> = vec![self.root.join("proc"), self.root.join("dev")];
        let root = self.root.clone();
        for &(target, file) in mounts {
            let found = resolve_mount_point(
                &root,
                target,
                file,
                |p| mounted.iter().any(|m| m == p),
                |p, is_file| {
                    self.make(p, is_file)
                        .map_err(|e| io::Error::other(e.to_string()))
                },
            )
            .map_err(|e| SandboxError::Setup(format!("cannot make mount point {target}: {e}")))?;
            mounted.extend(found);
        }

        for t in &mut self.times {
            t.after = mtime(&self.root.join(&t.dir))?;
        }
        Ok(())
    }

    /// Creates `path` (under the root, symlink-free) as an empty directory
    /// or file, noting it and, the first time, its parent's times.
    fn make(&mut self, path: &Path, is_file: bool) -> Result<(), SandboxError> {
        let rel = path
            .strip_prefix(&self.root)
            .expect("mount points resolve inside the root")
            .to_owned();
        let parent = rel.parent().unwrap_or(Path::new("")).to_owned();
        let parent_is_ours = self.created.iter().any(|c| c.path == parent);
        if !parent_is_ours && !self.times.iter().any(|t| t.dir == parent) {
            let meta = stat(&self.root.join(&parent))?;
            self.times.push(DirTimes {
                dir: parent,
                before: timestamps(&meta),
                after: (meta.mtime(), meta.mtime_nsec()),
            });
        }
        let made = if is_file {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(path)
                .map(drop)
        } else {
            fs::DirBuilder::new().mode(0o755).create(path)
        };
        made.map_err(io_at("create mount point", path))?;
        self.created.push(Created {
            path: rel,
            is_dir: !is_file,
        });
        Ok(())
    }

    /// Removes what `create` made and puts back the parents' times unless
    /// the command changed those directories itself.
    pub(super) fn remove(mut self) -> Result<(), SandboxError> {
        let untouched: Vec<bool> = self
            .times
            .iter()
            .map(|t| mtime(&self.root.join(&t.dir)).is_ok_and(|m| m == t.after))
            .collect();
        self.remove_created()?;
        let root = open_root(&self.root)?;
        for (t, untouched) in self.times.iter().zip(untouched) {
            if !untouched {
                continue;
            }
            let at = self.root.join(&t.dir);
            let dir = open_beneath(&root, &t.dir, OFlags::RDONLY | OFlags::DIRECTORY)
                .map_err(io_at("open", &at))?;
            rustix::fs::futimens(&dir, &t.before)
                .map_err(|e| io_at("restore times of", &at)(e.into()))?;
        }
        Ok(())
    }

    /// Removes the created entries, last first. Each is reached without
    /// following symlinks, so a command that swapped a directory for a
    /// symlink cannot point the removal outside the root. A directory the
    /// command put files in stays: they are its output.
    fn remove_created(&mut self) -> Result<(), SandboxError> {
        self.removed = true;
        let root = open_root(&self.root)?;
        for c in self.created.iter().rev() {
            let at = self.root.join(&c.path);
            let parent = c.path.parent().unwrap_or(Path::new(""));
            let name = c.path.file_name().expect("created entries have a name");
            let dir = match open_beneath(&root, parent, OFlags::PATH | OFlags::DIRECTORY) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_at("open parent of mount point", &at)(e)),
            };
            let flags = if c.is_dir {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            match rustix::fs::unlinkat(&dir, name, flags) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(rustix::io::Errno::NOTEMPTY) if c.is_dir => {
                    log::debug!("keeping {}: the command wrote into it", at.display());
                }
                Err(e) => return Err(io_at("remove mount point", &at)(e.into())),
            }
        }
        Ok(())
    }
}

impl Drop for Scaffold {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = self.remove_created()
        {
            log::warn!("{e}");
        }
    }
}

fn open_root(root: &Path) -> Result<OwnedFd, SandboxError> {
    rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_at("open", root)(e.into()))
}

fn open_beneath(root: &OwnedFd, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    Ok(rustix::fs::openat2(
        root,
        rel,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        resolve,
    )?)
}

/// The path an open descriptor refers to.
fn fd_path(fd: impl AsFd) -> io::Result<PathBuf> {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

/// Where `target` (clean, absolute in the image) lands when `root` is `/`:
/// symlinks are followed as the kernel would inside the root, and each
/// missing component is made with `create(host_path, is_file)` (the last as
/// a file when `file`). The walk ends early, with `None`, at the first
/// resolved prefix for which `stop` holds. Returns the host path.
pub(super) fn resolve_mount_point(
    root: &Path,
    target: &str,
    file: bool,
    mut stop: impl FnMut(&Path) -> bool,
    mut create: impl FnMut(&Path, bool) -> io::Result<()>,
) -> io::Result<Option<PathBuf>> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut resolved = fd_path(&root_fd)?;
    let mut lexical = PathBuf::new();
    let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        lexical.push(part);
        let in_root = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(
            &root_fd,
            &lexical,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            in_root,
        ) {
            Ok(fd) => {
                resolved = fd_path(&fd)?;
                let kind = rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
                if !last && kind != rustix::fs::FileType::Directory {
                    return Err(io::Error::other(format!(
                        "/{} is not a directory",
                        lexical.display()
                    )));
                }
            }
            Err(rustix::io::Errno::NOENT) => {
                let next = resolved.join(part);
                if fs::symlink_metadata(&next).is_ok() {
                    return Err(io::Error::other(format!(
                        "/{} is a symlink to a missing path",
                        lexical.display()
                    )));
                }
                create(&next, last && file)?;
                resolved = next;
            }
            Err(e) => return Err(io::Error::other(format!("/{}: {e}", lexical.display()))),
        }
        if stop(&resolved) {
            return Ok(None);
        }
    }
    Ok(Some(resolved))
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn stat(p: &Path) -> Result<fs::Metadata, SandboxError> {
    fs::symlink_metadata(p).map_err(io_at("inspect", p))
}

fn mtime(p: &Path) -> Result<(i64, i64), SandboxError> {
    stat(p).map(|m| (m.mtime(), m.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times_of(p: &Path) -> (i64, i64) {
        mtime(p).unwrap()
    }

    #[test]
    fn scaffold_creates_missing_mount_points_and_removes_them_without_a_trace() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("etc")).unwrap();
        let old = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1000,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 2000,
                tv_nsec: 5,
            },
        };
        for d in [root, &root.join("etc")] {
            rustix::fs::utimensat(rustix::fs::CWD, d, &old, rustix::fs::AtFlags::empty()).unwrap();
        }
        let s = Scaffold::create(root, &[]).unwrap();
        assert!(root.join("proc").is_dir() && root.join("dev").is_dir());
        let host_has = |n: &str| Path::new("/etc").join(n).is_file();
        let expected: Vec<&str> = ETC_BINDS.into_iter().filter(|n| host_has(n)).collect();
        assert_eq!(s.etc_binds, expected);
        for n in &expected {
            assert_eq!(fs::read(root.join("etc").join(n)).unwrap(), b"");
        }
        s.remove().unwrap();
        let left: Vec<_> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["etc"]);
        assert_eq!(fs::read_dir(root.join("etc")).unwrap().count(), 0);
        assert_eq!(times_of(root), (2000, 5));
        assert_eq!(times_of(&root.join("etc")), (2000, 5));
    }

    #[test]
    fn scaffold_keeps_existing_entries_and_skips_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["proc", "dev", "etc"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        fs::write(root.join("etc/hosts"), "127.0.0.1 image\n").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.join("etc/resolv.conf")).unwrap();
        let s = Scaffold::create(root, &[]).unwrap();
        assert!(s.created.is_empty());
        assert!(!s.etc_binds.contains(&"resolv.conf".to_string()));
        s.remove().unwrap();
        assert_eq!(
            fs::read_to_string(root.join("etc/hosts")).unwrap(),
            "127.0.0.1 image\n"
        );
        assert!(root.join("proc").is_dir());
    }

    #[test]
    fn scaffold_refuses_a_symlinked_proc_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::os::unix::fs::symlink("/", root.join("dev")).unwrap();
        let e = Scaffold::create(root, &[])
            .err()
            .expect("symlinked /dev is refused");
        assert!(e.to_string().contains("/dev is not a directory"), "{e}");
        assert!(!root.join("proc").exists());
    }

    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
                if p.symlink_metadata().unwrap().is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn mount_targets_get_parents_in_the_image_but_nothing_inside_other_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["proc", "dev", "opt/real"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("/opt/real", root.join("link")).unwrap();
        let s = Scaffold::create(
            root,
            &[
                ("/cache", false),
                ("/link/x", false),
                ("/proc/sys/y", false),
                ("/run/secrets/s", true),
                ("/cache/sub/z", true),
            ],
        )
        .unwrap();
        assert_eq!(
            tree(root),
            [
                "cache",
                "dev",
                "link",
                "opt",
                "opt/real",
                "opt/real/x",
                "proc",
                "run",
                "run/secrets",
                "run/secrets/s"
            ]
        );
        assert!(root.join("run/secrets/s").is_file());
        s.remove().unwrap();
        assert_eq!(tree(root), ["dev", "link", "opt", "opt/real", "proc"]);
    }

    #[test]
    fn removal_does_not_follow_a_symlink_the_command_swapped_in() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        fs::create_dir_all(outside.join("secrets")).unwrap();
        fs::write(outside.join("secrets/s"), "").unwrap();
        for d in ["proc", "dev"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let s = Scaffold::create(&root, &[("/run/secrets/s", true)]).unwrap();
        fs::rename(root.join("run"), root.join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("run")).unwrap();
        let e = s.remove().unwrap_err().to_string();
        assert!(e.contains("run/secrets/s"), "{e}");
        assert!(
            outside.join("secrets/s").exists(),
            "removal escaped the root"
        );
    }

    #[test]
    fn a_dangling_symlink_on_the_way_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::os::unix::fs::symlink("/nowhere", root.join("link")).unwrap();
        let e = Scaffold::create(root, &[("/link/x", false)])
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("/link is a symlink to a missing path"), "{e}");
        assert_eq!(tree(root), ["link"]);
    }

    #[test]
    fn scaffold_skips_etc_when_the_image_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let s = Scaffold::create(dir.path(), &[]).unwrap();
        assert!(s.etc_binds.is_empty());
        assert!(!dir.path().join("etc").exists());
        s.remove().unwrap();
    }
}
