//! Blob upload sessions: start one (as a cross-repository mount when the
//! blob lives in another repository of the same registry), then send the
//! blob in one PUT when small, or in PATCH chunks when large, resuming from
//! the registry's own offset after a failed chunk.

use super::client::{Registry, RegistryError, Repo, Response, authorized, error_message, header};
use super::retry;
use crate::digest::Digest;
use crate::progress::{Counted, Transfer, Verb};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Blobs up to this size go up in one PUT; bigger ones in chunks.
pub(super) const MONOLITHIC_MAX: u64 = 32 * 1024 * 1024;
/// Bytes per PATCH of a chunked upload: small enough that a failure costs
/// little, large enough that request overhead does not matter.
pub(super) const CHUNK_SIZE: u64 = 16 * 1024 * 1024;
/// Failed chunks in a row that are resumed before the upload gives up.
const RESUME_MAX: u32 = 3;

/// `offset..end` of a file, read positionally: the file's own offset,
/// shared with its clones and other readers, never moves.
struct FileRange<'a> {
    file: &'a File,
    offset: u64,
    end: u64,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.end - self.offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// How a started upload stands.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Started {
    /// The registry mounted the blob from the other repository.
    Mounted,
    /// An open upload session at this location.
    Session(String),
}

/// Starts an upload with an empty POST.
fn post_empty(agent: &ureq::Agent, url: &str, auth: Option<&str>) -> Result<Response, ureq::Error> {
    authorized(agent.post(url), auth)
        .header("Content-Length", "0")
        .send_empty()
}

impl Registry {
    /// Opens an upload session in `repo`; with `mount` (the blob's digest and
    /// a repository of the same registry holding it) asks for a mount first,
    /// which a registry may grant (nothing left to upload) or decline (it
    /// then opens a session, used as any other). Bearer tokens gain the
    /// source's pull scope through the registry's 401 challenge.
    pub(super) fn start_upload(
        &self,
        repo: &Repo<'_>,
        mount: Option<(&Digest, &str)>,
    ) -> Result<Started, RegistryError> {
        if let Some((digest, from)) = mount {
            let path = mount_path(repo.repository, digest, from);
            let resp = self.send(repo, "POST", &path, &post_empty)?;
            match resp.status().as_u16() {
                201 => {
                    log::debug!(
                        "{}/{}: mounted blob {digest} from {from}",
                        repo.registry,
                        repo.repository
                    );
                    return Ok(Started::Mounted);
                }
                202 => {
                    log::debug!(
                        "{}/{}: registry declined to mount {digest} from {from}; uploading",
                        repo.registry,
                        repo.repository
                    );
                    return session_location(repo, &path, &resp).map(Started::Session);
                }
                status => log::debug!(
                    "{}/{}: mounting {digest} from {from} failed with HTTP {status} ({}); uploading",
                    repo.registry,
                    repo.repository,
                    error_message(resp)
                ),
            }
        }
        self.open_session(repo).map(Started::Session)
    }

    /// Opens a plain upload session in `repo`; returns its location.
    pub(super) fn open_session(&self, repo: &Repo<'_>) -> Result<String, RegistryError> {
        let path = format!("/v2/{}/blobs/uploads/", repo.repository);
        let resp = self.send(repo, "POST", &path, &post_empty)?;
        if resp.status().as_u16() != 202 {
            return Err(self.status_error(repo, "POST", &path, resp));
        }
        session_location(repo, &path, &resp)
    }

    /// Sends blob `digest` (`size` bytes at `blob_path`) through the session
    /// at `location` and completes it.
    pub(super) fn upload_blob(
        &self,
        repo: &Repo<'_>,
        location: String,
        digest: &Digest,
        size: u64,
        blob_path: &Path,
    ) -> Result<(), RegistryError> {
        let chunked = size > MONOLITHIC_MAX;
        let transfer = Transfer::start(Verb::Push, digest, size);
        let location = if chunked {
            let file = File::open(blob_path).map_err(|source| RegistryError::Read {
                what: blob_path.display().to_string(),
                source,
            })?;
            self.upload_chunks(repo, location, size, &file, &transfer)?
        } else {
            location
        };
        let whole = (!chunked).then_some((blob_path, size, &transfer));
        self.complete_upload(repo, &location, digest, whole)?;
        log::debug!(
            "{}/{}: uploaded blob {digest} ({size} bytes{})",
            repo.registry,
            repo.repository,
            if chunked { ", chunked" } else { "" }
        );
        transfer.finish();
        Ok(())
    }

    /// Completes the session at `location` with the PUT that names the
    /// digest: empty after chunks, else carrying the whole blob (`size`
    /// bytes at `path`, counted into `transfer`).
    pub(super) fn complete_upload(
        &self,
        repo: &Repo<'_>,
        location: &str,
        digest: &Digest,
        whole: Option<(&Path, u64, &Transfer)>,
    ) -> Result<(), RegistryError> {
        let upload = with_digest_param(location, digest);
        let resp = self.send(repo, "PUT", &upload, &|agent, url, auth| {
            let rb =
                authorized(agent.put(url), auth).header("Content-Type", "application/octet-stream");
            match whole {
                None => rb.header("Content-Length", "0").send_empty(),
                Some((path, size, transfer)) => {
                    transfer.set_position(0);
                    let file = File::open(path).map_err(ureq::Error::Io)?;
                    rb.header("Content-Length", size.to_string())
                        .send(ureq::SendBody::from_reader(&mut Counted::new(
                            file, transfer,
                        )))
                }
            }
        })?;
        if resp.status().as_u16() != 201 {
            return Err(self.status_error(repo, "PUT", strip_query(location), resp));
        }
        Ok(())
    }

    /// Abandons the session at `location`; registries purge stale sessions
    /// anyway, so a failure here is only logged.
    pub(super) fn cancel_upload(&self, repo: &Repo<'_>, location: &str) {
        let result = self.send(repo, "DELETE", location, &|agent, url, auth| {
            authorized(agent.delete(url), auth).call()
        });
        match result {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => log::debug!(
                "{}/{}: cancelling upload {} answered HTTP {}",
                repo.registry,
                repo.repository,
                strip_query(location),
                resp.status().as_u16()
            ),
            Err(e) => log::debug!("{}/{}: {e}", repo.registry, repo.repository),
        }
    }

    /// PATCHes the blob in chunks, each to the location the previous answer
    /// named. A chunk that fails with a transport error, a 5xx, 416 or 429
    /// is resumed from the offset the registry reports, or from the start
    /// in a new session when the registry has dropped this one. Returns the
    /// location that completes the upload.
    fn upload_chunks(
        &self,
        repo: &Repo<'_>,
        mut location: String,
        size: u64,
        blob: &File,
        transfer: &Transfer,
    ) -> Result<String, RegistryError> {
        let mut offset = 0;
        let mut failures = 0;
        while offset < size {
            let len = CHUNK_SIZE.min(size - offset);
            match self.patch_chunk(repo, &location, blob, offset, len, transfer) {
                Ok(next) => {
                    location = next;
                    offset += len;
                    failures = 0;
                }
                Err(e) if failures < RESUME_MAX && is_resumable(&e) => {
                    failures += 1;
                    log::warn!(
                        "{}/{}: chunk at byte {offset} of {size} failed ({e}); resuming",
                        repo.registry,
                        repo.repository
                    );
                    (location, offset) = match self.upload_status(repo, &location, size) {
                        Ok(status) => status,
                        Err(lost) => {
                            // Distribution 2.x drops a session whose chunk
                            // was cut short; a new session starts over.
                            log::debug!(
                                "{}/{}: upload session lost ({lost}); starting a new one",
                                repo.registry,
                                repo.repository
                            );
                            self.cancel_upload(repo, &location);
                            (self.open_session(repo)?, 0)
                        }
                    };
                }
                Err(e) => return Err(e),
            }
        }
        Ok(location)
    }

    /// Sends `len` bytes of `blob` from `offset`, counted into `transfer`;
    /// returns the next location.
    pub(super) fn patch_chunk(
        &self,
        repo: &Repo<'_>,
        location: &str,
        blob: &File,
        offset: u64,
        len: u64,
        transfer: &Transfer,
    ) -> Result<String, RegistryError> {
        let resp = self.send(repo, "PATCH", location, &|agent, url, auth| {
            transfer.set_position(offset);
            let range = FileRange {
                file: blob,
                offset,
                end: offset + len,
            };
            let mut chunk = Counted::new(range, transfer);
            authorized(agent.patch(url), auth)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", content_range(offset, len))
                .header("Content-Length", len.to_string())
                .send(ureq::SendBody::from_reader(&mut chunk))
        })?;
        if resp.status().as_u16() != 202 {
            return Err(self.status_error(repo, "PATCH", strip_query(location), resp));
        }
        Ok(header(&resp, "location").unwrap_or(location).to_owned())
    }

    /// The session's current location and the offset the registry has
    /// received up to, from `GET <location>` (204 with a `Range` header).
    fn upload_status(
        &self,
        repo: &Repo<'_>,
        location: &str,
        size: u64,
    ) -> Result<(String, u64), RegistryError> {
        let resp = self.send(repo, "GET", location, &|agent, url, auth| {
            authorized(agent.get(url), auth).call()
        })?;
        if resp.status().as_u16() != 204 {
            return Err(self.status_error(repo, "GET", strip_query(location), resp));
        }
        let next = header(&resp, "location").unwrap_or(location).to_owned();
        let offset = match header(&resp, "range") {
            None => 0,
            Some(range) => next_offset(range)
                .filter(|&o| o <= size)
                .ok_or_else(|| RegistryError::Protocol {
                    host: repo.registry.to_owned(),
                    detail: format!(
                        "upload status {} has Range {range:?}, not 0-<end> within the blob's {size} bytes",
                        strip_query(location)
                    ),
                })?,
        };
        Ok((next, offset))
    }
}

/// The `Location` of a 202 answer that opened a session.
fn session_location(repo: &Repo<'_>, path: &str, resp: &Response) -> Result<String, RegistryError> {
    header(resp, "location")
        .map(str::to_owned)
        .ok_or_else(|| RegistryError::Protocol {
            host: repo.registry.to_owned(),
            detail: format!("POST {path} answered 202 without a Location header"),
        })
}

/// The POST path that asks `repository` to mount `digest` from `from`.
fn mount_path(repository: &str, digest: &Digest, from: &str) -> String {
    format!(
        "/v2/{repository}/blobs/uploads/?mount={}&from={from}",
        digest.as_str().replace(':', "%3A")
    )
}

/// The upload `location` with the `digest` query parameter that completes it.
fn with_digest_param(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!(
        "{location}{sep}digest={}",
        digest.as_str().replace(':', "%3A")
    )
}

/// A location without its query, which holds opaque session state that
/// says nothing useful in an error message.
fn strip_query(location: &str) -> &str {
    location.split('?').next().unwrap_or(location)
}

/// `Content-Range` of a chunk: inclusive first and last byte, as the
/// distribution spec writes it (no `bytes ` unit).
fn content_range(offset: u64, len: u64) -> String {
    format!("{offset}-{}", offset + len - 1)
}

/// The offset to resume at from an upload status `Range` (`0-<last byte>`,
/// some registries prefix `bytes=`). `0-0` is read as nothing received:
/// distribution writes it for an empty session, and a one-byte session
/// cannot occur with whole chunks.
fn next_offset(range: &str) -> Option<u64> {
    let range = range.trim();
    let range = range.strip_prefix("bytes=").unwrap_or(range);
    let (start, end) = range.split_once('-')?;
    let end: u64 = end.parse().ok()?;
    match start.parse::<u64>().ok()? {
        0 if end == 0 => Some(0),
        0 => Some(end + 1),
        _ => None,
    }
}

/// Failures after which the registry may hold part of the chunk and can
/// say how much: the transient ones (dropped connections, server errors,
/// throttling) and a range it refused.
fn is_resumable(e: &RegistryError) -> bool {
    retry::assess(e).is_some() || matches!(e, RegistryError::Status { status: 416, .. })
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

    #[test]
    fn mount_requests_name_the_digest_and_the_source_repository() {
        let d = Digest::of(b"x");
        assert_eq!(
            mount_path("team/app", &d, "library/base"),
            format!(
                "/v2/team/app/blobs/uploads/?mount=sha256%3A{}&from=library/base",
                d.hex()
            )
        );
    }

    #[test]
    fn chunk_ranges_are_inclusive() {
        assert_eq!(content_range(0, CHUNK_SIZE), "0-16777215");
        assert_eq!(content_range(CHUNK_SIZE, 1), "16777216-16777216");
    }

    #[test]
    fn resume_offsets_follow_the_last_received_byte() {
        assert_eq!(next_offset("0-16777215"), Some(CHUNK_SIZE));
        assert_eq!(next_offset("bytes=0-99"), Some(100));
        assert_eq!(next_offset(" 0-0 "), Some(0));
        assert_eq!(next_offset("5-10"), None);
        assert_eq!(next_offset("0-"), None);
        assert_eq!(next_offset("garbage"), None);
    }

    #[test]
    fn only_failures_that_may_have_partly_landed_are_resumed() {
        let status = |status| RegistryError::Status {
            host: "r".into(),
            method: "PATCH",
            path: "/u".into(),
            status,
            message: String::new(),
        };
        assert!(is_resumable(&status(500)));
        assert!(is_resumable(&status(503)));
        assert!(is_resumable(&status(416)));
        assert!(is_resumable(&status(429)));
        assert!(!is_resumable(&status(400)));
        assert!(!is_resumable(&status(404)));
        assert!(!is_resumable(&RegistryError::Protocol {
            host: "r".into(),
            detail: String::new(),
        }));
    }

    #[test]
    fn locations_lose_their_session_state_in_messages() {
        assert_eq!(
            strip_query("/v2/a/blobs/uploads/u?_state=abc"),
            "/v2/a/blobs/uploads/u"
        );
        assert_eq!(
            strip_query("/v2/a/blobs/uploads/u"),
            "/v2/a/blobs/uploads/u"
        );
    }
}
