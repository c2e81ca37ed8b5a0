//! Build behaviours beyond one Dockerfile's contents: which .dockerignore
//! wins, unused build args, secrets that never reach a layer or the log,
//! and stages the target does not need.

use anyhow::Result;
use kiln_e2e::{BaseImage, BuildContext, Registry, run_kiln};
use sha2::{Digest, Sha256};

fn build(
    context: &BuildContext,
    registry: &Registry,
    tag: &str,
    extra: &[&str],
) -> Result<kiln_e2e::KilnOutput> {
    let mut args = vec![
        "build".to_owned(),
        "--context".to_owned(),
        context.path().display().to_string(),
        "--destination".to_owned(),
        registry.reference(tag),
        "--insecure-registry".to_owned(),
        registry.addr(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run_kiln(args, &[])
}

#[test]
fn dockerfile_specific_dockerignore_takes_precedence() -> Result<()> {
    let registry = Registry::start()?;
    let context = BuildContext::with_dockerfile("FROM scratch\nCOPY . /ctx/\n")?;
    context.write("keep.txt", "keep\n")?;
    context.write("drop-by-dockerfile.txt", "x\n")?;
    context.write("drop-by-context.txt", "y\n")?;
    context.write(".dockerignore", "drop-by-context.txt\n")?;
    context.write(
        "Dockerfile.dockerignore",
        "drop-by-dockerfile.txt\nDockerfile*\n",
    )?;
    build(&context, &registry, "ignore:1", &[])?.ensure_success()?;

    let root = registry.image("ignore:1").flatten()?;
    assert_eq!(root.read("/ctx/keep.txt")?, "keep\n");
    assert!(!root.exists("/ctx/drop-by-dockerfile.txt"));
    // The context's own .dockerignore is replaced, not merged.
    assert_eq!(root.read("/ctx/drop-by-context.txt")?, "y\n");
    assert!(!root.exists("/ctx/Dockerfile"));
    Ok(())
}

#[test]
fn unused_build_args_are_warned_about() -> Result<()> {
    let registry = Registry::start()?;
    let context = BuildContext::with_dockerfile("FROM scratch\nARG USED\nLABEL used=$USED\n")?;
    let out = build(
        &context,
        &registry,
        "args:1",
        &["--build-arg", "USED=1", "--build-arg", "UNUSED=2"],
    )?;
    out.ensure_success()?;
    let log = out.all();
    assert!(
        log.contains("[Warning] One or more build-args [UNUSED] were not consumed"),
        "{log}"
    );
    assert_eq!(
        registry.image("args:1").config()?["config"]["Labels"]["used"],
        "1"
    );
    Ok(())
}

#[test]
fn secrets_reach_run_but_never_a_layer_or_the_log() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    // The Dockerfile names only the secret's hash, so the value itself can
    // be searched for in the log.
    let hash = hex::encode(Sha256::digest(b"s3cr3t-value"));
    let context = BuildContext::with_dockerfile(&format!(
        "FROM {base}\nRUN --mount=type=secret,id=token test \"$(sha256sum < /run/secrets/token | cut -d' ' -f1)\" = {hash} && echo ok > /checked\n"
    ))?;
    let secret = tempfile::NamedTempFile::new()?;
    std::fs::write(secret.path(), "s3cr3t-value")?;
    let secret_flag = format!("id=token,src={}", secret.path().display());
    let out = build(&context, &registry, "secret:1", &["--secret", &secret_flag])?;
    out.ensure_success()?;
    assert!(
        !out.all().contains("s3cr3t-value"),
        "the secret leaked into the log"
    );

    let image = registry.image("secret:1");
    let layers = image.layer_count()?;
    let entries = image.layer_entries(layers - 1)?;
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["checked"],
        "only the RUN's own file may be in its layer"
    );
    for i in 0..layers {
        for e in image.layer_entries(i)? {
            assert!(
                !e.data.windows(12).any(|w| w == b"s3cr3t-value"),
                "secret in layer {i} at {}",
                e.path
            );
        }
    }
    Ok(())
}

#[test]
fn only_the_stages_the_target_needs_are_built() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context = BuildContext::with_dockerfile(&format!(
        "FROM {base} AS a\nRUN echo a > /a\nFROM {base} AS broken\nRUN exit 7\nFROM {base} AS b\nRUN echo b > /b\nFROM scratch AS final\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n"
    ))?;
    let out = build(&context, &registry, "dag:1", &[])?;
    out.ensure_success()?;
    assert!(
        out.all().contains("Skipping unused stage broken"),
        "{}",
        out.all()
    );
    let root = registry.image("dag:1").flatten()?;
    assert_eq!(
        (root.read("/a")?, root.read("/b")?),
        ("a\n".to_owned(), "b\n".to_owned())
    );

    let out = build(&context, &registry, "dag:2", &["--target", "broken"])?;
    assert_eq!(out.code(), Some(7), "{}", out.all());
    Ok(())
}

/// libfaketime, which makes kiln's clock read a given date.
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Sets the mtime of every file in `paths` under `context` to `secs`.
fn set_mtimes(context: &BuildContext, paths: &[&str], secs: u64) -> Result<()> {
    for p in paths {
        let file = std::fs::File::options()
            .write(true)
            .open(context.path().join(p))?;
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))?;
    }
    Ok(())
}

#[test]
fn reproducible_builds_give_the_same_digest_on_other_days_and_mtimes() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context = BuildContext::with_dockerfile(&format!(
        "FROM {base}\nCOPY app.txt /app/\nRUN mkdir -p /data && echo fixed > /data/when && echo x > /data/x\nENV A=1\n"
    ))?;
    context.write("app.txt", "app\n")?;
    let faked = |when: &str| {
        vec![
            ("LD_PRELOAD", std::ffi::OsString::from(FAKETIME_LIB)),
            ("FAKETIME", std::ffi::OsString::from(format!("@{when}"))),
        ]
    };
    let run = |tag: &str, extra: &[&str], when: &str| -> Result<kiln_e2e::KilnOutput> {
        let env = faked(when);
        let env: Vec<(&str, &std::ffi::OsStr)> =
            env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
        let mut args = vec![
            "build".to_owned(),
            "--context".to_owned(),
            context.path().display().to_string(),
            "--destination".to_owned(),
            registry.reference(tag),
            "--insecure-registry".to_owned(),
            registry.addr(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run_kiln(args, &env)
    };
    // Two builds on different (faked) days, from contexts with different mtimes.
    set_mtimes(&context, &["app.txt", "Dockerfile"], 1_000_000_000)?;
    run("repro:1", &["--reproducible"], "2027-01-01 08:00:00")?.ensure_success()?;
    set_mtimes(&context, &["app.txt", "Dockerfile"], 1_700_000_000)?;
    run("repro:2", &["--reproducible"], "2027-03-09 17:30:00")?.ensure_success()?;
    let digest = registry.image("repro:1").digest()?;
    assert_eq!(registry.image("repro:2").digest()?, digest);
    let config = registry.image("repro:1").config()?;
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");

    // The fake clock is real to kiln: without --reproducible the date shows.
    run("plain:1", &[], "2027-01-01 08:00:00")?.ensure_success()?;
    let plain = registry.image("plain:1").config()?;
    let created = plain["created"].as_str().unwrap_or_default().to_owned();
    assert!(created.starts_with("2027-01-01"), "created {created}");
    assert_ne!(registry.image("plain:1").digest()?, digest);
    Ok(())
}

#[test]
fn single_snapshot_makes_one_layer_per_stage_with_every_change() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context = BuildContext::with_dockerfile(&format!(
        "FROM {base}\n\
         RUN mkdir /data && echo one > /data/a && echo gone > /data/b\n\
         COPY app.txt /app/\n\
         RUN rm /data/b && echo two >> /data/a && rm /bin/cat\n\
         ENV A=1\n"
    ))?;
    context.write("app.txt", "app\n")?;
    build(&context, &registry, "single:1", &["--single-snapshot"])?.ensure_success()?;
    let image = registry.image("single:1");
    let base_layers = registry.image("library/busybox:latest").layer_count()?;
    assert_eq!(image.layer_count()?, base_layers + 1);
    let names: Vec<String> = image
        .layer_entries(base_layers)?
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert!(names.contains(&"bin/.wh.cat".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains(".wh.b")), "{names:?}");
    let fs = image.flatten()?;
    assert_eq!(fs.read("data/a")?, "one\ntwo\n");
    assert!(!fs.exists("data/b"));
    assert!(!fs.exists("bin/cat"));
    assert_eq!(fs.read("app/app.txt")?, "app\n");
    let config = image.config()?;
    let history = config["history"].as_array().cloned().unwrap_or_default();
    let with_layers = history
        .iter()
        .filter(|h| h["empty_layer"].as_bool() != Some(true))
        .count();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
    assert_eq!((diff_ids, with_layers), (base_layers + 1, base_layers + 1));
    Ok(())
}

#[test]
fn layers_travel_to_the_registry_while_later_steps_run() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context = BuildContext::with_dockerfile(&format!(
        "FROM {base} AS unused\nRUN echo never > /never\n\
         FROM {base}\nRUN echo early > /early\nCOPY --from=unused /never /copied\nRUN sleep 2\n"
    ))?;
    let out = build(&context, &registry, "early:1", &["-v", "debug"])?;
    out.ensure_success()?;
    let image = registry.image("early:1");
    let base_layers = registry.image("library/busybox:latest").layer_count()?;
    let manifest = image.manifest()?;
    let layer = manifest["layers"][base_layers]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let log = out.all();
    let uploaded = log.find(&format!("layer {layer} uploaded ahead of the image"));
    let sleep_done = log.rfind("RUN sleep 2");
    assert!(uploaded.is_some(), "no early upload of {layer}:\n{log}");
    assert!(sleep_done.is_some(), "{log}");
    // Only the layers of stages the image is built on travel early: not
    // the one of the stage it copies from.
    assert_eq!(
        log.matches("uploaded ahead of the image").count(),
        2,
        "{log}"
    );
    Ok(())
}
