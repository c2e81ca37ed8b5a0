//! Uploads that start before their blob is complete: a layer goes up in
//! chunks while it is still being compressed, and the session completes once
//! the writer knows the digest. Until then, a push of that blob to that
//! repository waits for the upload instead of sending the blob again.
//!
//! Chunks are only ever read from the growing file, never held in memory,
//! and an upload that fails or whose blob is abandoned is cancelled; the
//! ordinary push then sends the blob from the store.

use super::client::{Registry, RegistryError, Repo};
use super::reference::Reference;
use super::upload::CHUNK_SIZE;
use crate::digest::Digest;
use crate::progress::Transfer;
use std::collections::HashMap;
use std::fs::File;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the uploader looks whether the file has grown by a chunk.
const POLL: Duration = Duration::from_millis(20);

/// `(registry, repository, digest)` of a blob being uploaded.
type Key = (String, String, Digest);

/// Blobs whose streamed upload is completing, each with its done flag.
#[derive(Default)]
pub(super) struct InFlight(Mutex<HashMap<Key, Arc<Done>>>);

#[derive(Default)]
struct Done {
    done: Mutex<bool>,
    cond: Condvar,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Done>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until no streamed upload of `digest` to `repo` is running.
    pub(super) fn wait(&self, repo: &Repo<'_>, digest: &Digest) {
        let key = (
            repo.registry.to_owned(),
            repo.repository.to_owned(),
            digest.clone(),
        );
        let Some(done) = self.lock().get(&key).cloned() else {
            return;
        };
        let mut finished = done.done.lock().unwrap_or_else(PoisonError::into_inner);
        while !*finished {
            finished = done
                .cond
                .wait(finished)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn start(&self, key: Key) {
        self.lock().insert(key, Arc::new(Done::default()));
    }

    fn end(&self, key: &Key) {
        if let Some(done) = self.lock().remove(key) {
            *done.done.lock().unwrap_or_else(PoisonError::into_inner) = true;
            done.cond.notify_all();
        }
    }
}

/// An upload of a blob that is still being written; see the module docs.
pub struct GrowingUpload {
    finished: Option<mpsc::Sender<(Digest, u64)>>,
    registry: Registry,
    repo: (String, String),
    worker: Option<JoinHandle<()>>,
}

impl Registry {
    /// Starts uploading the blob being written to `file` (which only grows)
    /// to `dest`'s repository.
    pub fn upload_growing(&self, dest: &Reference, file: File) -> GrowingUpload {
        let (finished, complete) = mpsc::channel::<(Digest, u64)>();
        let registry = self.clone();
        let repo = (dest.registry.clone(), dest.repository.clone());
        let (host, repository) = repo.clone();
        let worker = std::thread::spawn(move || {
            let repo = Repo {
                registry: &host,
                repository: &repository,
                push: true,
            };
            match registry.stream_blob(&repo, &file, &complete) {
                Ok(Some(digest)) => {
                    log::debug!("{host}/{repository}: blob {digest} uploaded while it was written")
                }
                Ok(None) => log::debug!("{host}/{repository}: streamed upload abandoned"),
                Err(e) => log::debug!(
                    "{host}/{repository}: streamed upload failed ({e}); the push sends the blob"
                ),
            }
            // A blob completed after the upload gave up has waiters too.
            for (digest, _) in complete.iter() {
                registry
                    .in_flight()
                    .end(&(host.clone(), repository.clone(), digest));
            }
        });
        GrowingUpload {
            finished: Some(finished),
            registry: self.clone(),
            repo,
            worker: Some(worker),
        }
    }

    /// The uploader's side: chunks while `file` grows, the rest and the
    /// completing PUT once `complete` says the blob's digest and size.
    fn stream_blob(
        &self,
        repo: &Repo<'_>,
        file: &File,
        complete: &mpsc::Receiver<(Digest, u64)>,
    ) -> Result<Option<Digest>, RegistryError> {
        let mut location = self.open_session(repo)?;
        let quiet = Transfer::quiet();
        let mut offset = 0;
        let sent = |location: &mut String, offset: &mut u64, upto: u64| {
            while *offset < upto {
                let len = CHUNK_SIZE.min(upto - *offset);
                *location = self.patch_chunk(repo, location, file, *offset, len, &quiet)?;
                *offset += len;
            }
            Ok::<(), RegistryError>(())
        };
        let outcome = loop {
            match complete.recv_timeout(POLL) {
                Ok(blob) => break Some(blob),
                Err(RecvTimeoutError::Disconnected) => break None,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let written = file.metadata().map_or(0, |m| m.len());
            // Whole chunks only: a short one would end what the registry
            // expects of a chunked upload.
            let whole = written - written % CHUNK_SIZE;
            if let Err(e) = sent(&mut location, &mut offset, whole) {
                self.cancel_upload(repo, &location);
                return Err(e);
            }
        };
        let Some((digest, size)) = outcome else {
            self.cancel_upload(repo, &location);
            return Ok(None);
        };
        let key = (
            repo.registry.to_owned(),
            repo.repository.to_owned(),
            digest.clone(),
        );
        let result = sent(&mut location, &mut offset, size)
            .and_then(|()| self.complete_upload(repo, &location, &digest, None));
        if result.is_err() {
            self.cancel_upload(repo, &location);
        }
        self.in_flight().end(&key);
        result.map(|()| Some(digest))
    }
}

impl GrowingUpload {
    /// The blob is complete: pushes of it now wait for this upload, which
    /// finishes in the background.
    pub fn complete(mut self, digest: &Digest, size: u64) {
        let key = (self.repo.0.clone(), self.repo.1.clone(), digest.clone());
        self.registry.in_flight().start(key);
        if let Some(finished) = self.finished.take() {
            let _ = finished.send((digest.clone(), size));
        }
        // Detached: the upload ends on its own, and waiters are woken then.
        self.worker.take();
    }
}

impl Drop for GrowingUpload {
    fn drop(&mut self) {
        // Never completed: the blob was abandoned, and so is the upload.
        drop(self.finished.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
