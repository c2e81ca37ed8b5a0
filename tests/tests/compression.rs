//! `--compression`, `--compression-level` and `--oci-media-types`: zstd
//! layers under an OCI manifest that skopeo copies and decodes, and OCI
//! media types for gzip layers when asked for.

use anyhow::{Context, Result, bail};
use kiln_e2e::{BuildContext, Image, raw_manifest, run_kiln, skopeo_copy};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::process::Command;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Two file-only layers, so no base image or registry is needed.
fn context() -> Result<BuildContext> {
    let context = BuildContext::with_dockerfile("FROM scratch\nCOPY a.txt /\nCOPY sub /sub/\n")?;
    let numbers: String = (0..20_000).map(|i| format!("{i}\n")).collect();
    context.write("a.txt", &numbers)?;
    context.write("sub/b", "hi\n")?;
    Ok(context)
}

/// Builds the context into an OCI layout at `layout` with `flags`.
fn build(context: &BuildContext, layout: &Path, flags: &[&str]) -> Result<()> {
    let mut args = vec![
        "build".to_owned(),
        "--context".to_owned(),
        context.path().display().to_string(),
        "--no-push".to_owned(),
        "--oci-layout-path".to_owned(),
        layout.display().to_string(),
    ];
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    run_kiln(&args, &[])?.ensure_success()
}

fn oci_ref(dir: &Path, tag: Option<&str>) -> String {
    match tag {
        Some(tag) => format!("oci:{}:{tag}", dir.display()),
        None => format!("oci:{}", dir.display()),
    }
}

fn strings<'a>(values: impl IntoIterator<Item = &'a Value>, key: &str) -> Vec<String> {
    values
        .into_iter()
        .map(|v| v[key].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn layers(manifest: &Value) -> Vec<Value> {
    manifest["layers"].as_array().cloned().unwrap_or_default()
}

fn blob_path(layout: &Path, digest: &str) -> Result<std::path::PathBuf> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        bail!("{digest} is not a sha256 digest");
    };
    Ok(layout.join("blobs/sha256").join(hex))
}

fn sha256_of(mut reader: impl Read) -> Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut reader, &mut hasher)?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

#[test]
fn zstd_layers_make_an_oci_manifest_that_skopeo_copies_and_decodes() -> Result<()> {
    let context = context()?;
    let scratch = tempfile::tempdir()?;
    let layout = scratch.path().join("zstd");
    build(&context, &layout, &["--compression", "zstd"])?;

    let manifest = raw_manifest(&oci_ref(&layout, None), None)?;
    assert_eq!(manifest["mediaType"], OCI_MANIFEST, "{manifest}");
    assert_eq!(manifest["config"]["mediaType"], OCI_CONFIG, "{manifest}");
    let zstd_layers = layers(&manifest);
    assert_eq!(
        strings(&zstd_layers, "mediaType"),
        [OCI_ZSTD, OCI_ZSTD],
        "{manifest}"
    );
    for digest in strings(&zstd_layers, "digest") {
        let mut magic = [0u8; 4];
        File::open(blob_path(&layout, &digest)?)?.read_exact(&mut magic)?;
        assert_eq!(magic, [0x28, 0xb5, 0x2f, 0xfd], "{digest} is not zstd");
    }

    let copy = scratch.path().join("copy");
    skopeo_copy(&oci_ref(&layout, None), &oci_ref(&copy, Some("img")))?;
    assert_eq!(raw_manifest(&oci_ref(&copy, Some("img")), None)?, manifest);

    // skopeo's own zstd decoder turns the layers into gzip ones: their
    // tars must be the diff_ids the config lists, and hold the files.
    let gzip = scratch.path().join("gzip");
    let status = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-compress",
            "--dest-compress-format",
            "gzip",
        ])
        .arg(oci_ref(&layout, None))
        .arg(oci_ref(&gzip, Some("img")))
        .status()
        .context("cannot run skopeo")?;
    assert!(status.success(), "skopeo cannot recompress the zstd layers");
    let converted = raw_manifest(&oci_ref(&gzip, Some("img")), None)?;
    let mut tars = Vec::new();
    for digest in strings(&layers(&converted), "digest") {
        let blob = File::open(blob_path(&gzip, &digest)?)?;
        tars.push(sha256_of(flate2::read::GzDecoder::new(blob))?);
    }
    let image = Image::layout(&layout, None);
    let config = image.config()?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        diff_ids
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>(),
        tars,
        "{config}"
    );
    let rootfs = Image::layout(&gzip, Some("img")).flatten()?;
    assert_eq!(rootfs.read("/a.txt")?.lines().count(), 20_000);
    assert_eq!(rootfs.read("/sub/b")?, "hi\n");

    // A higher level changes the blobs, never the tars.
    let smaller = scratch.path().join("level19");
    build(
        &context,
        &smaller,
        &["--compression=zstd", "--compression-level=19"],
    )?;
    let level19 = raw_manifest(&oci_ref(&smaller, None), None)?;
    assert_ne!(
        strings(&layers(&level19), "digest"),
        strings(&zstd_layers, "digest")
    );
    assert_eq!(
        Image::layout(&smaller, None).config()?["rootfs"],
        config["rootfs"]
    );
    Ok(())
}

#[test]
fn oci_media_types_are_written_for_gzip_layers_when_asked_for() -> Result<()> {
    let context = context()?;
    let scratch = tempfile::tempdir()?;
    let docker = scratch.path().join("docker");
    build(&context, &docker, &[])?;
    let manifest = raw_manifest(&oci_ref(&docker, None), None)?;
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST, "{manifest}");
    let docker_layers = layers(&manifest);
    assert_eq!(
        strings(&docker_layers, "mediaType"),
        [DOCKER_GZIP, DOCKER_GZIP]
    );

    let oci = scratch.path().join("oci");
    build(&context, &oci, &["--oci-media-types"])?;
    let manifest = raw_manifest(&oci_ref(&oci, None), None)?;
    assert_eq!(manifest["mediaType"], OCI_MANIFEST, "{manifest}");
    assert_eq!(manifest["config"]["mediaType"], OCI_CONFIG, "{manifest}");
    let oci_layers = layers(&manifest);
    assert_eq!(strings(&oci_layers, "mediaType"), [OCI_GZIP, OCI_GZIP]);
    // Only the media types change: the blobs are the same gzip layers.
    assert_eq!(
        strings(&oci_layers, "digest"),
        strings(&docker_layers, "digest")
    );
    let entries = Image::layout(&oci, None).layer_entries(1)?;
    let b = entries.iter().find(|e| e.path == "sub/b");
    assert_eq!(b.map(|e| e.data.as_slice()), Some(&b"hi\n"[..]));
    Ok(())
}

#[test]
fn a_compression_level_out_of_range_fails_before_building() -> Result<()> {
    let context = context()?;
    let scratch = tempfile::tempdir()?;
    let layout = scratch.path().join("never");
    let out = run_kiln(
        [
            "build",
            "--context",
            &context.path().display().to_string(),
            "--no-push",
            "--oci-layout-path",
            &layout.display().to_string(),
            "--compression=zstd",
            "--compression-level=23",
        ],
        &[],
    )?;
    out.ensure_failure()?;
    assert!(
        out.all().contains("invalid zstd compression level 23"),
        "{}",
        out.all()
    );
    assert!(!layout.exists());
    Ok(())
}
