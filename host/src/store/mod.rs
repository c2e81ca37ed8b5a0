//! Content-addressed storage under the kiln directory: verified blobs,
//! extracted layers and scratch space, shared by concurrent builds.
//!
//! Every write goes to a temporary name inside the store and is renamed into
//! place once complete and verified, so a crash never leaves a half blob
//! under a digest's name.
//!
//! Each open [`Store`] registers itself as a live user of the store and
//! marks every blob and layer it touches as used; [`gc`] relies on both to
//! never remove what a running build uses (the protocol is described there).

pub mod gc;

use crate::digest::{Digest, HashingWriter};
use rustix::fs::{AtFlags, FlockOperation, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The lock that orders marking entries used against gc removing them.
const GC_LOCK: &str = "gc.lock";
/// Registrations of the live users of the store, one locked file each.
const LIVE_DIR: &str = "live";
const BLOBS_DIR: &str = "blobs/sha256";
const LAYERS_DIR: &str = "layers";
const TMP_DIR: &str = "tmp";
/// The name suffix of layers extracted for `userxattr` overlays.
const USER_XATTRS_SUFFIX: &str = "-userxattr";

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use kiln directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("blob digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {0} is not in the store")]
    Missing(Digest),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// that is synced and renamed into place, so readers never see a partial
/// file and a crash leaves the old one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(parent)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The content store rooted at `<kiln dir>/store`.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    shared: Arc<Shared>,
}

/// What all clones of one opened store share.
#[derive(Debug)]
struct Shared {
    /// None for a store this process may not write (a read-only base-image
    /// cache): nobody here can remove from it, so there is nothing to mark.
    live: Option<Registration>,
    /// Entries this handle already marked used. Once is enough: gc keeps
    /// every mark newer than the oldest live registration, and ours lives
    /// as long as this handle.
    marked: Mutex<HashSet<PathBuf>>,
}

/// A file in `live/` locked for as long as the store is open; gc reads
/// its modification time as the start of the user's lifetime.
#[derive(Debug)]
struct Registration {
    path: PathBuf,
    _file: File,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Removed while still locked (the file closes after this), so gc
        // never sees an unlocked registration of a live store.
        let _ = fs::remove_file(&self.path);
    }
}

impl Registration {
    /// Creates a registration, locked before it appears under its final
    /// name so gc never mistakes it for the leftover of a crashed build.
    fn create(live: &Path) -> io::Result<Registration> {
        let tmp = tempfile::Builder::new().prefix(".new-").tempfile_in(live)?;
        rustix::fs::flock(tmp.as_file(), FlockOperation::LockExclusive)?;
        let unique = tmp
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(".new-"))
            .unwrap_or("x")
            .to_owned();
        let path = live.join(format!("{}-{unique}", std::process::id()));
        let file = tmp.persist_noclobber(&path).map_err(|e| e.error)?;
        Ok(Registration { path, _file: file })
    }
}

/// Opens (creating if needed) the lock file that orders use marks against
/// gc's removals.
fn open_gc_lock(root: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(root.join(GC_LOCK))
}

/// Sets the access time of `path` to now, leaving its modification time:
/// the store's record of last use (atime alone is unreliable under
/// `relatime`, so kiln writes it explicitly).
fn touch_atime(path: &Path) -> io::Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
        last_modification: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)
}

impl Store {
    /// The scratch directory of the store in `kiln_dir`, where overlay
    /// upper directories are made.
    pub fn scratch_dir(kiln_dir: &Path) -> PathBuf {
        kiln_dir.join("store").join(TMP_DIR)
    }

    /// Opens (creating if needed) the store inside `kiln_dir` and registers
    /// this process as one of its live users until the last clone drops.
    pub fn open(kiln_dir: &Path) -> Result<Store, StoreError> {
        let root = kiln_dir.join("store");
        for sub in [BLOBS_DIR, LAYERS_DIR, TMP_DIR] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let live = root.join(LIVE_DIR);
        let registered = fs::create_dir_all(&live)
            .and_then(|()| open_gc_lock(&root))
            .and_then(|_| Registration::create(&live));
        let registration = match registered {
            Ok(r) => Some(r),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied
                ) =>
            {
                log::debug!("Using {} read-only: {e}", root.display());
                None
            }
            Err(e) => return Err(io_err(&live)(e)),
        };
        Ok(Store {
            root,
            shared: Arc::new(Shared {
                live: registration,
                marked: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// Where the blob with digest `d` lives (it may not exist yet); marks
    /// it used when it exists.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let path = self.blob_file(d);
        self.mark_used(&path);
        path
    }

    fn blob_file(&self, d: &Digest) -> PathBuf {
        self.root.join(BLOBS_DIR).join(d.hex())
    }

    /// True if the blob is present.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Opens a stored blob for reading.
    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(d);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::Missing(d.clone()),
            _ => StoreError::Io { path, source: e },
        })
    }

    /// Starts writing a new blob; call [`BlobWriter::commit`] to keep it.
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp_dir = self.root.join(TMP_DIR);
        let file = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io_err(&tmp_dir))?;
        Ok(BlobWriter {
            inner: HashingWriter::new(BufWriter::with_capacity(1 << 20, file)),
            store: self.clone(),
        })
    }

    /// Stores `bytes` as a blob and returns its digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let mut w = self.blob_writer()?;
        w.write_all(bytes).map_err(io_err(&self.root))?;
        Ok(w.commit(None)?.0)
    }

    /// The directory holding the extracted (overlay-format) layer `id`;
    /// marks it used when it exists.
    pub fn layer_dir(&self, id: &Digest) -> PathBuf {
        let path = self.layer_path(id);
        self.mark_used(&path);
        path
    }

    /// Where layer `id` lives in this process's overlay flavour: a layer
    /// applied in a user namespace marks opaque directories with
    /// `user.overlay.opaque`, which a privileged overlay ignores (and the
    /// reverse), so the two flavours never share a directory.
    fn layer_path(&self, id: &Digest) -> PathBuf {
        let name = if crate::layer::user_xattrs() {
            format!("{}{USER_XATTRS_SUFFIX}", id.hex())
        } else {
            id.hex().to_owned()
        };
        self.root.join(LAYERS_DIR).join(name)
    }

    /// A fresh scratch directory on the store's filesystem, removed on drop.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir, StoreError> {
        let tmp_dir = self.root.join(TMP_DIR);
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&tmp_dir)
            .map_err(io_err(&tmp_dir))
    }

    /// Moves a finished directory into place as layer `id`; a concurrent
    /// build that got there first wins and `dir` is discarded.
    pub fn commit_layer_dir(
        &self,
        dir: tempfile::TempDir,
        id: &Digest,
    ) -> Result<PathBuf, StoreError> {
        let dest = self.layer_path(id);
        let src = dir.keep();
        let _lock = self.lock_shared()?;
        match fs::rename(&src, &dest) {
            Ok(()) => {}
            Err(_) if dest.is_dir() => {
                fs::remove_dir_all(&src).map_err(io_err(&src))?;
            }
            Err(e) => {
                return Err(StoreError::Io {
                    path: dest,
                    source: e,
                });
            }
        }
        self.mark_used_locked(&dest);
        Ok(dest)
    }

    /// Takes the shared side of the gc lock: while it is held, gc cannot
    /// decide on or remove entries.
    fn lock_shared(&self) -> Result<File, StoreError> {
        let lock = open_gc_lock(&self.root).map_err(io_err(&self.root.join(GC_LOCK)))?;
        rustix::fs::flock(&lock, FlockOperation::LockShared)
            .map_err(|e| io_err(&self.root.join(GC_LOCK))(e.into()))?;
        Ok(lock)
    }

    /// Records that this build uses `path` (if it exists), so gc keeps it
    /// for the rest of this store's lifetime.
    fn mark_used(&self, path: &Path) {
        if self.shared.live.is_none() || self.is_marked(path) {
            return;
        }
        match self.lock_shared() {
            Ok(_lock) => self.mark_used_locked(path),
            Err(e) => log::warn!(
                "{e}; kiln gc may remove {} while it is used",
                path.display()
            ),
        }
    }

    fn is_marked(&self, path: &Path) -> bool {
        self.shared
            .marked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(path)
    }

    /// [`Store::mark_used`] for a caller that holds the shared gc lock.
    fn mark_used_locked(&self, path: &Path) {
        match touch_atime(path) {
            Ok(()) => {
                self.shared
                    .marked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(path.to_owned());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "cannot record the use of {} ({e}); kiln gc may remove it while it is used",
                path.display()
            ),
        }
    }
}

/// A blob being written; hashed as it goes.
pub struct BlobWriter {
    inner: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
    store: Store,
}

impl BlobWriter {
    /// A new handle on the file being written, to read it as it grows.
    pub fn reopen(&self) -> io::Result<File> {
        self.inner.get_ref().get_ref().reopen()
    }

    /// Finishes the blob: verifies it against `expected` when given and moves
    /// it under its digest. Returns the digest and size.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64), StoreError> {
        let (buf, digest, size) = self.inner.finish();
        if let Some(exp) = expected
            && *exp != digest
        {
            return Err(StoreError::DigestMismatch {
                expected: exp.clone(),
                actual: digest,
            });
        }
        let tmp = buf
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(io_err(&self.store.root))?;
        let dest = self.store.blob_file(&digest);
        let _lock = self.store.lock_shared()?;
        tmp.persist(&dest).map_err(|e| StoreError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        self.store.mark_used_locked(&dest);
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn blobs_are_verified_and_stored_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.put_bytes(b"abc").unwrap();
        assert_eq!(d, Digest::of(b"abc"));
        let mut s = String::new();
        store.open_blob(&d).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");

        let mut w = store.blob_writer().unwrap();
        w.write_all(b"xyz").unwrap();
        let err = w.commit(Some(&d)).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }));
        assert!(!store.has_blob(&Digest::of(b"xyz")));
    }

    #[test]
    fn an_open_store_is_registered_until_its_last_clone_drops() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("store/live");
        let store = Store::open(dir.path()).unwrap();
        let names: Vec<_> = fs::read_dir(&live).unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(names.len(), 1);
        let name = names[0].file_name().into_string().unwrap();
        assert!(
            name.starts_with(&format!("{}-", std::process::id())),
            "{name}"
        );
        let probe = File::open(names[0].path()).unwrap();
        let busy = rustix::fs::flock(&probe, FlockOperation::NonBlockingLockShared);
        assert!(busy.is_err(), "the registration must be locked");

        let clone = store.clone();
        drop(store);
        assert_eq!(fs::read_dir(&live).unwrap().count(), 1);
        drop(clone);
        assert_eq!(fs::read_dir(&live).unwrap().count(), 0);
    }

    #[test]
    fn using_an_entry_moves_its_access_time_forward() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = Digest::of(b"layer");
        let path = store.root.join(LAYERS_DIR).join(id.hex());
        fs::create_dir(&path).unwrap();
        let old = fs::FileTimes::new().set_accessed(std::time::UNIX_EPOCH);
        File::open(&path).unwrap().set_times(old).unwrap();
        let mtime = fs::metadata(&path).unwrap().mtime();
        assert_eq!(fs::metadata(&path).unwrap().atime(), 0);

        assert_eq!(store.layer_dir(&id), path);
        let meta = fs::metadata(&path).unwrap();
        assert!(meta.atime() > 1_700_000_000, "atime {}", meta.atime());
        assert_eq!(meta.mtime(), mtime, "the modification time is content");
    }
}
