//! kiln's outputs checked with independent tools: `--digest-file` and the
//! image-name digest files against what the registry serves, the
//! `--tar-path` docker-save tarball through `skopeo copy docker-archive:`,
//! and the `--oci-layout-path` layout through `skopeo copy oci:` and
//! `umoci ls`; all written by one build, and a tarball without a push.

use anyhow::{Context, Result, bail};
use kiln_e2e::{
    BaseImage, BuildContext, Image, Registry, inspect_error, layer_digests, raw_manifest, run_kiln,
    skopeo_copy,
};
use std::fs;
use std::path::Path;
use std::process::Command;

fn two_stage(base: &str) -> String {
    format!(
        "FROM {base} AS builder\n\
         RUN echo built > /artifact\n\
         FROM {base}\n\
         COPY --from=builder /artifact /artifact\n\
         ENV MODE=outputs\n"
    )
}

fn read_trimmed(path: &Path, flag: &str) -> Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("kiln wrote no {flag} file"))?;
    Ok(text.trim().to_owned())
}

#[test]
fn every_output_at_once_agrees_with_the_registry() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "a/base:latest")?;
    let context = BuildContext::with_dockerfile(&two_stage(&base))?;
    let scratch = tempfile::tempdir()?;
    let digest_file = scratch.path().join("digest");
    let name_file = scratch.path().join("name-with-digest");
    let name_tag_file = scratch.path().join("name-tag-with-digest");
    let tarball = scratch.path().join("image.tar");
    let layout = scratch.path().join("layout");
    let repo = registry.reference("out/app");
    let destination = format!("{repo}:v1");

    let out = run_kiln(
        [
            "build",
            "--context",
            &context.path().display().to_string(),
            "--destination",
            &destination,
            "--insecure-registry",
            &registry.addr(),
            "--digest-file",
            &digest_file.display().to_string(),
            "--image-name-with-digest-file",
            &name_file.display().to_string(),
            "--image-name-tag-with-digest-file",
            &name_tag_file.display().to_string(),
            "--tar-path",
            &tarball.display().to_string(),
            "--oci-layout-path",
            &layout.display().to_string(),
        ],
        &[],
    )?;
    out.ensure_success()?;

    let pushed = registry.image("out/app:v1");
    let digest = pushed.digest()?;
    assert_eq!(read_trimmed(&digest_file, "--digest-file")?, digest);
    assert_eq!(
        read_trimmed(&name_file, "--image-name-with-digest-file")?,
        format!("{repo}@{digest}")
    );
    assert_eq!(
        read_trimmed(&name_tag_file, "--image-name-tag-with-digest-file")?,
        format!("{destination}@{digest}")
    );
    let pushed_config = pushed.config()?;
    let pushed_manifest = raw_manifest(&format!("docker://{destination}"), None)?;

    // The tarball: skopeo reads it as docker-save output. Its layers are
    // stored uncompressed, so compare the config (same bytes, same image
    // ID) and the filesystem rather than layer digests.
    let from_tar = scratch.path().join("from-tar");
    skopeo_copy(
        &format!("docker-archive:{}", tarball.display()),
        &format!("oci:{}:x", from_tar.display()),
    )?;
    let tar_image = Image::layout(&from_tar, Some("x"));
    assert_eq!(tar_image.config()?, pushed_config);
    let root = tar_image.flatten()?;
    assert_eq!(root.read("/artifact")?, "built\n");
    assert!(root.read("/etc/passwd")?.starts_with("root:"));

    // The OCI layout: umoci and skopeo accept it, and it holds the pushed
    // image's config and layers.
    let listed = Command::new("umoci")
        .args(["ls", "--layout"])
        .arg(&layout)
        .output()
        .context("cannot run umoci")?;
    if !listed.status.success() {
        bail!(
            "umoci rejects the layout: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }
    let layout_manifest = raw_manifest(&format!("oci:{}", layout.display()), None)?;
    assert_eq!(
        layer_digests(&layout_manifest)?,
        layer_digests(&pushed_manifest)?
    );
    assert_eq!(Image::layout(&layout, None).config()?, pushed_config);
    skopeo_copy(
        &format!("oci:{}", layout.display()),
        &format!("docker://{}", registry.reference("out/from-layout:v1")),
    )?;
    assert_eq!(
        registry
            .image("out/from-layout:v1")
            .flatten()?
            .read("/artifact")?,
        "built\n"
    );
    Ok(())
}

#[test]
fn no_push_writes_the_tarball_and_pushes_nothing() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "a/base:latest")?;
    let context = BuildContext::with_dockerfile(&two_stage(&base))?;
    let scratch = tempfile::tempdir()?;
    let tarball = scratch.path().join("image.tar");
    let destination = registry.reference("out/unpushed:v1");

    let out = run_kiln(
        [
            "build",
            "--context",
            &context.path().display().to_string(),
            "--destination",
            &destination,
            "--insecure-registry",
            &registry.addr(),
            "--no-push",
            "--tar-path",
            &tarball.display().to_string(),
        ],
        &[],
    )?;
    out.ensure_success()?;
    let error = inspect_error(&format!("docker://{destination}"), None)?
        .context("--no-push pushed the image")?;
    assert!(
        error.to_lowercase().contains("manifest unknown"),
        "unexpected error: {error}"
    );

    let from_tar = scratch.path().join("from-tar");
    skopeo_copy(
        &format!("docker-archive:{}", tarball.display()),
        &format!("oci:{}:x", from_tar.display()),
    )?;
    let root = Image::layout(&from_tar, Some("x")).flatten()?;
    assert_eq!(root.read("/artifact")?, "built\n");
    // docker load names the image after the destination.
    let manifest: serde_json::Value = {
        let mut archive = tar::Archive::new(fs::File::open(&tarball)?);
        let mut found = None;
        for entry in archive.entries()? {
            let mut entry = entry?;
            if entry.path()?.as_os_str() == "manifest.json" {
                found = Some(serde_json::from_reader(&mut entry)?);
                break;
            }
        }
        found.context("the tarball has no manifest.json")?
    };
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!([destination]),
        "{manifest}"
    );
    Ok(())
}
