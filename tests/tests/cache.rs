//! The layer cache and the base-image cache, end to end: what reruns and
//! what does not, identical digests on a rebuild, offline builds from a
//! warmed cache, and concurrent builds sharing one kiln directory.

use anyhow::Result;
use kiln_e2e::{BaseImage, BuildContext, KilnOutput, Registry, run_kiln};
use std::path::Path;

const DOCKERFILE: &str = "FROM {base} AS tools
RUN echo tool > /tool
FROM {base}
ARG ONE=1
RUN echo one-$ONE > /one
COPY a.txt /a.txt
ARG THREE=3
RUN echo three-$THREE > /three && rm /one
COPY --from=tools /tool /tool
RUN cat /tool > /tool-copy
";

fn build(
    context: &BuildContext,
    kiln_dir: &Path,
    cache_dir: &Path,
    extra: &[&str],
) -> Result<KilnOutput> {
    let mut args: Vec<String> = vec![
        "build".into(),
        "--context".into(),
        context.path().display().to_string(),
        "--cache".into(),
        "--cache-dir".into(),
        cache_dir.display().to_string(),
        "--kaniko-dir".into(),
        kiln_dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = run_kiln(args, &[])?;
    out.ensure_success()?;
    Ok(out)
}

/// The commands that ran, in order.
fn ran(out: &KilnOutput) -> Vec<String> {
    out.all()
        .lines()
        .filter_map(|l| l.split_once("Running: ").map(|(_, cmd)| cmd.to_owned()))
        .collect()
}

fn cache_cases(cache_repo: Option<&str>) -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context = BuildContext::with_dockerfile(&DOCKERFILE.replace("{base}", &base))?;
    context.write("a.txt", "a\n")?;
    let dirs = tempfile::tempdir()?;
    let cache_dir = dirs.path().join("cache");
    let mut extra = vec!["--destination".to_owned(), registry.reference("app:1")];
    if let Some(repo) = cache_repo {
        extra.extend(["--cache-repo".into(), repo.into()]);
    }
    let run = |tag: &str, kiln: &str, more: &[&str]| -> Result<KilnOutput> {
        let mut args: Vec<&str> = extra.iter().map(String::as_str).collect();
        let dest = registry.reference(tag);
        args[1] = &dest;
        args.extend_from_slice(more);
        build(&context, &dirs.path().join(kiln), &cache_dir, &args)
    };

    let first = run("app:1", "k1", &[])?;
    assert_eq!(ran(&first).len(), 4, "{}", first.all());
    // A fresh kiln directory, so nothing comes from the local store.
    let second = run("app:2", "k2", &[])?;
    assert!(
        ran(&second).is_empty(),
        "an identical rebuild ran: {:?}",
        ran(&second)
    );
    assert_eq!(
        registry.image("app:1").digest()?,
        registry.image("app:2").digest()?
    );

    let arg = run("app:3", "k2", &["--build-arg", "THREE=x"])?;
    assert_eq!(
        ran(&arg).len(),
        2,
        "only the RUN that sees THREE and what follows: {:?}",
        ran(&arg)
    );
    assert!(ran(&arg)[0].contains("three-$THREE"));

    let a = context.path().join("a.txt");
    let now = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&a)?
        .set_modified(now)?;
    let touched = run("app:4", "k2", &[])?;
    assert!(
        ran(&touched).is_empty(),
        "an mtime-only change reran {:?}",
        ran(&touched)
    );

    context.write("a.txt", "changed\n")?;
    let changed = run("app:5", "k2", &[])?;
    assert_eq!(
        ran(&changed).len(),
        2,
        "the COPY's followers rerun: {:?}",
        ran(&changed)
    );
    assert!(
        changed
            .all()
            .contains("No cached layer found for cmd COPY a.txt /a.txt")
    );

    let tools = DOCKERFILE
        .replace("{base}", &base)
        .replace("echo tool > /tool", "echo tool2 > /tool");
    context.write("Dockerfile", &tools)?;
    let stage = run("app:6", "k2", &[])?;
    let cmds = ran(&stage);
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(
        cmds[0].contains("tool2") && cmds[1].contains("cat /tool"),
        "{cmds:?}"
    );

    let root = registry.image("app:6").flatten()?;
    assert!(
        !root.exists("/one"),
        "a file deleted in a cached step came back"
    );
    assert_eq!(root.read("/tool-copy")?, "tool2\n");
    assert_eq!(root.read("/a.txt")?, "changed\n");
    Ok(())
}

#[test]
fn registry_cache_reruns_only_what_changed() -> Result<()> {
    cache_cases(None)
}

#[test]
fn oci_layout_cache_reruns_only_what_changed() -> Result<()> {
    let layout = tempfile::tempdir()?;
    cache_cases(Some(&format!("oci:{}", layout.path().display())))
}

#[test]
fn warmed_base_images_build_offline() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let dirs = tempfile::tempdir()?;
    let cache_dir = dirs.path().join("cache");
    let context = BuildContext::with_dockerfile(&format!("FROM {base}\nRUN echo offline > /o\n"))?;
    let warm = run_kiln(
        [
            "warm",
            "--cache-dir",
            &cache_dir.display().to_string(),
            "--dockerfile",
            &context.path().join("Dockerfile").display().to_string(),
        ],
        &[],
    )?;
    warm.ensure_success()?;
    drop(registry);

    let layout = dirs.path().join("layers");
    let out_dir = dirs.path().join("out");
    let args = [
        "--no-push",
        "--cache-repo",
        &format!("oci:{}", layout.display()),
        "--oci-layout-path",
        &out_dir.display().to_string(),
    ];
    let first = build(&context, &dirs.path().join("k1"), &cache_dir, &args)?;
    assert_eq!(ran(&first).len(), 1);
    let second = build(&context, &dirs.path().join("k2"), &cache_dir, &args)?;
    assert!(ran(&second).is_empty(), "{}", second.all());
    let root = kiln_e2e::Image::layout(&out_dir, None).flatten()?;
    assert_eq!(root.read("/o")?, "offline\n");
    Ok(())
}

#[test]
fn concurrent_builds_share_one_kiln_directory() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let dirs = tempfile::tempdir()?;
    let kiln_dir = dirs.path().join("kiln");
    let cache_dir = dirs.path().join("cache");
    let contexts: Vec<BuildContext> = (0..4)
        .map(|i| {
            let c = BuildContext::with_dockerfile(&format!(
                "FROM {base}\nRUN echo shared > /shared\nCOPY f /f\nRUN cat /f > /g\n"
            ))?;
            c.write("f", &format!("{i}\n"))?;
            Ok(c)
        })
        .collect::<Result<_>>()?;
    let outs: Vec<Result<KilnOutput>> = std::thread::scope(|s| {
        let handles: Vec<_> = contexts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (kiln_dir, cache_dir, registry) = (&kiln_dir, &cache_dir, &registry);
                s.spawn(move || {
                    let dest = registry.reference(&format!("par:{i}"));
                    build(c, kiln_dir, cache_dir, &["--destination", &dest])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("build thread"))
            .collect()
    });
    for (i, out) in outs.into_iter().enumerate() {
        out?;
        let image = registry.image(&format!("par:{i}"));
        let root = image.flatten()?;
        assert_eq!(root.read("/g")?, format!("{i}\n"));
        assert_eq!(root.read("/shared")?, "shared\n");
    }
    Ok(())
}
