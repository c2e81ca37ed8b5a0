//! Pushing that starts before the build ends. kaniko's push-permission
//! check runs while the build starts, and is awaited before the first step
//! that does real work. Each layer a step of the target's stage chain
//! writes is uploaded to every destination in the background, so pushing
//! the image at the end only checks that the blobs are there and puts the
//! manifest.

use crate::digest::Digest;
use crate::image::manifest::Descriptor;
use crate::layer::write::{BlobWatch, BlobWatcher, Watcher};
use crate::registry::{GrowingUpload, Reference, Registry, RegistryError};
use crate::store::Store;
use std::fs::File;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

/// The background uploader.
pub struct EarlyPush {
    /// Stages whose layers end up in the image (the target and the stages
    /// it is built `FROM`), by index.
    in_image: Vec<bool>,
    queue: Mutex<Option<mpsc::Sender<Descriptor>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl EarlyPush {
    /// Starts the uploader for `destinations`.
    pub fn start(
        registry: Registry,
        destinations: Vec<Reference>,
        store: Store,
        in_image: Vec<bool>,
    ) -> EarlyPush {
        let (queue, layers) = mpsc::channel::<Descriptor>();
        let worker = std::thread::spawn(move || {
            for desc in layers {
                // A failure here costs nothing but time: the image's push
                // uploads whatever is still missing, and reports errors.
                match registry.push_blobs_ahead(&destinations, &[&desc], &store) {
                    Ok(()) => log::debug!("layer {} uploaded ahead of the image", desc.digest),
                    Err(e) => log::debug!("early upload of layer {} failed: {e}", desc.digest),
                }
            }
        });
        EarlyPush {
            in_image,
            queue: Mutex::new(Some(queue)),
            worker: Mutex::new(Some(worker)),
        }
    }

    /// Queues the layer that a step of stage `stage` wrote, if the image
    /// will contain it.
    pub fn layer(&self, stage: usize, desc: &Descriptor) {
        if !self.in_image.get(stage).copied().unwrap_or(false) {
            return;
        }
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queue.as_ref() {
            let _ = queue.send(desc.clone());
        }
    }

    /// Waits for the queued uploads; later layers are not queued.
    pub fn finish(&self) {
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(worker) = worker {
            let _ = worker.join();
        }
    }
}

/// Uploads the layers of the image's stages while they are compressed, to
/// the repository their push (or the layer cache's) reads them from: the
/// push then finds them there, or waits for the last chunks.
pub struct LayerStream {
    /// Stages whose layers end up in the image, by index.
    in_image: Vec<bool>,
    to: Arc<StreamTo>,
}

struct StreamTo {
    registry: Registry,
    repository: Reference,
}

impl LayerStream {
    /// Streams the layers of the stages marked in `in_image` to `repository`.
    pub fn new(registry: Registry, repository: Reference, in_image: Vec<bool>) -> LayerStream {
        LayerStream {
            in_image,
            to: Arc::new(StreamTo {
                registry,
                repository,
            }),
        }
    }

    /// What watches the layers that stage `stage` writes, if they stream.
    pub fn watcher(&self, stage: usize) -> Option<Watcher> {
        let streams = self.in_image.get(stage).copied().unwrap_or(false);
        streams.then(|| Watcher(self.to.clone()))
    }
}

impl BlobWatcher for StreamTo {
    fn watch(&self, file: File) -> Box<dyn BlobWatch> {
        Box::new(self.registry.upload_growing(&self.repository, file))
    }
}

impl BlobWatch for GrowingUpload {
    fn complete(self: Box<Self>, digest: &Digest, size: u64) {
        GrowingUpload::complete(*self, digest, size);
    }
}

/// The push-permission check, running in the background.
pub struct PushCheck {
    running: Mutex<Option<JoinHandle<Result<(), RegistryError>>>>,
}

impl PushCheck {
    /// Starts checking that every destination accepts our pushes.
    pub fn start(registry: Registry, destinations: Vec<Reference>) -> PushCheck {
        let running = std::thread::spawn(move || {
            destinations
                .iter()
                .try_for_each(|dest| registry.check_push_permission(dest))
        });
        PushCheck {
            running: Mutex::new(Some(running)),
        }
    }

    /// Waits for the check and returns its failure; later calls return
    /// at once.
    pub fn wait(&self) -> Result<(), RegistryError> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match running {
            Some(check) => check
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            None => Ok(()),
        }
    }
}

/// Which stages' layers end up in the image: the target, and the stages it
/// is built `FROM`, transitively. `base_of[i]` is stage `i`'s base stage.
pub fn image_chain(target: usize, base_of: &[Option<usize>]) -> Vec<bool> {
    let mut chain = vec![false; base_of.len()];
    let mut at = Some(target);
    while let Some(i) = at {
        if chain[i] {
            break;
        }
        chain[i] = true;
        at = base_of[i];
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_follows_from_stages_only() {
        // 0 <- 2 <- 3 (target); 1 is only copied from.
        let base_of = [None, None, Some(0), Some(2)];
        assert_eq!(image_chain(3, &base_of), [true, false, true, true]);
        assert_eq!(image_chain(1, &base_of), [false, true, false, false]);
    }
}
