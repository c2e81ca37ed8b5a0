//! The main acceptance test: a multi-step build on busybox pushed to a real
//! registry, then checked file by file with skopeo and umoci.

use anyhow::{Context, Result};
use kiln_e2e::{APP_ID, BaseImage, BuildContext, Registry, run_kiln};
use serde_json::json;
use std::fs;

#[test]
fn build_push_busybox() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context = BuildContext::with_dockerfile(&format!(
        r#"FROM {base}
RUN mkdir -p /app/data && echo one > /app/data/a && echo gone > /app/data/b && mkdir /app/tmpdir && touch /app/tmpdir/x
RUN echo two >> /app/data/a && rm /app/data/b && rm -rf /app/tmpdir && chmod 700 /app/data
COPY --chown=1000:1000 --chmod=640 app.conf /app/app.conf
COPY dir/ /app/dir/
ENV GREETING=hello MODE=test
LABEL org.example.team=build version=1.0
WORKDIR /app
USER app
RUN id -u > /tmp/uid
ENTRYPOINT ["/bin/sh","-c"]
CMD ["echo hi"]
"#
    ))?;
    context.write("app.conf", "key=value\n")?;
    context.write("dir/one.txt", "1\n")?;
    context.write("dir/sub/two.txt", "2\n")?;
    let scratch = tempfile::tempdir()?;
    let digest_file = scratch.path().join("digest");
    let destination = registry.reference("test/app:latest");

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
        ],
        &[],
    )?;
    out.ensure_success()?;

    let image = registry.image("test/app:latest");
    let digest = image.digest()?;
    let written = fs::read_to_string(&digest_file).context("kiln wrote no --digest-file")?;
    assert_eq!(written.trim(), digest);
    let pushed = format!("Pushed {}/test/app@{digest}", registry.addr());
    assert!(
        out.stderr.contains(&pushed),
        "no `{pushed}` in:\n{}",
        out.stderr
    );

    let config = image.config()?;
    let config = &config["config"];
    let env: Vec<&str> = config["Env"]
        .as_array()
        .context("the config has no Env")?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(env.contains(&"GREETING=hello"), "{env:?}");
    assert!(env.contains(&"MODE=test"), "{env:?}");
    assert!(
        env.iter().any(|e| e.starts_with("PATH=")),
        "base PATH lost: {env:?}"
    );
    assert_eq!(config["Labels"]["org.example.team"], "build");
    assert_eq!(config["Labels"]["version"], "1.0");
    assert_eq!(config["WorkingDir"], "/app");
    assert_eq!(config["User"], "app");
    assert_eq!(config["Entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(config["Cmd"], json!(["echo hi"]));

    let root = image.flatten()?;
    assert_eq!(root.read("/app/data/a")?, "one\ntwo\n");
    assert_eq!(root.mode("/app/data")?, 0o700);
    assert!(
        !root.exists("/app/data/b"),
        "a file deleted by a later RUN survived"
    );
    assert!(
        !root.exists("/app/tmpdir"),
        "a directory deleted by a later RUN survived"
    );

    assert_eq!(root.read("/app/app.conf")?, "key=value\n");
    assert_eq!(root.mode("/app/app.conf")?, 0o640);
    assert_eq!(root.owner("/app/app.conf")?, (APP_ID, APP_ID));

    assert_eq!(root.read("/app/dir/one.txt")?, "1\n");
    assert_eq!(root.read("/app/dir/sub/two.txt")?, "2\n");
    assert!(
        !root.exists("/app/dir/dir"),
        "COPY dir/ copied the directory, not its contents"
    );
    assert_eq!(root.owner("/app/dir/one.txt")?, (0, 0));

    assert_eq!(root.read("/tmp/uid")?, "1000\n");
    assert_eq!(root.owner("/tmp/uid")?, (APP_ID, APP_ID));
    // The base image's files are still there underneath.
    assert!(root.read("/etc/passwd")?.starts_with("root:"));
    Ok(())
}
