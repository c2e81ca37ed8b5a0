//! Content-addressed storage under the kiln directory: verified blobs,
//! extracted layers and scratch space, shared by concurrent builds.
//!
//! Every write goes to a temporary name inside the store and is renamed into
//! place once complete and verified, so a crash never leaves a half blob
//! under a digest's name.

use crate::digest::{Digest, HashingWriter};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

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
}

impl Store {
    /// Opens (creating if needed) the store inside `kiln_dir`.
    pub fn open(kiln_dir: &Path) -> Result<Store, StoreError> {
        let root = kiln_dir.join("store");
        for sub in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Store { root })
    }

    /// Where the blob with digest `d` lives (it may not exist yet).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// True if the blob is present.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Opens a stored blob for reading.
    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        File::open(self.blob_path(d)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::Missing(d.clone()),
            _ => StoreError::Io {
                path: self.blob_path(d),
                source: e,
            },
        })
    }

    /// Starts writing a new blob; call [`BlobWriter::commit`] to keep it.
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp_dir = self.root.join("tmp");
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

    /// The directory holding the extracted (overlay-format) layer `id`.
    pub fn layer_dir(&self, id: &Digest) -> PathBuf {
        self.root.join("layers").join(id.hex())
    }

    /// A fresh scratch directory on the store's filesystem, removed on drop.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir, StoreError> {
        let tmp_dir = self.root.join("tmp");
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
        let dest = self.layer_dir(id);
        let src = dir.keep();
        match fs::rename(&src, &dest) {
            Ok(()) => Ok(dest),
            Err(_) if dest.is_dir() => {
                fs::remove_dir_all(&src).map_err(io_err(&src))?;
                Ok(dest)
            }
            Err(e) => Err(StoreError::Io {
                path: dest,
                source: e,
            }),
        }
    }
}

/// A blob being written; hashed as it goes.
pub struct BlobWriter {
    inner: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
    store: Store,
}

impl BlobWriter {
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
        let dest = self.store.blob_path(&digest);
        tmp.persist(&dest).map_err(|e| StoreError::Io {
            path: dest,
            source: e.error,
        })?;
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
}
