//! Registry transport against a real `docker-registry` on 127.0.0.1: TLS
//! with a private CA, certificate verification skipped by direction, mTLS,
//! and mirrors where the first one is dead. Certificates are made per test
//! with the `openssl` CLI; every process started here is stopped on drop.

use kiln::digest::Digest;
use kiln::image::manifest::Descriptor;
use kiln::registry::{PushImage, Reference, Registry, RegistryError, RegistryOptions};
use kiln::store::Store;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed to make test certificates (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, in `dir`.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=kiln test CA"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(dir, &ca);
    for (name, usage, san) in [
        (
            "server",
            "serverAuth",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        ),
        ("client", "clientAuth", ""),
    ] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req", "-subj", "/CN=localhost"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr]);
        run(dir, &req);
        std::fs::write(
            dir.join(&ext),
            format!("{san}basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        run(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ],
        );
    }
}

/// A `docker-registry` on 127.0.0.1, stopped on drop.
struct LocalRegistry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl LocalRegistry {
    /// `tls`: serve https with the certificates in `certs`; `mtls`: also require client certificates.
    fn start(certs: Option<(&Path, bool)>) -> LocalRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: x\n",
            dir.path().join("data").display()
        );
        if let Some((c, mtls)) = certs {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                c.join("server.pem").display(),
                c.join("server.key").display()
            ));
            if mtls {
                config.push_str(&format!(
                    "    clientcas: [{}]\n",
                    c.join("ca.pem").display()
                ));
            }
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is needed (apt-get install -y docker-registry)");
        let host = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&host).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        LocalRegistry {
            child,
            host,
            _dir: dir,
        }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-layer image in a fresh store.
struct TestImage {
    store: Store,
    _dir: tempfile::TempDir,
    manifest: Vec<u8>,
    layer: Descriptor,
    config: Descriptor,
}

fn descriptor(media_type: &str, digest: &Digest, size: usize) -> Descriptor {
    serde_json::from_value(serde_json::json!({
        "mediaType": media_type, "digest": digest.as_str(), "size": size
    }))
    .unwrap()
}

fn test_image() -> TestImage {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let layer_bytes = b"not really a tarball, the registry does not care".to_vec();
    let config_bytes =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &store.put_bytes(&layer_bytes).unwrap(),
        layer_bytes.len(),
    );
    let config = descriptor(
        "application/vnd.oci.image.config.v1+json",
        &store.put_bytes(config_bytes).unwrap(),
        config_bytes.len(),
    );
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]
    }))
    .unwrap();
    TestImage {
        store,
        _dir: dir,
        manifest,
        layer,
        config,
    }
}

impl TestImage {
    fn push(&self, reg: &Registry, dest: &str) -> Digest {
        let image = PushImage {
            manifest: &self.manifest,
            manifest_media_type: OCI_MANIFEST,
            blobs: vec![&self.layer, &self.config],
            source: None,
        };
        reg.push(&Reference::parse(dest).unwrap(), &image, &self.store)
            .unwrap_or_else(|e| panic!("push to {dest}: {e}"))
    }
}

fn client(opts: RegistryOptions) -> Registry {
    Registry::new(RegistryOptions {
        docker_config_dir: Some(tempfile::tempdir().unwrap().path().to_owned()),
        pull_retries: 1,
        push_retries: 1,
        ..opts
    })
    .unwrap()
}

fn pull(reg: &Registry, r: &str) -> Result<Digest, RegistryError> {
    reg.pull_manifest(&Reference::parse(r).unwrap(), "linux/amd64")
        .map(|p| p.manifest_digest)
}

fn certs() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let path = dir.path().to_owned();
    (dir, path)
}

#[test]
fn a_private_ca_is_trusted_per_registry_and_verification_skipped_per_direction() {
    let (_keep, c) = certs();
    let server = LocalRegistry::start(Some((&c, false)));
    let image = test_image();
    let name = format!("{}/app:v1", server.host);
    let with_ca = client(RegistryOptions {
        registry_certificates: vec![(server.host.clone(), c.join("ca.pem"))],
        ..RegistryOptions::default()
    });
    let pushed = image.push(&with_ca, &name);
    assert_eq!(pushed, Digest::of(&image.manifest));
    assert_eq!(pull(&with_ca, &name).unwrap(), pushed);

    let err = pull(&client(RegistryOptions::default()), &name).unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let other_registry_ca = client(RegistryOptions {
        registry_certificates: vec![("127.0.0.1:1".into(), c.join("ca.pem"))],
        ..RegistryOptions::default()
    });
    assert!(pull(&other_registry_ca, &name).is_err());
    let skip_push_only = client(RegistryOptions {
        skip_tls_verify_push: true,
        ..RegistryOptions::default()
    });
    assert!(pull(&skip_push_only, &name).is_err());
    let skip_pull = client(RegistryOptions {
        skip_tls_verify_pull: true,
        ..RegistryOptions::default()
    });
    assert_eq!(pull(&skip_pull, &name).unwrap(), pushed);
    let skip_registry = client(RegistryOptions {
        skip_tls_verify_registries: vec![server.host.clone()],
        ..RegistryOptions::default()
    });
    assert_eq!(pull(&skip_registry, &name).unwrap(), pushed);
}

#[test]
fn mutual_tls_sends_the_client_certificate() {
    let (_keep, c) = certs();
    let server = LocalRegistry::start(Some((&c, true)));
    let image = test_image();
    let name = format!("{}/app:v1", server.host);
    let ca = vec![(server.host.clone(), c.join("ca.pem"))];
    let mtls = client(RegistryOptions {
        registry_certificates: ca.clone(),
        registry_client_certs: vec![(
            server.host.clone(),
            c.join("client.pem"),
            c.join("client.key"),
        )],
        ..RegistryOptions::default()
    });
    let pushed = image.push(&mtls, &name);
    assert_eq!(pull(&mtls, &name).unwrap(), pushed);
    let no_client_cert = client(RegistryOptions {
        registry_certificates: ca,
        ..RegistryOptions::default()
    });
    assert!(pull(&no_client_cert, &name).is_err());
}

#[test]
fn a_dead_mirror_falls_through_to_a_live_one() {
    let live = LocalRegistry::start(None);
    let dead = format!("127.0.0.1:{}", free_port());
    let image = test_image();
    let plain = client(RegistryOptions::default());
    let pushed = image.push(&plain, &format!("{}/library/busybox:1.36", live.host));
    image.push(&plain, &format!("{}/hub/team/app:v1", live.host));

    let mirrored = client(RegistryOptions {
        mirrors: vec![dead.clone(), live.host.clone()],
        skip_default_registry_fallback: true,
        ..RegistryOptions::default()
    });
    assert_eq!(pull(&mirrored, "busybox:1.36").unwrap(), pushed);
    let blobs = tempfile::tempdir().unwrap();
    let store = Store::open(blobs.path()).unwrap();
    mirrored
        .fetch_blob(
            &Reference::parse("busybox:1.36").unwrap(),
            &image.layer.digest,
            &store,
        )
        .unwrap();
    assert!(store.has_blob(&image.layer.digest));

    let map = kiln::registry::parse_registry_map(&format!(
        "quay.example=127.0.0.1:1;quay.example={}/hub",
        live.host
    ))
    .unwrap();
    let mapped = client(RegistryOptions {
        registry_map: map,
        skip_default_registry_fallback: true,
        ..RegistryOptions::default()
    });
    assert_eq!(pull(&mapped, "quay.example/team/app:v1").unwrap(), pushed);

    let only_dead = client(RegistryOptions {
        mirrors: vec![dead],
        skip_default_registry_fallback: true,
        ..RegistryOptions::default()
    });
    let err = pull(&only_dead, "busybox:1.36").unwrap_err();
    assert!(matches!(err, RegistryError::MirrorsFailed { .. }), "{err}");
}
