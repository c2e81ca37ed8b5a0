//! Pushes against a real registry (Debian's `docker-registry`, CNCF
//! distribution) on 127.0.0.1: chunked uploads of large blobs, resumption
//! after a cut connection, cross-repository mounts, several destinations,
//! the push-permission check, and no tag after a failed push. What the
//! registry did is read from its request log.

use flate2::Compression;
use flate2::write::GzEncoder;
use kiln::digest::{Digest, HashingWriter};
use kiln::image::manifest::{self, Descriptor, Manifest};
use kiln::registry::{PushImage, PushOptions, Reference, Registry, RegistryError, RegistryOptions};
use kiln::store::Store;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A registry process on a free loopback port, killed on drop.
struct TestRegistry {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts one; with `htpasswd`, basic auth for that user and password.
    fn start(htpasswd: Option<(&str, &str)>) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let auth = match htpasswd {
            Some((user, password)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd missing: apt-get install -y apache2-utils");
                std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
                format!(
                    "auth: {{htpasswd: {{realm: kiln, path: {}}}}}\n",
                    dir.path().join("htpasswd").display()
                )
            }
            None => String::new(),
        };
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: info, formatter: text}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
                 http: {{addr: {addr}, secret: kiln}}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("docker-registry missing: apt-get install -y docker-registry");
        let mut reg = TestRegistry {
            child,
            addr,
            log,
            _dir: dir,
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "docker-registry exited: {}",
                self.log_text()
            );
            assert!(start.elapsed() < Duration::from_secs(10), "registry not up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The requests once `done` holds of them (the log trails the answers).
    fn logged(
        &self,
        done: impl Fn(&[(String, String, u16)]) -> bool,
    ) -> Vec<(String, String, u16)> {
        let start = Instant::now();
        loop {
            let reqs = self.requests();
            if done(&reqs) {
                return reqs;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{reqs:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Completed requests as (method, uri, status), from the access log.
    fn requests(&self) -> Vec<(String, String, u16)> {
        let field = |line: &str, name: &str| {
            let start = line.find(&format!("{name}="))? + name.len() + 1;
            let rest = &line[start..];
            let value = match rest.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next()?,
                None => rest.split(' ').next()?,
            };
            Some(value.to_owned())
        };
        self.log_text()
            .lines()
            .filter(|l| l.contains("response completed"))
            .filter_map(|l| {
                Some((
                    field(l, "http.request.method")?,
                    field(l, "http.request.uri")?,
                    field(l, "http.response.status")?.parse().ok()?,
                ))
            })
            .collect()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client with no credentials on disk, or with `config_json` as its
/// docker config.
fn client(config_json: Option<&str>) -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(json) = config_json {
        std::fs::write(dir.path().join("config.json"), json).unwrap();
    }
    let reg = Registry::new(RegistryOptions {
        docker_config_dir: Some(dir.path().to_owned()),
        ..RegistryOptions::default()
    })
    .unwrap();
    (reg, dir)
}

/// Bytes that do not compress, from a seed.
struct Noise(u64, u64);

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.1 as usize);
        for b in &mut buf[..n] {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
        self.1 -= n as u64;
        Ok(n)
    }
}

/// A gzip layer with one file of `size` noise bytes; its descriptor and diff ID.
fn layer(store: &Store, name: &str, seed: u64, size: u64) -> (Descriptor, Digest) {
    let gz = GzEncoder::new(store.blob_writer().unwrap(), Compression::fast());
    let mut tar = tar::Builder::new(HashingWriter::new(gz));
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    tar.append_data(&mut h, name, Noise((seed << 1) | 1, size))
        .unwrap();
    let (gz, diff_id, _) = tar.into_inner().unwrap().finish();
    let (digest, size) = gz.finish().unwrap().commit(None).unwrap();
    (
        Descriptor {
            media_type: manifest::DOCKER_LAYER_GZIP.to_owned(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
        },
        diff_id,
    )
}

/// An image: its layers, config and manifest, all but the manifest in `store`.
struct TestImage {
    layers: Vec<Descriptor>,
    config: Descriptor,
    manifest: Vec<u8>,
}

impl TestImage {
    fn new(store: &Store, layers: Vec<(Descriptor, Digest)>, label: &str) -> TestImage {
        let diff_ids: Vec<&str> = layers.iter().map(|(_, d)| d.as_str()).collect();
        let config_bytes = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"test": label}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let config = Descriptor {
            media_type: manifest::DOCKER_CONFIG.to_owned(),
            digest: store.put_bytes(&config_bytes).unwrap(),
            size: config_bytes.len() as u64,
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
        TestImage {
            layers,
            config,
            manifest,
        }
    }

    fn push_image(&self) -> PushImage<'_> {
        let mut blobs: Vec<&Descriptor> = self.layers.iter().collect();
        blobs.push(&self.config);
        PushImage {
            manifest: &self.manifest,
            manifest_media_type: manifest::DOCKER_MANIFEST,
            blobs,
            source: None,
        }
    }
}

fn reference(addr: SocketAddr, name: &str) -> Reference {
    Reference::parse(&format!("{addr}/{name}")).unwrap()
}

/// Pulls `r` back and checks it is the pushed manifest with every blob intact.
fn assert_pulls_back(reg: &Registry, r: &Reference, digest: &Digest, image: &TestImage) {
    let pulled = reg.pull_manifest(r, "linux/amd64").unwrap();
    assert_eq!(&pulled.manifest_digest, digest, "{r}");
    let kiln = tempfile::tempdir().unwrap();
    let fresh = Store::open(kiln.path()).unwrap();
    for l in &image.layers {
        reg.fetch_blob(r, &l.digest, &fresh).unwrap();
        assert!(fresh.has_blob(&l.digest));
    }
}

/// Every log message of this test binary, in order.
struct Captured(Mutex<Vec<String>>);

impl log::Log for Captured {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

static CAPTURED: Captured = Captured(Mutex::new(Vec::new()));

/// Starts capturing log messages (without a terminal, as in CI).
fn capture_logs() {
    if log::set_logger(&CAPTURED).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Captured messages that mention `digest`.
fn logged_about(digest: &Digest) -> Vec<String> {
    let all = CAPTURED.0.lock().unwrap();
    all.iter()
        .filter(|m| m.contains(digest.as_str()))
        .cloned()
        .collect()
}

fn count(reqs: &[(String, String, u16)], method: &str, uri_part: &str, status: u16) -> usize {
    reqs.iter()
        .filter(|(m, u, s)| m == method && u.contains(uri_part) && *s == status)
        .count()
}

#[test]
fn large_blobs_go_up_in_chunks_and_small_ones_in_one_put() {
    let registry = TestRegistry::start(None);
    let kiln = tempfile::tempdir().unwrap();
    let store = Store::open(kiln.path()).unwrap();
    let big = layer(&store, "big", 1, 40 << 20);
    let small = layer(&store, "small", 2, 1000);
    let image = TestImage::new(&store, vec![big, small], "chunks");
    let (reg, _cfg) = client(None);
    let dest = reference(registry.addr, "chunks/app:v1");
    capture_logs();

    let digest = reg.push(&dest, &image.push_image(), &store).unwrap();

    assert_eq!(digest, Digest::of(&image.manifest));
    let reqs = registry.requests();
    // 40 MiB in 16 MiB chunks: three PATCHes, all for the big blob.
    assert_eq!(
        count(&reqs, "PATCH", "/v2/chunks/app/blobs/uploads/", 202),
        3,
        "{reqs:?}"
    );
    assert_eq!(
        count(&reqs, "PUT", "/v2/chunks/app/blobs/uploads/", 201),
        3,
        "{reqs:?}"
    );
    assert_pulls_back(&reg, &dest, &digest, &image);
    // Without a terminal, the big blob's transfers are plain log lines;
    // small blobs are quiet.
    let big_digest = &image.layers[0].digest;
    let mib = format!(
        "{:.1} MiB",
        image.layers[0].size as f64 / f64::from(1 << 20)
    );
    let lines = logged_about(big_digest);
    let line = |prefix: &str| {
        lines
            .iter()
            .any(|l| *l == format!("{prefix} blob {big_digest} ({mib})"))
    };
    assert!(line("Pushing"), "{lines:?}");
    assert!(line("Pulling"), "{lines:?}");
    let done = |verb: &str| {
        lines.iter().any(|l| {
            l.starts_with(&format!("{verb} blob {big_digest} ({mib} in ")) && l.ends_with("/s)")
        })
    };
    assert!(done("Pushed"), "{lines:?}");
    assert!(done("Pulled"), "{lines:?}");
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(logged_about(&image.layers[1].digest), Vec::<String>::new());

    // A second push finds the manifest and only puts it again.
    reg.push(&dest, &image.push_image(), &store).unwrap();
    let again = registry.requests();
    assert_eq!(
        count(&again, "POST", "/blobs/uploads/", 202),
        count(&reqs, "POST", "/blobs/uploads/", 202)
    );
    assert_eq!(
        count(&again, "HEAD", "/v2/chunks/app/manifests/sha256:", 200),
        1,
        "{again:?}"
    );
}

/// A TCP proxy that cuts the one connection carrying the byte at `cut_at`
/// of all client-to-registry traffic, once.
fn cutting_proxy(upstream: SocketAddr, cut_at: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(upstream) else {
                return;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (sent, cut) = (sent.clone(), cut.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                loop {
                    let n = match c_read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let before = sent.fetch_add(n as u64, Ordering::SeqCst);
                    if before + n as u64 > cut_at && !cut.swap(true, Ordering::SeqCst) {
                        let _ = c_read.shutdown(Shutdown::Both);
                        let _ = s_write.shutdown(Shutdown::Both);
                        break;
                    }
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_write.shutdown(Shutdown::Write);
            });
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let _ = io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn a_chunk_cut_off_midway_is_resumed_and_the_blob_arrives_intact() {
    let registry = TestRegistry::start(None);
    let proxy = cutting_proxy(registry.addr, 20 << 20);
    let kiln = tempfile::tempdir().unwrap();
    let store = Store::open(kiln.path()).unwrap();
    let big = layer(&store, "big", 3, 40 << 20);
    let image = TestImage::new(&store, vec![big], "resume");
    let (reg, _cfg) = client(None);
    let dest = reference(proxy, "resume/app:v1");

    let digest = reg.push(&dest, &image.push_image(), &store).unwrap();

    assert_pulls_back(
        &reg,
        &reference(registry.addr, "resume/app:v1"),
        &digest,
        &image,
    );
    let reqs = registry.requests();
    // The cut chunk was recovered inside the upload (distribution drops a
    // session whose chunk was cut, so a new session started over), not by
    // pushing the blob again from the top, which would HEAD it again.
    let big = image.layers[0].digest.as_str();
    assert_eq!(count(&reqs, "HEAD", big, 404), 1, "{reqs:?}");
    assert_eq!(count(&reqs, "HEAD", big, 200), 0, "{reqs:?}");
    assert_eq!(
        count(&reqs, "PATCH", "/v2/resume/app/blobs/uploads/", 202),
        4,
        "{reqs:?}"
    );
}

#[test]
fn blobs_mount_from_the_base_repository_and_across_destinations() {
    let registry = TestRegistry::start(None);
    let kiln = tempfile::tempdir().unwrap();
    let store = Store::open(kiln.path()).unwrap();
    let base_layer = layer(&store, "base", 4, 4096);
    let base = TestImage::new(&store, vec![base_layer.clone()], "base");
    let (reg, _cfg) = client(None);
    let base_ref = reference(registry.addr, "library/base:1");
    reg.push(&base_ref, &base.push_image(), &store).unwrap();

    let own: Vec<(Descriptor, Digest)> =
        (0..6).map(|i| layer(&store, "own", 10 + i, 2048)).collect();
    let mut layers = vec![base_layer.clone()];
    layers.extend(own);
    let app = TestImage::new(&store, layers, "app");
    let dests = [
        reference(registry.addr, "team/app:1"),
        reference(registry.addr, "team/app:2"),
        reference(registry.addr, "team/mirror:1"),
    ];
    let opts = PushOptions {
        mount_from: BTreeMap::from([(base_layer.0.digest.clone(), base_ref.clone())]),
        ..PushOptions::default()
    };
    let before = registry.requests().len();

    let digest = reg
        .push_all(&dests, &app.push_image(), &opts, &store)
        .unwrap();

    for d in &dests {
        assert_pulls_back(&reg, d, &digest, &app);
    }
    let reqs = &registry.requests()[before..];
    let mount_base = format!("mount={}", base_layer.0.digest.as_str().replace(':', "%3A"));
    let from_base = reqs
        .iter()
        .filter(|(m, u, s)| {
            m == "POST"
                && u.starts_with("/v2/team/app/")
                && u.contains(&mount_base)
                && u.contains("from=library/base")
                && *s == 201
        })
        .count();
    assert_eq!(from_base, 1, "{reqs:?}");
    // The second repository gets all 8 blobs by mounting from the first.
    assert_eq!(
        count(reqs, "POST", "/v2/team/mirror/blobs/uploads/?mount=", 201),
        8,
        "{reqs:?}"
    );
    assert_eq!(
        count(reqs, "PUT", "/v2/team/mirror/blobs/uploads/", 201),
        0,
        "{reqs:?}"
    );
    // team/app receives 7 uploads: 6 layers and the config; the base layer was mounted.
    assert_eq!(
        count(reqs, "PUT", "/v2/team/app/blobs/uploads/", 201),
        7,
        "{reqs:?}"
    );
    assert_eq!(count(reqs, "PUT", "/manifests/", 201), 3, "{reqs:?}");
}

#[test]
fn pushing_an_image_the_repository_holds_touches_no_blob() {
    let registry = TestRegistry::start(None);
    let kiln = tempfile::tempdir().unwrap();
    let store = Store::open(kiln.path()).unwrap();
    let layers: Vec<(Descriptor, Digest)> = (0..4)
        .map(|i| layer(&store, "same", 40 + i, 2048))
        .collect();
    let image = TestImage::new(&store, layers, "same");
    let (reg, _cfg) = client(None);
    let first = reference(registry.addr, "team/same:1");
    let digest = reg.push(&first, &image.push_image(), &store).unwrap();

    let before = registry.requests().len();
    let again = reference(registry.addr, "team/same:2");
    assert_eq!(
        reg.push(&again, &image.push_image(), &store).unwrap(),
        digest
    );
    let reqs = &registry.requests()[before..];
    assert_eq!(
        count(reqs, "HEAD", "/v2/team/same/manifests/sha256:", 200),
        1,
        "{reqs:?}"
    );
    assert!(
        !reqs.iter().any(|(_, u, _)| u.contains("/blobs/")),
        "{reqs:?}"
    );
    assert_eq!(
        count(reqs, "PUT", "/v2/team/same/manifests/2", 201),
        1,
        "{reqs:?}"
    );
    assert_pulls_back(&reg, &again, &digest, &image);

    // Another repository lacks the manifest: its blobs go up as usual.
    let other = reference(registry.addr, "team/other:1");
    let before = registry.requests().len();
    reg.push(&other, &image.push_image(), &store).unwrap();
    let reqs = &registry.requests()[before..];
    assert_eq!(
        count(reqs, "HEAD", "/v2/team/other/manifests/sha256:", 404),
        1,
        "{reqs:?}"
    );
    assert_eq!(
        count(reqs, "PUT", "/v2/team/other/blobs/uploads/", 201),
        5,
        "{reqs:?}"
    );
}

#[test]
fn a_push_that_fails_halfway_leaves_no_tag() {
    let registry = TestRegistry::start(None);
    let kiln = tempfile::tempdir().unwrap();
    let store = Store::open(kiln.path()).unwrap();
    let layers: Vec<(Descriptor, Digest)> =
        (0..5).map(|i| layer(&store, "f", 20 + i, 4096)).collect();
    let image = TestImage::new(&store, layers, "half");
    let lost = image.layers[3].digest.clone();
    std::fs::remove_file(store.blob_path(&lost)).unwrap();
    let failing = |d: &Digest| -> Result<(), RegistryError> {
        Err(RegistryError::BlobMissing {
            repository: "base".into(),
            digest: d.clone(),
        })
    };
    let mut push = image.push_image();
    push.source = Some(&failing);
    let (reg, _cfg) = client(None);
    let dests = [
        reference(registry.addr, "half/app:v1"),
        reference(registry.addr, "half/other:v1"),
    ];

    let err = reg
        .push_all(&dests, &push, &PushOptions::default(), &store)
        .unwrap_err();

    assert!(err.to_string().contains(lost.as_str()), "{err}");
    for d in &dests {
        let err = reg.pull_manifest(d, "linux/amd64").unwrap_err();
        assert!(
            matches!(err, RegistryError::ManifestNotFound { .. }),
            "{d}: {err}"
        );
    }
    let reqs = registry.requests();
    assert_eq!(count(&reqs, "PUT", "/manifests/", 201), 0, "{reqs:?}");
}

#[test]
fn push_permission_is_checked_with_a_cancelled_upload() {
    let registry = TestRegistry::start(Some(("kiln", "s3cret")));
    let dest = reference(registry.addr, "perm/app:v1");

    let (anonymous, _cfg) = client(None);
    let err = anonymous.check_push_permission(&dest).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{msg}");
    assert!(
        msg.contains("--skip-push-permission-check") && msg.contains("perm/app"),
        "{msg}"
    );

    let auth = base64_basic("kiln:s3cret");
    let (authorized, _cfg) = client(Some(&format!(
        r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
        registry.addr
    )));
    authorized.check_push_permission(&dest).unwrap();
    let reqs = registry.requests();
    assert_eq!(
        count(&reqs, "POST", "/v2/perm/app/blobs/uploads/", 202),
        1,
        "{reqs:?}"
    );
    assert_eq!(
        count(&reqs, "DELETE", "/v2/perm/app/blobs/uploads/", 204),
        1,
        "{reqs:?}"
    );
}

fn base64_basic(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Reads `inner`, calling `pause` once when `at` bytes have been read.
struct PauseAt<R, F: FnMut()> {
    inner: R,
    at: u64,
    read: u64,
    pause: Option<F>,
}

impl<R: Read, F: FnMut()> Read for PauseAt<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read >= self.at
            && let Some(mut pause) = self.pause.take()
        {
            pause();
        }
        let room = if self.pause.is_some() {
            buf.len().min((self.at - self.read) as usize)
        } else {
            buf.len()
        };
        let n = self.inner.read(&mut buf[..room])?;
        self.read += n as u64;
        Ok(n)
    }
}

#[test]
fn a_blob_goes_up_while_it_is_written_and_the_push_waits_for_it() {
    let registry = TestRegistry::start(None);
    let kiln = tempfile::tempdir().unwrap();
    let store = Store::open(kiln.path()).unwrap();
    let (reg, _cfg) = client(None);
    let dest = reference(registry.addr, "team/stream:1");
    let patched = |reqs: &[(String, String, u16)]| {
        count(reqs, "PATCH", "/v2/team/stream/blobs/uploads/", 202)
    };

    // A 40 MiB layer; halfway through, the writer waits until whole chunks
    // of what it wrote so far have reached the registry.
    let size: u64 = 40 << 20;
    let blob = store.blob_writer().unwrap();
    let upload = reg.upload_growing(&dest, blob.reopen().unwrap());
    let gz = GzEncoder::new(blob, Compression::none());
    let mut tar = tar::Builder::new(HashingWriter::new(gz));
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    let data = PauseAt {
        inner: Noise(7, size),
        at: size / 2,
        read: 0,
        pause: Some(|| {
            registry.logged(|reqs| patched(reqs) > 0);
        }),
    };
    tar.append_data(&mut h, "big", data).unwrap();
    let (gz, diff_id, _) = tar.into_inner().unwrap().finish();
    let (digest, blob_size) = gz.finish().unwrap().commit(None).unwrap();
    upload.complete(&digest, blob_size);

    // The push finds the layer there (waiting for the upload's end); only
    // the config goes up besides.
    let layer = Descriptor {
        media_type: manifest::DOCKER_LAYER_GZIP.to_owned(),
        digest,
        size: blob_size,
        urls: None,
        annotations: None,
        platform: None,
    };
    let image = TestImage::new(&store, vec![(layer, diff_id)], "stream");
    let pushed = reg.push(&dest, &image.push_image(), &store).unwrap();
    let reqs = registry.logged(|reqs| count(reqs, "PUT", "/v2/team/stream/manifests/1", 201) == 1);
    assert_eq!(
        count(&reqs, "PUT", "/v2/team/stream/blobs/uploads/", 201),
        2,
        "{reqs:?}"
    );
    assert_eq!(patched(&reqs), 3, "{reqs:?}");
    assert_pulls_back(&reg, &dest, &pushed, &image);

    // An upload whose blob is abandoned is cancelled.
    let blob = store.blob_writer().unwrap();
    drop(reg.upload_growing(&dest, blob.reopen().unwrap()));
    registry.logged(|reqs| count(reqs, "DELETE", "/v2/team/stream/blobs/uploads/", 204) == 1);
}
