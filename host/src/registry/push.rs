//! Pushing: every blob first (skipped when the registry has it, else one
//! monolithic upload streamed from the store), the manifest last, so a tag
//! never points at a partial image.

use super::client::{PushImage, Registry, RegistryError, Repo, authorized, header};
use super::reference::Reference;
use crate::digest::Digest;
use crate::image::manifest::Descriptor;
use crate::store::Store;
use std::fs::File;

impl Registry {
    /// Pushes `image` to `dest`: blobs in order (layers, then config), then
    /// the manifest under `dest`'s tag, or its digest when it has no tag.
    /// Returns the manifest digest.
    pub fn push(
        &self,
        dest: &Reference,
        image: &PushImage<'_>,
        store: &Store,
    ) -> Result<Digest, RegistryError> {
        let repo = Repo {
            registry: &dest.registry,
            repository: &dest.repository,
            push: true,
        };
        let digest = Digest::of(image.manifest);
        let target = match (&dest.tag, &dest.digest) {
            (Some(tag), _) => tag.clone(),
            (None, Some(want)) if *want != digest => {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest to push to {dest}"),
                    expected: want.clone(),
                    actual: digest,
                });
            }
            (None, _) => digest.to_string(),
        };
        for desc in &image.blobs {
            self.push_blob(&repo, desc, image, store)?;
        }
        let path = format!("/v2/{}/manifests/{target}", repo.repository);
        let resp = self.send(&repo, "PUT", &path, &|agent, url, auth| {
            authorized(agent.put(url), auth)
                .header("Content-Type", image.manifest_media_type)
                .send(image.manifest)
        })?;
        if !resp.status().is_success() {
            return Err(self.status_error(&repo, "PUT", &path, resp));
        }
        if let Some(h) = header(&resp, "docker-content-digest")
            && h != digest.as_str()
        {
            log::warn!(
                "{}: registry reports manifest digest {h}, kiln computed {digest}",
                dest.repo_name()
            );
        }
        Ok(digest)
    }

    /// Uploads one blob unless the registry already has it.
    fn push_blob(
        &self,
        repo: &Repo<'_>,
        desc: &Descriptor,
        image: &PushImage<'_>,
        store: &Store,
    ) -> Result<(), RegistryError> {
        let digest = &desc.digest;
        if self.blob_exists(repo, digest)? {
            log::debug!(
                "{}/{}: blob {digest} exists, skipped",
                repo.registry,
                repo.repository
            );
            return Ok(());
        }
        if !store.has_blob(digest)
            && let Some(source) = image.source
        {
            source(digest)?;
        }
        let size = match std::fs::metadata(store.blob_path(digest)) {
            Ok(m) => m.len(),
            Err(_) => {
                return Err(RegistryError::BlobMissing {
                    repository: format!("{}/{}", repo.registry, repo.repository),
                    digest: digest.clone(),
                });
            }
        };
        if size != desc.size {
            return Err(RegistryError::SizeMismatch {
                what: format!("blob {digest} in the store"),
                expected: desc.size,
                actual: size,
            });
        }

        let start = format!("/v2/{}/blobs/uploads/", repo.repository);
        let resp = self.send(repo, "POST", &start, &|agent, url, auth| {
            authorized(agent.post(url), auth)
                .header("Content-Length", "0")
                .send_empty()
        })?;
        if resp.status().as_u16() != 202 {
            return Err(self.status_error(repo, "POST", &start, resp));
        }
        let location = header(&resp, "location")
            .map(str::to_owned)
            .ok_or_else(|| RegistryError::Protocol {
                host: repo.registry.to_owned(),
                detail: format!("POST {start} answered 202 without a Location header"),
            })?;

        let upload = with_digest_param(&location, digest);
        let blob_path = store.blob_path(digest);
        let resp = self.send(repo, "PUT", &upload, &|agent, url, auth| {
            let file = File::open(&blob_path).map_err(ureq::Error::Io)?;
            authorized(agent.put(url), auth)
                .header("Content-Type", "application/octet-stream")
                .send(file)
        })?;
        if resp.status().as_u16() != 201 {
            let path = location.split('?').next().unwrap_or_default().to_owned();
            return Err(self.status_error(repo, "PUT", &path, resp));
        }
        log::debug!(
            "{}/{}: uploaded blob {digest} ({size} bytes)",
            repo.registry,
            repo.repository
        );
        Ok(())
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

/// The upload `location` with the `digest` query parameter that completes it.
fn with_digest_param(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!(
        "{location}{sep}digest={}",
        digest.as_str().replace(':', "%3A")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::client::absolute_url;

    #[test]
    fn the_digest_parameter_joins_any_existing_query() {
        let d = Digest::of(b"");
        let hex = d.hex();
        assert_eq!(
            with_digest_param("/v2/a/blobs/uploads/u", &d),
            format!("/v2/a/blobs/uploads/u?digest=sha256%3A{hex}")
        );
        assert_eq!(
            with_digest_param("https://r/v2/a/blobs/uploads/u?_state=x", &d),
            format!("https://r/v2/a/blobs/uploads/u?_state=x&digest=sha256%3A{hex}")
        );
        assert_eq!(
            absolute_url("http://127.0.0.1:5000", &with_digest_param("/u?x=1", &d)),
            format!("http://127.0.0.1:5000/u?x=1&digest=sha256%3A{hex}")
        );
    }
}
