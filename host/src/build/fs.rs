//! Filesystem effects inside an image root: COPY (from the context or a
//! root filesystem), ADD (archives and URLs), write-file and make-dir.
//! Paths resolve as if the root were `/`, so a symlink in the image can
//! never lead a write outside it.

mod add;
mod archive;
mod chmod;
mod copy;
mod source;
mod walk;

pub use add::{Add, SourceKind, source_kind};
pub use chmod::parse_chmod;
pub use copy::Copy;
pub use source::CopySource;
pub use walk::{Planned, copied_xattrs, plan_copy};

use crate::sandbox::user::{parse_group, parse_passwd};
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Component, Path, PathBuf};

/// Filesystem effect failures.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("source {source_path:?} not found in {place}")]
    SourceNotFound {
        source_path: String,
        place: &'static str,
    },
    #[error(
        "When using COPY with more than one source file, the destination must be a directory and end with a /"
    )]
    DestNotDir,
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("invalid --chown {spec:?}: {reason}")]
    Chown { spec: String, reason: String },
    #[error(
        "invalid --chmod {spec:?}: {reason}; use an octal mode such as 755 or symbolic clauses such as u+x,g-w,o=r"
    )]
    Chmod { spec: String, reason: String },
    #[error("invalid source pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("invalid --exclude pattern: {0}")]
    Exclude(crate::dockerfile::IgnoreError),
    #[error("too many levels of symbolic links resolving {0} in the image")]
    SymlinkLoop(String),
    #[error("cannot copy {source_path} onto {dest}: the destination is a directory")]
    FileOntoDir { source_path: String, dest: String },
    #[error(
        "cannot copy directory {source_path} onto {dest}: it exists in the image and is not a directory"
    )]
    DirOntoNonDir { source_path: String, dest: String },
    #[error("cannot extract archive {path}: {message}")]
    Archive { path: String, message: String },
    #[error("cannot download {url}: {reason}; check the URL and that its server is reachable")]
    Download { url: String, reason: String },
    #[error("checksum mismatch for {url}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("invalid --checksum {spec:?}: {reason}")]
    Checksum { spec: String, reason: String },
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
    make_dirs_mode(root, path, Some(owner), 0o755)
}

/// Like [`make_dirs`], with the mode of created directories; without an
/// owner they belong to the builder (root), as in BuildKit.
fn make_dirs_mode(
    root: &Path,
    path: &str,
    owner: Option<Owner>,
    mode: u32,
) -> Result<PathBuf, FsError> {
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
                    fs::set_permissions(&host, fs::Permissions::from_mode(mode))
                        .map_err(io_at(&host))?;
                    if let Some(o) = owner {
                        lchown(&host, Some(o.uid), Some(o.gid)).map_err(io_at(&host))?;
                    }
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
    use std::os::unix::fs::{MetadataExt, symlink};

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
