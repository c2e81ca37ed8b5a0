//! The layer cache against a real registry (Debian's `docker-registry`) on
//! 127.0.0.1 and against an OCI layout, and the base-image cache filled by
//! `kiln warm` and read back with the registry gone.

use flate2::Compression;
use flate2::write::GzEncoder;
use kiln::cache::base::{self, BaseCache};
use kiln::cache::store::{CachePusher, CacheRepo, CachedStep, LayerCache};
use kiln::digest::{Digest, HashingWriter};
use kiln::image::manifest::{self, Descriptor, Manifest};
use kiln::registry::{PushImage, Reference, Registry, RegistryOptions};
use kiln::store::Store;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);

/// A registry process on a free loopback port, killed on drop.
struct TestRegistry {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    fn start() -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
                 http: {{addr: {addr}, secret: kiln}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry missing: apt-get install -y docker-registry");
        let mut reg = TestRegistry {
            child,
            addr,
            _dir: dir,
        };
        let start = Instant::now();
        while TcpStream::connect(reg.addr).is_err() {
            assert!(
                reg.child.try_wait().unwrap().is_none(),
                "docker-registry exited"
            );
            assert!(start.elapsed() < Duration::from_secs(10), "registry not up");
            std::thread::sleep(Duration::from_millis(20));
        }
        reg
    }

    fn reference(&self, name: &str) -> Reference {
        Reference::parse(&format!("{}/{name}", self.addr)).unwrap()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client with no credentials and no retries (failures show at once).
fn client(config_dir: &Path) -> Registry {
    Registry::new(RegistryOptions {
        docker_config_dir: Some(config_dir.to_owned()),
        push_retries: 0,
        pull_retries: 0,
        ..RegistryOptions::default()
    })
    .unwrap()
}

/// Every warning of this test binary.
struct Captured(Mutex<Vec<String>>);

impl log::Log for Captured {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static CAPTURED: Captured = Captured(Mutex::new(Vec::new()));

fn capture_logs() {
    if log::set_logger(&CAPTURED).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// Warnings that mention `what`.
fn warnings_about(what: &str) -> Vec<String> {
    CAPTURED
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains(what))
        .cloned()
        .collect()
}

/// A gzip layer holding one file with `content`: its descriptor and diff ID.
fn layer(store: &Store, content: &[u8]) -> (Descriptor, Digest) {
    let gz = GzEncoder::new(store.blob_writer().unwrap(), Compression::fast());
    let mut tar = tar::Builder::new(HashingWriter::new(gz));
    let mut h = tar::Header::new_ustar();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    tar.append_data(&mut h, "file", content).unwrap();
    let (gz, diff_id, _) = tar.into_inner().unwrap().finish();
    let (digest, size) = gz.finish().unwrap().commit(None).unwrap();
    let desc = Descriptor {
        media_type: manifest::DOCKER_LAYER_GZIP.to_owned(),
        digest,
        size,
        urls: None,
        annotations: None,
        platform: None,
    };
    (desc, diff_id)
}

fn step(layer: Option<(Descriptor, Digest)>, cmd: &str) -> CachedStep {
    CachedStep {
        layer,
        created_by: format!("RUN /bin/sh -c {cmd}"),
        created: "2024-01-01T00:00:00Z".to_owned(),
    }
}

/// Stores a layer step and an empty step in `repo`, probes them back from a
/// fresh store, and checks misses and expiry. Returns the layer step and
/// the fresh store the probe used.
fn round_trip(repo: CacheRepo, registry: &Registry, tmp: &Path) -> (CachedStep, Store) {
    let store = Store::open(&tmp.join("kiln")).unwrap();
    let with_layer = step(Some(layer(&store, b"built")), "make");
    let empty = step(None, "true");
    let (k1, k2, k3) = (Digest::of(b"k1"), Digest::of(b"k2"), Digest::of(b"k3"));
    let cache = LayerCache::new(repo.clone(), registry.clone(), store, HOUR);
    assert_eq!(cache.probe(&k1).unwrap(), None, "empty cache");
    cache.store_step(&k1, &with_layer).unwrap();
    cache.store_step(&k2, &empty).unwrap();

    let fresh = Store::open(&tmp.join("kiln2")).unwrap();
    let reader = LayerCache::new(repo.clone(), registry.clone(), fresh.clone(), HOUR);
    assert_eq!(reader.probe(&k1).unwrap(), Some(with_layer.clone()));
    assert_eq!(reader.probe(&k2).unwrap(), Some(empty));
    assert_eq!(reader.probe(&k3).unwrap(), None);
    let expired = LayerCache::new(repo, registry.clone(), fresh.clone(), Duration::ZERO);
    assert_eq!(expired.probe(&k1).unwrap(), None, "older than the TTL");
    for k in [&k1, &k2, &k3] {
        assert!(
            warnings_about(k.as_str()).is_empty(),
            "{k}: a miss is no warning"
        );
    }
    (with_layer, fresh)
}

#[test]
fn registry_cache_round_trip() {
    capture_logs();
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let registry = client(tmp.path());
    let repo = CacheRepo::parse(&format!("{}/app/cache", reg.addr)).unwrap();
    let (s, fresh) = round_trip(repo.clone(), &registry, tmp.path());

    let cache = LayerCache::new(repo, registry.clone(), fresh.clone(), HOUR);
    let source = cache.layer_source().expect("a registry cache is a source");
    assert_eq!(source.repo_name(), format!("{}/app/cache", reg.addr));
    let (desc, _) = s.layer.unwrap();
    assert!(!fresh.has_blob(&desc.digest), "registry hits fetch lazily");
    registry.fetch_blob(&source, &desc.digest, &fresh).unwrap();
    assert!(fresh.has_blob(&desc.digest));

    // A probe reads the manifest alone: the entry still hits once the
    // registry has lost its config blob.
    let tagged = Reference {
        tag: Some(Digest::of(b"k1").hex().to_owned()),
        ..source.clone()
    };
    let (_, manifest) = registry.pull_manifest_only(&tagged, "linux/amd64").unwrap();
    let mut del = TcpStream::connect(reg.addr).unwrap();
    write!(
        del,
        "DELETE /v2/app/cache/blobs/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        manifest.config.digest, reg.addr
    )
    .unwrap();
    let mut answer = String::new();
    del.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(registry.pull_manifest(&tagged, "linux/amd64").is_err());
    let cache = LayerCache::new(CacheRepo::Registry(source), registry, fresh, HOUR);
    assert!(cache.probe(&Digest::of(b"k1")).unwrap().is_some());
}

#[test]
fn layout_cache_round_trip() {
    capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let registry = client(tmp.path());
    let dir = tmp.path().join("layout");
    let repo = CacheRepo::parse(&format!("oci:{}", dir.display())).unwrap();
    let (s, fresh) = round_trip(repo.clone(), &registry, tmp.path());
    let (desc, _) = s.layer.unwrap();
    assert!(fresh.has_blob(&desc.digest), "layout hits copy the blob");
    assert_eq!(
        LayerCache::new(repo, registry, fresh, HOUR).layer_source(),
        None
    );
}

#[test]
fn concurrent_pushes_into_one_layout_lose_nothing() {
    capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let registry = client(tmp.path());
    let store = Store::open(&tmp.path().join("kiln")).unwrap();
    let repo = CacheRepo::Layout(tmp.path().join("layout"));
    let steps: Vec<(Digest, CachedStep)> = (0..12u8)
        .map(|i| {
            let l = layer(&store, &[i; 100]);
            (Digest::of(&[i]), step(Some(l), &format!("step {i}")))
        })
        .collect();
    let cache = LayerCache::new(repo.clone(), registry.clone(), store.clone(), HOUR);
    let pushers: Vec<CachePusher> = (0..2).map(|_| CachePusher::start(cache.clone())).collect();
    for (i, (k, s)) in steps.iter().enumerate() {
        pushers[i % 2].push(k.clone(), s.clone());
    }
    for p in pushers {
        assert_eq!(p.finish(), 0);
    }
    let fresh = Store::open(&tmp.path().join("kiln2")).unwrap();
    let reader = LayerCache::new(repo, registry, fresh, HOUR);
    for (k, s) in &steps {
        assert_eq!(reader.probe(k).unwrap().as_ref(), Some(s), "{k}");
    }
}

#[test]
fn a_failing_registry_is_a_warning_not_an_error() {
    capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let registry = client(tmp.path());
    let store = Store::open(&tmp.path().join("kiln")).unwrap();
    let repo = CacheRepo::parse(&format!("127.0.0.1:{port}/gone/cache")).unwrap();
    let cache = LayerCache::new(repo, registry, store.clone(), HOUR);
    let key = Digest::of(b"unreachable");
    assert_eq!(cache.probe(&key).unwrap(), None);
    let probe_warnings = warnings_about(key.as_str());
    assert_eq!(probe_warnings.len(), 1, "{probe_warnings:?}");
    assert!(
        probe_warnings[0].contains(&format!("127.0.0.1:{port}")),
        "{probe_warnings:?}"
    );

    let pushed = Digest::of(b"push fails");
    let pusher = CachePusher::start(cache);
    pusher.push(pushed.clone(), step(Some(layer(&store, b"x")), "x"));
    assert_eq!(pusher.finish(), 1);
    let push_warnings = warnings_about(pushed.as_str());
    assert_eq!(push_warnings.len(), 1, "{push_warnings:?}");
    assert!(
        push_warnings[0].starts_with(&format!("Failed to push cache layer {pushed}")),
        "{push_warnings:?}"
    );
}

/// Pushes a two-layer image to `r`; returns its manifest digest and layers.
fn push_image(registry: &Registry, store: &Store, r: &Reference) -> (Digest, Vec<Descriptor>) {
    let layers = [layer(store, r.to_string().as_bytes()), layer(store, b"two")];
    let diff_ids: Vec<&str> = layers.iter().map(|(_, d)| d.as_str()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config = Descriptor {
        media_type: manifest::DOCKER_CONFIG.to_owned(),
        digest: store.put_bytes(&config).unwrap(),
        size: config.len() as u64,
        urls: None,
        annotations: None,
        platform: None,
    };
    let layers: Vec<Descriptor> = layers.into_iter().map(|(d, _)| d).collect();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(manifest::DOCKER_MANIFEST.to_owned()),
        config: config.clone(),
        layers: layers.clone(),
        annotations: None,
    }
    .to_canonical_json();
    let mut blobs: Vec<&Descriptor> = layers.iter().collect();
    blobs.push(&config);
    let image = PushImage {
        manifest: &manifest,
        manifest_media_type: manifest::DOCKER_MANIFEST,
        blobs,
        source: None,
    };
    (registry.push(r, &image, store).unwrap(), layers)
}

#[test]
fn warmed_images_are_used_offline() {
    capture_logs();
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let registry = client(tmp.path());
    let store = Store::open(&tmp.path().join("pusher")).unwrap();
    let by_image = reg.reference("base:1");
    let by_dockerfile = reg.reference("base:2");
    let one = push_image(&registry, &store, &by_image);
    let two = push_image(&registry, &store, &by_dockerfile);

    let dockerfile = tmp.path().join("Dockerfile");
    let mut f = std::fs::File::create(&dockerfile).unwrap();
    writeln!(
        f,
        "ARG T=1\nFROM {}/base:${{T}} AS b\nFROM b\nFROM scratch",
        reg.addr
    )
    .unwrap();
    let cache_dir = tmp.path().join("cache");
    base::warm(
        &[by_image.to_string()],
        Some(&dockerfile),
        &[("T".to_owned(), "2".to_owned())],
        "linux/amd64",
        &cache_dir,
        &registry,
    )
    .unwrap();
    drop(reg);

    let cache = BaseCache::open(&cache_dir).unwrap();
    let build_store = Store::open(&tmp.path().join("build")).unwrap();
    for (r, (digest, layers)) in [(&by_image, &one), (&by_dockerfile, &two)] {
        assert!(registry.pull_manifest(r, "linux/amd64").is_err(), "offline");
        let hit = cache.lookup(r, "linux/amd64", HOUR).expect("warmed");
        assert_eq!(&hit.manifest_digest, digest);
        assert_eq!(&hit.manifest.layers, layers);
        assert_eq!(Digest::of(&hit.config), hit.manifest.config.digest);
        let pinned = cache.lookup(&r.with_digest(digest), "linux/amd64", Duration::ZERO);
        assert_eq!(pinned.as_ref(), Some(&hit));
        for l in layers {
            assert!(cache.import_blob(&l.digest, &build_store).unwrap());
            let bytes = std::fs::read(build_store.blob_path(&l.digest)).unwrap();
            assert_eq!(Digest::of(&bytes), l.digest);
        }
    }
    let expired = cache.lookup(&by_image, "linux/amd64", Duration::ZERO);
    assert_eq!(expired, None, "a tag past its TTL asks the registry");
}
