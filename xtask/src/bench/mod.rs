//! `cargo xtask bench`: whole builds of a corpus of Dockerfiles by kiln,
//! buildah and BuildKit, cold and warm, each pushing to the same local
//! registry, alternating between the builders within each run; then a
//! report (`BENCHMARKS.md`) and a chart (`docs/bench-ratios.png`) of
//! kiln's time over the faster peer's. The `context` group times fetching
//! and unpacking a build context from each source (see `context.rs`).

mod base;
mod builders;
mod chart;
mod context;
mod corpus;
mod measure;
mod micro;
mod report;
mod services;
mod stats;

use anyhow::{Context, Result, bail};
use builders::{Bench, Builder, Inputs, Mode};
use context::Source;
use corpus::{Base, Case, Payload};
use report::{Floor, Micro, Record, Report};
use services::{Dockerd, Registry};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// Runs per case, builder and mode unless `--runs` says otherwise.
const DEFAULT_RUNS: usize = 3;

/// Where base images live in the registry.
const BUSYBOX_REPO: &str = "library/busybox:latest";
const DEBIAN_REPO: &str = "library/debian:bookworm";

const USAGE: &str =
    "usage: cargo xtask bench [--smoke] [--case NAME]... [--runs N] [--builders LIST] [--no-micro]

Builds every case of the corpus cold (empty caches) and warm (an identical
rebuild) with each builder, pushing to a local registry, and reports wall
time, CPU time and peak RSS (min and median) and kiln's ratio to the faster
peer. Installs what it needs with apt and builds kiln in release mode.

  --smoke          1 run of label-only, run-small and multi-stage, and of
                   the context group on 20 MiB from a tar file and HTTP,
                   with the debug build of kiln; writes target/bench-smoke.md
                   (and .png); fails if any build fails
  --case NAME      run only this case (repeatable): label-only, run-small,
                   multi-stage, copy-many, big-file, apt, many-layers, or
                   context: kiln fetching and unpacking a 200 MiB context
                   from a tar file, HTTP, S3, GCS, Azure Blob and git,
                   against curl | tar -xz (git clone) from the same server
  --runs N         runs of each case, builder and mode (default 3)
  --builders LIST  comma-separated: kiln,buildah,buildkit (default all)
  --no-micro       skip `cargo bench -p kiln --bench micro`

A run of the whole corpus and the context group by all three builders with
at least 3 runs writes BENCHMARKS.md and docs/bench-ratios.png; any other run
writes target/bench-partial.md (and .png). The exit code is non-zero if any
build or context run failed.";

/// What to run, from the command line.
#[derive(Debug)]
struct Options {
    smoke: bool,
    cases: Vec<&'static Case>,
    /// Whether the `context` group runs.
    context: bool,
    runs: usize,
    builders: Vec<Builder>,
    micro: bool,
}

impl Options {
    /// Whether this run is the whole benchmark, whose report is the
    /// repository's.
    fn is_complete(&self) -> bool {
        !self.smoke
            && self.cases.len() == corpus::CASES.len()
            && self.context
            && self.builders.len() == Builder::ALL.len()
            && self.runs >= DEFAULT_RUNS
    }
}

/// Parses the arguments after `bench`; `None` asks for the usage text.
fn parse_options(args: &[OsString]) -> Result<Option<Options>> {
    let mut smoke = false;
    let mut cases = Vec::new();
    let mut context = false;
    let mut runs = None;
    let mut builders = None;
    let mut micro = true;
    let mut args = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| args.next()) {
                Some(value) => Ok(value),
                None => bail!("{name} needs a value\n\n{USAGE}"),
            }
        };
        match flag.as_str() {
            "--help" | "-h" => return Ok(None),
            "--smoke" => smoke = true,
            "--no-micro" => micro = false,
            "--case" => {
                let name = value("--case")?;
                if name == CONTEXT_GROUP {
                    context = true;
                    continue;
                }
                match corpus::find(&name) {
                    Some(case) if !cases.iter().any(|c: &&Case| c.name == name) => cases.push(case),
                    Some(_) => {}
                    None => bail!(
                        "unknown case {name:?}; the cases are {}, and {CONTEXT_GROUP}",
                        corpus::CASES
                            .iter()
                            .map(|c| c.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
            "--runs" => {
                let text = value("--runs")?;
                match text.parse::<usize>() {
                    Ok(n) if n > 0 => runs = Some(n),
                    _ => bail!("--runs takes a positive number, not {text:?}"),
                }
            }
            "--builders" => {
                let mut list = Vec::new();
                for name in value("--builders")?.split(',').filter(|n| !n.is_empty()) {
                    match Builder::parse(name) {
                        Some(b) if !list.contains(&b) => list.push(b),
                        Some(_) => {}
                        None => bail!(
                            "unknown builder {name:?}; the builders are kiln, buildah, buildkit"
                        ),
                    }
                }
                if list.is_empty() {
                    bail!("--builders names no builder");
                }
                builders = Some(list);
            }
            _ => bail!("unknown argument {arg:?}\n\n{USAGE}"),
        }
    }
    if cases.is_empty() && !context {
        context = true;
        let all = if smoke {
            &corpus::CASES[..corpus::SMOKE_CASES]
        } else {
            corpus::CASES
        };
        cases = all.iter().collect();
    }
    let mut builders = builders.unwrap_or_else(|| Builder::ALL.to_vec());
    // Report order: kiln first, then the peers as listed.
    builders.sort_by_key(|b| *b != Builder::Kiln);
    Ok(Some(Options {
        smoke,
        cases,
        context,
        runs: runs.unwrap_or(if smoke { 1 } else { DEFAULT_RUNS }),
        builders,
        micro: micro && !smoke,
    }))
}

/// The `--case` name of the context group.
const CONTEXT_GROUP: &str = "context";

/// The context group's sources in this run.
fn context_sources(options: &Options) -> &'static [Source] {
    match (options.context, options.smoke) {
        (false, _) => &[],
        (true, true) => &Source::SMOKE,
        (true, false) => &Source::ALL,
    }
}

/// The Debian packages a run needs, with what each provides.
fn packages(options: &Options) -> Vec<(&'static str, &'static str)> {
    // The builders run only for the corpus.
    let builders: &[Builder] = if options.cases.is_empty() {
        &[]
    } else {
        &options.builders
    };
    let mut list = vec![
        (
            "pigz",
            "the compression floor of big-file, the context tarball",
        ),
        ("fonts-dejavu-core", "the chart's font"),
    ];
    if !options.cases.is_empty() {
        list.extend([
            ("docker-registry", "the registry every builder pushes to"),
            ("busybox-static", "the busybox base image"),
            ("umoci", "packaging the base images"),
            ("skopeo", "pushing the base images"),
            ("debootstrap", "the Debian base image"),
        ]);
    }
    let sources = context_sources(options);
    if !sources.is_empty() {
        list.push(("curl", "the peer of the context group"));
    }
    if sources.contains(&Source::Git) {
        list.push(("git", "the git server and peer of the context group"));
    }
    if sources.iter().any(|s| s.needs_test_tools()) {
        list.push(("python3-venv", "moto and fake-gcs-server (context group)"));
        list.push(("nodejs", "Azurite (context group)"));
    }
    if builders.contains(&Builder::Buildah) {
        list.push(("buildah", "the buildah peer"));
    }
    if builders.contains(&Builder::Buildkit) {
        list.push(("containerd", "the runtime of the BuildKit peer's dockerd"));
        list.push(("runc", "the OCI runtime of the BuildKit peer"));
    }
    list
}

/// `cargo xtask bench ARGS`.
pub fn run(args: &[OsString]) -> Result<ExitCode> {
    let Some(options) = parse_options(args)? else {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    };
    crate::ensure_packages(&packages(&options))?;
    crate::ensure_rust_target()?;
    let root = crate::workspace_root();
    let target = crate::target_dir(&root)?;
    let bench_dir = target.join("bench");
    let sources = context_sources(&options);
    let test_tools = if sources.iter().any(|s| s.needs_test_tools()) {
        let tools = crate::ensure_test_servers(&target)?;
        // The servers of kiln-e2e find their programs through this variable.
        // SAFETY: no other thread runs yet: nothing has been started.
        unsafe { std::env::set_var("KILN_TEST_TOOLS", &tools) };
        Some(tools)
    } else {
        None
    };

    // The smoke run checks that the harness works, not how fast kiln is:
    // it takes the debug build `cargo xtask test` already made, sparing CI
    // a release build of wasmtime.
    let (profile, build_args) = if options.smoke {
        ("debug", &["build", "-p", "kiln"][..])
    } else {
        ("release", &["build", "--release", "-p", "kiln"][..])
    };
    println!("xtask: building kiln ({profile})");
    crate::run_checked(crate::cargo(&root).args(build_args))?;
    let kiln = target.join(profile).join("kiln");
    if !kiln.is_file() {
        bail!(
            "`cargo {}` succeeded but {} is missing",
            build_args.join(" "),
            kiln.display()
        );
    }
    let docker_package =
        if options.builders.contains(&Builder::Buildkit) && !options.cases.is_empty() {
            Some(docker_package(&bench_dir)?)
        } else {
            None
        };

    // The clock starts once kiln is built: building depends on what the
    // shared target directory already holds, measuring does not.
    let started = Instant::now();
    let logs = bench_dir.join("logs");
    if logs.exists() {
        fs::remove_dir_all(&logs).with_context(|| format!("cannot remove {}", logs.display()))?;
    }
    fs::create_dir_all(&logs)?;
    let work = WorkDir::new(bench_dir.join("work"))?;
    let kiln_plugins = precompile_plugins(&kiln, &work.0)?;
    let (records, floors, mut versions) = if options.cases.is_empty() {
        (Vec::new(), Vec::new(), base_versions(&kiln))
    } else {
        let mut session = Session::start(
            &options,
            &work.0,
            &target,
            kiln_plugins.clone(),
            docker_package.as_deref(),
        )?;
        let (records, floors) = session.measure(&options, &kiln, &logs)?;
        (records, floors, session.versions(&kiln))
    };
    versions[0].1.push_str(&format!(" ({profile} build)"));
    let contexts = if sources.is_empty() {
        None
    } else {
        let results = context::run(&context::Plan {
            bytes: if options.smoke {
                context::SMOKE_BYTES
            } else {
                context::FULL_BYTES
            },
            sources,
            runs: options.runs,
            kiln: &kiln,
            plugins: &kiln_plugins,
            work: &work.0,
            logs: &logs,
            test_tools: test_tools.as_deref(),
        })?;
        println!("xtask: the context group took {:.0} s", results.elapsed);
        versions.extend(results.versions.iter().cloned());
        Some(results)
    };

    let micro = if !options.micro {
        Micro::Skipped(if options.smoke {
            "`--smoke` does not run them.".to_owned()
        } else {
            "`--no-micro` was given.".to_owned()
        })
    } else {
        run_micro(&root)
    };

    let (report_path, chart_path, chart_link) = if options.is_complete() {
        (
            root.join("BENCHMARKS.md"),
            root.join("docs/bench-ratios.png"),
            "docs/bench-ratios.png",
        )
    } else if options.smoke {
        (
            target.join("bench-smoke.md"),
            target.join("bench-smoke.png"),
            "bench-smoke.png",
        )
    } else {
        (
            target.join("bench-partial.md"),
            target.join("bench-partial.png"),
            "bench-partial.png",
        )
    };
    let case_names: Vec<&'static str> = options.cases.iter().map(|c| c.name).collect();
    let rows = report::ratio_rows(&records, &case_names, &options.builders, &floors);
    let title = if options.smoke {
        "kiln benchmarks (smoke)"
    } else {
        "kiln benchmarks"
    };
    let chart_drawn = !rows.is_empty();
    if chart_drawn {
        let canvas = chart::draw(
            &rows,
            "kiln's wall time ÷ the faster of buildah and BuildKit (lower is better)",
            &chart::load_font()?,
        )?;
        chart::write_png(&canvas, &chart_path)?;
    }
    let invocation = std::iter::once("cargo xtask bench".to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let kiln_program = format!("target/{profile}/kiln");
    let commands = command_listing(&options.builders, &kiln_program);
    let corpus: Vec<(&'static str, &'static str, String)> = options
        .cases
        .iter()
        .map(|case| {
            let base = match case.base {
                Base::Busybox => "$REGISTRY/library/busybox:latest",
                Base::Debian => "$REGISTRY/library/debian:bookworm",
            };
            (case.name, case.about, corpus::dockerfile(case, base))
        })
        .collect();
    let text = report::render(&Report {
        title,
        cases: &case_names,
        corpus: &corpus,
        builders: &options.builders,
        runs: options.runs,
        records: &records,
        floors: &floors,
        micro: &micro,
        machine: &machine(),
        versions: &versions,
        commands: &commands,
        chart: chart_drawn.then_some(chart_link),
        contexts: contexts.as_ref(),
        kiln_program: &kiln_program,
        invocation: &invocation,
        elapsed: started.elapsed().as_secs_f64(),
    });
    fs::write(&report_path, text)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    if chart_drawn {
        println!(
            "xtask: wrote {} and {}",
            report_path.display(),
            chart_path.display()
        );
    } else {
        println!("xtask: wrote {}", report_path.display());
    }

    let failed = records.iter().filter(|r| r.outcome.is_err()).count()
        + contexts.as_ref().map_or(0, context::Results::failures);
    if failed > 0 {
        eprintln!(
            "xtask: {failed} builds or context runs failed (see {} and the logs in {})",
            report_path.display(),
            logs.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The running services and prepared inputs of one benchmark run; dropping
/// it stops dockerd, then the registry.
struct Session {
    dockerd: Option<Dockerd>,
    registry: Registry,
    contexts: Vec<PathBuf>,
    kiln_plugins: PathBuf,
    work: PathBuf,
}

impl Session {
    fn start(
        options: &Options,
        work: &Path,
        target: &Path,
        kiln_plugins: PathBuf,
        docker_package: Option<&Path>,
    ) -> Result<Session> {
        println!("xtask: making the base images");
        let busybox = work.join("busybox-oci");
        base::busybox(work, &busybox)?;
        let debian = if options.cases.iter().any(|c| c.base == Base::Debian) {
            // The end-to-end tests keep the same layout in the same place.
            Some(base::debian(&target.join("tmp"))?)
        } else {
            None
        };
        let mut registry = Registry::start(&work.join("registry"))?;
        let busybox_ref = format!("{}/{BUSYBOX_REPO}", registry.addr());
        let debian_ref = format!("{}/{DEBIAN_REPO}", registry.addr());
        base::push(&busybox, &busybox_ref)?;
        if let Some(debian) = &debian {
            base::push(debian, &debian_ref)?;
        }
        registry.snapshot()?;

        println!("xtask: writing the build contexts");
        let mut contexts = Vec::new();
        for case in &options.cases {
            let dir = work.join("contexts").join(case.name);
            let base = match case.base {
                Base::Busybox => &busybox_ref,
                Base::Debian => &debian_ref,
            };
            corpus::write_context(case, base, &dir)?;
            contexts.push(dir);
        }
        let dockerd = match docker_package {
            Some(package) => {
                println!("xtask: starting dockerd (BuildKit)");
                Some(Dockerd::start(
                    package,
                    &work.join("dockerd"),
                    &registry.addr(),
                )?)
            }
            None => None,
        };
        Ok(Session {
            dockerd,
            registry,
            contexts,
            kiln_plugins,
            work: work.to_owned(),
        })
    }

    /// Every case, run and builder, cold then warm; plus the floors.
    fn measure(
        &mut self,
        options: &Options,
        kiln: &Path,
        logs: &Path,
    ) -> Result<(Vec<Record>, Vec<Floor>)> {
        let mut bench = Bench {
            kiln: kiln.to_owned(),
            kiln_plugins: self.kiln_plugins.clone(),
            work: self.work.join("state"),
            logs: logs.to_owned(),
            registry: &mut self.registry,
            dockerd: self.dockerd.as_ref(),
        };
        let mut records = Vec::new();
        let mut floors: Vec<Floor> = Vec::new();
        for run in 1..=options.runs {
            for (case, context) in options.cases.iter().zip(&self.contexts) {
                let mut order = options.builders.clone();
                // Alternate who goes first, so that no builder always
                // inherits the page cache and warm CPU of the same peer.
                let first = (run - 1) % order.len();
                order.rotate_left(first);
                for builder in order {
                    let results = bench.cold_and_warm(builder, case.name, context, run);
                    for (mode, outcome) in Mode::ALL.into_iter().zip(results) {
                        print_result(run, options.runs, case.name, builder, mode, &outcome);
                        records.push(Record {
                            case: case.name,
                            builder,
                            mode,
                            run,
                            outcome: outcome.map_err(|e| format!("{e:#}")),
                        });
                    }
                }
                if let Payload::BigFile(_) = case.payload {
                    let (command, seconds) = pigz_floor(context, logs)?;
                    println!(
                        "bench: run {run}/{} {} floor `{command}` {seconds:.2} s",
                        options.runs, case.name
                    );
                    match floors.iter_mut().find(|f| f.case == case.name) {
                        Some(floor) => floor.runs.push(seconds),
                        None => floors.push(Floor {
                            case: case.name,
                            command,
                            runs: vec![seconds],
                        }),
                    }
                }
            }
        }
        Ok((records, floors))
    }

    /// The versions of every tool involved.
    fn versions(&self, kiln: &Path) -> Vec<(String, String)> {
        let mut versions = base_versions(kiln);
        versions.push((
            "buildah".to_owned(),
            first_line(Command::new("buildah").arg("--version")),
        ));
        if let Some(dockerd) = &self.dockerd {
            versions.push((
                "dockerd (BuildKit)".to_owned(),
                dockerd
                    .version()
                    .unwrap_or_else(|e| format!("unknown ({e})")),
            ));
        }
        for (tool, args) in [
            ("docker-registry", &["--version"][..]),
            ("containerd", &["--version"]),
            ("runc", &["--version"]),
            ("pigz", &["--version"]),
        ] {
            versions.push((tool.to_owned(), first_line(Command::new(tool).args(args))));
        }
        versions
    }
}

/// kiln's and rustc's versions, which every report shows.
fn base_versions(kiln: &Path) -> Vec<(String, String)> {
    vec![
        (
            "kiln".to_owned(),
            first_line(Command::new(kiln).arg("--version")),
        ),
        (
            "rustc".to_owned(),
            first_line(Command::new("rustc").arg("--version")),
        ),
    ]
}

/// The first line a tool prints (on stdout, else stderr), or why not.
fn first_line(cmd: &mut Command) -> String {
    match cmd.output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(e) => format!("not available ({e})"),
    }
}

fn print_result(
    run: usize,
    runs: usize,
    case: &str,
    builder: Builder,
    mode: Mode,
    outcome: &Result<measure::Usage>,
) {
    match outcome {
        Ok(u) => println!(
            "bench: run {run}/{runs} {case} {} {}: {:.2} s wall, {:.2} s CPU, {} MiB peak RSS",
            builder.name(),
            mode.name(),
            u.wall,
            u.cpu,
            u.max_rss_kib / 1024
        ),
        Err(e) => println!(
            "bench: run {run}/{runs} {case} {} {}: FAILED: {}",
            builder.name(),
            mode.name(),
            format!("{e:#}").lines().next().unwrap_or("")
        ),
    }
}

/// Times `pigz -6` of big-file's file on every core, output discarded: no
/// builder can gzip that layer faster at level 6.
fn pigz_floor(context: &Path, logs: &Path) -> Result<(String, f64)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let command = format!("pigz -6 -p {cores} -c big.bin > /dev/null");
    let usage = measure::run(
        Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(context),
        &logs.join("big-file-pigz.log"),
    )?;
    Ok((command, usage.wall))
}

/// Runs kiln once to precompile its plugins, and returns the directory
/// they are in, to be copied into every new kiln directory.
fn precompile_plugins(kiln: &Path, work: &Path) -> Result<PathBuf> {
    let context = work.join("contexts/plugins");
    fs::create_dir_all(&context)?;
    // kiln compiles every plugin when it starts: the build can be empty.
    fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nLABEL purpose=precompile\n",
    )?;
    let kiln_dir = work.join("kiln-plugins");
    let docker_config = work.join("docker-config");
    fs::create_dir_all(&docker_config)?;
    measure::run(
        Command::new(kiln)
            .arg("build")
            .arg("--context")
            .arg(&context)
            .arg("--no-push")
            .arg("--kaniko-dir")
            .arg(&kiln_dir)
            .env("DOCKER_CONFIG", &docker_config),
        &work.join("kiln-plugins.log"),
    )
    .context("kiln could not build a one-line Dockerfile to precompile its plugins")?;
    let plugins = kiln_dir.join("plugins");
    if !plugins.is_dir() {
        bail!(
            "kiln built, but left no precompiled plugins in {}",
            plugins.display()
        );
    }
    Ok(plugins)
}

/// Debian's `docker.io` 20.10 and `tini` (docker-init) unpacked, not
/// installed, under `dir`: the machine's own docker CLI has no BuildKit.
fn docker_package(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("docker.io");
    if root.join("usr/sbin/dockerd").is_file() && root.join("usr/bin/docker-init").exists() {
        return Ok(root);
    }
    println!(
        "xtask: unpacking Debian's docker.io (BuildKit) under {}",
        root.display()
    );
    let debs = dir.join("debs");
    if debs.exists() {
        fs::remove_dir_all(&debs)?;
    }
    fs::create_dir_all(&debs)?;
    let download = || {
        Command::new("apt-get")
            .args([
                "download",
                "-q",
                "-o",
                "APT::Sandbox::User=root",
                "docker.io",
                "tini",
            ])
            .current_dir(&debs)
            .status()
    };
    if !download().is_ok_and(|s| s.success()) {
        // The package lists may be missing or stale.
        crate::run_checked(Command::new("apt-get").args(["update", "-q"]))?;
        if !download().context("cannot run apt-get")?.success() {
            bail!(
                "`apt-get download docker.io tini` failed in {}",
                debs.display()
            );
        }
    }
    let unpacking = dir.join("docker.io.partial");
    if unpacking.exists() {
        fs::remove_dir_all(&unpacking)?;
    }
    for entry in fs::read_dir(&debs)? {
        let deb = entry?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            crate::run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacking))?;
        }
    }
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::rename(&unpacking, &root)?;
    fs::remove_dir_all(&debs)?;
    Ok(root)
}

/// Each builder's command lines with placeholders, for the report.
fn command_listing(builders: &[Builder], kiln: &str) -> Vec<(Builder, Vec<String>)> {
    let inputs = Inputs {
        case: "$CASE",
        context: "$CTX",
        registry: "$REGISTRY",
        state: "$STATE",
    };
    builders
        .iter()
        .map(|&builder| {
            let program = match builder {
                Builder::Kiln => kiln,
                Builder::Buildah => "buildah",
                Builder::Buildkit => "docker",
            };
            let mut lines = Vec::new();
            match builder {
                Builder::Kiln => lines.push(
                    "# $STATE/kiln starts with only the precompiled plugins; $STATE/cache starts empty".to_owned(),
                ),
                Builder::Buildah => lines.push(
                    "# env CONTAINERS_STORAGE_CONF=$STATE/storage.conf (overlay, graphroot $STATE/root); $STATE starts empty"
                        .to_owned(),
                ),
                Builder::Buildkit => {
                    lines.push("# docker.io 20.10's own CLI and daemon, unpacked from the Debian package:".to_owned());
                    lines.push(
                        "# dockerd --config-file daemon.json --data-root D --exec-root E -H unix://S \
                         --iptables=false --ip-forward=false --ip-masq=false --bridge=none"
                            .to_owned(),
                    );
                    lines.push(
                        "# daemon.json: {\"features\":{\"buildkit\":true},\"insecure-registries\":[\"$REGISTRY\"],\"storage-driver\":\"overlay2\"}"
                            .to_owned(),
                    );
                    lines.push("# env DOCKER_HOST=unix://S DOCKER_BUILDKIT=1 BUILDKIT_PROGRESS=plain".to_owned());
                    lines.push("# before each cold build: docker system prune -af; docker builder prune -af".to_owned());
                }
            }
            lines.extend(
                builders::command_lines(builder, program, &inputs)
                    .into_iter()
                    .map(|argv| argv.join(" ")),
            );
            (builder, lines)
        })
        .collect()
}

/// The micro-benchmarks' results, or why there are none.
fn run_micro(root: &Path) -> Micro {
    let metadata = crate::cargo(root)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .ok()
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok());
    match metadata {
        Some(metadata) if micro::target_exists(&metadata) => {
            println!("xtask: running the micro-benchmarks");
            match micro::run(&mut crate::cargo(root), root, false) {
                Ok(results) => Micro::Ran(results),
                Err(e) => Micro::Skipped(format!("they failed: {e:#}")),
            }
        }
        Some(_) => Micro::Skipped(format!(
            "the kiln crate has no bench target `{}` yet (`cargo bench -p kiln --bench {}`).",
            micro::BENCH_TARGET,
            micro::BENCH_TARGET
        )),
        None => Micro::Skipped("`cargo metadata` failed.".to_owned()),
    }
}

/// The machine: CPU, memory, kernel and OS.
fn machine() -> Vec<String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (model, cpus) = cpu_model(&cpuinfo);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let disk = first_line(Command::new("sh").args(["-c", "df -hT . | tail -1 | awk '{print $2}'"]));
    vec![
        format!("CPU: {model}, {cpus} logical CPUs"),
        format!(
            "Memory: {}",
            mem_total(&meminfo).unwrap_or_else(|| "unknown".to_owned())
        ),
        format!("Kernel: Linux {}", kernel.trim()),
        format!("OS: {os}"),
        format!("Filesystem of the work directory: {disk}"),
    ]
}

/// The CPU model and the number of logical CPUs in `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> (String, usize) {
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = cpuinfo
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(key, _)| key.trim() == "processor")
        })
        .count();
    (model, cpus)
}

/// `MemTotal` of `/proc/meminfo` in GiB.
fn mem_total(meminfo: &str) -> Option<String> {
    let kib: u64 = meminfo.lines().find_map(|l| {
        l.strip_prefix("MemTotal:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })?;
    Some(format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
}

/// The work directory, emptied at the start and removed (after unmounting
/// anything left below it) at the end, even when the run fails.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(path: PathBuf) -> Result<WorkDir> {
        // A run that was killed may have left its directory behind.
        if path.exists() {
            services::unmount_under(&path);
            fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        services::unmount_under(&self.0);
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("xtask: cannot remove {}: {e}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse_options(&args)
    }

    #[test]
    fn defaults_run_everything_three_times() {
        let options = parse(&[]).unwrap().unwrap();
        assert_eq!(options.cases.len(), corpus::CASES.len());
        assert!(options.context);
        assert_eq!(context_sources(&options), Source::ALL);
        assert_eq!(options.runs, 3);
        assert_eq!(options.builders, Builder::ALL.to_vec());
        assert!(options.micro && options.is_complete());
    }

    #[test]
    fn smoke_runs_the_small_cases_once() {
        let options = parse(&["--smoke"]).unwrap().unwrap();
        let names: Vec<_> = options.cases.iter().map(|c| c.name).collect();
        assert_eq!(names, ["label-only", "run-small", "multi-stage"]);
        assert_eq!(context_sources(&options), Source::SMOKE);
        assert_eq!(options.runs, 1);
        assert!(!options.micro && !options.is_complete());
    }

    #[test]
    fn cases_runs_and_builders_are_chosen() {
        let options = parse(&[
            "--case",
            "apt",
            "--case=big-file",
            "--runs",
            "5",
            "--builders",
            "buildkit,kiln",
        ])
        .unwrap()
        .unwrap();
        let names: Vec<_> = options.cases.iter().map(|c| c.name).collect();
        assert_eq!(names, ["apt", "big-file"]);
        assert_eq!(options.runs, 5);
        assert_eq!(options.builders, [Builder::Kiln, Builder::Buildkit]);
        assert!(!options.context && !options.is_complete());
        let only_contexts = parse(&["--case", "context"]).unwrap().unwrap();
        assert!(only_contexts.cases.is_empty() && only_contexts.context);
        let names: Vec<_> = packages(&only_contexts).iter().map(|p| p.0).collect();
        assert!(
            names.contains(&"git") && names.contains(&"nodejs"),
            "{names:?}"
        );
        assert!(!names.contains(&"docker-registry"), "{names:?}");
        assert!(parse(&["--help"]).unwrap().is_none());
        for bad in [
            &["--case", "nope"][..],
            &["--runs", "0"],
            &["--builders", "docker"],
            &["--runs"],
            &["--fast"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn machine_facts_are_read_from_proc() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(cpuinfo), ("AMD EPYC 7B13".to_owned(), 2));
        assert_eq!(
            mem_total("MemTotal:       25165824 kB\n").as_deref(),
            Some("24.0 GiB")
        );
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }
}
