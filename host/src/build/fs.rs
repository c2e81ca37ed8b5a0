//! Filesystem effects inside an image root: COPY from the context,
//! write-file and make-dir. Paths resolve as if the root were `/`, so a
//! symlink in the image can never lead a write outside it.

use crate::context::ContextTree;
use crate::sandbox::user::{parse_group, parse_passwd};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};

/// Filesystem effect failures.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("COPY source {0:?} not found in the build context (or excluded by .dockerignore)")]
    SourceNotFound(String),
    #[error(
        "When using COPY with more than one source file, the destination must be a directory and end with a /"
    )]
    DestNotDir,
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("invalid --chown {spec:?}: {reason}")]
    Chown { spec: String, reason: String },
    #[error("invalid --chmod {0:?}: expected an octal mode such as 755")]
    Chmod(String),
    #[error("too many levels of symbolic links resolving {0} in the image")]
    SymlinkLoop(String),
    #[error("cannot copy {source_path} onto {dest}: the destination is a directory")]
    FileOntoDir { source_path: String, dest: String },
    #[error("{0}")]
    Context(#[from] crate::context::ContextError),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Numeric owner of copied files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// root:root, what COPY gives files without `--chown`.
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

/// True when `--chown` names a user or group that needs the image's
/// passwd or group file.
pub fn chown_needs_names(spec: &str) -> bool {
    spec.split(':')
        .any(|p| !p.is_empty() && p.parse::<u32>().is_err())
}

/// Resolves `--chown=user[:group]` (names or ids) against the image's
/// passwd and group files. Without a group the gid equals the uid, as
/// Docker documents.
pub fn resolve_chown(spec: &str, passwd: &str, group: &str) -> Result<Owner, FsError> {
    let err = |reason: String| FsError::Chown {
        spec: spec.into(),
        reason,
    };
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(err("the user part is empty".into()));
    }
    let uid = match user.parse::<u32>() {
        Ok(id) => id,
        Err(_) => parse_passwd(passwd)
            .into_iter()
            .find(|e| e.name == user)
            .map(|e| e.uid)
            .ok_or_else(|| err(format!("no user {user:?} in the image's /etc/passwd")))?,
    };
    let gid = match grp {
        None | Some("") => uid,
        Some(g) => match g.parse::<u32>() {
            Ok(id) => id,
            Err(_) => parse_group(group)
                .into_iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| err(format!("no group {g:?} in the image's /etc/group")))?,
        },
    };
    Ok(Owner { uid, gid })
}

/// Parses `--chmod`'s octal mode.
pub fn parse_chmod(spec: &str) -> Result<u32, FsError> {
    u32::from_str_radix(spec, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| FsError::Chmod(spec.into()))
}

/// Resolves an absolute image path to a host path under `root`, following
/// symlinks the way the kernel would inside a chroot at `root`. The last
/// component is followed only when `follow_last` is set.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf, FsError> {
    let mut pending: Vec<PathBuf> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .rev()
        .collect();
    let mut resolved = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let is_last = pending.is_empty();
        match fs::symlink_metadata(root.join(&candidate)) {
            Ok(md) if md.file_type().is_symlink() && (!is_last || follow_last) => {
                hops += 1;
                if hops > 40 {
                    return Err(FsError::SymlinkLoop(path.into()));
                }
                let target = fs::read_link(root.join(&candidate)).map_err(io_at(&candidate))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(PathBuf::from(n)),
                        Component::ParentDir => pending.push(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Creates `path` (absolute in the image) and its missing parents with mode
/// 0755 and `owner`; existing directories keep their metadata.
pub fn make_dirs(root: &Path, path: &str, owner: Owner) -> Result<PathBuf, FsError> {
    let mut current = String::new();
    for c in Path::new(path).components() {
        if let Component::Normal(n) = c {
            current.push('/');
            current.push_str(&n.to_string_lossy());
            let host = resolve_in_root(root, &current, true)?;
            match fs::symlink_metadata(&host) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => {
                    return Err(FsError::Io {
                        path: current.clone(),
                        source: io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "exists in the image and is not a directory",
                        ),
                    });
                }
                Err(_) => {
                    fs::create_dir(&host).map_err(io_at(&host))?;
                    fs::set_permissions(&host, fs::Permissions::from_mode(0o755))
                        .map_err(io_at(&host))?;
                    lchown(&host, Some(owner.uid), Some(owner.gid)).map_err(io_at(&host))?;
                }
            }
        }
    }
    resolve_in_root(root, path, true)
}

/// Parent of an absolute image path (`/` for top-level entries).
fn image_parent(path: &str) -> String {
    match Path::new(path).parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_string_lossy().into_owned(),
        _ => "/".into(),
    }
}

/// Writes a file with `content` at `path` (absolute in the image).
pub fn write_file(
    root: &Path,
    path: &str,
    content: &[u8],
    mode: u32,
    owner: Owner,
) -> Result<(), FsError> {
    make_dirs(root, &image_parent(path), Owner::ROOT)?;
    let host = resolve_in_root(root, path, false)?;
    remove_non_dir(&host)?;
    fs::write(&host, content).map_err(io_at(&host))?;
    lchown(&host, Some(owner.uid), Some(owner.gid)).map_err(io_at(&host))?;
    fs::set_permissions(&host, fs::Permissions::from_mode(mode)).map_err(io_at(&host))?;
    Ok(())
}

fn remove_non_dir(host: &Path) -> Result<(), FsError> {
    match fs::symlink_metadata(host) {
        Ok(md) if md.is_dir() => Err(FsError::FileOntoDir {
            source_path: String::new(),
            dest: host.display().to_string(),
        }),
        Ok(_) => fs::remove_file(host).map_err(io_at(host)),
        Err(_) => Ok(()),
    }
}

fn has_glob_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// One COPY from the context into the image root.
pub struct Copy<'a> {
    pub context: &'a ContextTree,
    pub sources: &'a [String],
    pub dest: &'a str,
    pub owner: Option<Owner>,
    pub chmod: Option<u32>,
}

impl Copy<'_> {
    /// Runs the copy into `root` with Docker's semantics: a directory source
    /// copies its contents, a destination ending in `/` (or an existing
    /// directory) receives sources by their base names.
    pub fn run(&self, root: &Path) -> Result<(), FsError> {
        let mut matched = Vec::new();
        for src in self.sources {
            if has_glob_meta(src) {
                let found = self.context.glob(src)?;
                if found.is_empty() {
                    return Err(FsError::SourceNotFound(src.clone()));
                }
                matched.extend(found);
            } else {
                if self.context.stat(src).is_none() {
                    return Err(FsError::SourceNotFound(src.clone()));
                }
                matched.push(src.clone());
            }
        }
        let owner = self.owner.unwrap_or(Owner::ROOT);
        let dest_host = resolve_in_root(root, self.dest, true)?;
        let dest_is_dir = self.dest.ends_with('/')
            || fs::metadata(&dest_host)
                .map(|m| m.is_dir())
                .unwrap_or(false);
        if matched.len() > 1 && !dest_is_dir {
            return Err(FsError::DestNotDir);
        }
        for src in &matched {
            let src_host = self.context.host_path(src)?;
            let md = fs::metadata(&src_host).map_err(io_at(&src_host))?;
            let rel = crate::context::clean_relative(src).unwrap_or_default();
            if md.is_dir() {
                let target = make_dirs(root, self.dest, owner)?;
                self.copy_tree(&src_host, &rel, &target, owner)?;
            } else {
                let (dir, name) = if dest_is_dir {
                    let name = src_host
                        .file_name()
                        .map(OsStr::to_owned)
                        .unwrap_or_default();
                    (self.dest.to_owned(), name)
                } else {
                    let name = Path::new(self.dest)
                        .file_name()
                        .map(OsStr::to_owned)
                        .unwrap_or_default();
                    (image_parent(self.dest), name)
                };
                let target_dir = make_dirs(root, &dir, owner)?;
                self.copy_entry(&src_host, &target_dir.join(name), owner)?;
            }
        }
        Ok(())
    }

    fn copy_tree(&self, src: &Path, rel: &Path, dest: &Path, owner: Owner) -> Result<(), FsError> {
        let mut entries: Vec<_> = fs::read_dir(src)
            .map_err(io_at(src))?
            .collect::<Result<_, _>>()
            .map_err(io_at(src))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child_rel = rel.join(entry.file_name());
            let src_child = entry.path();
            let dest_child = dest.join(entry.file_name());
            let ft = entry.file_type().map_err(io_at(&src_child))?;
            // An ignored directory is still created when an exception keeps
            // something below it, as BuildKit does.
            let keep = if ft.is_dir() {
                self.context.keeps_any_below(&child_rel)
            } else {
                !self.context.is_ignored(&child_rel)
            };
            if !keep {
                continue;
            }
            if ft.is_dir() {
                let created = match fs::symlink_metadata(&dest_child) {
                    Ok(md) if md.is_dir() => false,
                    _ => {
                        remove_non_dir(&dest_child)?;
                        fs::create_dir(&dest_child).map_err(io_at(&dest_child))?;
                        true
                    }
                };
                self.copy_tree(&src_child, &child_rel, &dest_child, owner)?;
                // After the children, so that writing them does not change
                // the directory's copied mtime.
                if created {
                    self.set_meta(&src_child, &dest_child, owner)?;
                }
            } else {
                self.copy_entry(&src_child, &dest_child, owner)?;
            }
        }
        Ok(())
    }

    fn copy_entry(&self, src: &Path, dest: &Path, owner: Owner) -> Result<(), FsError> {
        remove_non_dir(dest).map_err(|e| match e {
            FsError::FileOntoDir { dest, .. } => FsError::FileOntoDir {
                source_path: src.display().to_string(),
                dest,
            },
            other => other,
        })?;
        let md = fs::symlink_metadata(src).map_err(io_at(src))?;
        if md.file_type().is_symlink() {
            let target = fs::read_link(src).map_err(io_at(src))?;
            symlink(&target, dest).map_err(io_at(dest))?;
            lchown(dest, Some(owner.uid), Some(owner.gid)).map_err(io_at(dest))?;
            return Ok(());
        }
        if !md.is_file() {
            // Sockets, fifos and devices in a context have no meaning in an image.
            log::warn!(
                "skipping {}: not a regular file, directory or symlink",
                src.display()
            );
            return Ok(());
        }
        fs::copy(src, dest).map_err(io_at(dest))?;
        self.set_meta(src, dest, owner)
    }

    fn set_meta(&self, src: &Path, dest: &Path, owner: Owner) -> Result<(), FsError> {
        let md = fs::symlink_metadata(src).map_err(io_at(src))?;
        lchown(dest, Some(owner.uid), Some(owner.gid)).map_err(io_at(dest))?;
        let mode = self.chmod.unwrap_or(md.mode() & 0o7777);
        fs::set_permissions(dest, fs::Permissions::from_mode(mode)).map_err(io_at(dest))?;
        // COPY keeps the source's modification time, as Docker does.
        let mtime = rustix::fs::Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        };
        let times = rustix::fs::Timestamps {
            last_access: mtime,
            last_modification: mtime,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            dest,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| FsError::Io {
            path: dest.display().to_string(),
            source: e.into(),
        })?;
        Ok(())
    }
}

/// Reads a small text file of the image (passwd, group); empty if absent.
pub fn read_image_file(root: &Path, path: &str) -> Result<String, FsError> {
    let host = resolve_in_root(root, path, true)?;
    match fs::read(&host) {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(FsError::Io {
            path: path.into(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chown_resolves_names_and_defaults_gid_to_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:app\n";
        assert_eq!(
            resolve_chown("app", passwd, group).unwrap(),
            Owner {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(
            resolve_chown("app:staff", passwd, group).unwrap(),
            Owner { uid: 1000, gid: 50 }
        );
        assert_eq!(
            resolve_chown("7:8", "", "").unwrap(),
            Owner { uid: 7, gid: 8 }
        );
        assert!(resolve_chown("nobody", passwd, group).is_err());
        assert!(chown_needs_names("app:1"));
        assert!(!chown_needs_names("1:2"));
    }

    #[test]
    fn chmod_parses_octal_only() {
        assert_eq!(parse_chmod("640").unwrap(), 0o640);
        assert!(parse_chmod("9").is_err());
        assert!(parse_chmod("u+x").is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("real/dir")).unwrap();
        symlink("/real", root.path().join("abs")).unwrap();
        symlink("../../..", root.path().join("real/dir/up")).unwrap();
        assert_eq!(
            resolve_in_root(root.path(), "/abs/dir", true).unwrap(),
            root.path().join("real/dir")
        );
        assert_eq!(
            resolve_in_root(root.path(), "/real/dir/up/etc", true).unwrap(),
            root.path().join("etc")
        );
        assert_eq!(
            resolve_in_root(root.path(), "/abs", false).unwrap(),
            root.path().join("abs")
        );
    }

    #[test]
    fn make_dirs_keeps_existing_metadata() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("keep")).unwrap();
        fs::set_permissions(root.path().join("keep"), fs::Permissions::from_mode(0o700)).unwrap();
        make_dirs(root.path(), "/keep/new/deeper", Owner { uid: 5, gid: 6 }).unwrap();
        let keep = fs::metadata(root.path().join("keep")).unwrap();
        assert_eq!(keep.mode() & 0o7777, 0o700);
        let new = fs::metadata(root.path().join("keep/new/deeper")).unwrap();
        assert_eq!((new.mode() & 0o7777, new.uid(), new.gid()), (0o755, 5, 6));
    }
}
