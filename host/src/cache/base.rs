//! The base-image cache under `--cache-dir`: base images (manifest, config,
//! layer blobs) kept on disk so a build can start without the registry.
//! `kiln warm` fills it, and so do builds run with `--cache`.
//!
//! Layout of the directory:
//! - `store/blobs/sha256/<hex>`: configs and layers, verified (a [`Store`]);
//! - `manifests/<manifest hex>.json`: each manifest as kiln read it;
//! - `refs/<hex>.json`: what a tag (per platform) or an index digest (per
//!   platform) resolved to, and when.
//!
//! Every file is written under a temporary name and renamed into place,
//! so concurrent builds sharing the directory only ever see whole files.

use super::store::{is_fresh, now_secs};
use crate::digest::Digest;
use crate::dockerfile::{self, ExpandError, ParseError};
use crate::image::config::Platform;
use crate::image::manifest::Manifest;
use crate::registry::{PulledImage, Reference, ReferenceError, Registry, RegistryError};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Base-image cache failures.
#[derive(Debug, thiserror::Error)]
pub enum BaseCacheError {
    #[error("cannot write base-image cache {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("base-image cache: {0}")]
    Store(#[from] StoreError),
    #[error("cannot warm {reference}: {source}")]
    Pull {
        reference: String,
        source: Box<RegistryError>,
    },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("config of {reference} has digest {actual}, but its manifest names {expected}")]
    ConfigMismatch {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("cannot read Dockerfile {path}: {source}")]
    DockerfileRead { path: PathBuf, source: io::Error },
    #[error("Dockerfile {path}, {source}")]
    DockerfileParse { path: PathBuf, source: ParseError },
    #[error("Dockerfile {path}, line {line}: {source}")]
    Expand {
        path: PathBuf,
        line: u32,
        source: ExpandError,
    },
    #[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64")]
    BadPlatform(String),
    #[error("nothing to warm: give --image or a --dockerfile with FROM images")]
    Nothing,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BaseCacheError + '_ {
    move |source| BaseCacheError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A base image found in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedImage {
    /// Digest of the single-platform manifest.
    pub manifest_digest: Digest,
    /// The manifest.
    pub manifest: Manifest,
    /// The raw config JSON, verified against the manifest.
    pub config: Vec<u8>,
}

/// What a tag or index digest resolved to for one platform, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// `registry/repository:tag`, or an index digest.
    name: String,
    /// The platform it was resolved for, normalised.
    platform: String,
    /// The single-platform manifest it resolved to.
    manifest: Digest,
    /// When, in seconds since the epoch.
    resolved: u64,
}

impl Record {
    /// The file name of the record for `name` on `platform`.
    fn file_name(name: &str, platform: &str) -> String {
        format!(
            "{}.json",
            Digest::of(format!("{name}\n{platform}").as_bytes()).hex()
        )
    }
}

/// What the record of `r` is named by: its index digest when it pins one
/// (a pinned manifest needs no record), else `registry/repository:tag`.
fn record_name(r: &Reference) -> String {
    match &r.digest {
        Some(d) => d.to_string(),
        None => format!("{}:{}", r.repo_name(), r.tag_or_digest()),
    }
}

/// `os/arch[/variant]` in its canonical spelling.
fn normalize_platform(platform: &str) -> Result<String, BaseCacheError> {
    Platform::parse(platform)
        .map(|p| p.to_string())
        .ok_or_else(|| BaseCacheError::BadPlatform(platform.to_owned()))
}

/// The base-image cache in one directory.
#[derive(Clone, Debug)]
pub struct BaseCache {
    dir: PathBuf,
    blobs: Store,
}

impl BaseCache {
    /// Opens (creating if needed) the cache in `dir`.
    pub fn open(dir: &Path) -> Result<BaseCache, BaseCacheError> {
        for sub in ["manifests", "refs"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(BaseCache {
            dir: dir.to_owned(),
            blobs: Store::open(dir)?,
        })
    }

    /// The image `r` names for `platform`, when the cache can answer
    /// without the registry: a pinned digest that was saved, or a tag
    /// resolved less than `ttl` ago. Unreadable entries are misses.
    pub fn lookup(&self, r: &Reference, platform: &str, ttl: Duration) -> Option<CachedImage> {
        let platform = normalize_platform(platform).ok()?;
        let manifest_digest = match &r.digest {
            Some(d) if self.manifest_path(d).is_file() => d.clone(),
            pinned => {
                let record = self.read_record(&record_name(r), &platform)?;
                if pinned.is_none() && !is_fresh(record.resolved, now_secs(), ttl) {
                    log::debug!(
                        "{r}: cached resolution is older than the TTL; asking the registry"
                    );
                    return None;
                }
                record.manifest
            }
        };
        match self.load(&manifest_digest) {
            Ok(image) => Some(image),
            Err(reason) => {
                log::warn!("Ignoring cached base image {r}: {reason}");
                None
            }
        }
    }

    /// Where blob `d` lives in the cache (it may not exist).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs.blob_path(d)
    }

    /// Puts blob `d` into `store` from the cache, if the cache has it
    /// (a hard link when both are on one filesystem, else a verified copy).
    /// Returns whether it is in `store` now.
    pub fn import_blob(&self, d: &Digest, store: &Store) -> Result<bool, BaseCacheError> {
        if store.has_blob(d) {
            return Ok(true);
        }
        if !self.blobs.has_blob(d) {
            return Ok(false);
        }
        transfer(&self.blobs, store, d)?;
        Ok(true)
    }

    /// Saves `image`, pulled as `r` for `platform`: its manifest, config,
    /// the layer blobs `store` has, and what `r` resolved to now.
    pub fn save(
        &self,
        r: &Reference,
        platform: &str,
        image: &PulledImage,
        store: &Store,
    ) -> Result<(), BaseCacheError> {
        let platform = normalize_platform(platform)?;
        let config_digest = self.blobs.put_bytes(&image.config)?;
        if config_digest != image.manifest.config.digest {
            return Err(BaseCacheError::ConfigMismatch {
                reference: r.to_string(),
                expected: image.manifest.config.digest.clone(),
                actual: config_digest,
            });
        }
        for layer in &image.manifest.layers {
            if self.blobs.has_blob(&layer.digest) {
                continue;
            }
            if store.has_blob(&layer.digest) {
                transfer(store, &self.blobs, &layer.digest)?;
            } else {
                log::debug!(
                    "{r}: layer {} is not in the store; not cached",
                    layer.digest
                );
            }
        }
        let manifest_path = self.manifest_path(&image.manifest_digest);
        write_atomic(&manifest_path, &image.manifest.to_canonical_json())?;
        if r.digest.as_ref() == Some(&image.manifest_digest) {
            return Ok(());
        }
        let record = Record {
            name: record_name(r),
            platform,
            manifest: image.manifest_digest.clone(),
            resolved: now_secs(),
        };
        let path = self
            .dir
            .join("refs")
            .join(Record::file_name(&record.name, &record.platform));
        let bytes = serde_json::to_vec(&record).expect("a record always serialises");
        write_atomic(&path, &bytes)
    }

    fn manifest_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("manifests").join(format!("{}.json", d.hex()))
    }

    /// The record for `name` on `platform`, if there is a readable one.
    fn read_record(&self, name: &str, platform: &str) -> Option<Record> {
        let path = self
            .dir
            .join("refs")
            .join(Record::file_name(name, platform));
        let bytes = fs::read(&path).ok()?;
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) if r.name == name && r.platform == platform => Some(r),
            Ok(_) => None,
            Err(e) => {
                log::warn!(
                    "Ignoring unreadable base-image cache record {}: {e}",
                    path.display()
                );
                None
            }
        }
    }

    /// The cached image with manifest `d`: its manifest and verified config.
    fn load(&self, d: &Digest) -> Result<CachedImage, String> {
        let path = self.manifest_path(d);
        let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a manifest: {e}", path.display()))?;
        let config_path = self.blobs.blob_path(&manifest.config.digest);
        let config = fs::read(&config_path)
            .map_err(|e| format!("cannot read config {}: {e}", config_path.display()))?;
        if Digest::of(&config) != manifest.config.digest {
            return Err(format!("config {} is corrupt", config_path.display()));
        }
        Ok(CachedImage {
            manifest_digest: d.clone(),
            manifest,
            config,
        })
    }
}

/// Puts blob `d` of `from` into `to`: a hard link renamed into place when
/// both share a filesystem (blobs never change), else a verified copy.
fn transfer(from: &Store, to: &Store, d: &Digest) -> Result<(), BaseCacheError> {
    let src = from.blob_path(d);
    let tmp = to.temp_dir("import-")?;
    let staged = tmp.path().join("blob");
    if fs::hard_link(&src, &staged).is_ok() {
        let dest = to.blob_path(d);
        return fs::rename(&staged, &dest).map_err(io_err(&dest));
    }
    let mut w = to.blob_writer()?;
    let mut reader = from.open_blob(d)?;
    io::copy(&mut reader, &mut w).map_err(io_err(&src))?;
    w.commit(Some(d))?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BaseCacheError> {
    crate::store::write_atomic(path, bytes).map_err(io_err(path))
}

/// The images a Dockerfile's stages start from, each with the platform to
/// pull (its `FROM --platform`, else `platform`), in order and without
/// repeats: global ARGs expanded with `build_args`, `scratch` and earlier
/// stage names left out.
pub fn from_images(
    source: &str,
    path: &Path,
    build_args: &[(String, String)],
    platform: &str,
) -> Result<Vec<(String, String)>, BaseCacheError> {
    let target = Platform::parse(platform)
        .ok_or_else(|| BaseCacheError::BadPlatform(platform.to_owned()))?;
    let parsed = dockerfile::parse(source).map_err(|source| BaseCacheError::DockerfileParse {
        path: path.to_owned(),
        source,
    })?;
    let given: HashMap<&str, &str> = build_args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let build = Platform::linux_amd64();
    let mut globals: HashMap<String, String> = [
        ("TARGETPLATFORM", target.to_string()),
        ("TARGETOS", target.os.clone()),
        ("TARGETARCH", target.architecture.clone()),
        ("TARGETVARIANT", target.variant.clone().unwrap_or_default()),
        ("BUILDPLATFORM", build.to_string()),
        ("BUILDOS", build.os.clone()),
        ("BUILDARCH", build.architecture.clone()),
        ("BUILDVARIANT", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut stages: Vec<String> = Vec::new();
    let mut images: Vec<(String, String)> = Vec::new();
    for instr in &parsed.instructions {
        let expand_err = |source| BaseCacheError::Expand {
            path: path.to_owned(),
            line: instr.line,
            source,
        };
        match instr.keyword.as_str() {
            "ARG" if stages.is_empty() => {
                let words = dockerfile::expand_words(
                    &instr.text,
                    &|n| globals.get(n).cloned(),
                    parsed.escape,
                )
                .map_err(expand_err)?;
                for word in words {
                    let (name, default) = match word.split_once('=') {
                        Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                        None => (word, None),
                    };
                    match given
                        .get(name.as_str())
                        .map(|v| (*v).to_owned())
                        .or(default)
                    {
                        Some(v) => globals.insert(name, v),
                        None => globals.remove(&name),
                    };
                }
            }
            "FROM" => {
                let lookup = |n: &str| globals.get(n).cloned();
                let mut words = instr.text.split_whitespace();
                let Some(base) = words.next() else { continue };
                let image =
                    dockerfile::expand_word(base, &lookup, parsed.escape).map_err(expand_err)?;
                let stage_platform = match instr.flags.iter().find(|f| f.name == "platform") {
                    Some(f) => {
                        let v = f.value.as_deref().unwrap_or_default();
                        dockerfile::expand_word(v, &lookup, parsed.escape).map_err(expand_err)?
                    }
                    None => target.to_string(),
                };
                let lower = image.to_ascii_lowercase();
                let named = |n: &String| *n == lower;
                if image != "scratch" && !stages.iter().any(named) {
                    let entry = (image, stage_platform);
                    if !images.contains(&entry) {
                        images.push(entry);
                    }
                }
                if let (Some(kw), Some(name)) = (words.next(), words.next())
                    && kw.eq_ignore_ascii_case("as")
                {
                    stages.push(name.to_ascii_lowercase());
                } else {
                    stages.push(String::new());
                }
            }
            _ => {}
        }
    }
    Ok(images)
}

/// `kiln warm`: pulls each of `images` (and, with `dockerfile`, the images
/// its stages start from) for `platform`, every layer included, into the
/// base-image cache at `cache_dir`.
pub fn warm(
    images: &[String],
    dockerfile: Option<&Path>,
    build_args: &[(String, String)],
    platform: &str,
    cache_dir: &Path,
    registry: &Registry,
) -> Result<(), BaseCacheError> {
    let platform = normalize_platform(platform)?;
    let mut wanted: Vec<(String, String)> = images
        .iter()
        .map(|i| (i.clone(), platform.clone()))
        .collect();
    if let Some(path) = dockerfile {
        let text = fs::read_to_string(path).map_err(|source| BaseCacheError::DockerfileRead {
            path: path.to_owned(),
            source,
        })?;
        for entry in from_images(&text, path, build_args, &platform)? {
            if !wanted.contains(&entry) {
                wanted.push(entry);
            }
        }
    }
    if wanted.is_empty() {
        return Err(BaseCacheError::Nothing);
    }
    let cache = BaseCache::open(cache_dir)?;
    for (image, platform) in &wanted {
        let r = Reference::parse(image)?;
        let pull_err = |source| BaseCacheError::Pull {
            reference: r.to_string(),
            source: Box::new(source),
        };
        let pulled = registry.pull_manifest(&r, platform).map_err(pull_err)?;
        for layer in &pulled.manifest.layers {
            registry
                .fetch_blob(&r, &layer.digest, &cache.blobs)
                .map_err(pull_err)?;
        }
        cache.save(&r, platform, &pulled, &cache.blobs)?;
        log::info!(
            "Cached base image {r} ({platform}) as {} in {}",
            pulled.manifest_digest,
            cache_dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::{DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, Descriptor};

    fn desc(media_type: &str, d: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: d,
            size,
            urls: None,
            annotations: None,
            platform: None,
        }
    }

    /// An image whose layer and config are in `store`.
    fn pulled(store: &Store, layer: &[u8]) -> PulledImage {
        let config = br#"{"os":"linux"}"#.to_vec();
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(DOCKER_MANIFEST.to_owned()),
            config: desc(DOCKER_CONFIG, Digest::of(&config), config.len() as u64),
            layers: vec![desc(
                DOCKER_LAYER_GZIP,
                store.put_bytes(layer).unwrap(),
                layer.len() as u64,
            )],
            annotations: None,
        };
        PulledImage {
            manifest_digest: Digest::of(&manifest.to_canonical_json()),
            manifest,
            config,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn records_are_named_per_tag_or_index_and_platform() {
        let tag = Reference::parse("r.io/a:1").unwrap();
        assert_eq!(record_name(&tag), "r.io/a:1");
        let ix = Digest::of(b"index");
        assert_eq!(record_name(&tag.with_digest(&ix)), ix.to_string());
        let a = Record::file_name("r.io/a:1", "linux/amd64");
        assert_ne!(a, Record::file_name("r.io/a:1", "linux/arm64"));
        assert_ne!(a, Record::file_name("r.io/a:2", "linux/amd64"));
        assert_eq!(a.len(), 64 + ".json".len());
        let rec = Record {
            name: "r.io/a:1".into(),
            platform: "linux/amd64".into(),
            manifest: ix.clone(),
            resolved: 1_700_000_000,
        };
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"name":"r.io/a:1","platform":"linux/amd64","manifest":"{ix}","resolved":1700000000}}"#
            )
        );
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), rec);
    }

    #[test]
    fn saved_images_are_found_by_tag_digest_and_index() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("kiln")).unwrap();
        let cache = BaseCache::open(&tmp.path().join("cache")).unwrap();
        let img = pulled(&store, b"layer one");
        let tag = Reference::parse("r.io/a:1").unwrap();
        assert_eq!(cache.lookup(&tag, "linux/amd64", HOUR), None);
        cache.save(&tag, "linux/amd64", &img, &store).unwrap();

        let want = CachedImage {
            manifest_digest: img.manifest_digest.clone(),
            manifest: img.manifest.clone(),
            config: img.config.clone(),
        };
        assert_eq!(cache.lookup(&tag, "linux/amd64", HOUR), Some(want.clone()));
        assert_eq!(cache.lookup(&tag, "linux/arm64", HOUR), None);
        assert_eq!(cache.lookup(&tag, "linux/amd64", Duration::ZERO), None);
        let other = Reference::parse("r.io/a:2").unwrap();
        assert_eq!(cache.lookup(&other, "linux/amd64", HOUR), None);

        let pinned = tag.with_digest(&img.manifest_digest);
        assert_eq!(
            cache.lookup(&pinned, "linux/arm64", Duration::ZERO),
            Some(want.clone()),
            "a manifest digest always hits"
        );
        let index = tag.with_digest(&Digest::of(b"an index"));
        assert_eq!(cache.lookup(&index, "linux/amd64", Duration::ZERO), None);
        cache.save(&index, "linux/amd64", &img, &store).unwrap();
        assert_eq!(
            cache.lookup(&index, "linux/amd64", Duration::ZERO),
            Some(want)
        );
        assert_eq!(cache.lookup(&index, "linux/arm64", Duration::ZERO), None);

        let layer = &img.manifest.layers[0].digest;
        assert_eq!(fs::read(cache.blob_path(layer)).unwrap(), b"layer one");
        let fresh = Store::open(&tmp.path().join("kiln2")).unwrap();
        assert!(cache.import_blob(layer, &fresh).unwrap());
        assert_eq!(fs::read(fresh.blob_path(layer)).unwrap(), b"layer one");
        assert!(!cache.import_blob(&Digest::of(b"absent"), &fresh).unwrap());
    }

    #[test]
    fn corrupt_configs_are_misses() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("kiln")).unwrap();
        let cache = BaseCache::open(&tmp.path().join("cache")).unwrap();
        let img = pulled(&store, b"layer");
        let tag = Reference::parse("r.io/a:1").unwrap();
        cache.save(&tag, "linux/amd64", &img, &store).unwrap();
        fs::write(cache.blob_path(&img.manifest.config.digest), b"{}").unwrap();
        assert_eq!(cache.lookup(&tag, "linux/amd64", HOUR), None);

        let mut wrong = img.clone();
        wrong.config = b"{\"os\":\"other\"}".to_vec();
        let err = cache.save(&tag, "linux/amd64", &wrong, &store).unwrap_err();
        assert!(
            matches!(err, BaseCacheError::ConfigMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn from_images_expands_global_args_and_skips_stages_and_scratch() {
        let df = "\
ARG BASE=debian
ARG TAG
ARG REG=r.io/${BASE}
FROM ${REG}:${TAG:-stable} AS build
FROM scratch AS empty
FROM build AS again
FROM --platform=$BUILDPLATFORM golang:1.22
FROM Build
FROM r.io/debian:bookworm
FROM alpine:${TARGETARCH}
";
        let path = Path::new("Dockerfile");
        let got = from_images(df, path, &[], "linux/arm64").unwrap();
        assert_eq!(
            got,
            [
                ("r.io/debian:stable".into(), "linux/arm64".into()),
                ("golang:1.22".into(), "linux/amd64".into()),
                ("r.io/debian:bookworm".into(), "linux/arm64".into()),
                ("alpine:arm64".into(), "linux/arm64".into()),
            ]
        );
        let args = [
            ("TAG".to_owned(), "bookworm".to_owned()),
            ("BASE".to_owned(), "ubuntu".to_owned()),
        ];
        let got = from_images(df, path, &args, "linux/amd64").unwrap();
        assert_eq!(
            got[0],
            ("r.io/ubuntu:bookworm".into(), "linux/amd64".into())
        );

        let err = from_images("FROM ${A:?needed}", path, &[], "linux/amd64").unwrap_err();
        assert!(err.to_string().contains("Dockerfile"), "{err}");
        let err = from_images("FROM a", path, &[], "linux").unwrap_err();
        assert!(matches!(err, BaseCacheError::BadPlatform(_)), "{err}");
    }
}
