//! The layer cache: one small image per build step, tagged with the step's
//! cache key, in a registry repository (`--cache-repo`) or an OCI layout
//! (`oci:/path`). A cache image has zero or one layer, and a config whose
//! only history entry is the step's; its top-level `created` is when it was
//! cached, which `--cache-ttl` is measured from (a step's own `created` may
//! be pinned by `SOURCE_DATE_EPOCH`). Cache trouble never fails a build: a
//! probe that cannot reach the cache is a miss, a failed store a warning.

use crate::digest::{Digest, HashingReader};
use crate::image::config::{rfc3339, write_canonical};
use crate::image::layout::{self, LayoutError};
use crate::image::manifest::{
    self, ANNOTATION_REF_NAME, DOCKER_CONFIG, DOCKER_MANIFEST, Descriptor, Index, Manifest,
    ManifestKind, OCI_CONFIG, OCI_MANIFEST,
};
use crate::registry::{PushImage, Reference, Registry, RegistryError};
use crate::store::{Store, StoreError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Cache images are single-platform manifests; the platform asked for when
/// reading one only matters if someone else's index sits under a key's tag.
const PROBE_PLATFORM: &str = "linux/amd64";
/// Cache pushes run this many at a time, beside the build.
const PUSH_THREADS: usize = 4;
/// Steps waiting for a pusher; beyond this the build waits, so finished
/// layers cannot pile up without bound.
const PUSH_QUEUE: usize = 16;
/// A cache config is a few hundred bytes; anything far bigger is not ours.
const CONFIG_MAX: u64 = 1024 * 1024;

/// Layer cache failures.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid cache repository {spec:?}: {detail}")]
    BadRepo { spec: String, detail: String },
    #[error("cannot push cache image {reference}: {source}")]
    Push {
        reference: String,
        source: Box<RegistryError>,
    },
    #[error("cannot write cache image to OCI layout {path}: {source}")]
    Layout { path: PathBuf, source: LayoutError },
    #[error("cannot lock OCI layout {path} for writing: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where cache images live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheRepo {
    /// A registry repository; tags are the keys' hex digits.
    Registry(Reference),
    /// An OCI image layout directory; ref names are the keys' hex digits.
    Layout(PathBuf),
}

impl CacheRepo {
    /// Parses `--cache-repo`: `oci:/path` is a layout, anything else a
    /// registry repository without tag or digest.
    pub fn parse(spec: &str) -> Result<CacheRepo, CacheError> {
        let bad = |detail: &str| CacheError::BadRepo {
            spec: spec.to_owned(),
            detail: detail.to_owned(),
        };
        if let Some(path) = spec.strip_prefix("oci:") {
            if path.is_empty() {
                return Err(bad("oci: needs a directory, e.g. oci:/cache"));
            }
            return Ok(CacheRepo::Layout(PathBuf::from(path)));
        }
        let r = Reference::parse(spec).map_err(|e| bad(&e.kind.to_string()))?;
        let last = spec.rsplit('/').next().unwrap_or(spec);
        if r.digest.is_some() || last.contains(':') {
            return Err(bad(
                "name a repository without tag or digest; kiln tags cache images with their keys",
            ));
        }
        Ok(CacheRepo::Registry(Reference { tag: None, ..r }))
    }

    /// The default cache repository for a build pushing to `dest`:
    /// `<dest's repository>/cache`, as kaniko does.
    pub fn default_for(dest: &Reference) -> CacheRepo {
        CacheRepo::Registry(Reference {
            registry: dest.registry.clone(),
            repository: format!("{}/cache", dest.repository),
            tag: None,
            digest: None,
        })
    }
}

impl fmt::Display for CacheRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheRepo::Registry(r) => f.write_str(&r.repo_name()),
            CacheRepo::Layout(p) => write!(f, "oci:{}", p.display()),
        }
    }
}

/// What a cached step produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedStep {
    /// The layer (compressed blob and diff ID); `None`: the step changed nothing.
    pub layer: Option<(Descriptor, Digest)>,
    /// The step's history `created_by`.
    pub created_by: String,
    /// The step's history `created`.
    pub created: String,
}

/// A cache image ready to write: its config and manifest.
#[derive(Debug, PartialEq, Eq)]
struct CacheImage {
    config: Vec<u8>,
    manifest: Vec<u8>,
    manifest_media_type: &'static str,
    blobs: Vec<Descriptor>,
}

/// Builds the cache image of `step`, cached at `cached_at` (seconds since
/// the epoch). Its manifest is OCI when the layer is, or when there is no
/// layer and `oci` is preferred; else Docker schema 2.
fn cache_image(key: &Digest, step: &CachedStep, cached_at: u64, oci: bool) -> CacheImage {
    let oci = match &step.layer {
        Some((desc, _)) => desc.media_type.starts_with("application/vnd.oci."),
        None => oci,
    };
    let mut history = serde_json::json!({
        "created": step.created,
        "created_by": step.created_by,
    });
    if step.layer.is_none() {
        history["empty_layer"] = serde_json::Value::Bool(true);
    }
    let diff_ids: Vec<&str> = step.layer.iter().map(|(_, d)| d.as_str()).collect();
    // Like kaniko's cache images, these do not run anywhere: no platform.
    let value = serde_json::json!({
        "architecture": "",
        "os": "",
        "config": {},
        "created": rfc3339(cached_at),
        "history": [history],
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let mut config = Vec::new();
    write_canonical(&value, &mut config);
    let (manifest_type, config_type) = if oci {
        (OCI_MANIFEST, OCI_CONFIG)
    } else {
        (DOCKER_MANIFEST, DOCKER_CONFIG)
    };
    let config_desc = Descriptor {
        media_type: config_type.to_owned(),
        digest: Digest::of(&config),
        size: config.len() as u64,
        urls: None,
        annotations: None,
        platform: None,
    };
    let layers: Vec<Descriptor> = step.layer.iter().map(|(d, _)| d.clone()).collect();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(manifest_type.to_owned()),
        config: config_desc.clone(),
        layers: layers.clone(),
        annotations: Some(step_annotations(key, step, cached_at)),
    };
    let mut blobs = layers;
    blobs.push(config_desc);
    CacheImage {
        config,
        manifest: manifest.to_canonical_json(),
        manifest_media_type: manifest_type,
        blobs,
    }
}

/// The manifest annotation naming the key a cache image was stored under.
const CACHE_KEY_ANNOTATION: &str = "dev.kiln.cache.key";
/// A cache entry's manifest, and its config when it was read.
type Found = (Manifest, Option<Vec<u8>>);

/// When the entry was cached (RFC 3339), as the config's `created`.
const CACHED_AT_ANNOTATION: &str = "dev.kiln.cache.cached-at";
/// The step's history entry, as the config's only `history` item.
const CREATED_ANNOTATION: &str = "dev.kiln.cache.created";
const CREATED_BY_ANNOTATION: &str = "dev.kiln.cache.created-by";
/// The layer's diff ID, as the config's only `rootfs.diff_ids` item.
const DIFF_ID_ANNOTATION: &str = "dev.kiln.cache.diff-id";

/// The manifest annotations of `key`'s cache image: the key, and the step
/// again as its config holds it, so that a probe reads the manifest alone.
fn step_annotations(key: &Digest, step: &CachedStep, cached_at: u64) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = [
        (CACHE_KEY_ANNOTATION, key.to_string()),
        (CACHED_AT_ANNOTATION, rfc3339(cached_at)),
        (CREATED_ANNOTATION, step.created.clone()),
        (CREATED_BY_ANNOTATION, step.created_by.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some((_, diff_id)) = &step.layer {
        a.insert(DIFF_ID_ANNOTATION.to_owned(), diff_id.to_string());
    }
    a
}

/// The step and its cache time from `manifest`'s annotations; `None` when
/// it lacks them (an entry written before kiln put them there).
fn step_from_annotations(manifest: &Manifest) -> Option<Result<(CachedStep, u64), String>> {
    let a = manifest.annotations.as_ref()?;
    let cached_at = a.get(CACHED_AT_ANNOTATION)?;
    let (created, created_by) = (a.get(CREATED_ANNOTATION)?, a.get(CREATED_BY_ANNOTATION)?);
    Some((|| {
        let cached_at = parse_rfc3339(cached_at)
            .ok_or_else(|| format!("its cache time {cached_at:?} is not RFC 3339"))?;
        let layer = match (manifest.layers.as_slice(), a.get(DIFF_ID_ANNOTATION)) {
            ([], None) => None,
            ([desc], Some(diff_id)) => {
                let diff_id = diff_id
                    .parse::<Digest>()
                    .map_err(|e| format!("its diff ID {diff_id:?} is invalid: {e}"))?;
                Some((desc.clone(), diff_id))
            }
            (layers, diff_id) => {
                return Err(format!(
                    "it has {} layers and {} diff ID annotations; a cache image has one of each or none",
                    layers.len(),
                    usize::from(diff_id.is_some())
                ));
            }
        };
        let step = CachedStep {
            layer,
            created_by: created_by.clone(),
            created: created.clone(),
        };
        Ok((step, cached_at))
    })())
}

/// Reads a cache image back: the step, and when it was cached (seconds
/// since the epoch). Anything else is described in the error.
fn read_cache_image(
    key: &Digest,
    manifest: &Manifest,
    config: Option<&[u8]>,
) -> Result<(CachedStep, u64), String> {
    #[derive(Deserialize)]
    struct Config {
        created: String,
        rootfs: RootFs,
        history: Vec<History>,
    }
    #[derive(Deserialize)]
    struct RootFs {
        diff_ids: Vec<Digest>,
    }
    #[derive(Deserialize)]
    struct History {
        #[serde(default)]
        created: String,
        #[serde(default)]
        created_by: String,
    }
    let named = manifest
        .annotations
        .as_ref()
        .and_then(|a| a.get(CACHE_KEY_ANNOTATION));
    if named.map(String::as_str) != Some(key.as_str()) {
        return Err(format!(
            "it is not kiln's cache image for {key} (annotation {CACHE_KEY_ANNOTATION} is {named:?})"
        ));
    }
    if let Some(read) = step_from_annotations(manifest) {
        return read;
    }
    let config = config.ok_or("its manifest lacks the step and its config was not read")?;
    let cfg: Config =
        serde_json::from_slice(config).map_err(|e| format!("its config is unreadable: {e}"))?;
    let cached_at = parse_rfc3339(&cfg.created)
        .ok_or_else(|| format!("its created time {:?} is not RFC 3339", cfg.created))?;
    let [history] = <[History; 1]>::try_from(cfg.history)
        .map_err(|h| format!("it has {} history entries, not 1", h.len()))?;
    let layer = match (manifest.layers.as_slice(), cfg.rootfs.diff_ids.as_slice()) {
        ([], []) => None,
        ([desc], [diff_id]) => Some((desc.clone(), diff_id.clone())),
        (l, d) => {
            return Err(format!(
                "it has {} layers and {} diff IDs; a cache image has one of each or none",
                l.len(),
                d.len()
            ));
        }
    };
    Ok((
        CachedStep {
            layer,
            created_by: history.created_by,
            created: history.created,
        },
        cached_at,
    ))
}

/// Whether an entry cached (or a tag resolved) at `cached_at` is still usable at `now` (both
/// seconds since the epoch) under `ttl`. Entries from the future (clock
/// skew between machines) count as new.
pub(super) fn is_fresh(cached_at: u64, now: u64, ttl: Duration) -> bool {
    now.saturating_sub(cached_at) < ttl.as_secs()
}

/// Seconds since the epoch of an RFC 3339 time (`2024-05-01T12:00:00Z`,
/// fractions and offsets allowed); `None` if it is not one.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = rest[1..].split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    // Howard Hinnant's days-from-civil, the inverse of `rfc3339`.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs).ok()
}

/// The current time in seconds since the epoch.
pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The layer cache of a build.
#[derive(Clone, Debug)]
pub struct LayerCache {
    repo: CacheRepo,
    registry: Registry,
    store: Store,
    ttl: Duration,
}

impl LayerCache {
    /// A cache in `repo`, reading and writing blobs through `store`;
    /// entries older than `ttl` are misses.
    pub fn new(repo: CacheRepo, registry: Registry, store: Store, ttl: Duration) -> LayerCache {
        LayerCache {
            repo,
            registry,
            store,
            ttl,
        }
    }

    /// Where cache images live.
    pub fn repo(&self) -> &CacheRepo {
        &self.repo
    }

    /// Where a cached layer's blob is fetched from when the store lacks it
    /// (for [`crate::build::stage::Layer::source`]): the registry
    /// repository; `None` for a layout, whose blobs a hit copies into the
    /// store at once.
    pub fn layer_source(&self) -> Option<Reference> {
        match &self.repo {
            CacheRepo::Registry(r) => Some(r.clone()),
            CacheRepo::Layout(_) => None,
        }
    }

    /// Looks `key` up: `Some` on a fresh hit, `None` on a miss, on an
    /// expired entry, and (with a warning) when the cache cannot be read.
    /// Fails only when the local store cannot take a layout's blob.
    pub fn probe(&self, key: &Digest) -> Result<Option<CachedStep>, CacheError> {
        let found = match &self.repo {
            CacheRepo::Registry(r) => self.probe_registry(r, key),
            CacheRepo::Layout(dir) => probe_layout(dir, key),
        };
        let (manifest, config) = match found {
            Ok(Some(found)) => found,
            Ok(None) => {
                log::debug!("No cached layer for {key} in {}", self.repo);
                return Ok(None);
            }
            Err(reason) => {
                log::warn!(
                    "Cannot read the layer cache {} for {key}: {reason}; building the step",
                    self.repo
                );
                return Ok(None);
            }
        };
        let (step, cached_at) = match read_cache_image(key, &manifest, config.as_deref()) {
            Ok(read) => read,
            Err(reason) => {
                log::warn!(
                    "Ignoring cache entry {key} in {}: {reason}; building the step",
                    self.repo
                );
                return Ok(None);
            }
        };
        if !is_fresh(cached_at, now_secs(), self.ttl) {
            log::info!(
                "Cache entry {key} in {} is older than --cache-ttl ({}s); building the step",
                self.repo,
                self.ttl.as_secs()
            );
            return Ok(None);
        }
        if let (CacheRepo::Layout(dir), Some((desc, _))) = (&self.repo, &step.layer)
            && !self.import_layout_blob(dir, key, &desc.digest)?
        {
            return Ok(None);
        }
        Ok(Some(step))
    }

    /// The manifest and config of `key`'s cache image in registry repository `r`.
    fn probe_registry(&self, r: &Reference, key: &Digest) -> Result<Option<Found>, String> {
        let tagged = Reference {
            tag: Some(key.hex().to_owned()),
            ..r.clone()
        };
        // One request where the manifest carries the step; older entries
        // keep it only in their config.
        let found = match self.registry.pull_manifest_only(&tagged, PROBE_PLATFORM) {
            Ok((_, manifest)) if step_from_annotations(&manifest).is_some() => {
                return Ok(Some((manifest, None)));
            }
            Ok(_) => self.registry.pull_manifest(&tagged, PROBE_PLATFORM),
            Err(e) => Err(e),
        };
        match found {
            Ok(pulled) => Ok(Some((pulled.manifest, Some(pulled.config)))),
            Err(RegistryError::ManifestNotFound { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Copies layer `digest` of `key`'s entry from the layout at `dir` into
    /// the store, verified. Returns false, after a warning, when the
    /// layout's copy is missing or corrupt.
    fn import_layout_blob(
        &self,
        dir: &Path,
        key: &Digest,
        digest: &Digest,
    ) -> Result<bool, StoreError> {
        if self.store.has_blob(digest) {
            return Ok(true);
        }
        let path = blob_path(dir, digest);
        let unusable = |reason: String| {
            log::warn!(
                "Ignoring cache entry {key} in {}: its layer {}: {reason}; building the step",
                self.repo,
                path.display()
            );
            Ok(false)
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => return unusable(e.to_string()),
        };
        let mut w = self.store.blob_writer()?;
        if let Err(e) = io::copy(&mut io::BufReader::with_capacity(1 << 20, file), &mut w) {
            return unusable(e.to_string());
        }
        match w.commit(Some(digest)) {
            Ok(_) => Ok(true),
            Err(StoreError::DigestMismatch { actual, .. }) => {
                unusable(format!("it is corrupt, its digest is {actual}"))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `step`'s cache image under `key`. Its layer blob must be in
    /// the store (or, for a registry, already in the cache repository).
    pub fn store_step(&self, key: &Digest, step: &CachedStep) -> Result<(), CacheError> {
        let oci = matches!(self.repo, CacheRepo::Layout(_));
        let image = cache_image(key, step, now_secs(), oci);
        self.store.put_bytes(&image.config)?;
        match &self.repo {
            CacheRepo::Registry(r) => {
                let dest = Reference {
                    tag: Some(key.hex().to_owned()),
                    ..r.clone()
                };
                let push = PushImage {
                    manifest: &image.manifest,
                    manifest_media_type: image.manifest_media_type,
                    blobs: image.blobs.iter().collect(),
                    source: None,
                };
                self.registry
                    .push(&dest, &push, &self.store)
                    .map_err(|source| CacheError::Push {
                        reference: dest.to_string(),
                        source: Box::new(source),
                    })?;
            }
            CacheRepo::Layout(dir) => {
                let layout_err = |source| CacheError::Layout {
                    path: dir.clone(),
                    source,
                };
                fs::create_dir_all(dir).map_err(|source| {
                    layout_err(LayoutError::Io {
                        path: dir.clone(),
                        source,
                    })
                })?;
                // index.json is read, changed and replaced: one writer at a
                // time, across threads and builds sharing the layout.
                let _lock = lock_dir(dir)?;
                layout::write_oci_layout(
                    dir,
                    &image.manifest,
                    image.manifest_media_type,
                    &image.blobs,
                    &self.store,
                    Some(key.hex()),
                )
                .map_err(layout_err)?;
            }
        }
        log::debug!("Cached step {key} in {}", self.repo);
        Ok(())
    }
}

/// Where blob `digest` lives in the layout at `dir`.
fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.hex())
}

/// Takes an exclusive `flock` on directory `dir`, held until the file drops.
fn lock_dir(dir: &Path) -> Result<File, CacheError> {
    let lock_err = |source| CacheError::Lock {
        path: dir.to_owned(),
        source,
    };
    let f = File::open(dir).map_err(lock_err)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| lock_err(e.into()))?;
    Ok(f)
}

/// The manifest and config of `key`'s cache image in the layout at `dir`.
fn probe_layout(dir: &Path, key: &Digest) -> Result<Option<Found>, String> {
    let index_path = dir.join("index.json");
    let index = match fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice::<Index>(&bytes)
            .map_err(|e| format!("{} is not an OCI index: {e}", index_path.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", index_path.display())),
    };
    let Some(entry) = index.manifests.iter().rev().find(|d| {
        d.annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_REF_NAME))
            .is_some_and(|n| n == key.hex())
    }) else {
        return Ok(None);
    };
    let bytes = read_verified(dir, &entry.digest, CONFIG_MAX)?;
    let manifest = match manifest::parse_manifest(&bytes, Some(&entry.media_type)) {
        Ok(ManifestKind::Image(m)) => *m,
        Ok(ManifestKind::Index(_)) => {
            return Err(format!("{} is an index, not a cache image", entry.digest));
        }
        Err(e) => return Err(format!("manifest {}: {e}", entry.digest)),
    };
    let config = read_verified(dir, &manifest.config.digest, CONFIG_MAX)?;
    Ok(Some((manifest, Some(config))))
}

/// Reads blob `digest` (at most `max` bytes) from the layout at `dir`, checking its digest.
fn read_verified(dir: &Path, digest: &Digest, max: u64) -> Result<Vec<u8>, String> {
    let path = blob_path(dir, digest);
    let describe = |e: io::Error| format!("cannot read {}: {e}", path.display());
    let file = File::open(&path).map_err(describe)?;
    let mut reader = HashingReader::new(io::Read::take(file, max + 1));
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut reader, &mut bytes).map_err(describe)?;
    let (actual, _) = reader.finish();
    if bytes.len() as u64 > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    if actual != *digest {
        return Err(format!(
            "{} is corrupt: its digest is {actual}",
            path.display()
        ));
    }
    Ok(bytes)
}

/// A step waiting to be written to the cache.
type Job = (Digest, CachedStep);

/// Writes cache images on background threads while the build goes on.
pub struct CachePusher {
    queue: Mutex<Option<mpsc::SyncSender<Job>>>,
    workers: Mutex<Vec<thread::JoinHandle<Vec<String>>>>,
    repo: String,
}

impl CachePusher {
    /// Starts the pushers for `cache`.
    pub fn start(cache: LayerCache) -> CachePusher {
        let (tx, rx) = mpsc::sync_channel::<Job>(PUSH_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let repo = cache.repo.to_string();
        let workers = (0..PUSH_THREADS)
            .map(|_| {
                let (rx, cache) = (rx.clone(), cache.clone());
                thread::spawn(move || {
                    let mut failures = Vec::new();
                    loop {
                        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok((key, step)) = job else {
                            return failures;
                        };
                        if let Err(e) = cache.store_step(&key, &step) {
                            failures.push(format!(
                                "Failed to push cache layer {key} to {}: {e}",
                                cache.repo
                            ));
                        }
                    }
                })
            })
            .collect();
        CachePusher {
            queue: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
            repo,
        }
    }

    /// Queues `step` for caching under `key`; waits while the queue is full.
    pub fn push(&self, key: Digest, step: CachedStep) {
        let Some(queue) = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return;
        };
        if queue.send((key.clone(), step)).is_err() {
            log::warn!(
                "Failed to push cache layer {key} to {}: the cache pushers have stopped",
                self.repo
            );
        }
    }

    /// Waits for every queued push and logs each failure as a warning;
    /// returns how many failed. Later pushes are dropped.
    pub fn finish(&self) -> usize {
        drop(
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let workers =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        let mut failed = 0;
        for worker in workers {
            match worker.join() {
                Ok(failures) => {
                    for f in &failures {
                        log::warn!("{f}");
                    }
                    failed += failures.len();
                }
                Err(_) => {
                    log::warn!(
                        "A cache pusher for {} crashed; its pushes are lost",
                        self.repo
                    );
                    failed += 1;
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::{DOCKER_LAYER_GZIP, OCI_LAYER_ZSTD};

    fn key(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn layer(media_type: &str) -> (Descriptor, Digest) {
        (
            Descriptor {
                media_type: media_type.to_owned(),
                digest: Digest::of(b"blob"),
                size: 4,
                urls: None,
                annotations: None,
                platform: None,
            },
            Digest::of(b"tar"),
        )
    }

    fn step(layer: Option<(Descriptor, Digest)>) -> CachedStep {
        CachedStep {
            layer,
            created_by: "RUN /bin/sh -c make".to_owned(),
            created: "1970-01-01T00:00:00Z".to_owned(),
        }
    }

    #[test]
    fn cache_repos_parse_from_the_flag() {
        assert_eq!(
            CacheRepo::parse("oci:/var/cache/kiln").unwrap(),
            CacheRepo::Layout(PathBuf::from("/var/cache/kiln"))
        );
        let CacheRepo::Registry(r) = CacheRepo::parse("127.0.0.1:5000/app/cache").unwrap() else {
            panic!("expected a registry repository");
        };
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag, r.digest),
            ("127.0.0.1:5000", "app/cache", None, None)
        );
        let CacheRepo::Registry(hub) = CacheRepo::parse("me/cache").unwrap() else {
            panic!("expected a registry repository");
        };
        assert_eq!(hub.repo_name(), "index.docker.io/me/cache");
        for bad in [
            "oci:",
            "r.io/cache:v1",
            "r.io/cache:latest",
            "Upper/Case",
            &format!("r.io/c@{}", key(0)),
        ] {
            let err = CacheRepo::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn default_cache_repo_is_beside_the_destination() {
        let dest = Reference::parse("r.io:5000/team/app:v2").unwrap();
        let repo = CacheRepo::default_for(&dest);
        assert_eq!(repo.to_string(), "r.io:5000/team/app/cache");
        assert_eq!(
            CacheRepo::Layout("/c".into()).to_string(),
            "oci:/c".to_owned()
        );
    }

    #[test]
    fn cache_images_round_trip() {
        for (s, oci, manifest_type, config_type) in [
            (
                step(Some(layer(DOCKER_LAYER_GZIP))),
                true,
                DOCKER_MANIFEST,
                DOCKER_CONFIG,
            ),
            (
                step(Some(layer(OCI_LAYER_ZSTD))),
                false,
                OCI_MANIFEST,
                OCI_CONFIG,
            ),
            (step(None), false, DOCKER_MANIFEST, DOCKER_CONFIG),
            (step(None), true, OCI_MANIFEST, OCI_CONFIG),
        ] {
            let img = cache_image(&key(1), &s, 1_700_000_000, oci);
            assert_eq!(img.manifest_media_type, manifest_type);
            let ManifestKind::Image(m) = manifest::parse_manifest(&img.manifest, None).unwrap()
            else {
                panic!("expected an image manifest");
            };
            assert_eq!(m.config.media_type, config_type);
            assert_eq!(m.config.digest, Digest::of(&img.config));
            assert_eq!(img.blobs.last(), Some(&m.config));
            assert_eq!(img.blobs.len(), m.layers.len() + 1);
            // From the manifest alone, and, for entries written before the
            // annotations, from the config.
            let (back, at) = read_cache_image(&key(1), &m, None).unwrap();
            assert_eq!((&back, at), (&s, 1_700_000_000));
            let (back, at) =
                read_cache_image(&key(1), &without_step(&m), Some(&img.config)).unwrap();
            assert_eq!((back, at), (s, 1_700_000_000));
        }
    }

    /// `m` as kiln wrote cache manifests before they carried the step.
    fn without_step(m: &Manifest) -> Manifest {
        let mut bare = m.clone();
        bare.annotations
            .as_mut()
            .unwrap()
            .retain(|k, _| k == CACHE_KEY_ANNOTATION);
        bare
    }

    #[test]
    fn cache_config_records_the_step_and_when_it_was_cached() {
        let img = cache_image(&key(1), &step(None), 86_400, false);
        assert_eq!(
            String::from_utf8(img.config).unwrap(),
            r#"{"architecture":"","config":{},"created":"1970-01-02T00:00:00Z","history":[{"created":"1970-01-01T00:00:00Z","created_by":"RUN /bin/sh -c make","empty_layer":true}],"os":"","rootfs":{"diff_ids":[],"type":"layers"}}"#
        );
    }

    #[test]
    fn foreign_or_malformed_cache_images_are_refused() {
        let img = cache_image(&key(1), &step(Some(layer(DOCKER_LAYER_GZIP))), 0, false);
        let ManifestKind::Image(m) = manifest::parse_manifest(&img.manifest, None).unwrap() else {
            panic!("expected an image manifest");
        };
        let err = read_cache_image(&key(2), &m, Some(&img.config)).unwrap_err();
        assert!(err.contains("not kiln's cache image"), "{err}");

        let mut two = (*m).clone();
        two.layers.push(two.layers[0].clone());
        let err = read_cache_image(&key(1), &two, None).unwrap_err();
        assert!(err.contains("2 layers and 1 diff ID annotations"), "{err}");
        let err = read_cache_image(&key(1), &without_step(&two), Some(&img.config)).unwrap_err();
        assert!(err.contains("2 layers and 1 diff IDs"), "{err}");
        let mut late = (*m).clone();
        late.annotations
            .as_mut()
            .unwrap()
            .insert(CACHED_AT_ANNOTATION.into(), "yesterday".into());
        let err = read_cache_image(&key(1), &late, None).unwrap_err();
        assert!(err.contains("\"yesterday\""), "{err}");

        let bare = without_step(&m);
        let err = read_cache_image(&key(1), &bare, None).unwrap_err();
        assert!(err.contains("config was not read"), "{err}");
        let cfg = br#"{"created":"yesterday","rootfs":{"diff_ids":[]},"history":[]}"#;
        let err = read_cache_image(&key(1), &bare, Some(cfg)).unwrap_err();
        assert!(err.contains("\"yesterday\""), "{err}");
        let cfg = br#"{"created":"1970-01-01T00:00:00Z","rootfs":{"diff_ids":[]},"history":[]}"#;
        let err = read_cache_image(&key(1), &bare, Some(cfg)).unwrap_err();
        assert!(err.contains("0 history entries"), "{err}");
    }

    #[test]
    fn ttl_is_measured_from_when_the_entry_was_cached() {
        let day = Duration::from_secs(86_400);
        assert!(is_fresh(1_000, 1_000, day));
        assert!(is_fresh(1_000, 1_000 + 86_399, day));
        assert!(!is_fresh(1_000, 1_000 + 86_400, day));
        assert!(is_fresh(5_000, 1_000, day), "future entries are fresh");
        assert!(!is_fresh(1_000, 1_000, Duration::ZERO));
    }

    #[test]
    fn rfc3339_times_parse_as_written() {
        for secs in [0, 59, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs), "{secs}");
        }
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00.123456789Z"),
            Some(1_709_208_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T14:00:00+02:00"),
            Some(1_709_208_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T07:30:00-04:30"),
            Some(1_709_208_000)
        );
        for bad in [
            "",
            "2024-02-29",
            "2024-02-29T12:00:00",
            "2024-13-01T00:00:00Z",
            "2024-02-29T24:00:00Z",
            "2024-02-29T12:00:00.Z",
            "2024-02-29T12:00:00+0200",
            "+024-02-29T12:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn layout_probe_misses_without_an_index_and_reads_what_was_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("kiln")).unwrap();
        let dir = tmp.path().join("cache");
        assert_eq!(probe_layout(&dir, &key(1)), Ok(None));
        let layer_digest = store.put_bytes(b"layer").unwrap();
        let (mut desc, diff_id) = layer(OCI_LAYER_ZSTD);
        desc.digest = layer_digest.clone();
        desc.size = 5;
        let s = step(Some((desc, diff_id)));
        let registry = crate::registry::Registry::new(crate::registry::RegistryOptions {
            docker_config_dir: Some(tmp.path().to_owned()),
            ..Default::default()
        })
        .unwrap();
        let cache = LayerCache::new(
            CacheRepo::Layout(dir.clone()),
            registry,
            store.clone(),
            Duration::from_secs(3600),
        );
        cache.store_step(&key(1), &s).unwrap();
        assert_eq!(probe_layout(&dir, &key(2)), Ok(None));

        let other = Store::open(&tmp.path().join("kiln2")).unwrap();
        let fresh = LayerCache {
            store: other.clone(),
            ..cache
        };
        assert_eq!(fresh.probe(&key(1)).unwrap(), Some(s));
        assert!(
            other.has_blob(&layer_digest),
            "the hit's blob is in the store"
        );
    }
}
