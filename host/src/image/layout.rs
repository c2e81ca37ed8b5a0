//! The OCI image layout writer (`--oci-layout-path`): `oci-layout`,
//! `blobs/sha256/*` and `index.json`, every file written to a temporary name
//! and renamed into place so a reader never sees a partial file.

use crate::digest::{Digest, HashingReader};
use crate::image::manifest::{ANNOTATION_REF_NAME, Descriptor, Index, OCI_INDEX};
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Layout writing failures.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot write OCI layout at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot copy blob into OCI layout: {0}")]
    Store(#[from] StoreError),
    #[error(
        "blob {path} is corrupt: expected {expected}, read {actual}; remove it from the store and rebuild"
    )]
    DigestMismatch {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "existing {path} is not a valid OCI index ({source}): remove it or choose another layout path"
    )]
    BadIndex {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_owned(),
        source,
    }
}

const OCI_LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Writes (or adds to) the OCI image layout at `dir`: the blobs, then the
/// manifest, then `index.json` naming it. An existing entry with the same
/// `ref_name` (or, without a name, the same digest and no name) is replaced.
/// Returns the manifest digest.
pub fn write_oci_layout(
    dir: &Path,
    manifest_bytes: &[u8],
    manifest_media_type: &str,
    blobs: &[Descriptor],
    store: &Store,
    ref_name: Option<&str>,
) -> Result<Digest, LayoutError> {
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).map_err(io_err(&blob_dir))?;
    let layout_file = dir.join("oci-layout");
    if !layout_file.is_file() {
        write_atomic(&layout_file, OCI_LAYOUT_FILE)?;
    }
    for desc in blobs {
        copy_blob(store, &desc.digest, &blob_dir)?;
    }
    let digest = Digest::of(manifest_bytes);
    let manifest_path = blob_dir.join(digest.hex());
    if !manifest_path.is_file() {
        write_atomic(&manifest_path, manifest_bytes)?;
    }

    let index_path = dir.join("index.json");
    let existing = match fs::read(&index_path) {
        Ok(bytes) => Some(serde_json::from_slice::<Index>(&bytes).map_err(|source| {
            LayoutError::BadIndex {
                path: index_path.clone(),
                source,
            }
        })?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&index_path)(e)),
    };
    let entry = Descriptor {
        media_type: manifest_media_type.to_owned(),
        digest: digest.clone(),
        size: manifest_bytes.len() as u64,
        urls: None,
        annotations: ref_name
            .map(|r| BTreeMap::from([(ANNOTATION_REF_NAME.to_owned(), r.to_owned())])),
        platform: None,
    };
    let index = updated_index(existing, entry);
    write_atomic(&index_path, &index.to_canonical_json())?;
    Ok(digest)
}

/// `index` with `entry` added, replacing what it supersedes.
fn updated_index(existing: Option<Index>, entry: Descriptor) -> Index {
    let mut index = existing.unwrap_or_else(|| Index {
        schema_version: 2,
        media_type: Some(OCI_INDEX.to_owned()),
        manifests: Vec::new(),
        annotations: None,
    });
    let name_of = |d: &Descriptor| {
        d.annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_REF_NAME))
            .cloned()
    };
    let new_name = name_of(&entry);
    index.manifests.retain(|d| match &new_name {
        Some(_) => name_of(d) != new_name,
        None => !(name_of(d).is_none() && d.digest == entry.digest),
    });
    index.manifests.push(entry);
    index
}

/// Puts blob `digest` into `blob_dir`: a hard link to the store's copy when
/// both are on one filesystem (blobs are immutable), else a verified copy.
fn copy_blob(store: &Store, digest: &Digest, blob_dir: &Path) -> Result<(), LayoutError> {
    let dest = blob_dir.join(digest.hex());
    let src = store.blob_path(digest);
    let src_len = fs::metadata(&src)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => LayoutError::Store(StoreError::Missing(digest.clone())),
            _ => io_err(&src)(e),
        })?
        .len();
    if fs::metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == src_len) {
        return Ok(());
    }
    let linked = tempfile::Builder::new()
        .prefix(".tmp-")
        .make_in(blob_dir, |tmp| fs::hard_link(&src, tmp));
    match linked {
        Ok(tmp) => tmp
            .persist(&dest)
            .map_err(|e| io_err(&dest)(e.error))
            .map(drop),
        Err(_) => copy_verified(store, digest, blob_dir, &dest),
    }
}

/// Copies blob `digest` from the store to `dest`, checking what it read.
fn copy_verified(
    store: &Store,
    digest: &Digest,
    blob_dir: &Path,
    dest: &Path,
) -> Result<(), LayoutError> {
    let src = store.blob_path(digest);
    let mut reader = HashingReader::new(store.open_blob(digest)?);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(blob_dir)
        .map_err(io_err(blob_dir))?;
    io::copy(&mut reader, &mut tmp).map_err(io_err(dest))?;
    let (actual, _) = reader.finish();
    if actual != *digest {
        return Err(LayoutError::DigestMismatch {
            path: src,
            expected: digest.clone(),
            actual,
        });
    }
    tmp.as_file().sync_all().map_err(io_err(dest))?;
    tmp.persist(dest).map_err(|e| io_err(dest)(e.error))?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    crate::store::write_atomic(path, bytes).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::{Manifest, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
    use std::os::unix::fs::MetadataExt;

    fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
        }
    }

    fn image(store: &Store, layer: &[u8]) -> (Vec<u8>, Vec<Descriptor>) {
        let l = descriptor(
            OCI_LAYER_GZIP,
            store.put_bytes(layer).unwrap(),
            layer.len() as u64,
        );
        let c = descriptor(
            OCI_CONFIG,
            store.put_bytes(b"{\"os\":\"linux\"}").unwrap(),
            14,
        );
        let m = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            config: c.clone(),
            layers: vec![l.clone()],
            annotations: None,
        };
        (m.to_canonical_json(), vec![l, c])
    }

    fn read_index(dir: &Path) -> Index {
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap()
    }

    #[test]
    fn writes_a_complete_layout_with_verified_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("kiln")).unwrap();
        let (manifest, blobs) = image(&store, b"layer bytes");
        let out = tmp.path().join("layout");
        let d = write_oci_layout(
            &out,
            &manifest,
            OCI_MANIFEST,
            &blobs,
            &store,
            Some("latest"),
        )
        .unwrap();

        assert_eq!(d, Digest::of(&manifest));
        assert_eq!(fs::read(out.join("oci-layout")).unwrap(), OCI_LAYOUT_FILE);
        for digest in blobs.iter().map(|b| &b.digest).chain([&d]) {
            let bytes = fs::read(out.join("blobs/sha256").join(digest.hex())).unwrap();
            assert_eq!(Digest::of(&bytes), *digest);
        }
        let index = read_index(&out);
        assert_eq!(index.media_type.as_deref(), Some(OCI_INDEX));
        assert_eq!(index.manifests.len(), 1);
        let entry = &index.manifests[0];
        assert_eq!(
            (entry.digest.clone(), entry.size),
            (d, manifest.len() as u64)
        );
        assert_eq!(
            entry.annotations.as_ref().unwrap()[ANNOTATION_REF_NAME],
            "latest"
        );
        let leftovers: Vec<_> = fs::read_dir(out.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn same_filesystem_blobs_are_hard_links() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("kiln")).unwrap();
        let (manifest, blobs) = image(&store, b"linked");
        let out = tmp.path().join("layout");
        write_oci_layout(&out, &manifest, OCI_MANIFEST, &blobs, &store, None).unwrap();
        let layer = &blobs[0].digest;
        let a = fs::metadata(store.blob_path(layer)).unwrap();
        let b = fs::metadata(out.join("blobs/sha256").join(layer.hex())).unwrap();
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    }

    #[test]
    fn a_second_image_is_added_and_the_same_name_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("kiln")).unwrap();
        let out = tmp.path().join("layout");
        let (m1, b1) = image(&store, b"one");
        let (m2, b2) = image(&store, b"two");
        let (m3, b3) = image(&store, b"three");
        let d1 = write_oci_layout(&out, &m1, OCI_MANIFEST, &b1, &store, Some("a")).unwrap();
        let d2 = write_oci_layout(&out, &m2, OCI_MANIFEST, &b2, &store, Some("b")).unwrap();
        let d3 = write_oci_layout(&out, &m3, OCI_MANIFEST, &b3, &store, Some("a")).unwrap();
        write_oci_layout(&out, &m3, OCI_MANIFEST, &b3, &store, None).unwrap();
        write_oci_layout(&out, &m3, OCI_MANIFEST, &b3, &store, None).unwrap();

        let digests: Vec<_> = read_index(&out)
            .manifests
            .into_iter()
            .map(|d| d.digest)
            .collect();
        assert_eq!(digests, [d2, d3.clone(), d3]);
        assert!(out.join("blobs/sha256").join(d1.hex()).is_file());
    }

    #[test]
    fn copies_are_verified_against_the_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("kiln")).unwrap();
        let good = store.put_bytes(b"good").unwrap();
        let out = tmp.path().join("blobs");
        fs::create_dir_all(&out).unwrap();
        let dest = out.join(good.hex());
        copy_verified(&store, &good, &out, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"good");

        let bad = store.put_bytes(b"soon corrupt").unwrap();
        fs::write(store.blob_path(&bad), b"corrupted!!!").unwrap();
        let dest = out.join(bad.hex());
        let err = copy_verified(&store, &bad, &out, &dest).unwrap_err();
        assert!(matches!(err, LayoutError::DigestMismatch { .. }), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn missing_blob_and_bad_index_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("kiln")).unwrap();
        let out = tmp.path().join("layout");
        let absent = descriptor(OCI_LAYER_GZIP, Digest::of(b"absent"), 6);
        let err = write_oci_layout(&out, b"{}", OCI_MANIFEST, &[absent], &store, None).unwrap_err();
        assert!(
            matches!(err, LayoutError::Store(StoreError::Missing(_))),
            "{err}"
        );

        fs::write(out.join("index.json"), b"[]").unwrap();
        let err = write_oci_layout(&out, b"{}", OCI_MANIFEST, &[], &store, None).unwrap_err();
        assert!(matches!(err, LayoutError::BadIndex { .. }), "{err}");
        assert!(err.to_string().contains("index.json"));
    }
}
