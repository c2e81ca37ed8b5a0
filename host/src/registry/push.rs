//! Pushing: every blob of every destination first, the manifests last, so
//! a tag never points at a partial image. Each blob is skipped when the
//! registry has it, mounted when another repository of the same registry
//! does, else uploaded; layers go up a few at a time, the config after them.
//! Destinations sharing a repository share its blobs, and a second
//! repository in a registry mounts from the first. Each blob and each
//! manifest is retried whole on transient failures; large blobs also
//! resume chunk by chunk underneath.

use super::client::{BlobSource, PushImage, Registry, RegistryError, Repo, authorized, header};
use super::reference::Reference;
use super::tls::Direction;
use super::upload::Started;
use crate::digest::Digest;
use crate::image::manifest::{ACCEPT_MANIFESTS, Descriptor};
use crate::store::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, mpsc};

/// Blobs uploaded at once to one repository.
const BLOB_JOBS: usize = 4;

/// How to push, beyond the image itself.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Where blobs already live (e.g. the base image's layers in its
    /// repository): mounted from there when on the destination's registry.
    pub mount_from: BTreeMap<Digest, Reference>,
    /// Log a registry's refusal to overwrite an immutable tag as a warning
    /// instead of failing (`--push-ignore-immutable-tag-errors`).
    pub ignore_immutable_tag_errors: bool,
}

/// A request from an upload worker to bring a blob into the store.
type FetchRequest = (Digest, mpsc::Sender<Result<(), RegistryError>>);

/// One repository to receive the blobs, and an earlier one in the same
/// registry to mount them from.
#[derive(Debug, PartialEq, Eq)]
struct RepoPlan<'a> {
    registry: &'a str,
    repository: &'a str,
    sibling: Option<&'a str>,
}

impl Registry {
    /// Pushes `image` to `dest` (see [`Registry::push_all`]).
    pub fn push(
        &self,
        dest: &Reference,
        image: &PushImage<'_>,
        store: &Store,
    ) -> Result<Digest, RegistryError> {
        self.push_all(
            std::slice::from_ref(dest),
            image,
            &PushOptions::default(),
            store,
        )
    }

    /// Pushes `image` to every destination: the blobs once per repository,
    /// then the manifest under each destination's tag (or digest, when it
    /// has no tag). No manifest goes up until every repository has every
    /// blob. Returns the manifest digest.
    pub fn push_all(
        &self,
        dests: &[Reference],
        image: &PushImage<'_>,
        opts: &PushOptions,
        store: &Store,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(image.manifest);
        let targets = dests
            .iter()
            .map(|d| manifest_target(d, &digest))
            .collect::<Result<Vec<_>, _>>()?;
        let (layers, config) = split_blobs(&image.blobs);
        for plan in repo_plans(dests) {
            let repo = Repo {
                registry: plan.registry,
                repository: plan.repository,
                push: true,
            };
            // A repository that holds this very manifest holds its blobs:
            // the registry checked them when the manifest was put (as
            // go-containerregistry does, an identical rebuild skips them).
            if self.manifest_exists(&repo, &digest) {
                log::debug!(
                    "{}/{} has manifest {digest}: its blobs are there",
                    plan.registry,
                    plan.repository
                );
                continue;
            }
            let mount = |d: &Digest| mount_source(&plan, opts.mount_from.get(d));
            self.push_blobs(&repo, &layers, &mount, image.source, store)?;
            self.push_blobs(&repo, config.as_slice(), &mount, image.source, store)?;
        }
        for (dest, target) in dests.iter().zip(&targets) {
            self.with_retry(Direction::Push, &format!("push of manifest {dest}"), || {
                self.put_manifest(dest, target, image, &digest, opts)
            })?;
        }
        Ok(digest)
    }

    /// Uploads `blobs`, which are in the store, to every destination's
    /// repository ahead of the image, so that a layer travels while later
    /// steps run; the image's own push then finds them there.
    pub fn push_blobs_ahead(
        &self,
        dests: &[Reference],
        blobs: &[&Descriptor],
        store: &Store,
    ) -> Result<(), RegistryError> {
        for plan in repo_plans(dests) {
            let repo = Repo {
                registry: plan.registry,
                repository: plan.repository,
                push: true,
            };
            let mount = |_: &Digest| mount_source(&plan, None);
            self.push_blobs(&repo, blobs, &mount, None, store)?;
        }
        Ok(())
    }

    /// Checks, before a build, that `dest` accepts pushes from us: opens an
    /// upload session and cancels it, as kaniko does.
    pub fn check_push_permission(&self, dest: &Reference) -> Result<(), RegistryError> {
        let repo = Repo {
            registry: &dest.registry,
            repository: &dest.repository,
            push: true,
        };
        let what = format!(
            "POST {}/v2/{}/blobs/uploads/",
            dest.registry, dest.repository
        );
        match self.with_retry(Direction::Push, &what, || self.open_session(&repo)) {
            Ok(location) => {
                self.cancel_upload(&repo, &location);
                Ok(())
            }
            Err(RegistryError::Unauthorized {
                host,
                repository,
                status,
                message,
                config,
            }) => Err(RegistryError::Unauthorized {
                host,
                repository,
                status,
                message: format!(
                    "no push access to {dest} ({message}); checked before building, \
                     --skip-push-permission-check skips the check"
                ),
                config,
            }),
            Err(e) => Err(e),
        }
    }

    /// Pushes `blobs` to `repo`, [`BLOB_JOBS`] at a time. Blobs the store
    /// lacks are asked of `source` on this thread (it need not be `Sync`)
    /// while the workers upload.
    fn push_blobs<'m>(
        &self,
        repo: &Repo<'_>,
        blobs: &[&Descriptor],
        mount: &(dyn Fn(&Digest) -> Option<&'m str> + Sync),
        source: Option<BlobSource<'_>>,
        store: &Store,
    ) -> Result<(), RegistryError> {
        let (tx, rx) = mpsc::channel::<FetchRequest>();
        let workers = (0..BLOB_JOBS.min(blobs.len()))
            .map(|_| tx.clone())
            .collect();
        drop(tx);
        run_bounded(
            blobs,
            workers,
            |desc, fetcher| {
                let fetch = |d: &Digest| {
                    let (reply, answer) = mpsc::channel();
                    // The caller answers every request until the workers
                    // exit; a lost answer surfaces as the blob missing.
                    let _ = fetcher.send((d.clone(), reply));
                    answer.recv().unwrap_or(Ok(()))
                };
                let what = format!(
                    "push of blob {} to {}/{}",
                    desc.digest, repo.registry, repo.repository
                );
                self.with_retry(Direction::Push, &what, || {
                    self.push_blob(repo, desc, mount(&desc.digest), &fetch, store)
                })
            },
            || {
                for (digest, reply) in rx {
                    let result = source.map_or(Ok(()), |s| s(&digest));
                    let _ = reply.send(result);
                }
            },
        )
    }

    /// Pushes one blob: nothing if the registry has it, a mount from
    /// `mount_from` if the registry grants it, else an upload from the store
    /// (fetched first with `fetch` when the store lacks it).
    fn push_blob(
        &self,
        repo: &Repo<'_>,
        desc: &Descriptor,
        mount_from: Option<&str>,
        fetch: &dyn Fn(&Digest) -> Result<(), RegistryError>,
        store: &Store,
    ) -> Result<(), RegistryError> {
        let digest = &desc.digest;
        self.in_flight().wait(repo, digest);
        if self.blob_exists(repo, digest)? {
            log::debug!(
                "{}/{}: blob {digest} exists, skipped",
                repo.registry,
                repo.repository
            );
            return Ok(());
        }
        let location = match self.start_upload(repo, mount_from.map(|from| (digest, from)))? {
            Started::Mounted => return Ok(()),
            Started::Session(location) => location,
        };
        let result = self.upload_from_store(repo, &location, desc, fetch, store);
        if result.is_err() {
            self.cancel_upload(repo, &location);
        }
        result
    }

    /// Uploads `desc` from the store through the session at `location`.
    fn upload_from_store(
        &self,
        repo: &Repo<'_>,
        location: &str,
        desc: &Descriptor,
        fetch: &dyn Fn(&Digest) -> Result<(), RegistryError>,
        store: &Store,
    ) -> Result<(), RegistryError> {
        let digest = &desc.digest;
        if !store.has_blob(digest) {
            fetch(digest)?;
        }
        let blob_path = store.blob_path(digest);
        let size = std::fs::metadata(&blob_path)
            .map_err(|_| RegistryError::BlobMissing {
                repository: format!("{}/{}", repo.registry, repo.repository),
                digest: digest.clone(),
            })?
            .len();
        if size != desc.size {
            return Err(RegistryError::SizeMismatch {
                what: format!("blob {digest} in the store"),
                expected: desc.size,
                actual: size,
            });
        }
        self.upload_blob(repo, location.to_owned(), digest, size, &blob_path)
    }

    /// PUTs the manifest under `target`; an immutable-tag refusal is a
    /// warning when `opts` says so.
    fn put_manifest(
        &self,
        dest: &Reference,
        target: &str,
        image: &PushImage<'_>,
        digest: &Digest,
        opts: &PushOptions,
    ) -> Result<(), RegistryError> {
        let repo = Repo {
            registry: &dest.registry,
            repository: &dest.repository,
            push: true,
        };
        let path = format!("/v2/{}/manifests/{target}", repo.repository);
        let resp = self.send(&repo, "PUT", &path, &|agent, url, auth| {
            authorized(agent.put(url), auth)
                .header("Content-Type", image.manifest_media_type)
                .send(image.manifest)
        })?;
        if !resp.status().is_success() {
            let err = self.status_error(&repo, "PUT", &path, resp);
            if opts.ignore_immutable_tag_errors && is_immutable_tag_error(&err) {
                log::warn!("{dest} is immutable and was left as it is: {err}");
                return Ok(());
            }
            return Err(err);
        }
        if let Some(h) = header(&resp, "docker-content-digest")
            && h != digest.as_str()
        {
            log::warn!(
                "{}: registry reports manifest digest {h}, kiln computed {digest}",
                dest.repo_name()
            );
        }
        Ok(())
    }

    /// True if `repo` has the manifest `digest`; any failure to tell
    /// counts as no, and the blobs are pushed (and checked) one by one.
    fn manifest_exists(&self, repo: &Repo<'_>, digest: &Digest) -> bool {
        let path = format!("/v2/{}/manifests/{digest}", repo.repository);
        self.send(repo, "HEAD", &path, &|agent, url, auth| {
            authorized(agent.head(url), auth)
                .header("Accept", ACCEPT_MANIFESTS)
                .call()
        })
        .is_ok_and(|resp| resp.status().as_u16() == 200)
    }

    /// True if the registry has blob `digest` in `repo`.
    fn blob_exists(&self, repo: &Repo<'_>, digest: &Digest) -> Result<bool, RegistryError> {
        let path = format!("/v2/{}/blobs/{digest}", repo.repository);
        let resp = self.send(repo, "HEAD", &path, &|agent, url, auth| {
            authorized(agent.head(url), auth).call()
        })?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.status_error(repo, "HEAD", &path, resp)),
        }
    }
}

/// The layers, each digest once (an image may repeat a layer, and two
/// workers must not upload one blob), and the config, which `blobs` lists
/// last.
fn split_blobs<'a>(blobs: &[&'a Descriptor]) -> (Vec<&'a Descriptor>, Option<&'a Descriptor>) {
    let Some((config, layers)) = blobs.split_last() else {
        return (Vec::new(), None);
    };
    let mut seen = BTreeSet::from([&config.digest]);
    let layers = layers
        .iter()
        .copied()
        .filter(|d| seen.insert(&d.digest))
        .collect();
    (layers, Some(config))
}

/// Where the manifest goes in `dest`: its tag, else the digest it names,
/// which must be the manifest's.
fn manifest_target(dest: &Reference, digest: &Digest) -> Result<String, RegistryError> {
    match (&dest.tag, &dest.digest) {
        (Some(tag), _) => Ok(tag.clone()),
        (None, Some(want)) if want != digest => Err(RegistryError::DigestMismatch {
            what: format!("manifest to push to {dest}"),
            expected: want.clone(),
            actual: digest.clone(),
        }),
        (None, _) => Ok(digest.to_string()),
    }
}

/// The repositories of `dests` in order, each once, with the first earlier
/// repository of the same registry (which will hold every blob by then).
fn repo_plans(dests: &[Reference]) -> Vec<RepoPlan<'_>> {
    let mut plans: Vec<RepoPlan<'_>> = Vec::new();
    for d in dests {
        if plans
            .iter()
            .any(|p| p.registry == d.registry && p.repository == d.repository)
        {
            continue;
        }
        let sibling = plans
            .iter()
            .find(|p| p.registry == d.registry)
            .map(|p| p.repository);
        plans.push(RepoPlan {
            registry: &d.registry,
            repository: &d.repository,
            sibling,
        });
    }
    plans
}

/// The repository to mount a blob from: the plan's sibling, which holds
/// every blob, else the blob's origin if that is another repository of the
/// same registry.
fn mount_source<'a>(plan: &RepoPlan<'a>, origin: Option<&'a Reference>) -> Option<&'a str> {
    plan.sibling.or_else(|| {
        origin
            .filter(|o| o.registry == plan.registry && o.repository != plan.repository)
            .map(|o| o.repository.as_str())
    })
}

/// Whether a manifest PUT failed because the tag may not be overwritten:
/// ECR answers `TAG_INVALID` (400), Harbor a 412 naming the immutable rule,
/// others 409.
fn is_immutable_tag_error(err: &RegistryError) -> bool {
    match err {
        RegistryError::Status {
            status: 400 | 409 | 412,
            message,
            ..
        } => message.contains("TAG_INVALID") || message.to_lowercase().contains("immutable"),
        _ => false,
    }
}

/// Runs `work` on every item on one thread per context in `contexts`
/// (each thread owns one; it is dropped when the thread ends), while
/// `on_caller` runs on the calling thread. Workers stop taking items after
/// the first error, which is returned.
fn run_bounded<T: Sync, C: Send, E: Send>(
    items: &[T],
    contexts: Vec<C>,
    work: impl Fn(&T, &C) -> Result<(), E> + Sync,
    on_caller: impl FnOnce(),
) -> Result<(), E> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for ctx in contexts {
            let (next, failed, first_error, work) = (&next, &failed, &first_error, &work);
            s.spawn(move || {
                while !failed.load(Ordering::Relaxed) {
                    let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    if let Err(e) = work(item, &ctx) {
                        failed.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert(e);
                        break;
                    }
                }
            });
        }
        on_caller();
    });
    match first_error
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn repositories_are_pushed_once_and_later_ones_mount_from_the_first() {
        let dests = [
            r("reg.io/a:1"),
            r("reg.io/a:2"),
            r("other.io/a:1"),
            r("reg.io/b:1"),
            r("reg.io/c@sha256:0000000000000000000000000000000000000000000000000000000000000000"),
        ];
        let plans = repo_plans(&dests);
        let plan = |registry, repository, sibling| RepoPlan {
            registry,
            repository,
            sibling,
        };
        assert_eq!(
            plans,
            [
                plan("reg.io", "a", None),
                plan("other.io", "a", None),
                plan("reg.io", "b", Some("a")),
                plan("reg.io", "c", Some("a")),
            ]
        );
    }

    #[test]
    fn blobs_mount_from_their_origin_only_within_one_registry() {
        let plans_dests = [r("reg.io/app:1")];
        let plan = &repo_plans(&plans_dests)[0];
        let base = r("reg.io/library/base:3");
        let elsewhere = r("hub.io/library/base:3");
        let same_repo = r("reg.io/app:0");
        assert_eq!(mount_source(plan, Some(&base)), Some("library/base"));
        assert_eq!(mount_source(plan, Some(&elsewhere)), None);
        assert_eq!(mount_source(plan, Some(&same_repo)), None);
        assert_eq!(mount_source(plan, None), None);
        let sibling = RepoPlan {
            sibling: Some("first"),
            ..*plan
        };
        assert_eq!(mount_source(&sibling, Some(&base)), Some("first"));
    }

    #[test]
    fn repeated_layers_are_pushed_once_and_the_config_last() {
        let desc = |b: &[u8]| Descriptor {
            media_type: String::new(),
            digest: Digest::of(b),
            size: b.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
        };
        let (a, b, config) = (desc(b"a"), desc(b"b"), desc(b"c"));
        let (layers, last) = split_blobs(&[&a, &b, &a, &b, &config]);
        assert_eq!(layers, [&a, &b]);
        assert_eq!(last, Some(&config));
        assert_eq!(split_blobs(&[]), (vec![], None));
    }

    #[test]
    fn manifests_go_under_the_tag_or_the_matching_digest() {
        let d = Digest::of(b"m");
        assert_eq!(manifest_target(&r("reg.io/a:v1"), &d).unwrap(), "v1");
        assert_eq!(
            manifest_target(&r(&format!("reg.io/a@{d}")), &d).unwrap(),
            d.as_str()
        );
        let other = Digest::of(b"n");
        let err = manifest_target(&r(&format!("reg.io/a@{other}")), &d).unwrap_err();
        assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn immutable_tag_refusals_are_recognised() {
        let status = |status, message: &str| RegistryError::Status {
            host: "r".into(),
            method: "PUT",
            path: "/v2/a/manifests/v1".into(),
            status,
            message: message.into(),
        };
        let ecr = "TAG_INVALID: The image tag 'v1' already exists in the 'a' repository and \
                   cannot be overwritten because the repository is immutable.";
        let harbor =
            "PRECONDITION: Failed to process request due to 'a:v1' configured as immutable.";
        assert!(is_immutable_tag_error(&status(400, ecr)));
        assert!(is_immutable_tag_error(&status(412, harbor)));
        assert!(is_immutable_tag_error(&status(409, "tag is Immutable")));
        assert!(!is_immutable_tag_error(&status(500, harbor)));
        assert!(!is_immutable_tag_error(&status(
            400,
            "MANIFEST_INVALID: manifest invalid"
        )));
        assert!(!is_immutable_tag_error(&RegistryError::Protocol {
            host: "r".into(),
            detail: "immutable".into(),
        }));
    }

    #[test]
    fn bounded_work_never_exceeds_its_threads_and_does_everything() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let done = Mutex::new(Vec::new());
        let items: Vec<u32> = (0..20).collect();
        run_bounded(
            &items,
            vec![(); 3],
            |i, _| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(2));
                running.fetch_sub(1, Ordering::SeqCst);
                done.lock().unwrap().push(*i);
                Ok::<(), ()>(())
            },
            || {},
        )
        .unwrap();
        let mut done = done.into_inner().unwrap();
        done.sort_unstable();
        assert_eq!(done, items);
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert!(peak.load(Ordering::SeqCst) >= 2, "work ran in parallel");
    }

    #[test]
    fn bounded_work_stops_at_the_first_error() {
        let started = AtomicUsize::new(0);
        let items: Vec<u32> = (0..10).collect();
        let result = run_bounded(
            &items,
            vec![()],
            |i, _| {
                started.fetch_add(1, Ordering::SeqCst);
                if *i == 3 { Err(*i) } else { Ok(()) }
            },
            || {},
        );
        assert_eq!(result, Err(3));
        assert_eq!(started.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn workers_fetch_through_the_calling_thread() {
        // A Cell makes the source !Sync, as the build's blob sources may be.
        let served = Cell::new(0);
        let source = |_: &Digest| -> Result<(), RegistryError> {
            served.set(served.get() + 1);
            Ok(())
        };
        let items = [Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c")];
        let (tx, rx) = mpsc::channel::<FetchRequest>();
        let workers = vec![tx.clone(), tx];
        run_bounded(
            &items,
            workers,
            |d, fetcher| {
                let (reply, answer) = mpsc::channel();
                fetcher.send((d.clone(), reply)).unwrap();
                answer.recv().unwrap()
            },
            || {
                for (d, reply) in rx {
                    reply.send(source(&d)).unwrap();
                }
            },
        )
        .unwrap();
        assert_eq!(served.get(), 3);
    }
}
