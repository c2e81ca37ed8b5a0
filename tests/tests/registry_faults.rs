//! Pushes and pulls through a proxy that fails a fifth of all requests
//! (5xx, 429, resets, stalls) still produce the image a clean push does, and
//! a push killed in the middle of a layer upload leaves no tag behind.

use anyhow::{Context, Result, bail};
use kiln_e2e::{
    BaseImage, BuildContext, FaultProxy, Faults, Registry, inspect_error, kiln_bin, raw_manifest,
    run_kiln, skopeo_copy,
};
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The seed of the fault sequence: fixed, so a failure is reproducible.
const SEED: u64 = 0x6b696c6e;

#[test]
fn build_through_faults_pushes_the_clean_digest() -> Result<()> {
    let registry = Registry::start()?;
    BaseImage::busybox_with_files(20)?.push(&registry, "a/base:latest")?;
    let proxy = FaultProxy::start(&registry.addr(), Faults::random(SEED, 20))?;
    let base = proxy.reference("a/base:latest");
    let context = BuildContext::with_dockerfile(&format!(
        "FROM {base} AS builder\n\
         RUN echo built > /artifact\n\
         FROM {base}\n\
         COPY --from=builder /artifact /artifact\n\
         COPY app.conf /etc/app.conf\n"
    ))?;
    context.write("app.conf", "key=value\n")?;
    let scratch = tempfile::tempdir()?;
    let digest_file = scratch.path().join("digest");

    // One build, pushed both directly and through the faults: kiln's RUN
    // layers carry build-time mtimes and the config carries `created`, so
    // two separate builds never share a digest. Pushing one build twice is
    // the comparison that isolates what the faults could break.
    let out = run_kiln(
        [
            "build",
            "--context",
            &context.path().display().to_string(),
            "--destination",
            &registry.reference("b/clean:latest"),
            "--destination",
            &proxy.reference("b/faulty:latest"),
            "--insecure-registry",
            &registry.addr(),
            "--insecure-registry",
            &proxy.addr(),
            "--push-retry",
            "5",
            "--image-download-retry",
            "5",
            "--digest-file",
            &digest_file.display().to_string(),
        ],
        &[],
    )?;
    let journal = proxy.journal();
    out.ensure_success()
        .with_context(|| format!("faults injected: {:?}", faulted(&journal)))?;
    assert!(
        journal.iter().any(|e| e.fault.is_some()),
        "the proxy injected no fault, the test proves nothing: {journal:?}"
    );

    let clean = registry.image("b/clean:latest").digest()?;
    let faulty = registry.image("b/faulty:latest").digest()?;
    assert_eq!(faulty, clean, "the push through faults differs");
    let written = fs::read_to_string(&digest_file).context("kiln wrote no --digest-file")?;
    assert_eq!(written.trim(), clean);

    // Every blob the faulty manifest names is there and intact: skopeo
    // verifies digests as it copies.
    let layout = tempfile::tempdir()?;
    skopeo_copy(
        &format!("docker://{}", registry.reference("b/faulty:latest")),
        &format!("oci:{}:x", layout.path().display()),
    )?;
    let root = registry.image("b/faulty:latest").flatten()?;
    assert_eq!(root.read("/artifact")?, "built\n");
    assert_eq!(root.read("/etc/app.conf")?, "key=value\n");
    assert_eq!(root.read("/data/f19")?, "19\n");
    Ok(())
}

/// Kills kiln with SIGKILL while a large layer's upload is frozen half way
/// (the proxy holds the body): the manifest goes last, so no tag exists.
#[test]
fn push_killed_mid_upload_leaves_no_tag() -> Result<()> {
    let registry = Registry::start()?;
    BaseImage::busybox()?.push(&registry, "a/base:latest")?;
    let proxy = FaultProxy::start(
        &registry.addr(),
        Faults::none().hold_request_bodies_after(4 << 20),
    )?;
    // Random bytes do not compress: the layer stays ~24 MiB.
    let context = BuildContext::with_dockerfile(&format!(
        "FROM {}\nRUN head -c 25165824 /dev/urandom > /big\n",
        proxy.reference("a/base:latest")
    ))?;
    let scratch = tempfile::tempdir()?;
    let docker_config = scratch.path().join("docker");
    fs::create_dir(&docker_config)?;
    let mut child = Command::new(kiln_bin()?)
        .args(["build", "--context"])
        .arg(context.path())
        .arg("--kaniko-dir")
        .arg(scratch.path().join("kaniko"))
        .args([
            "--destination",
            &proxy.reference("big/app:latest"),
            "--insecure-registry",
            &proxy.addr(),
        ])
        .env("DOCKER_CONFIG", &docker_config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start kiln")?;
    let held = proxy.wait_for_hold(Duration::from_secs(300));
    if let Some(status) = child.try_wait()? {
        bail!("kiln exited ({status}) before its upload was held: {held:?}");
    }
    child.kill()?;
    child.wait()?;
    held?;

    let journal = proxy.journal();
    assert!(
        journal
            .iter()
            .any(|e| e.target.starts_with("/v2/big/app/blobs/uploads/") && e.status.is_none()),
        "the held request was not a blob upload: {journal:?}"
    );
    assert!(
        !journal
            .iter()
            .any(|e| e.method == "PUT" && e.target.contains("/manifests/")),
        "kiln put a manifest before its layers were up: {journal:?}"
    );
    drop(proxy);
    let error = inspect_error(
        &format!("docker://{}", registry.reference("big/app:latest")),
        None,
    )?
    .context("the tag exists after a push was killed half way")?;
    assert!(
        error.to_lowercase().contains("manifest unknown"),
        "unexpected error: {error}"
    );
    // The base is still whole: a killed push damages nothing that was there.
    raw_manifest(
        &format!("docker://{}", registry.reference("a/base:latest")),
        None,
    )?;
    Ok(())
}

fn faulted(journal: &[kiln_e2e::Exchange]) -> Vec<String> {
    journal
        .iter()
        .filter_map(|e| {
            e.fault
                .map(|f| format!("{f:?} on {} {}", e.method, e.target))
        })
        .collect()
}
