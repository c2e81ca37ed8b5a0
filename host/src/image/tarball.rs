//! The docker-save tarball writer (`--tar-path`), in the classic layout
//! that `docker load` and `skopeo copy docker-archive:` both read:
//! `manifest.json` naming the config (`<hex>.json`) and the layers, which
//! are the compressed blobs as they are (`<hex>.tar.gz`; both readers
//! detect compression). Blobs are streamed from the store and verified;
//! the tarball is written to a temporary name and renamed into place.

use crate::digest::{Digest, HashingReader};
use crate::image::manifest::{self, Descriptor};
use crate::store::{Store, StoreError};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Tarball writing failures.
#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    #[error("cannot write image tarball {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot read blob for image tarball {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error(
        "blob {digest} in the store is corrupt (read {actual}, {size} bytes; expected {expected_size}): remove it from the store and rebuild"
    )]
    Corrupt {
        digest: Digest,
        actual: Digest,
        size: u64,
        expected_size: u64,
    },
}

/// One image entry of `manifest.json`.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Entry<'a> {
    config: String,
    repo_tags: &'a [String],
    layers: Vec<String>,
}

/// The file name of a layer blob inside the tarball.
fn layer_name(desc: &Descriptor) -> String {
    let ext = match desc.media_type.as_str() {
        manifest::DOCKER_LAYER_GZIP | manifest::OCI_LAYER_GZIP => "tar.gz",
        manifest::OCI_LAYER_ZSTD => "tar.zst",
        _ => "tar",
    };
    format!("{}.{ext}", desc.digest.hex())
}

/// The `manifest.json` of an image with `config`, `layers` and `tags`
/// (each `name:tag`; `docker load` tags the image with them).
fn manifest_json(tags: &[String], config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    let entry = Entry {
        config: format!("{}.json", config.digest.hex()),
        repo_tags: tags,
        layers: layers.iter().map(layer_name).collect(),
    };
    serde_json::to_vec(&[entry]).expect("strings and lists always serialise")
}

/// Writes the docker-save tarball of the image with `config` and `layers`
/// (all in `store`) to `path`, tagged with `tags` (each `name:tag`).
pub fn write_docker_archive(
    path: &Path,
    tags: &[String],
    config: &Descriptor,
    layers: &[Descriptor],
    store: &Store,
) -> Result<(), TarballError> {
    let io_err = |source| TarballError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-tar-")
        .tempfile_in(dir)
        .map_err(io_err)?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, tmp));
    append_blob(
        &mut tar,
        store,
        config,
        &format!("{}.json", config.digest.hex()),
        path,
    )?;
    let mut written = Vec::new();
    for layer in layers {
        // An image may hold one blob twice; the file is needed once.
        if !written.contains(&&layer.digest) {
            append_blob(&mut tar, store, layer, &layer_name(layer), path)?;
            written.push(&layer.digest);
        }
    }
    let json = manifest_json(tags, config, layers);
    tar.append_data(
        &mut header(json.len() as u64),
        "manifest.json",
        json.as_slice(),
    )
    .map_err(io_err)?;
    let tmp = tar
        .into_inner()
        .map_err(io_err)?
        .into_inner()
        .map_err(|e| io_err(e.into_error()))?;
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    Ok(())
}

/// A regular file header with fixed owner, mode and time, so that the same
/// image always gives the same tarball.
fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Streams blob `desc` from the store into the tarball as `name`, checking
/// its digest and size on the way.
fn append_blob<W: Write>(
    tar: &mut tar::Builder<W>,
    store: &Store,
    desc: &Descriptor,
    name: &str,
    path: &Path,
) -> Result<(), TarballError> {
    let file = store
        .open_blob(&desc.digest)
        .map_err(|source| TarballError::Store {
            path: path.to_owned(),
            source,
        })?;
    // The header carries the descriptor's size; reading at most that much
    // keeps the entry well-formed, and the hash shows whether it was right.
    let mut reader = HashingReader::new(file.take(desc.size));
    tar.append_data(&mut header(desc.size), name, &mut reader)
        .map_err(|source| TarballError::Io {
            path: path.to_owned(),
            source,
        })?;
    let (actual, size) = reader.finish();
    if actual != desc.digest || size != desc.size {
        return Err(TarballError::Corrupt {
            digest: desc.digest.clone(),
            actual,
            size,
            expected_size: desc.size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn desc(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
        }
    }

    /// The tarball's entries in order: name and content.
    fn entries(path: &Path) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(File::open(path).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn layers_are_named_by_digest_and_compression() {
        let gz = desc(manifest::DOCKER_LAYER_GZIP, b"a");
        let zst = desc(manifest::OCI_LAYER_ZSTD, b"b");
        let plain = desc(manifest::OCI_LAYER_TAR, b"c");
        assert_eq!(layer_name(&gz), format!("{}.tar.gz", gz.digest.hex()));
        assert_eq!(layer_name(&zst), format!("{}.tar.zst", zst.digest.hex()));
        assert_eq!(layer_name(&plain), format!("{}.tar", plain.digest.hex()));
    }

    #[test]
    fn the_archive_holds_the_manifest_config_and_each_layer_once() {
        let kiln = tempfile::tempdir().unwrap();
        let store = Store::open(kiln.path()).unwrap();
        let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#;
        let layer_bytes = b"not really gzip, but bytes are bytes";
        store.put_bytes(config_bytes).unwrap();
        store.put_bytes(layer_bytes).unwrap();
        let config = desc(manifest::DOCKER_CONFIG, config_bytes);
        let layer = desc(manifest::DOCKER_LAYER_GZIP, layer_bytes);
        let out = kiln.path().join("image.tar");
        let tags = ["reg.io/app:v1".to_owned()];
        write_docker_archive(
            &out,
            &tags,
            &config,
            &[layer.clone(), layer.clone()],
            &store,
        )
        .unwrap();

        let hex = |d: &Descriptor| d.digest.hex().to_owned();
        let got = entries(&out);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        let config_name = format!("{}.json", hex(&config));
        let layer_name = format!("{}.tar.gz", hex(&layer));
        assert_eq!(names, [config_name.as_str(), &layer_name, "manifest.json"]);
        assert_eq!(got[0].1, config_bytes);
        assert_eq!(got[1].1, layer_bytes);
        let manifest: serde_json::Value = serde_json::from_slice(&got[2].1).unwrap();
        assert_eq!(
            manifest,
            serde_json::json!([{
                "Config": config_name,
                "RepoTags": ["reg.io/app:v1"],
                "Layers": [layer_name, layer_name],
            }])
        );
        let leftovers: Vec<_> = std::fs::read_dir(kiln.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".kiln-tar-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_corrupt_blob_fails_and_leaves_no_tarball() {
        let kiln = tempfile::tempdir().unwrap();
        let store = Store::open(kiln.path()).unwrap();
        let config_bytes = b"{}";
        store.put_bytes(config_bytes).unwrap();
        let config = desc(manifest::DOCKER_CONFIG, config_bytes);
        std::fs::write(store.blob_path(&config.digest), b"[]").unwrap();
        let out = kiln.path().join("image.tar");
        let err = write_docker_archive(&out, &[], &config, &[], &store).unwrap_err();
        assert!(matches!(err, TarballError::Corrupt { .. }), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn a_missing_blob_is_named() {
        let kiln = tempfile::tempdir().unwrap();
        let store = Store::open(kiln.path()).unwrap();
        let config = desc(manifest::DOCKER_CONFIG, b"{}");
        let out = kiln.path().join("image.tar");
        let err = write_docker_archive(&out, &[], &config, &[], &store).unwrap_err();
        assert!(err.to_string().contains(config.digest.as_str()), "{err}");
    }
}
