//! The `--tar-path` tarball read back by skopeo: `skopeo inspect` sees the
//! image and its tag, and `skopeo copy docker-archive:` turns it into an
//! OCI layout whose config and layer contents are ours.

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use kiln::digest::{Digest, HashingWriter};
use kiln::image::manifest::{self, Descriptor};
use kiln::image::tarball::write_docker_archive;
use kiln::store::Store;
use std::io::{self, Write};
use std::path::Path;
use std::process::Command;

/// A gzip layer holding `hello.txt`; its descriptor and diff ID.
fn layer(store: &Store) -> (Descriptor, Digest) {
    let gz = GzEncoder::new(store.blob_writer().unwrap(), Compression::default());
    let mut tar = tar::Builder::new(HashingWriter::new(gz));
    let body = b"hello from kiln\n";
    let mut h = tar::Header::new_ustar();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    tar.append_data(&mut h, "hello.txt", &body[..]).unwrap();
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

fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo missing: apt-get install -y skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn the_tarball_round_trips_through_skopeo() {
    let kiln = tempfile::tempdir().unwrap();
    let store = Store::open(kiln.path()).unwrap();
    let (layer, diff_id) = layer(&store);
    let config_bytes = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.as_str()]},
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
    let tarball = kiln.path().join("image.tar");
    let tags = ["registry.example/team/app:v1".to_owned()];
    write_docker_archive(&tarball, &tags, &config, &[layer], &store).unwrap();
    let archive = format!("docker-archive:{}", tarball.display());

    let inspect: serde_json::Value =
        serde_json::from_slice(&skopeo(&["inspect", &archive])).unwrap();
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(inspect["Architecture"], "amd64");
    let raw_config = skopeo(&["inspect", "--config", "--raw", &archive]);
    assert_eq!(Digest::of(&raw_config), config.digest);

    let layout = kiln.path().join("oci");
    let dest = format!("oci:{}:v1", layout.display());
    skopeo(&["copy", "--quiet", &archive, &dest]);
    let index = json_file(&layout.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let oci_manifest = json_file(&blob(manifest_digest));
    // Conversion to OCI reserialises the config; its content stays ours.
    let oci_config = json_file(&blob(oci_manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(oci_config["rootfs"]["diff_ids"][0], diff_id.as_str());
    assert_eq!(oci_config["config"]["Cmd"][0], "/bin/true");
    let layers = oci_manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    // skopeo may recompress; the uncompressed layer must be ours.
    let mut plain = HashingWriter::new(io::sink());
    let compressed = std::fs::File::open(blob(layers[0]["digest"].as_str().unwrap())).unwrap();
    io::copy(&mut GzDecoder::new(compressed), &mut plain).unwrap();
    plain.flush().unwrap();
    let (_, copied_diff_id, _) = plain.finish();
    assert_eq!(copied_diff_id, diff_id);
}
