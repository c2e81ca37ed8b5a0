//! Pulling: resolve a reference to one platform's manifest and config, and
//! download blobs into the store, verifying every digest.

use super::client::{
    PulledImage, Registry, RegistryError, Repo, Response, authorized, error_message, header,
};
use super::mirror;
use super::reference::Reference;
use super::tls::Direction;
use crate::digest::Digest;
use crate::image::config::Platform;
use crate::image::manifest::{self, ACCEPT_MANIFESTS, Descriptor, Manifest, ManifestKind};
use crate::progress::{Counted, Transfer, Verb};
use crate::store::{Store, StoreError};
use std::io;

/// Manifests are small; a bigger answer is not one (containerd uses the same bound).
const MANIFEST_MAX: u64 = 4 * 1024 * 1024;
/// Image configs grow with history but stay far below this.
const CONFIG_MAX: u64 = 32 * 1024 * 1024;
/// An index may point at an index; kiln follows that far and no further.
const INDEX_DEPTH_MAX: usize = 2;

/// A single-platform manifest's digest, the manifest, and its config when
/// asked for.
type Pulled = (Digest, Manifest, Option<Vec<u8>>);

impl Registry {
    /// Resolves `r` to a single-platform image: fetches the manifest (Docker
    /// schema 2 or OCI; from a manifest list or index, the entry for
    /// `platform`, e.g. `linux/amd64` or `linux/arm64/v8`), verifies its
    /// digest, then fetches and verifies the config blob. Mirrors that
    /// apply to `r` are tried first, in order; one that fails (unreachable,
    /// erroring after retries, lacking the image) passes to the next, and
    /// the blobs of `r` then come from the mirror that answered.
    pub fn pull_manifest(
        &self,
        r: &Reference,
        platform: &str,
    ) -> Result<PulledImage, RegistryError> {
        self.pull(r, platform, true)
            .map(|(manifest_digest, manifest, config)| PulledImage {
                manifest_digest,
                manifest,
                config: config.unwrap_or_default(),
            })
    }

    /// [`Registry::pull_manifest`] without the config: the manifest's
    /// digest and the manifest, for callers that need nothing more.
    pub fn pull_manifest_only(
        &self,
        r: &Reference,
        platform: &str,
    ) -> Result<(Digest, Manifest), RegistryError> {
        self.pull(r, platform, false)
            .map(|(digest, manifest, _)| (digest, manifest))
    }

    /// The manifest of `r` for `platform`, and its config when `config`.
    fn pull(&self, r: &Reference, platform: &str, config: bool) -> Result<Pulled, RegistryError> {
        let wanted = Platform::parse(platform)
            .ok_or_else(|| RegistryError::BadPlatform(platform.to_owned()))?;
        let mut failures = Vec::new();
        for c in self.candidates(r)? {
            let Some(mirror) = &c.mirror else {
                if !failures.is_empty() {
                    log::info!("Retrieving image {r} from its registry {}", r.registry);
                }
                return self.pull_manifest_from(&c.reference, &wanted, config);
            };
            log::info!("Retrieving image {r} from mirror {mirror}");
            match self.pull_manifest_from(&c.reference, &wanted, config) {
                Ok(image) => {
                    self.remember_source(r, &c.reference);
                    return Ok(image);
                }
                Err(e) => {
                    log::warn!("Failed to retrieve image {r} from mirror {mirror}: {e}");
                    failures.push(format!("{mirror}: {e}"));
                }
            }
        }
        Err(RegistryError::MirrorsFailed {
            reference: r.to_string(),
            attempts: failures.join("; "),
        })
    }

    /// Where to pull `r` from, mirrors first.
    fn candidates(&self, r: &Reference) -> Result<Vec<mirror::Candidate>, RegistryError> {
        let o = self.options();
        mirror::candidates(
            r,
            &o.mirrors,
            &o.registry_map,
            o.skip_default_registry_fallback,
        )
        .map_err(|(spec, detail)| RegistryError::BadMirror { spec, detail })
    }

    /// [`Registry::pull`] from one place, without mirrors.
    fn pull_manifest_from(
        &self,
        r: &Reference,
        wanted: &Platform,
        with_config: bool,
    ) -> Result<Pulled, RegistryError> {
        let repo = Repo {
            registry: &r.registry,
            repository: &r.repository,
            push: false,
        };
        let mut target = r.tag_or_digest();
        let mut expected: Option<(Digest, Option<u64>)> = r.digest.clone().map(|d| (d, None));
        for _ in 0..=INDEX_DEPTH_MAX {
            let what = format!("manifest {}", display_target(&r.repo_name(), &target));
            let (bytes, content_type) = self.with_retry(
                Direction::Pull,
                &format!("GET {}/v2/{}/manifests/{target}", r.registry, r.repository),
                || self.get_manifest(&repo, r, &target),
            )?;
            let digest = Digest::of(&bytes);
            if let Some((want, size)) = &expected {
                if *want != digest {
                    return Err(RegistryError::DigestMismatch {
                        what,
                        expected: want.clone(),
                        actual: digest,
                    });
                }
                if let Some(size) = size
                    && *size != bytes.len() as u64
                {
                    return Err(RegistryError::SizeMismatch {
                        what,
                        expected: *size,
                        actual: bytes.len() as u64,
                    });
                }
            }
            let parsed =
                manifest::parse_manifest(&bytes, content_type.as_deref()).map_err(|source| {
                    RegistryError::Manifest {
                        reference: r.to_string(),
                        source,
                    }
                })?;
            match parsed {
                ManifestKind::Image(manifest) => {
                    let config = with_config
                        .then(|| {
                            self.with_retry(
                                Direction::Pull,
                                &format!(
                                    "GET {}/v2/{}/blobs/{}",
                                    r.registry, r.repository, manifest.config.digest
                                ),
                                || self.get_config(&repo, &manifest.config),
                            )
                        })
                        .transpose()?;
                    return Ok((digest, *manifest, config));
                }
                ManifestKind::Index(index) => {
                    let entry = manifest::select_platform(&index, wanted).ok_or_else(|| {
                        RegistryError::PlatformNotFound {
                            reference: r.to_string(),
                            platform: wanted.to_string(),
                            available: manifest::platforms_of(&index).join(", "),
                        }
                    })?;
                    log::debug!("{r}: {wanted} is {}", entry.digest);
                    target = entry.digest.to_string();
                    expected = Some((entry.digest.clone(), Some(entry.size)));
                }
            }
        }
        Err(RegistryError::NestedIndex {
            reference: r.to_string(),
        })
    }

    /// Downloads blob `digest` of `r`'s repository into `store`, streaming
    /// and verifying it; does nothing if the store has it. The blob comes
    /// from the mirror that served `r`'s manifest, else from the first of
    /// `r`'s mirrors and registry that has it. A download that breaks off
    /// is retried from the start.
    pub fn fetch_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        store: &Store,
    ) -> Result<(), RegistryError> {
        if store.has_blob(digest) {
            return Ok(());
        }
        let mut sources: Vec<Reference> = self
            .candidates(r)?
            .into_iter()
            .map(|c| c.reference)
            .collect();
        if let Some(served) = self.source_of(r) {
            sources.retain(|s| *s != served);
            sources.insert(0, served);
        }
        let mut result = Ok(());
        for (i, src) in sources.iter().enumerate() {
            result = self.with_retry(
                Direction::Pull,
                &format!("GET {}/v2/{}/blobs/{digest}", src.registry, src.repository),
                || self.fetch_blob_from(src, digest, store),
            );
            match &result {
                Err(e) if i + 1 < sources.len() => {
                    log::warn!(
                        "Failed to fetch blob {digest} from {}: {e}; trying {}",
                        src.repo_name(),
                        sources[i + 1].repo_name()
                    );
                }
                _ => break,
            }
        }
        result
    }

    /// One attempt at [`Registry::fetch_blob`] from `r`'s registry.
    fn fetch_blob_from(
        &self,
        r: &Reference,
        digest: &Digest,
        store: &Store,
    ) -> Result<(), RegistryError> {
        let repo = Repo {
            registry: &r.registry,
            repository: &r.repository,
            push: false,
        };
        let resp = self.get_blob(&repo, digest)?;
        let read_err = |source| RegistryError::Read {
            what: format!("blob {digest} from {}", r.repo_name()),
            source,
        };
        // Without a Content-Length the size is unknown and no progress is shown.
        let size = header(&resp, "content-length").and_then(|l| l.parse().ok());
        let transfer = Transfer::start(Verb::Pull, digest, size.unwrap_or(0));
        let mut writer = store.blob_writer()?;
        let mut body = Counted::new(resp.into_body().into_reader(), &transfer);
        io::copy(&mut body, &mut writer).map_err(read_err)?;
        writer.commit(Some(digest)).map_err(|e| match e {
            StoreError::DigestMismatch { expected, actual } => RegistryError::DigestMismatch {
                what: format!("blob from {}", r.repo_name()),
                expected,
                actual,
            },
            other => other.into(),
        })?;
        transfer.finish();
        Ok(())
    }

    /// The bytes and `Content-Type` of manifest `target` (a tag or digest).
    fn get_manifest(
        &self,
        repo: &Repo<'_>,
        r: &Reference,
        target: &str,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let path = format!("/v2/{}/manifests/{target}", repo.repository);
        let resp = self.send(repo, "GET", &path, &|agent, url, auth| {
            authorized(agent.get(url), auth)
                .header("Accept", ACCEPT_MANIFESTS)
                .call()
        })?;
        match resp.status().as_u16() {
            200 => {}
            404 => {
                return Err(RegistryError::ManifestNotFound {
                    reference: display_target(&r.repo_name(), target),
                    message: error_message(resp),
                });
            }
            _ => return Err(self.status_error(repo, "GET", &path, resp)),
        }
        let content_type = header(&resp, "content-type").map(str::to_owned);
        let advertised = header(&resp, "docker-content-digest").map(str::to_owned);
        let bytes = read_bounded(resp, MANIFEST_MAX, &format!("manifest {}", r.repo_name()))?;
        if let Some(h) = advertised
            && h != Digest::of(&bytes).as_str()
        {
            // Many registries compute this header wrongly; only digests we asked for are binding.
            log::debug!(
                "{}: Docker-Content-Digest {h} differs from the manifest's digest",
                r.repo_name()
            );
        }
        Ok((bytes, content_type))
    }

    /// The config blob of a manifest, verified against its descriptor.
    fn get_config(&self, repo: &Repo<'_>, desc: &Descriptor) -> Result<Vec<u8>, RegistryError> {
        let what = format!(
            "config {} of {}/{}",
            desc.digest, repo.registry, repo.repository
        );
        if desc.size > CONFIG_MAX {
            return Err(RegistryError::TooLarge {
                what,
                size: desc.size,
                max: CONFIG_MAX,
            });
        }
        let resp = self.get_blob(repo, &desc.digest)?;
        let bytes = read_bounded(resp, desc.size, &what)?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: desc.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// A successful `GET` of blob `digest`, its body not yet read.
    fn get_blob(&self, repo: &Repo<'_>, digest: &Digest) -> Result<Response, RegistryError> {
        let path = format!("/v2/{}/blobs/{digest}", repo.repository);
        let resp = self.send(repo, "GET", &path, &|agent, url, auth| {
            authorized(agent.get(url), auth).call()
        })?;
        match resp.status().as_u16() {
            200 => Ok(resp),
            404 => Err(RegistryError::BlobNotFound {
                host: repo.registry.to_owned(),
                repository: repo.repository.to_owned(),
                digest: digest.clone(),
                message: error_message(resp),
            }),
            _ => Err(self.status_error(repo, "GET", &path, resp)),
        }
    }
}

/// `repo:tag` or `repo@digest`.
fn display_target(repo_name: &str, target: &str) -> String {
    if target.starts_with("sha256:") {
        format!("{repo_name}@{target}")
    } else {
        format!("{repo_name}:{target}")
    }
}

/// Reads a body of at most `max` bytes; more is an error, not a truncation.
fn read_bounded(resp: Response, max: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
    let too_large = |size| RegistryError::TooLarge {
        what: what.to_owned(),
        size,
        max,
    };
    if let Some(len) = header(&resp, "content-length").and_then(|l| l.parse::<u64>().ok())
        && len > max
    {
        return Err(too_large(len));
    }
    let mut bytes = Vec::new();
    let mut reader = io::Read::take(resp.into_body().into_reader(), max + 1);
    io::Read::read_to_end(&mut reader, &mut bytes).map_err(|source| RegistryError::Read {
        what: what.to_owned(),
        source,
    })?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_display_as_tag_or_digest() {
        let d = Digest::of(b"");
        assert_eq!(display_target("r.io/a", "v1"), "r.io/a:v1");
        assert_eq!(display_target("r.io/a", d.as_str()), format!("r.io/a@{d}"));
    }
}
