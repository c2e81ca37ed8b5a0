//! Directories that overlayfs copied up without the step changing them.
//!
//! Creating a file in `/etc` copies `/etc` up even when the file is removed
//! again (the sandbox's mount points do this), so an upper dir can hold
//! directories identical to the lower ones. Like BuildKit's differ, such a
//! directory is not a change and must not become a layer entry.

use super::SnapshotError;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Removes, deepest first, every empty directory of `upper` whose owner,
/// mode and mtime equal those of the same directory in the topmost of
/// `lowers` (topmost first) that has the path.
pub fn prune_unchanged_dirs(upper: &Path, lowers: &[&Path]) -> Result<(), SnapshotError> {
    prune(upper, Path::new(""), lowers).map(|_| ())
}

fn err(path: &Path, e: std::io::Error) -> SnapshotError {
    SnapshotError::NotADirectory {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Returns whether `rel` (a directory of upper) is now empty and unchanged.
fn prune(upper: &Path, rel: &Path, lowers: &[&Path]) -> Result<bool, SnapshotError> {
    let dir = upper.join(rel);
    // Taken before pruning children, which touches this directory's mtime.
    let md = fs::symlink_metadata(&dir).map_err(|e| err(&dir, e))?;
    let mut empty = true;
    for entry in fs::read_dir(&dir).map_err(|e| err(&dir, e))? {
        let entry = entry.map_err(|e| err(&dir, e))?;
        let child = rel.join(entry.file_name());
        let is_dir = entry.file_type().map_err(|e| err(&dir, e))?.is_dir();
        if is_dir && prune(upper, &child, lowers)? {
            fs::remove_dir(upper.join(&child)).map_err(|e| err(&child, e))?;
        } else {
            empty = false;
        }
    }
    if !empty || rel.as_os_str().is_empty() {
        return Ok(false);
    }
    if xattr::get(&dir, crate::layer::opaque_xattr())
        .ok()
        .flatten()
        .is_some()
    {
        return Ok(false);
    }
    for lower in lowers {
        match fs::symlink_metadata(lower.join(rel)) {
            Ok(l) if l.is_dir() => {
                return Ok(l.mode() == md.mode()
                    && l.uid() == md.uid()
                    && l.gid() == md.gid()
                    && l.mtime() == md.mtime()
                    && l.mtime_nsec() == md.mtime_nsec());
            }
            // A whiteout or a non-directory: the directory is new here.
            Ok(l) if l.file_type().is_char_device() || !l.is_dir() => return Ok(false),
            _ => {}
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn copy_meta(from: &Path, to: &Path) {
        let md = fs::metadata(from).unwrap();
        fs::set_permissions(to, fs::Permissions::from_mode(md.mode())).unwrap();
        let t = rustix::fs::Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            to,
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
    }

    #[test]
    fn identical_empty_copies_are_pruned_and_changes_kept() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        for d in ["etc", "same/deeper", "changed", "kept"] {
            fs::create_dir_all(lower.path().join(d)).unwrap();
            fs::create_dir_all(upper.path().join(d)).unwrap();
        }
        for d in ["etc", "same/deeper", "same", "kept"] {
            copy_meta(&lower.path().join(d), &upper.path().join(d));
        }
        fs::set_permissions(
            upper.path().join("changed"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        fs::write(upper.path().join("kept/file"), b"x").unwrap();
        fs::create_dir(upper.path().join("new")).unwrap();

        prune_unchanged_dirs(upper.path(), &[lower.path()]).unwrap();
        let mut left: Vec<String> = fs::read_dir(upper.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["changed", "kept", "new"]);
    }
}
