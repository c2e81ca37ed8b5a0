//! Mount points that the image lacks, created in the merged root before a
//! RUN and removed after it, so the step's upper directory records nothing
//! of kiln's own.

use super::SandboxError;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Host files under `/etc` shown read-only to RUN so it resolves names as the host does.
const ETC_BINDS: [&str; 2] = ["resolv.conf", "hosts"];

/// A parent directory's times before kiln touched it (`before`) and right
/// after (`after`), to undo kiln's footprint if the command left it alone.
struct DirTimes {
    dir: PathBuf,
    before: rustix::fs::Timestamps,
    after: (i64, i64),
}

/// The mount points kiln created in the merged root, removed after the
/// command so the step's upper directory records none of them.
pub(super) struct Scaffold {
    created: Vec<PathBuf>,
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
    /// Creates the missing mount points in `rootfs` (a merged overlay).
    pub(super) fn create(rootfs: &Path) -> Result<Scaffold, SandboxError> {
        let mut s = Scaffold {
            created: Vec::new(),
            times: Vec::new(),
            etc_binds: Vec::new(),
            removed: false,
        };
        let result = s.populate(rootfs);
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

    fn populate(&mut self, rootfs: &Path) -> Result<(), SandboxError> {
        let root_meta = stat(rootfs)?;
        let mut made_in_root = false;
        for name in ["proc", "dev"] {
            let p = rootfs.join(name);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(SandboxError::InvalidSpec(format!(
                        "the image's /{name} is not a directory, so it cannot hold the sandbox's {name} mount"
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&p)
                        .map_err(io_at("create mount point", &p))?;
                    self.created.push(p);
                    made_in_root = true;
                }
                Err(e) => return Err(io_at("inspect", &p)(e)),
            }
        }
        if made_in_root {
            self.times.push(DirTimes {
                dir: rootfs.into(),
                before: timestamps(&root_meta),
                after: mtime(rootfs)?,
            });
        }

        let etc = rootfs.join("etc");
        // An image without a real /etc gets no name service files rather
        // than a /etc made by kiln (a symlinked /etc could lead anywhere).
        let Ok(etc_meta) = fs::symlink_metadata(&etc) else {
            return Ok(());
        };
        if !etc_meta.file_type().is_dir() {
            return Ok(());
        }
        let mut made_in_etc = false;
        for name in ETC_BINDS {
            if !Path::new("/etc").join(name).is_file() {
                continue;
            }
            let p = etc.join(name);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_file() => {}
                Ok(_) => {
                    log::debug!("not binding host /etc/{name}: the image's is not a regular file");
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(&p)
                        .map_err(io_at("create mount point", &p))?;
                    self.created.push(p);
                    made_in_etc = true;
                }
                Err(e) => return Err(io_at("inspect", &p)(e)),
            }
            self.etc_binds.push(name.to_owned());
        }
        if made_in_etc {
            self.times.push(DirTimes {
                dir: etc.clone(),
                before: timestamps(&etc_meta),
                after: mtime(&etc)?,
            });
        }
        Ok(())
    }

    /// Removes what `create` made and puts back the parents' times unless
    /// the command changed those directories itself.
    pub(super) fn remove(mut self) -> Result<(), SandboxError> {
        let untouched: Vec<bool> = self
            .times
            .iter()
            .map(|t| mtime(&t.dir).is_ok_and(|m| m == t.after))
            .collect();
        self.remove_created()?;
        for (t, untouched) in self.times.iter().zip(untouched) {
            if untouched {
                rustix::fs::utimensat(
                    rustix::fs::CWD,
                    &t.dir,
                    &t.before,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_at("restore times of", &t.dir)(e.into()))?;
            }
        }
        Ok(())
    }

    fn remove_created(&mut self) -> Result<(), SandboxError> {
        self.removed = true;
        for p in self.created.iter().rev() {
            let r = if p.is_dir() {
                fs::remove_dir(p)
            } else {
                fs::remove_file(p)
            };
            match r {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_at("remove mount point", p)(e));
                }
                _ => {}
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
        let s = Scaffold::create(root).unwrap();
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
        let s = Scaffold::create(root).unwrap();
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
        let e = Scaffold::create(root)
            .err()
            .expect("symlinked /dev is refused");
        assert!(e.to_string().contains("/dev is not a directory"), "{e}");
        assert!(!root.join("proc").exists());
    }

    #[test]
    fn scaffold_skips_etc_when_the_image_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let s = Scaffold::create(dir.path()).unwrap();
        assert!(s.etc_binds.is_empty());
        assert!(!dir.path().join("etc").exists());
        s.remove().unwrap();
    }
}
