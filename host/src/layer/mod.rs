//! Layer tars: safe application into overlay-format directories
//! ([`apply`]) and canonical, reproducible writing into the store
//! ([`write`]), gzip or zstd compressed.
//!
//! Extracted layers are kept in overlay format so they stack directly as
//! overlayfs lower dirs: a tar whiteout `.wh.NAME` is a char device 0/0 named
//! `NAME`, and an opaque marker `.wh..wh..opq` is the xattr
//! `trusted.overlay.opaque=y` on its directory (`user.overlay.opaque` when
//! kiln runs in a user namespace, see [`use_user_xattrs`]). Writing does the
//! reverse.

pub mod apply;
pub mod exclude;
mod pgzip;
pub mod write;

pub use apply::{UnpackOptions, UnpackStats, Whiteouts, unpack};
pub use exclude::Exclusions;
pub use write::{Change, Compression, LayerBlob, WriteOptions, write_changes, write_layer};

use crate::store::StoreError;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// Prefix of a tar whiteout entry's file name.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the tar entry that makes its directory opaque.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The xattr overlayfs reads to hide a lower directory's contents.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The same, for overlays mounted with `userxattr` in a user namespace,
/// where `trusted.` xattrs cannot be written.
const USER_OPAQUE_XATTR: &str = "user.overlay.opaque";

/// Set once, before any layer is applied, when kiln has moved into a user
/// namespace; a process-wide fact like its credentials, so a flag rather
/// than a parameter threaded through every layer and store call.
static USER_XATTRS: AtomicBool = AtomicBool::new(false);

/// Makes this process apply, mount and store layers in the `user.overlay.`
/// flavour that a `userxattr` overlay reads.
pub fn use_user_xattrs() {
    USER_XATTRS.store(true, Ordering::SeqCst);
}

/// Whether layers are in the `user.overlay.` flavour (see [`use_user_xattrs`]).
pub fn user_xattrs() -> bool {
    USER_XATTRS.load(Ordering::SeqCst)
}

/// The opaque-directory xattr of this process's overlay flavour.
pub fn opaque_xattr() -> &'static str {
    if user_xattrs() {
        USER_OPAQUE_XATTR
    } else {
        OPAQUE_XATTR
    }
}
/// Xattr namespaces that belong to overlayfs itself, never to image content
/// (`user.overlay.` is what a rootless `userxattr` mount uses).
const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// Xattr names and values, as raw bytes.
type XattrPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Layer failures.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("cannot read the layer tar stream: {0}")]
    Read(#[source] io::Error),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("tar entry {entry:?} has a '..' component: refusing to write outside the destination")]
    UnsafePath { entry: String },
    #[error(
        "tar entry {entry:?} is a whiteout, which is not allowed here (build contexts cannot delete files)"
    )]
    WhiteoutRejected { entry: String },
    #[error(
        "tar entry {entry:?} is a hardlink to {target:?}, which {reason}: check that the archive is complete and its lower layers are applied below it in order"
    )]
    HardlinkTarget {
        entry: String,
        target: String,
        reason: &'static str,
    },
    #[error("tar entry {entry:?}: {reason}")]
    Unsupported { entry: String, reason: String },
    #[error("tar entry {entry:?}: {source}")]
    Entry {
        entry: String,
        #[source]
        source: Box<LayerError>,
    },
    #[error(
        "{path} carries the overlayfs xattr {xattr}, so its content lives partly in a lower layer: mount overlayfs with redirect_dir=off,metacopy=off"
    )]
    OverlayNotSelfContained { path: PathBuf, xattr: String },
    #[error("invalid gzip compression level {0}: use 0 (store) to 9 (smallest)")]
    GzipLevel(u32),
    #[error("invalid zstd compression level {0}: use 1 (fastest) to 22 (smallest)")]
    ZstdLevel(i32),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// True for xattr names that overlayfs owns.
fn is_overlay_xattr(name: &[u8]) -> bool {
    OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use proptest::prelude::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::path::Path;

    /// A comparable description of everything under `root`, sorted by path.
    fn describe(root: &Path) -> Vec<String> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
            let mut names: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for name in names {
                let path = dir.join(&name);
                let rel = format!("{rel}/{}", name.to_string_lossy());
                let m = fs::symlink_metadata(&path).unwrap();
                let body = if m.file_type().is_symlink() {
                    format!("-> {}", fs::read_link(&path).unwrap().display())
                } else if m.is_file() {
                    format!("{:?}", fs::read(&path).unwrap())
                } else {
                    String::new()
                };
                let mtime = if m.file_type().is_symlink() {
                    0
                } else {
                    m.mtime()
                };
                let mut xattrs: Vec<_> = xattr::list(&path).unwrap().collect();
                xattrs.sort();
                let xattrs: Vec<_> = xattrs
                    .iter()
                    .map(|n| (n.clone(), xattr::get(&path, n).unwrap()))
                    .collect();
                out.push(format!(
                    "{rel} mode={:o} uid={} gid={} mtime={mtime} rdev={} nlink={} xattrs={xattrs:?} {body}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.rdev(),
                    m.nlink()
                ));
                if m.is_dir() {
                    walk(&path, &rel, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, "", &mut out);
        out
    }

    fn round_trip(src: &Path) -> Vec<String> {
        let kiln = tempfile::tempdir().unwrap();
        let store = Store::open(kiln.path()).unwrap();
        let blob = write_layer(src, &store, &WriteOptions::default())
            .unwrap()
            .unwrap();
        let dest = tempfile::tempdir().unwrap();
        let opts = UnpackOptions {
            whiteouts: Whiteouts::Overlay,
            preserve_owners: true,
            lowers: Vec::new(),
            exclude: Default::default(),
        };
        unpack(store.open_blob(&blob.digest).unwrap(), dest.path(), &opts).unwrap();
        describe(dest.path())
    }

    fn set_mtime(path: &Path, secs: i64) {
        let t = rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    #[test]
    fn write_then_unpack_gives_back_the_same_tree() {
        let src = tempfile::tempdir().unwrap();
        let r = src.path();
        fs::create_dir_all(r.join("etc/conf.d")).unwrap();
        fs::write(r.join("etc/conf.d/a.conf"), b"key=value\n").unwrap();
        fs::write(r.join("etc/passwd"), b"root:x:0:0\n").unwrap();
        std::os::unix::fs::chown(r.join("etc/passwd"), Some(1000), Some(2000)).unwrap();
        fs::set_permissions(r.join("etc/passwd"), fs::Permissions::from_mode(0o4711)).unwrap();
        fs::set_permissions(r.join("etc/conf.d"), fs::Permissions::from_mode(0o1750)).unwrap();
        symlink("../etc/passwd", r.join("etc/link")).unwrap();
        fs::write(r.join("big"), vec![7u8; 300_000]).unwrap();
        fs::hard_link(r.join("big"), r.join("etc/big-link")).unwrap();
        xattr::set(r.join("big"), "user.note", b"kept").unwrap();
        xattr::set(r.join("etc/conf.d"), OPAQUE_XATTR, b"y").unwrap();
        let whiteout = rustix::fs::makedev(0, 0);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("etc/gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            whiteout,
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o620),
            0,
        )
        .unwrap();
        for p in [
            "etc/conf.d/a.conf",
            "etc/passwd",
            "etc/gone",
            "fifo",
            "etc/conf.d",
            "etc",
            "big",
        ] {
            set_mtime(&r.join(p), 1_600_000_000);
        }
        assert_eq!(round_trip(r), describe(r));
    }

    fn tree_strategy() -> impl Strategy<Value = Vec<(Vec<String>, Vec<u8>, u32)>> {
        let name = "[a-z.\\-_]{1,4}".prop_filter("not . or ..", |n| {
            n != "." && n != ".." && !n.starts_with(".wh.")
        });
        let entry = (
            prop::collection::vec(name, 1..4),
            prop::collection::vec(any::<u8>(), 0..64),
            0u32..0o7777,
        );
        prop::collection::vec(entry, 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn random_trees_round_trip(files in tree_strategy()) {
            let src = tempfile::tempdir().unwrap();
            for (comps, content, mode) in &files {
                let path = comps.iter().fold(src.path().to_path_buf(), |p, c| p.join(c));
                // A name already used as a file cannot also be a directory
                // (or the reverse); such draws are skipped.
                if fs::create_dir_all(path.parent().unwrap()).is_err() || path.is_dir() {
                    continue;
                }
                fs::write(&path, content).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
                set_mtime(&path, 1_000_000);
            }
            let expected = describe(src.path());
            prop_assert_eq!(round_trip(src.path()), expected);
        }
    }
}
