//! Blob push throughput: a single-layer image of incompressible bytes
//! pushed to a local registry by kiln and by `skopeo copy` from an OCI
//! layout of the same image. Each push goes to a fresh registry, so every
//! byte is really uploaded and neither pusher can mount a blob the other
//! left behind.

use super::data::Noise;
use crate::{Config, Report, alternate, median, mib_per_s, time, time_command};
use anyhow::{Context, Result, bail};
use kiln::image::layout::write_oci_layout;
use kiln::image::manifest::{self, Descriptor, Manifest};
use kiln::layer::{Compression, WriteOptions, write_layer};
use kiln::registry::{PushImage, Reference, Registry, RegistryOptions};
use kiln::store::Store;
use std::fs::{self, File};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The uncompressed size of the image's one file.
fn image_bytes(cfg: &Config) -> u64 {
    if cfg.quick { 16 << 20 } else { 200 << 20 }
}

/// kiln against skopeo, alternating.
pub fn run(cfg: &Config) -> Result<()> {
    let bytes = image_bytes(cfg);
    let bench = format!("push-{}MiB", bytes >> 20);
    if !cfg.wants(&bench) {
        return Ok(());
    }
    let image = CachedImage::get(&cfg.data_dir, bytes)?;
    let layer_size = image.manifest.layers[0].size;
    let scratch = cfg.scratch("push-")?;
    let config_dir = scratch.path().join("docker-config");
    fs::create_dir(&config_dir)?;
    let client = Registry::new(RegistryOptions {
        docker_config_dir: Some(config_dir),
        ..RegistryOptions::default()
    })?;
    let blobs: Vec<&Descriptor> = image
        .manifest
        .layers
        .iter()
        .chain([&image.manifest.config])
        .collect();
    let push_image = PushImage {
        manifest: &image.manifest_bytes,
        manifest_media_type: manifest::OCI_MANIFEST,
        blobs,
        source: None,
    };
    let oci = format!("oci:{}:latest", image.layout.display());
    let (mut kiln_run, mut peer_run) = (0, 0);
    let (kiln, peer) = alternate(
        &bench,
        cfg.runs,
        || {
            kiln_run += 1;
            let registry = LocalRegistry::start(scratch.path(), "kiln")?;
            let dest =
                Reference::parse(&format!("{}/bench/kiln-{kiln_run}:latest", registry.addr))?;
            let (secs, _) = time(|| Ok(client.push(&dest, &push_image, &image.store)?))?;
            Ok(secs)
        },
        || {
            peer_run += 1;
            let registry = LocalRegistry::start(scratch.path(), "skopeo")?;
            let dest = format!("docker://{}/bench/skopeo-{peer_run}:latest", registry.addr);
            time_command(
                Command::new("skopeo")
                    .args(["--insecure-policy", "copy", "--dest-tls-verify=false", "-q"])
                    .arg(&oci)
                    .arg(&dest)
                    .stdout(Stdio::null()),
            )
        },
    )?;
    Report {
        bench,
        unit: "s",
        note: format!(
            "one gzip layer of {layer_size} bytes (noise) plus config and manifest, each push to a fresh \
             docker-registry 2.8 on 127.0.0.1; median throughput kiln {:.0} MiB/s, peer {:.0} MiB/s",
            mib_per_s(layer_size, median(&kiln)),
            mib_per_s(layer_size, median(&peer)),
        ),
        kiln,
        peer: Some(
            "skopeo --insecure-policy copy --dest-tls-verify=false oci:<layout>:latest docker://…"
                .into(),
        ),
        peer_runs: peer,
    }
    .print();
    Ok(())
}

/// The image, in a kiln store and as an OCI layout of the same blobs.
struct CachedImage {
    store: Store,
    layout: PathBuf,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
}

impl CachedImage {
    /// Loads the image of `bytes` noise, generating it the first time.
    fn get(data_dir: &Path, bytes: u64) -> Result<CachedImage> {
        let dir = data_dir.join(format!("push-{}MiB", bytes >> 20));
        let manifest_path = dir.join("manifest.json");
        if !manifest_path.is_file() {
            eprintln!("micro: generating {} (once)", dir.display());
            Self::generate(&dir, bytes)?;
        }
        let manifest_bytes = fs::read(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?;
        let manifest = serde_json::from_slice(&manifest_bytes)
            .with_context(|| format!("parsing {}", manifest_path.display()))?;
        Ok(CachedImage {
            store: Store::open(&dir.join("kiln"))?,
            layout: dir.join("oci"),
            manifest_bytes,
            manifest,
        })
    }

    /// Writes the layer with kiln, the config, the OCI layout, and last
    /// the manifest, whose presence marks the image complete.
    fn generate(dir: &Path, bytes: u64) -> Result<()> {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let store = Store::open(&dir.join("kiln"))?;
        let tree = dir.join("tree");
        fs::create_dir(&tree)?;
        let mut noise = File::create(tree.join("noise"))?;
        io::copy(&mut Noise::new(0x6b696c6e, bytes), &mut noise)?;
        let opts = WriteOptions {
            mtime_clamp: Some(0),
            compression: Compression::Gzip { level: 1 },
            watcher: None,
        };
        let layer = write_layer(&tree, &store, &opts)?.context("the noise tree is empty")?;
        fs::remove_dir_all(&tree)?;
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        }))?;
        let descriptor = |media_type: &str, digest, size| Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
        };
        let config = descriptor(
            manifest::OCI_CONFIG,
            store.put_bytes(&config)?,
            config.len() as u64,
        );
        let layer = descriptor(manifest::OCI_LAYER_GZIP, layer.digest, layer.size);
        let m = Manifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.into()),
            config: config.clone(),
            layers: vec![layer.clone()],
            annotations: None,
        };
        let bytes = m.to_canonical_json();
        write_oci_layout(
            &dir.join("oci"),
            &bytes,
            manifest::OCI_MANIFEST,
            &[layer, config],
            &store,
            Some("latest"),
        )?;
        kiln::store::write_atomic(&dir.join("manifest.json"), &bytes)?;
        Ok(())
    }
}

/// Debian's `docker-registry` on a free loopback port, with its storage in
/// a scratch dir; killed and removed on drop.
struct LocalRegistry {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl LocalRegistry {
    fn start(scratch: &Path, prefix: &str) -> Result<LocalRegistry> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("registry-{prefix}-"))
            .tempdir_in(scratch)?;
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
                 http: {{addr: {addr}, secret: kiln-bench}}\n",
                dir.path().join("data").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry (apt-get install -y docker-registry)")?;
        let mut registry = LocalRegistry {
            child,
            addr,
            _dir: dir,
        };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = registry.child.try_wait()? {
                bail!("docker-registry on {addr} exited at start: {status}");
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("docker-registry on {addr} did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(registry)
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
