//! `cargo xtask image --destination REF [--insecure-registry HOST]...
//! [--profile release|debug]`: builds the static (musl) kiln, then builds
//! the kiln image with that kiln from `deploy/Dockerfile`, `FROM scratch`,
//! and pushes it with its variants: `REF` (the executor), the `-debug`
//! variant (busybox under `/busybox`) and the `-warmer` variant
//! (`kiln warm`). Each is reported with its compressed size and entrypoint,
//! as `skopeo inspect` sees it.

use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use super::{STATIC_TARGET, cargo, ensure_packages, ensure_target, run_checked, target_dir};

pub(crate) const USAGE: &str =
    "cargo xtask image --destination REF [--insecure-registry HOST]... [--profile release|debug]

  image  build kiln for musl, then build and push the kiln image from
         deploy/Dockerfile with that kiln: REF (kaniko's executor image),
         REF's -debug variant (busybox under /busybox) and its -warmer variant
         (`kiln warm`); a tag `latest` becomes `debug` and `warmer`";

/// Debian packages the image is made from.
const IMAGE_PACKAGES: &[(&str, &str)] = &[
    ("busybox-static", "the shell of the -debug image"),
    ("ca-certificates", "the CA bundle in the image"),
    ("skopeo", "reports the pushed images' sizes"),
    ("binutils", "strip, for a smaller kiln binary"),
];

/// The CA bundle copied into the image.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The static busybox of Debian's `busybox-static`.
const BUSYBOX: &str = "/bin/busybox";

/// The image's kiln directory (`KANIKO_DIR`), as in kaniko.
const IMAGE_KILN_DIR: &str = "kaniko";

/// The image's stages, each with the tag suffix of its variant.
const VARIANTS: &[(&str, Option<&str>)] = &[
    ("executor", None),
    ("debug", Some("debug")),
    ("warmer", Some("warmer")),
];

/// The cargo profile kiln is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profile {
    Release,
    Debug,
}

impl Profile {
    /// The directory of the target directory that cargo builds into.
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// What `cargo xtask image` was asked for.
#[derive(Debug, PartialEq, Eq)]
struct ImageArgs {
    destination: String,
    insecure_registries: Vec<String>,
    profile: Profile,
}

/// Parses the arguments after `image`.
fn parse_args(args: &[OsString]) -> Result<ImageArgs> {
    let mut destination = None;
    let mut insecure_registries = Vec::new();
    let mut profile = Profile::Release;
    let mut rest = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => rest
                    .next()
                    .with_context(|| format!("{flag} needs a value\n\nusage: {USAGE}")),
            }
        };
        match flag.as_str() {
            "--destination" | "-d" => destination = Some(value()?),
            "--insecure-registry" => insecure_registries.push(value()?),
            "--profile" => {
                profile = match value()?.as_str() {
                    "release" => Profile::Release,
                    "debug" => Profile::Debug,
                    other => bail!("--profile {other:?}: use release or debug"),
                }
            }
            "--help" | "-h" => bail!("usage: {USAGE}"),
            _ => bail!("unknown argument {arg:?}\n\nusage: {USAGE}"),
        }
    }
    let destination =
        destination.with_context(|| format!("--destination is required\n\nusage: {USAGE}"))?;
    variant_reference(&destination, None)?;
    Ok(ImageArgs {
        destination,
        insecure_registries,
        profile,
    })
}

/// The reference a variant is pushed to: `REF` itself for the executor,
/// else REF's tag with `-VARIANT` appended (`latest`, or no tag, becomes
/// `VARIANT`, as kaniko's `:debug`).
fn variant_reference(destination: &str, variant: Option<&str>) -> Result<String> {
    if destination.contains('@') {
        bail!("--destination {destination:?}: give a tag, not a digest");
    }
    let name_start = destination.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match destination[name_start..].rfind(':') {
        Some(i) => (
            &destination[..name_start + i],
            &destination[name_start + i + 1..],
        ),
        None => (destination, "latest"),
    };
    if repo.is_empty() || repo.ends_with('/') || tag.is_empty() {
        bail!("--destination {destination:?} is not a REPOSITORY[:TAG] reference");
    }
    Ok(match variant {
        None => format!("{repo}:{tag}"),
        Some(v) if tag == "latest" => format!("{repo}:{v}"),
        Some(v) => format!("{repo}:{tag}-{v}"),
    })
}

/// The registry host of a reference, for `--insecure-registry` matching.
fn registry_of(reference: &str) -> &str {
    reference.split('/').next().unwrap_or(reference)
}

/// Runs `cargo xtask image`.
pub(crate) fn run(args: &[OsString]) -> Result<ExitCode> {
    let args = parse_args(args)?;
    ensure_packages(IMAGE_PACKAGES)?;
    ensure_target(STATIC_TARGET)?;
    let root = super::workspace_root();
    let target = target_dir(&root)?;

    let mut build = cargo(&root);
    build.args([
        "build",
        "-p",
        "kiln",
        "--bin",
        "kiln",
        "--target",
        STATIC_TARGET,
    ]);
    if args.profile == Profile::Release {
        build.arg("--release");
    }
    run_checked(&mut build)?;
    let built = target
        .join(STATIC_TARGET)
        .join(args.profile.dir())
        .join("kiln");

    let work = target.join("image");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    let context = work.join("context");
    let kiln = make_context(&built, &context)?;
    precompile_plugins(&kiln, &work, &context.join("rootfs/kiln/plugins"))?;

    let mut reports = Vec::new();
    for (stage, suffix) in VARIANTS {
        let reference = variant_reference(&args.destination, *suffix)?;
        println!(
            "xtask: building stage {stage} as {reference} with {}",
            kiln.display()
        );
        let mut build = Command::new(&kiln);
        build
            .arg("build")
            .arg("--context")
            .arg(&context)
            .arg("--dockerfile")
            .arg(root.join("deploy/Dockerfile"))
            .args([
                "--target",
                stage,
                "--destination",
                &reference,
                "--reproducible",
            ])
            .arg("--kaniko-dir")
            .arg(work.join("builder"));
        for registry in &args.insecure_registries {
            build.args(["--insecure-registry", registry]);
        }
        run_checked(&mut build)?;
        let insecure = args
            .insecure_registries
            .iter()
            .any(|r| r == registry_of(&reference));
        reports.push(inspect(&reference, insecure)?);
    }
    println!();
    println!("{:<60} {:>12}  entrypoint", "image", "compressed");
    for r in &reports {
        println!(
            "{:<60} {:>9.1} MB  {}",
            r.reference,
            r.compressed as f64 / 1e6,
            r.entrypoint
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Lays out the build context (see `deploy/Dockerfile`) and returns the
/// kiln binary in it, stripped.
fn make_context(built: &Path, context: &Path) -> Result<PathBuf> {
    let rootfs = context.join("rootfs");
    let kaniko = rootfs.join(IMAGE_KILN_DIR);
    for dir in [
        rootfs.join("kiln/plugins"),
        kaniko.join(".docker"),
        kaniko.join("ssl/certs"),
        rootfs.join("workspace"),
        context.join("busybox"),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let kiln = rootfs.join("kiln/kiln");
    run_checked(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&kiln)
            .arg(built),
    )
    .with_context(|| format!("cannot strip {} into the image", built.display()))?;
    symlink("/kiln/kiln", kaniko.join("executor"))?;
    fs::copy(CA_BUNDLE, kaniko.join("ssl/certs/ca-certificates.crt"))
        .with_context(|| format!("cannot copy {CA_BUNDLE} (Debian's ca-certificates)"))?;

    let busybox_dir = context.join("busybox");
    fs::copy(BUSYBOX, busybox_dir.join("busybox"))
        .with_context(|| format!("cannot copy {BUSYBOX} (Debian's busybox-static)"))?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .with_context(|| format!("cannot run {BUSYBOX} --list"))?;
    if !list.status.success() {
        bail!("{BUSYBOX} --list failed: {}", list.status);
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            symlink("busybox", busybox_dir.join(applet))?;
        }
    }
    let size = fs::metadata(&kiln)?.len();
    println!(
        "xtask: kiln for the image: {} ({:.1} MB stripped)",
        kiln.display(),
        size as f64 / 1e6
    );
    Ok(kiln)
}

/// Runs the image's kiln once so that it precompiles its built-in plugins,
/// and keeps them in `shipped`, the `plugins` directory beside the image's
/// kiln, where kiln reads them whatever its kiln directory: the image then
/// starts builds without compiling WebAssembly.
fn precompile_plugins(kiln: &Path, work: &Path, shipped: &Path) -> Result<()> {
    let probe = work.join("precompile");
    fs::create_dir_all(&probe)?;
    fs::write(
        probe.join("Dockerfile"),
        "FROM scratch\nLABEL kiln.precompile=1\n",
    )?;
    let kiln_dir = work.join("precompile-kiln");
    run_checked(
        Command::new(kiln)
            .arg("build")
            .arg("--context")
            .arg(&probe)
            .arg("--no-push")
            .arg("--kaniko-dir")
            .arg(&kiln_dir)
            .args(["--verbosity", "warn"]),
    )
    .context("the image's kiln could not run a trivial build to precompile its plugins")?;
    let mut count = 0;
    for entry in fs::read_dir(kiln_dir.join("plugins"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            let name = path.file_name().context("a plugin file has no name")?;
            fs::copy(&path, shipped.join(name))?;
            count += 1;
        }
    }
    if count == 0 {
        bail!(
            "kiln wrote no precompiled plugin under {}",
            kiln_dir.join("plugins").display()
        );
    }
    println!("xtask: {count} precompiled plugins go into /kiln/plugins");
    Ok(())
}

/// One pushed image, as skopeo sees it.
struct Report {
    reference: String,
    compressed: u64,
    entrypoint: String,
}

/// Reads the pushed image back with skopeo: the compressed size (config
/// plus layers, as pulled) and the entrypoint.
fn inspect(reference: &str, insecure: bool) -> Result<Report> {
    let skopeo = |extra: &[&str]| -> Result<serde_json::Value> {
        let mut cmd = Command::new("skopeo");
        cmd.arg("inspect").args(extra);
        if insecure {
            cmd.arg("--tls-verify=false");
        }
        if let Some(config) = std::env::var_os("DOCKER_CONFIG") {
            let auth = PathBuf::from(config).join("config.json");
            if auth.is_file() {
                cmd.arg("--authfile").arg(auth);
            }
        }
        let out = cmd
            .arg(format!("docker://{reference}"))
            .output()
            .context("cannot run skopeo")?;
        if !out.status.success() {
            bail!(
                "skopeo inspect {reference} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("skopeo printed invalid JSON")
    };
    let manifest = skopeo(&["--raw"])?;
    let config = skopeo(&["--config"])?;
    Ok(Report {
        reference: reference.to_owned(),
        compressed: compressed_size(&manifest)?,
        entrypoint: config["config"]["Entrypoint"].to_string(),
    })
}

/// The bytes a pull transfers: the config and every layer.
fn compressed_size(manifest: &serde_json::Value) -> Result<u64> {
    let layers = manifest["layers"]
        .as_array()
        .context("the manifest has no layers array")?;
    let mut total = manifest["config"]["size"]
        .as_u64()
        .context("the manifest's config has no size")?;
    for layer in layers {
        total += layer["size"].as_u64().context("a layer has no size")?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_get_kanikos_tag_names() {
        let r = |d: &str, v| variant_reference(d, v).unwrap();
        assert_eq!(
            r("127.0.0.1:5000/kiln/executor:dev", None),
            "127.0.0.1:5000/kiln/executor:dev"
        );
        assert_eq!(
            r("127.0.0.1:5000/kiln/executor:dev", Some("debug")),
            "127.0.0.1:5000/kiln/executor:dev-debug"
        );
        assert_eq!(
            r("127.0.0.1:5000/kiln/executor", Some("warmer")),
            "127.0.0.1:5000/kiln/executor:warmer"
        );
        assert_eq!(r("reg.io/kiln:latest", Some("debug")), "reg.io/kiln:debug");
        assert_eq!(r("reg.io/kiln", None), "reg.io/kiln:latest");
        assert!(variant_reference("reg.io/kiln@sha256:abc", None).is_err());
        assert!(variant_reference("reg.io/kiln:", None).is_err());
        assert!(variant_reference("reg.io/", None).is_err());
    }

    #[test]
    fn arguments_take_both_forms_and_need_a_destination() {
        let args = |a: &[&str]| parse_args(&a.iter().map(OsString::from).collect::<Vec<_>>());
        let parsed = args(&[
            "--destination",
            "h:1/k:dev",
            "--insecure-registry=h:1",
            "--profile=debug",
        ])
        .unwrap();
        assert_eq!(
            parsed,
            ImageArgs {
                destination: "h:1/k:dev".into(),
                insecure_registries: vec!["h:1".into()],
                profile: Profile::Debug,
            }
        );
        assert_eq!(args(&["-d", "k"]).unwrap().profile, Profile::Release);
        assert!(args(&[]).is_err());
        assert!(args(&["-d", "k", "--profile", "fast"]).is_err());
        assert!(args(&["-d"]).is_err());
        assert!(args(&["-d", "k", "--bogus"]).is_err());
    }

    #[test]
    fn size_counts_config_and_layers() {
        let m = serde_json::json!({
            "config": {"size": 100},
            "layers": [{"size": 1000}, {"size": 23}],
        });
        assert_eq!(compressed_size(&m).unwrap(), 1123);
        assert!(compressed_size(&serde_json::json!({"config": {"size": 1}})).is_err());
        assert_eq!(registry_of("127.0.0.1:5000/a/b:c"), "127.0.0.1:5000");
    }
}
