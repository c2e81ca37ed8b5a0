//! The harness checked against the real tools, independently of kiln: if
//! these fail, the end-to-end tests' failures say nothing about kiln.

use anyhow::Result;
use kiln_e2e::{
    APP_ID, BaseImage, BuildContext, BuildSpec, Buildah, EntryKind, Image, ImageView, Registry,
    compare_images, mounts_under,
};
use std::process::Command;

#[test]
fn busybox_round_trips_through_a_registry() -> Result<()> {
    let registry = Registry::start()?;
    let reference = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    assert_eq!(
        reference,
        format!("{}/library/busybox:latest", registry.addr())
    );

    let image = registry.image("library/busybox:latest");
    let config = image.config()?;
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert!(
        config["config"]["Env"][0]
            .as_str()
            .unwrap()
            .starts_with("PATH=")
    );
    assert!(image.digest()?.starts_with("sha256:"));
    assert_eq!(image.layer_count()?, 1);

    let root = image.flatten()?;
    assert!(root.read("/etc/passwd")?.contains("app:x:1000:1000:"));
    assert_eq!(root.mode("/tmp")?, 0o1777);
    assert_eq!(root.mode("/root")?, 0o700);
    assert_eq!(root.owner("/home/app")?, (APP_ID, APP_ID));
    assert_eq!(
        std::fs::read_link(root.path("/bin/sh"))?,
        std::path::Path::new("/bin/busybox")
    );
    // The applets work inside the image's root: `sh -c` runs through busybox.
    let echoed = Command::new(root.path("/bin/busybox"))
        .args(["sh", "-c", "echo ok"])
        .output()?;
    assert_eq!(echoed.stdout, b"ok\n");

    let entries = image.layer_entries(0)?;
    let home = entries.iter().find(|e| e.path == "home/app").unwrap();
    assert_eq!(
        (home.kind.clone(), home.uid, home.gid),
        (EntryKind::Dir, 1000, 1000)
    );
    let sh = entries.iter().find(|e| e.path == "bin/sh").unwrap();
    assert_eq!(sh.kind, EntryKind::Symlink("/bin/busybox".into()));
    let group = entries.iter().find(|e| e.path == "etc/group").unwrap();
    assert_eq!(group.data, b"root:x:0:\napp:x:1000:\n");
    assert_eq!((group.mode, group.size), (0o644, 22));
    Ok(())
}

#[test]
fn data_files_image_holds_every_file() -> Result<()> {
    let registry = Registry::start()?;
    BaseImage::busybox_with_files(100)?.push(&registry, "many:latest")?;
    let entries = registry.image("many:latest").layer_entries(0)?;
    let data: Vec<_> = entries
        .iter()
        .filter(|e| e.path.starts_with("data/"))
        .collect();
    assert_eq!(data.len(), 100);
    let f42 = data.iter().find(|e| e.path == "data/f42").unwrap();
    assert_eq!(f42.data, b"42\n");
    Ok(())
}

#[test]
fn basic_auth_registry_requires_credentials() -> Result<()> {
    let registry = Registry::start_with_basic_auth("alice", "s3cret-pw")?;
    let base = BaseImage::busybox()?;
    base.push(&registry, "private:latest")?;
    assert!(
        registry
            .image("private:latest")
            .digest()?
            .starts_with("sha256:")
    );

    let anonymous = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--no-creds"])
        .arg(format!("docker://{}", registry.reference("private:latest")))
        .output()?;
    assert!(!anonymous.status.success());
    let stderr = String::from_utf8_lossy(&anonymous.stderr).to_lowercase();
    assert!(
        stderr.contains("unauthorized") || stderr.contains("authentication required"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn registry_stops_on_drop() -> Result<()> {
    let registry = Registry::start()?;
    let process = std::path::PathBuf::from(format!("/proc/{}", registry.pid()));
    assert!(process.exists());
    drop(registry);
    // The port is no proof: a concurrent test may bind it as soon as it is free.
    assert!(!process.exists(), "{} still runs", process.display());
    Ok(())
}

#[test]
fn untagged_oci_layout_is_readable() -> Result<()> {
    let registry = Registry::start()?;
    let reference = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let scratch = tempfile::tempdir()?;
    let layout = scratch.path().join("oci");
    let copied = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}", layout.display()))
        .output()?;
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );

    let image = Image::layout(&layout, None);
    assert_eq!(image.config()?["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(image.layer_count()?, 1);
    assert!(image.flatten()?.exists("/bin/busybox"));
    Ok(())
}

#[test]
fn buildah_oracle_builds_compares_and_cleans_up() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let one = BuildContext::with_dockerfile(&format!(
        "FROM {base}\nRUN mkdir /o && echo one > /o/f && chmod 640 /o/f\nENV A=1\n"
    ))?;
    let two = BuildContext::with_dockerfile(&format!(
        "FROM {base}\nRUN mkdir /o && echo one > /o/f && chmod 600 /o/f\nENV A=2\n"
    ))?;
    let staged = BuildContext::with_dockerfile(&format!(
        "FROM {base} AS wanted\nARG X\nRUN echo \"$X\" > /x\nFROM {base}\nRUN exit 1\n"
    ))?;
    let buildah = Buildah::new()?;
    let dir = buildah.dir().to_owned();
    buildah.build_and_push(&BuildSpec::new(one.path()), &registry.reference("o/one:1"))?;
    buildah.build_and_push(&BuildSpec::new(two.path()), &registry.reference("o/two:1"))?;
    let spec = BuildSpec {
        build_args: vec![("X".into(), "42".into())],
        target: Some("wanted".into()),
        ..BuildSpec::new(staged.path())
    };
    buildah.build_and_push(&spec, &registry.reference("o/staged:1"))?;
    assert_eq!(buildah.mounts()?, Vec::<std::path::PathBuf>::new());

    let base = ImageView::read(&registry.image("library/busybox:latest"))?;
    let one = ImageView::read(&registry.image("o/one:1"))?;
    let two = ImageView::read(&registry.image("o/two:1"))?;
    assert_eq!(two.root.read("/o/f")?, "one\n");
    let staged = ImageView::read(&registry.image("o/staged:1"))?;
    assert_eq!(one.root.read("/o/f")?, "one\n");
    assert_eq!(staged.root.read("/x")?, "42\n");
    assert!(one.compare(&one, ("a", "b")).is_match());

    // What buildah's RUN leaves behind (/etc/hosts, /proc, ...) is not a
    // difference; what the Dockerfile did is.
    let added = base.compare(&one, ("base", "one")).differences;
    assert_eq!(added.len(), 3, "{added:#?}");
    assert!(
        added[0].starts_with("/o: only in one (dir 0755 0:0"),
        "{added:#?}"
    );
    assert!(
        added[1].starts_with("/o/f: only in one (file 4 bytes"),
        "{added:#?}"
    );
    assert!(added[2].starts_with("config Env: base ["), "{added:#?}");

    drop(two);
    let changed = compare_images(
        &registry.image("o/one:1"),
        &registry.image("o/two:1"),
        ("one", "two"),
    )?
    .differences;
    assert_eq!(
        changed,
        [
            "/o/f: mode: one 0640, two 0600",
            "config Env: one [\"A=1\",\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"], \
             two [\"A=2\",\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"]"
        ]
    );

    drop(buildah);
    let leaked: Vec<_> = mounts_under(std::path::Path::new("/"))?
        .into_iter()
        .filter(|mount| mount.starts_with(&dir))
        .collect();
    assert!(leaked.is_empty(), "mounts left behind: {leaked:?}");
    assert!(!dir.exists(), "{} was not removed", dir.display());
    Ok(())
}
