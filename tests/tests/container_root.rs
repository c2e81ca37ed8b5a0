//! Issue 5's container-root mode, end to end: the statically linked kiln
//! builds in a throwaway root directory without CAP_SYS_ADMIN (see
//! `kiln_e2e::container_root`), as kaniko does in an unprivileged pod. The
//! Dockerfile cases must give the same images as buildah: the filesystem
//! (`fs-*`) cases under every `--snapshot-mode`, the others under the
//! default one (naming modes in `KILN_SNAPSHOT_MODES` runs every case in
//! them); `--use-new-run`, `--single-snapshot`, `--force`,
//! `--ignore-path` and `--cleanup` do what kaniko's do; stages are wiped
//! between; and outside a container kiln refuses to touch its root.
//!
//! `KILN_CASES=a,b` runs only those cases, and `KILN_SNAPSHOT_MODES=full,time`
//! only those modes, in `container_root_cases_match_buildah`.

use anyhow::{Context, Result, bail, ensure};
use kiln_e2e::container_root::{
    CAP_SYS_ADMIN_BIT, ContainerRoot, KILN, Seen, effective_capabilities,
};
use kiln_e2e::{
    BaseImage, BuildContext, BuildSpec, Buildah, Case, CaseOutcome, CasePlan, CaseServices, Image,
    ImageView, Registry, case_problems, kiln_error_lines, report_outcomes, run_cases, select_cases,
};
use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// kaniko's snapshot modes, each of which must give the same images.
const SNAPSHOT_MODES: [&str; 3] = ["full", "redo", "time"];

/// Cases that use what container-root mode cannot do, and the Dockerfile
/// flag that needs it: it runs RUN directly on its own root, where it can
/// neither mount (`RUN --mount`) nor make a network namespace
/// (`--network=none`).
const UNSUPPORTED: [(&str, &str); 3] = [
    ("run-mount-bind", "--mount"),
    ("run-mount-cache-tmpfs", "--mount"),
    ("run-network-none", "--network=none"),
];

/// Cases whose `oracle_divergences` and `expected.json` describe what a
/// layered build does to a hard-link pair that a later step writes through
/// one name of: overlayfs copies that name up alone, so the pair splits.
/// Container-root mode runs RUN on its root as buildah does, the write
/// reaches the shared inode, and buildah's image is the one to match in
/// full.
const SHARED_INODE_CASES: [&str; 1] = ["fs-hardlink-split"];

/// Representative cases for `--use-new-run` and `--single-snapshot`.
const FLAG_CASES: [&str; 3] = [
    "fs-create-modify-delete",
    "fs-opaque-recreate",
    "fs-hardlink-lower",
];

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases")
}

fn cache_dir() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// The runner itself: inside the root, CAP_SYS_ADMIN is gone, mounts and
/// namespaces are refused, the context is at /workspace, `container` is set
/// only when asked, and the static kiln runs.
#[test]
fn runner_drops_cap_sys_admin() -> Result<()> {
    let root = ContainerRoot::new()?;
    let busybox = "/kiln/busybox";
    root.install(Path::new("/bin/busybox"), busybox)?;
    let context = BuildContext::new()?;
    context.write("marker", "from the context\n")?;
    let run = |seen: Seen, argv: &[&str]| -> Result<String> {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let out = root.run(context.path(), seen, &argv)?;
        out.ensure_success()
            .with_context(|| format!("{argv:?} failed in the root"))?;
        Ok(out.stdout)
    };

    let status = run(Seen::AsContainer, &[busybox, "cat", "/proc/self/status"])?;
    let effective = effective_capabilities(&status)?;
    assert_eq!(
        effective & (1 << CAP_SYS_ADMIN_BIT),
        0,
        "CAP_SYS_ADMIN is still effective in the root:\n{status}"
    );
    assert_ne!(
        effective, 0,
        "the root's process should keep root's other capabilities"
    );
    assert_eq!(
        run(Seen::AsContainer, &[busybox, "cat", "/workspace/marker"])?,
        "from the context\n"
    );
    for refused in [
        &[busybox, "mount", "-t", "tmpfs", "none", "/workspace"][..],
        &[busybox, "unshare", "-m", "true"][..],
        &[busybox, "unshare", "-U", "true"][..],
    ] {
        let argv: Vec<OsString> = refused.iter().map(OsString::from).collect();
        let out = root.run(context.path(), Seen::AsContainer, &argv)?;
        assert!(
            !out.status.success(),
            "{refused:?} should be refused in the root:\n{}",
            out.all()
        );
    }
    let env_of = |seen| -> Result<Vec<String>> {
        Ok(run(seen, &[busybox, "env"])?
            .lines()
            .map(str::to_owned)
            .collect())
    };
    assert!(env_of(Seen::AsContainer)?.contains(&"container=kiln-test".to_owned()));
    assert!(
        !env_of(Seen::AsHost)?
            .iter()
            .any(|var| var.starts_with("container=")),
        "as a host, the root must not say container"
    );
    let cgroups = run(Seen::AsHost, &[busybox, "cat", "/proc/1/cgroup"])?;
    assert!(
        cgroups.lines().all(|line| line.ends_with(":/")),
        "the cgroup namespace should hide the host's cgroup paths:\n{cgroups}"
    );
    let version = run(Seen::AsContainer, &[KILN, "--version"])?;
    assert!(version.starts_with("kiln "), "{version}");

    let path = root.path().to_owned();
    drop(root);
    assert!(!path.exists(), "{} was not removed", path.display());

    // A shared kiln directory and the host's name resolution files.
    let shared = tempfile::tempdir()?;
    let root = ContainerRoot::new()?
        .with_network_files()?
        .with_kiln_dir(shared.path())?;
    root.install(Path::new("/bin/busybox"), "/busybox")?;
    let run = |argv: &[&str]| -> Result<String> {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let out = root.run(context.path(), Seen::AsContainer, &argv)?;
        out.ensure_success()
            .with_context(|| format!("{argv:?} failed in the root"))?;
        Ok(out.stdout)
    };
    assert_eq!(
        run(&["/busybox", "cat", "/etc/resolv.conf"])?,
        fs::read_to_string("/etc/resolv.conf")?
    );
    let mounts = run(&["/busybox", "cat", "/proc/self/mountinfo"])?;
    assert!(
        mounts
            .lines()
            .any(|line| line.split(' ').nth(4) == Some("/kiln")),
        "the shared kiln directory is not mounted at /kiln:\n{mounts}"
    );
    assert!(run(&[KILN, "--version"])?.starts_with("kiln "));
    assert!(shared.path().join("kiln").is_file());
    Ok(())
}

/// Issue 5, "Done when" 3: the cases pass in container-root mode under each
/// `--snapshot-mode`. Buildah builds each case once; kiln builds it in a
/// fresh root per mode. Every mismatch of every mode is reported at the end.
#[test]
fn container_root_cases_match_buildah() -> Result<()> {
    let all = Case::load_all(&cases_dir())?;
    let supported = supported_cases(&all)?;
    let selected = select_cases(&supported, env::var("KILN_CASES").ok().as_deref())?;
    let modes = selected_modes(env::var("KILN_SNAPSHOT_MODES").ok().as_deref())?;
    let plan = CasePlan::new(&selected)?;
    let services = CaseServices::start(&plan, &cases_dir(), cache_dir())?;

    let started = Instant::now();
    let run = run_cases(plan.phases, |case, worker| {
        let oracle = case.oracle.then(|| services.oracle(case, &worker.buildah));
        // The snapshot modes differ in how they tell what changed, which the
        // filesystem cases exercise; every other case runs in the default.
        let case_modes: &[&str] =
            if case.name.starts_with("fs-") || modes.len() < SNAPSHOT_MODES.len() {
                &modes
            } else {
                &modes[..1]
            };
        case_modes
            .iter()
            .map(|mode| {
                let started = Instant::now();
                let side = format!("cr-{mode}");
                let flags = ["--snapshot-mode", mode];
                let root = ContainerRoot::new()
                    .and_then(|root| root.with_network_files())
                    .and_then(|root| root.with_kiln_dir(worker.kaniko_dir.path()));
                let kiln = root.and_then(|root| {
                    build_in_container_root(&root, case, &services, &side, &flags)
                });
                let outcome = CaseOutcome {
                    name: case.name.clone(),
                    problems: case_problems(case, &kiln, oracle.as_ref()),
                    seconds: started.elapsed().as_secs_f64(),
                };
                println!("[{mode}] {}", outcome.summary());
                (*mode, outcome)
            })
            .collect::<Vec<_>>()
    })?;

    let elapsed = started.elapsed();
    let mut by_mode: BTreeMap<&str, Vec<CaseOutcome>> = BTreeMap::new();
    for (mode, outcome) in run.results.into_iter().flatten() {
        by_mode.entry(mode).or_default().push(outcome);
    }
    let mut failures = Vec::new();
    for mode in &modes {
        let mut outcomes = by_mode.remove(mode).unwrap_or_default();
        let what = format!("cases in container-root mode with --snapshot-mode={mode}");
        let failed = report_outcomes(&mut outcomes, &what, elapsed);
        if !failed.is_empty() {
            failures.push(format!(
                "--snapshot-mode={mode}: {} of {} fail: {}",
                failed.len(),
                outcomes.len(),
                failed.join(", ")
            ));
        }
    }
    assert!(
        run.leaks.is_empty(),
        "buildah left mounts behind: {:?}",
        run.leaks
    );
    if !failures.is_empty() {
        bail!("(details above)\n{}", failures.join("\n"));
    }
    Ok(())
}

/// `--use-new-run` and `--single-snapshot` give the same filesystem as
/// buildah, and `--single-snapshot` adds exactly one layer to the base's.
#[test]
fn new_run_and_single_snapshot_match_buildah() -> Result<()> {
    let cases = FLAG_CASES
        .iter()
        .map(|name| Case::load(&cases_dir().join(name)))
        .collect::<Result<Vec<_>>>()?;
    let plan = CasePlan::new(&cases)?;
    let services = CaseServices::start(&plan, &cases_dir(), cache_dir())?;
    let base_layers = services.base_image().layer_count()?;
    let buildah = Buildah::new()?;

    let mut problems = Vec::new();
    for case in &cases {
        let oracle = Some(services.oracle(case, &buildah));
        for (side, flag) in [
            ("new-run", "--use-new-run"),
            ("single", "--single-snapshot"),
        ] {
            let kiln = ContainerRoot::new()
                .and_then(|root| build_in_container_root(&root, case, &services, side, &[flag]));
            for problem in case_problems(case, &kiln, oracle.as_ref()) {
                problems.push(format!("{} with {flag}: {problem}", case.name));
            }
            if kiln.is_ok() && flag == "--single-snapshot" {
                let image = services
                    .registry
                    .image(&format!("cases/{}:{side}", case.name));
                let layers = image.layer_count()?;
                if layers != base_layers + 1 {
                    problems.push(format!(
                        "{} with {flag}: {layers} layers, not the base's {base_layers} plus one",
                        case.name
                    ));
                }
            }
        }
    }
    assert!(buildah.mounts()?.is_empty(), "buildah left mounts behind");
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// Outside a container, kiln must not build on its root: exit 1 with a
/// message naming `--force`, and the root untouched. `--force` builds.
#[test]
fn refused_outside_a_container_unless_forced() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context =
        BuildContext::with_dockerfile(&format!("FROM {base}\nRUN echo built > /built\n"))?;
    let spec = BuildSpec::new(context.path());
    let root = ContainerRoot::new()?;

    let refused = root.build(&spec, &registry, "refused:latest", &[], Seen::AsHost)?;
    assert_eq!(
        refused.code(),
        Some(1),
        "a build outside a container should exit 1:\n{}",
        refused.all()
    );
    assert!(
        refused.stderr.contains("--force"),
        "the refusal should say that --force overrides it:\n{}",
        refused.stderr
    );
    assert_eq!(
        root.foreign_paths()?,
        Vec::<String>::new(),
        "a refused build must leave the root as it was"
    );

    root.build(
        &spec,
        &registry,
        "forced:latest",
        &["--force"],
        Seen::AsHost,
    )?
    .ensure_success()?;
    let image = registry.image("forced:latest").flatten()?;
    assert_eq!(image.read("/built")?, "built\n");
    Ok(())
}

/// A later stage starts from a wiped root (nothing of the earlier stage is
/// left but what `COPY --from` takes), the kiln directory survives the wipe,
/// and what RUN writes under an `--ignore-path` stays out of the layers.
#[test]
fn stages_are_wiped_and_ignored_paths_left_out() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context = BuildContext::with_dockerfile(&format!(
        "FROM {base}\n\
         RUN mkdir /stage1 && echo one > /stage1/file && echo leak > /etc/stage1-marker\n\
         FROM {base}\n\
         RUN for p in /stage1 /etc/stage1-marker; do test ! -e $p || echo $p; done > /leaked \
             && mkdir -p /ignored/sub && echo hidden > /ignored/sub/file && echo kept > /kept\n\
         COPY --from=0 /stage1/file /copied\n"
    ))?;
    let root = ContainerRoot::new()?;
    root.build(
        &BuildSpec::new(context.path()),
        &registry,
        "staged:latest",
        &["--ignore-path", "/ignored"],
        Seen::AsContainer,
    )?
    .ensure_success()?;
    assert!(
        root.host_path(KILN).is_file(),
        "the kiln binary in the kiln directory did not survive the build"
    );
    // Without --cleanup the last stage stays on the root, as in kaniko.
    assert_eq!(fs::read_to_string(root.host_path("/kept"))?, "kept\n");

    let image = registry.image("staged:latest");
    let flattened = image.flatten()?;
    assert_eq!(
        flattened.read("/leaked")?,
        "",
        "the second stage saw the first stage's files"
    );
    assert_eq!(flattened.read("/copied")?, "one\n");
    assert_eq!(flattened.read("/kept")?, "kept\n");
    for gone in ["/stage1", "/etc/stage1-marker", "/ignored/sub/file"] {
        assert!(!flattened.exists(gone), "{gone} should not be in the image");
    }
    let base_layers = Image::remote(base.clone(), None).layer_count()?;
    let layers = image.layer_count()?;
    ensure!(layers > base_layers, "the build added no layer");
    for index in base_layers..layers {
        for entry in image.layer_entries(index)? {
            let top = entry.path.split('/').next().unwrap_or_default();
            assert!(
                !["ignored", "kiln", "workspace", "proc", "dev"].contains(&top),
                "layer {index} holds {} ({:?}), which is ignored or the runtime's",
                entry.path,
                entry.kind
            );
        }
    }
    Ok(())
}

/// With `--cleanup` the root is left as the container started it: only
/// the kiln directory (with its contents) and the runtime's directories,
/// plus, while `/var/run` is protected (`--ignore-var-run`, the default),
/// at most the empty `/var` above it, which kaniko keeps too.
#[test]
fn cleanup_leaves_only_the_kiln_dir() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context = BuildContext::with_dockerfile(&format!(
        "FROM {base}\nRUN mkdir -p /made/deep /var/lib/x && echo x > /made/deep/f \
         && echo y > /etc/extra && echo z > /var/lib/x/z\n"
    ))?;
    let spec = BuildSpec::new(context.path());

    // Without --cleanup the image stays on the root: what --cleanup removes.
    let kept = ContainerRoot::new()?;
    kept.build(&spec, &registry, "kept:latest", &[], Seen::AsContainer)?
        .ensure_success()?;
    assert!(kept.host_path("/made/deep/f").is_file());
    assert!(kept.host_path("/bin/busybox").is_file());

    for (flags, allowed) in [
        (&["--cleanup"][..], &["/var"][..]),
        (&["--cleanup", "--ignore-var-run=false"][..], &[][..]),
    ] {
        let cleaned = ContainerRoot::new()?;
        cleaned
            .build(&spec, &registry, "cleaned:latest", flags, Seen::AsContainer)?
            .ensure_success()?;
        let left = cleaned.foreign_paths()?;
        assert!(
            left.iter().all(|path| allowed.contains(&path.as_str())),
            "kiln build {flags:?} left these behind: {left:?}"
        );
        assert!(
            cleaned.host_path(KILN).is_file(),
            "kiln build {flags:?} removed the kiln binary from the kiln directory"
        );
        for dir in ["/dev", "/proc", "/workspace"] {
            let inside: Vec<_> = fs::read_dir(cleaned.host_path(dir))?.collect();
            assert!(inside.is_empty(), "{dir} is not empty after {flags:?}");
        }
        let image = registry.image("cleaned:latest").flatten()?;
        assert_eq!(image.read("/made/deep/f")?, "x\n");
    }
    Ok(())
}

/// Every case except the unsupported ones, which must exist and use what
/// makes them so; a case that uses an unsupported feature without being
/// listed fails the test rather than the build.
fn supported_cases(all: &[Case]) -> Result<Vec<Case>> {
    for (name, flag) in UNSUPPORTED {
        let case = all
            .iter()
            .find(|case| case.name == name)
            .with_context(|| format!("unsupported case {name} does not exist"))?;
        ensure!(
            dockerfile_uses(case, flag)?,
            "case {name} does not use {flag}: it may run in container-root mode"
        );
    }
    let mut supported = Vec::new();
    for case in all {
        if UNSUPPORTED.iter().any(|(name, _)| *name == case.name) {
            continue;
        }
        for (_, flag) in UNSUPPORTED {
            ensure!(
                !dockerfile_uses(case, flag)?,
                "case {} uses {flag}, which container-root mode cannot do: list it in UNSUPPORTED",
                case.name
            );
        }
        let mut case = case.clone();
        if SHARED_INODE_CASES.contains(&case.name.as_str()) {
            case.oracle_divergences.clear();
            case.expected = None;
        }
        supported.push(case);
    }
    let shared_inode: BTreeSet<&str> = SHARED_INODE_CASES.into_iter().collect();
    let found: BTreeSet<&str> = supported
        .iter()
        .map(|case| case.name.as_str())
        .filter(|name| shared_inode.contains(name))
        .collect();
    ensure!(
        found == shared_inode,
        "a SHARED_INODE_CASES case is missing"
    );
    Ok(supported)
}

/// Whether a non-comment line of the case's Dockerfile has `flag`.
fn dockerfile_uses(case: &Case, flag: &str) -> Result<bool> {
    let path = case.dir.join("Dockerfile");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .any(|line| line.contains(flag)))
}

/// The modes named in `filter` (comma-separated); all without one.
fn selected_modes(filter: Option<&str>) -> Result<Vec<&'static str>> {
    let Some(filter) = filter.filter(|f| !f.trim().is_empty()) else {
        return Ok(SNAPSHOT_MODES.to_vec());
    };
    filter
        .split(',')
        .map(|name| {
            SNAPSHOT_MODES
                .into_iter()
                .find(|mode| *mode == name.trim())
                .with_context(|| {
                    format!("KILN_SNAPSHOT_MODES names {name:?}, not one of {SNAPSHOT_MODES:?}")
                })
        })
        .collect()
}

/// Builds `case` in `root` with `flags`, pushes it as `cases/NAME:SIDE` and
/// reads it back.
fn build_in_container_root(
    root: &ContainerRoot,
    case: &Case,
    services: &CaseServices,
    side: &str,
    flags: &[&str],
) -> Result<ImageView> {
    let context = case.context(&services.substitutions(case, side))?;
    let repo_tag = format!("cases/{}:{side}", case.name);
    let out = root.build(
        &case.spec(&context),
        &services.registry,
        &repo_tag,
        flags,
        Seen::AsContainer,
    )?;
    if !out.status.success() {
        bail!("{}\n{}", out.status, kiln_error_lines(&out.stderr));
    }
    ImageView::read(&services.registry.image(&repo_tag)).context("cannot read kiln's image")
}
