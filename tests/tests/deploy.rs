//! kiln where kaniko runs: the Kubernetes manifests in `deploy/kubernetes`
//! validate strictly, and the kiln image, built by kiln from
//! `deploy/Dockerfile`, builds and pushes images inside containerd the way
//! the seed article runs kaniko (`ctr run --rm --net-host` with bind
//! mounts), with and without seccomp, from a piped context, and with a
//! layer cache on a bound volume.

use anyhow::{Context, Result, bail, ensure};
use kiln_e2e::containerd::{Containerd, KilnImage, Run, credentials_dir};
use kiln_e2e::{BaseImage, Image, Registry, kiln_bin, run_kiln};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// kubernetes-validate's Kubernetes version (its schemas cover 1.25-1.37).
const KUBERNETES_VERSION: &str = "1.30.0";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// `kubernetes-validate` from PyPI, in a venv under the target directory,
/// installed on first use. No pip, no test: this fails rather than skips.
fn kubernetes_validate() -> Result<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubernetes-validate-venv");
    let bin = venv.join("bin/kubernetes-validate");
    if bin.is_file() {
        return Ok(bin);
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("cannot run python3 -m venv: install python3 with venv")?;
    ensure!(
        status.success(),
        "python3 -m venv {} failed",
        venv.display()
    );
    let out = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "kubernetes-validate"])
        .output()
        .context("cannot run pip in the venv")?;
    if !out.status.success() {
        // A half-made venv would be taken as installed next time.
        let _ = fs::remove_dir_all(&venv);
        bail!(
            "pip install kubernetes-validate failed (is PyPI reachable?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(bin)
}

#[test]
fn kubernetes_manifests_validate_strictly() -> Result<()> {
    let dir = repo_root().join("deploy/kubernetes");
    let mut manifests: Vec<PathBuf> = fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    manifests.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    manifests.sort();
    let names: Vec<String> = manifests
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "pod.yaml",
        "isolated-pod.yaml",
        "job.yaml",
        "s3-job.yaml",
        "stdin-pod.yaml",
    ] {
        ensure!(
            names.iter().any(|n| n == wanted),
            "deploy/kubernetes has no {wanted}: {names:?}"
        );
    }
    let out = Command::new(kubernetes_validate()?)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(&manifests)
        .output()?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "kubernetes-validate --strict failed:\n{log}"
    );
    // Every resource of every file was checked, not skipped.
    for name in &names {
        ensure!(
            log.contains(&format!("{name} passed")),
            "{name} was not validated:\n{log}"
        );
    }
    // The check itself can fail: a misspelt field is an error under --strict.
    let bad = tempfile::tempdir()?;
    let pod = fs::read_to_string(dir.join("pod.yaml"))?.replace("mountPath:", "mountPth:");
    fs::write(bad.path().join("bad.yaml"), pod)?;
    let out = Command::new(kubernetes_validate()?)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(bad.path().join("bad.yaml"))
        .output()?;
    ensure!(
        out.status.code() == Some(1),
        "a misspelt field passed kubernetes-validate --strict"
    );
    Ok(())
}

/// What a run printed, both streams.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ensure_ran(what: &str, out: &Output, containerd: &Containerd) -> Result<String> {
    let log = text(out);
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{log}\ncontainerd's log:\n{}",
            out.status,
            containerd.log()
        );
    }
    Ok(log)
}

/// The kaniko flags of the seed's containerd flow, for a context in
/// `/workspace`.
fn executor_args(extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["/kaniko/executor".into()];
    args.extend(extra.iter().map(OsString::from));
    args
}

/// The app the flows build: RUN, COPY, ENTRYPOINT and LABEL on busybox.
fn write_app(dir: &Path, base: &str) -> Result<()> {
    fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {base}\n\
             RUN mkdir -p /opt/app && echo 'made by RUN' > /opt/app/run.txt\n\
             COPY greeting.txt /opt/app/greeting.txt\n\
             LABEL org.example.built-by=kiln org.example.flow=containerd\n\
             ENTRYPOINT [\"/bin/sh\", \"-c\", \"cat /opt/app/greeting.txt /opt/app/run.txt\"]\n"
        ),
    )?;
    fs::write(dir.join("greeting.txt"), "hello from the context\n")?;
    Ok(())
}

/// Pulls `reference` with ctr, runs it, and checks what it prints and the
/// label the Dockerfile set.
fn check_app(
    containerd: &Containerd,
    registry: &Registry,
    repo_tag: &str,
    name: &str,
) -> Result<()> {
    let reference = registry.reference(repo_tag);
    containerd.pull(registry, &reference)?;
    let out = containerd.run(&Run {
        image: &reference,
        name,
        mounts: Vec::new(),
        seccomp: false,
        args: Vec::new(),
    })?;
    let printed = ensure_ran(&format!("running {reference}"), &out, containerd)?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "hello from the context\nmade by RUN\n",
        "{reference} printed {printed:?}"
    );
    let config = registry.image(repo_tag).config()?;
    ensure!(
        config["config"]["Labels"]["org.example.built-by"] == "kiln",
        "{reference} lacks its LABEL: {config}"
    );
    Ok(())
}

/// Steps that exercise what a user namespace changes: owners beyond root,
/// a setuid bit, a whiteout, an opaque directory (overlayfs marks it with
/// `user.overlay.opaque` there), `--network=none`, a tmpfs mount, and the
/// proc that a masked container refuses to mount afresh.
const USER_NAMESPACE_STEPS: &str = "\
RUN mkdir -p /opt/app/old && echo one > /opt/app/old/a && echo gone > /opt/app/gone\n\
RUN rm /opt/app/gone && rm -rf /opt/app/old && mkdir /opt/app/old && echo two > /opt/app/old/b \\
 && chown -R 1000:2000 /opt/app/old && chmod 4755 /opt/app/old/b\n\
RUN --network=none --mount=type=tmpfs,target=/scratch echo t > /scratch/t \\
 && echo \"$(id -u):$(id -g) $(test -r /proc/self/status && echo proc)\" > /opt/app/who\n";

/// The layers [`USER_NAMESPACE_STEPS`] must give.
fn check_user_namespace_layers(image: &Image) -> Result<()> {
    let layers = image.layer_count()?;
    let second = image.layer_entries(layers - 2)?;
    let find = |path: &str| second.iter().find(|e| e.path == path);
    ensure!(
        find("opt/app/.wh.gone").is_some(),
        "no whiteout: {second:#?}"
    );
    ensure!(
        find("opt/app/old/.wh..wh..opq").is_some() && find("opt/app/old/a").is_none(),
        "/opt/app/old is not opaque: {second:#?}"
    );
    let b = find("opt/app/old/b").context("no /opt/app/old/b")?;
    ensure!(
        (b.mode, b.uid, b.gid, b.data.as_slice()) == (0o4755, 1000, 2000, b"two\n".as_slice()),
        "/opt/app/old/b: {b:?}"
    );
    let last = image.layer_entries(layers - 1)?;
    let who = last
        .iter()
        .find(|e| e.path == "opt/app/who")
        .context("no /opt/app/who")?;
    ensure!(
        who.data == b"0:0 proc\n",
        "who: {:?}",
        String::from_utf8_lossy(&who.data)
    );
    ensure!(
        !last.iter().any(|e| e.path.starts_with("scratch/")),
        "the tmpfs mount leaked into the layer: {last:#?}"
    );
    Ok(())
}

/// The seed's containerd section, with kiln's image: the kiln image pulled
/// from a basic-auth registry, `ctr run --rm --net-host` with the docker
/// config bound at /kaniko/.docker and the Dockerfile directory at
/// /workspace; again under `--seccomp`; then with the context piped to
/// `tar://stdin`; then twice with `--cache` and a bound `/cache`.
#[test]
fn kiln_image_builds_inside_containerd_as_kaniko_does() -> Result<()> {
    let registry = Registry::start_with_basic_auth("kiln", "s3cret-pass")?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:1.36")?;
    let image = KilnImage::build(&registry, "kiln/executor:test")?;
    let containerd = Containerd::start()?;
    containerd.pull(&registry, &image.reference)?;

    let config = credentials_dir(&registry)?;
    let workspace = tempfile::tempdir()?;
    write_app(workspace.path(), &base)?;

    // The seed's flow, then the same under containerd's default seccomp
    // profile, which refuses the namespaces isolated mode would use.
    for (seccomp, tag) in [(false, "1"), (true, "2")] {
        let destination = registry.reference(&format!("flows/app:{tag}"));
        let out = containerd.run(&Run {
            image: &image.reference,
            name: &format!("kiln-build-{tag}"),
            mounts: vec![
                (config.path(), "/kaniko/.docker", false),
                (workspace.path(), "/workspace", true),
            ],
            seccomp,
            args: executor_args(&[
                "--dockerfile=/workspace/Dockerfile",
                "--context=dir:///workspace",
                &format!("--destination={destination}"),
                "--insecure",
            ]),
        })?;
        let log = ensure_ran(
            &format!("kiln in ctr (seccomp: {seccomp})"),
            &out,
            &containerd,
        )?;
        // Under seccomp no namespace is possible; without it, a user
        // namespace is, but kiln's directory lies on the container's overlayfs
        // root, which cannot hold overlay upper directories. Either way kiln
        // must say that it builds on the container's root, and why.
        ensure!(
            log.contains("Building in container-root mode (inside a container"),
            "kiln did not say which mode it chose:\n{log}"
        );
        let why = if seccomp {
            "cannot create a user namespace"
        } else {
            "is on overlayfs"
        };
        ensure!(
            log.contains("Isolated mode is unavailable") && log.contains(why),
            "kiln did not say why it is not isolated ({why}):\n{log}"
        );
        ensure!(log.contains("Pushed "), "no Pushed line:\n{log}");
        check_app(
            &containerd,
            &registry,
            &format!("flows/app:{tag}"),
            &format!("app-{tag}"),
        )?;
    }

    // Without seccomp and with a volume for kiln's directory, kiln builds
    // isolated in a user namespace, to the byte what a privileged kiln
    // builds from the same Dockerfile.
    let rootless = tempfile::tempdir()?;
    fs::write(
        rootless.path().join("Dockerfile"),
        format!("FROM {base}\n{USER_NAMESPACE_STEPS}"),
    )?;
    let state = tempfile::tempdir()?;
    let out = containerd.run(&Run {
        image: &image.reference,
        name: "kiln-build-userns",
        mounts: vec![
            (config.path(), "/kaniko/.docker", false),
            (rootless.path(), "/workspace", true),
            (state.path(), "/kiln-state", true),
        ],
        seccomp: false,
        args: executor_args(&[
            "--dockerfile=/workspace/Dockerfile",
            "--context=dir:///workspace",
            &format!("--destination={}", registry.reference("flows/userns:1")),
            "--kaniko-dir=/kiln-state",
            "--reproducible",
            "--insecure",
        ]),
    })?;
    let log = ensure_ran("kiln in ctr with a volume", &out, &containerd)?;
    ensure!(
        log.contains("Building in isolated mode in a user namespace"),
        "kiln did not build in a user namespace:\n{log}"
    );
    ensure!(
        !fs::read_dir(state.path().join("plugins")).is_ok_and(|mut d| d.next().is_some()),
        "kiln compiled plugins although its image ships them precompiled"
    );
    check_user_namespace_layers(&registry.image("flows/userns:1"))?;
    run_kiln(
        [
            OsString::from("build"),
            "--context".into(),
            rootless.path().into(),
            "--destination".into(),
            registry.reference("flows/userns:privileged").into(),
            "--reproducible".into(),
            "--insecure-registry".into(),
            registry.addr().into(),
        ],
        &[("DOCKER_CONFIG", config.path().as_os_str())],
    )?
    .ensure_success()?;
    ensure!(
        registry.image("flows/userns:1").digest()?
            == registry.image("flows/userns:privileged").digest()?,
        "the image built in a user namespace differs from the privileged build's"
    );

    // The context as a gzip tar on standard input: `tar -cz | ctr run`.
    let destination = registry.reference("flows/app:stdin");
    let mut tar = Command::new("tar")
        .arg("-cz")
        .arg("-C")
        .arg(workspace.path())
        .arg(".")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let piped = tar.stdout.take().context("tar has no stdout")?;
    let out = containerd.run_with_stdin(
        &Run {
            image: &image.reference,
            name: "kiln-build-stdin",
            mounts: vec![(config.path(), "/kaniko/.docker", false)],
            seccomp: true,
            args: executor_args(&[
                "-i",
                "--dockerfile=Dockerfile",
                "--context=tar://stdin",
                &format!("--destination={destination}"),
                "--insecure",
            ]),
        },
        piped,
    )?;
    ensure!(tar.wait()?.success(), "tar failed");
    let log = ensure_ran("kiln in ctr with tar://stdin", &out, &containerd)?;
    ensure!(
        log.contains("Reading the build context from standard input"),
        "{log}"
    );
    check_app(&containerd, &registry, "flows/app:stdin", "app-stdin")?;

    // A layer cache in the registry and a base-image cache on a bound
    // volume: the second run finds every step cached.
    let cache = tempfile::tempdir()?;
    let cache_repo = registry.reference("flows/cache");
    let mut logs = Vec::new();
    for run in ["1", "2"] {
        let out = containerd.run(&Run {
            image: &image.reference,
            name: &format!("kiln-build-cache-{run}"),
            mounts: vec![
                (config.path(), "/kaniko/.docker", false),
                (workspace.path(), "/workspace", true),
                (cache.path(), "/cache", true),
            ],
            seccomp: true,
            args: executor_args(&[
                "--dockerfile=/workspace/Dockerfile",
                "--context=dir:///workspace",
                &format!("--destination={}", registry.reference("flows/app:cached")),
                "--cache",
                "--cache-dir=/cache",
                &format!("--cache-repo={cache_repo}"),
                "--insecure",
            ]),
        })?;
        logs.push(ensure_ran(
            &format!("cached build {run}"),
            &out,
            &containerd,
        )?);
    }
    ensure!(
        !logs[0].contains("Using caching version of cmd"),
        "the first cached build found a cache already:\n{}",
        logs[0]
    );
    ensure!(
        logs[1].contains("Using caching version of cmd: RUN"),
        "the second build did not use the cached RUN layer:\n{}",
        logs[1]
    );
    ensure!(
        fs::read_dir(cache.path())?.next().is_some(),
        "--cache-dir=/cache stayed empty: the base image was not cached"
    );
    check_app(&containerd, &registry, "flows/app:cached", "app-cached")?;
    Ok(())
}

/// A context on standard input may arrive long after kiln starts (a Pod
/// that `kubectl run -i` attaches to late, a slow upload): the wait is not
/// held against the context plugin's time limit (10 s).
#[test]
fn a_stdin_context_may_arrive_late() -> Result<()> {
    let context = tempfile::tempdir()?;
    fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY late.txt /late.txt\n",
    )?;
    fs::write(context.path().join("late.txt"), "worth the wait\n")?;
    let archive = Command::new("tar")
        .arg("-cz")
        .arg("-C")
        .arg(context.path())
        .arg(".")
        .output()?;
    ensure!(archive.status.success(), "tar failed");
    let scratch = tempfile::tempdir()?;
    let layout = scratch.path().join("oci");
    let mut kiln = Command::new(kiln_bin()?)
        .args(["build", "-i", "--context=tar://stdin", "--no-push"])
        .arg("--kaniko-dir")
        .arg(scratch.path().join("kaniko"))
        .arg("--oci-layout-path")
        .arg(&layout)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = kiln.stdin.take().context("kiln has no stdin")?;
    let feeder = std::thread::spawn(move || -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_secs(12));
        std::io::Write::write_all(&mut stdin, &archive.stdout)
    });
    let out = kiln.wait_with_output()?;
    let fed = feeder.join().expect("the feeder does not panic");
    ensure!(out.status.success(), "kiln failed:\n{}", text(&out));
    fed?;
    let entries = Image::layout(&layout, None).layer_entries(0)?;
    ensure!(
        entries.iter().any(|e| e.path == "late.txt"),
        "the late context's file is not in the image: {:?}",
        entries.iter().map(|e| &e.path).collect::<Vec<_>>()
    );
    Ok(())
}
