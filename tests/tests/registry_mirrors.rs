//! Docker Hub references resolved through local mirrors: `--registry-mirror`
//! (and `KANIKO_REGISTRY_MIRROR`), and `--registry-map` with a dead first
//! entry and a live second one. Each mirror sits behind a recording proxy so
//! the tests see which one served the base.

use anyhow::{Context, Result};
use kiln_e2e::{
    BaseImage, BuildContext, FaultProxy, Faults, Image, KilnOutput, Registry, run_kiln,
};
use std::ffi::OsStr;
use std::net::TcpListener;

/// Both spellings of Docker Hub's busybox, one per stage.
const DOCKERFILE: &str = "FROM busybox AS short\n\
                          RUN echo short > /short\n\
                          FROM docker.io/library/busybox:latest\n\
                          COPY --from=short /short /short\n\
                          RUN echo long > /long\n";

/// A registry holding busybox as `library/busybox:latest`, behind a
/// recording proxy.
fn mirror() -> Result<(Registry, FaultProxy)> {
    let registry = Registry::start()?;
    BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let proxy = FaultProxy::start(&registry.addr(), Faults::none())?;
    Ok((registry, proxy))
}

/// Builds [`DOCKERFILE`] into an OCI layout without pushing, and checks the
/// image.
fn build(extra: &[&str], envs: &[(&str, &OsStr)]) -> Result<KilnOutput> {
    let context = BuildContext::with_dockerfile(DOCKERFILE)?;
    let scratch = tempfile::tempdir()?;
    let layout = scratch.path().join("layout");
    let mut args = vec![
        "build".to_owned(),
        "--context".to_owned(),
        context.path().display().to_string(),
        "--no-push".to_owned(),
        "--oci-layout-path".to_owned(),
        layout.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let out = run_kiln(args, envs)?;
    if out.status.success() {
        let root = Image::layout(&layout, None).flatten()?;
        assert_eq!(root.read("/short")?, "short\n");
        assert_eq!(root.read("/long")?, "long\n");
        assert!(root.exists("/bin/busybox"));
    }
    Ok(out)
}

fn served_busybox(proxy: &FaultProxy) -> bool {
    proxy.journal().iter().any(|e| {
        e.method == "GET"
            && e.target.starts_with("/v2/library/busybox/manifests/")
            && e.status == Some(200)
    })
}

#[test]
fn registry_mirror_serves_docker_hub_references() -> Result<()> {
    let (_registry, proxy) = mirror()?;
    let out = build(
        &[
            "--registry-mirror",
            &proxy.addr(),
            "--insecure-registry",
            &proxy.addr(),
        ],
        &[],
    )?;
    out.ensure_success()?;
    assert!(served_busybox(&proxy), "{:?}", proxy.journal());

    let (_registry, proxy) = mirror()?;
    let addr = proxy.addr();
    let out = build(
        &["--insecure-registry", &addr],
        &[("KANIKO_REGISTRY_MIRROR", OsStr::new(&addr))],
    )?;
    out.ensure_success()
        .context("KANIKO_REGISTRY_MIRROR was not honoured")?;
    assert!(served_busybox(&proxy), "{:?}", proxy.journal());
    Ok(())
}

#[test]
fn registry_map_falls_through_a_dead_mirror() -> Result<()> {
    let (_registry, proxy) = mirror()?;
    // A port that was just free: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let live = proxy.addr();
    let map = format!("index.docker.io={dead};index.docker.io={live}");
    let out = build(
        &[
            "--registry-map",
            &map,
            "--insecure-registry",
            &dead,
            "--insecure-registry",
            &live,
        ],
        &[],
    )?;
    out.ensure_success()?;
    assert!(served_busybox(&proxy), "{:?}", proxy.journal());
    Ok(())
}
