//! Builds the plugins workspace (`plugins/`) into WebAssembly components and
//! tells the crate where they are: `env!("KILN_PLUGINS_DIR")` holds
//! `dockerfile.wasm`, the context sources (`context_dir.wasm`,
//! `context_tar.wasm`, `context_remote.wasm`, `context_git.wasm`),
//! `template.wasm`, and the test plugins `spin.wasm`, `hog.wasm` and
//! `sneaky.wasm`. Also sets `KILN_WIT_PACKAGE` (the package
//! `wit/plugin.wit` declares, `kiln:plugin@X.Y.Z`) and `KILN_GIT_COMMIT`
//! (the commit built, or `unknown` outside a git checkout) for `kiln --version`.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The target the plugins are built for.
const TARGET: &str = "wasm32-wasip2";

/// Variables that tune the host build and would break or slow a wasm build:
/// host-only codegen flags, wrappers such as clippy-driver, a forced target.
const INHERITED_ENV: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
];

fn main() -> ExitCode {
    let built = build_plugins()
        .map_err(|m| format!("building the kiln plugins failed: {m}"))
        .and_then(|dir| Ok((dir, wit_package()?)));
    match built {
        Ok((dir, wit)) => {
            println!("cargo:rustc-env=KILN_PLUGINS_DIR={}", dir.display());
            println!("cargo:rustc-env=KILN_WIT_PACKAGE={wit}");
            println!("cargo:rustc-env=KILN_GIT_COMMIT={}", git_commit());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The package `wit/plugin.wit` declares (`package kiln:plugin@0.1.0;`).
fn wit_package() -> Result<String, String> {
    let path = workspace_root()?.join("wit/plugin.wit");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .and_then(|p| p.trim().strip_suffix(';'))
        .map(str::to_owned)
        .ok_or_else(|| format!("{} declares no `package NAME@VERSION;`", path.display()))
}

/// The commit being built, abbreviated; `unknown` when git or the
/// repository is not there (a source tarball).
fn git_commit() -> String {
    if let Ok(root) = workspace_root() {
        // Rebuild the version string when HEAD or the branch it names moves.
        let git_dir = root.join(".git");
        let head = std::fs::read_to_string(git_dir.join("HEAD")).unwrap_or_default();
        let branch = head.trim().strip_prefix("ref: ").map(str::to_owned);
        for file in ["HEAD", "packed-refs"]
            .into_iter()
            .map(str::to_owned)
            .chain(branch)
        {
            let path = git_dir.join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The workspace root, the host crate's parent directory.
fn workspace_root() -> Result<PathBuf, String> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?);
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "the host crate has no parent directory".to_owned())
}

/// Builds the plugins and returns the directory of the `.wasm` files.
fn build_plugins() -> Result<PathBuf, String> {
    let root = workspace_root()?;
    let plugins = root.join("plugins");

    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    watch_sources(&plugins)?;

    check_target_installed()?;

    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        // Relative target dirs are taken from the workspace root, where
        // cargo is normally run.
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
    .join("plugins");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for name in INHERITED_ENV {
        command.env_remove(name);
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release --target {TARGET} --manifest-path plugins/Cargo.toml` {status}; \
             its errors are above"
        ));
    }
    Ok(target_dir.join(TARGET).join("release"))
}

/// Fails with the fix when the toolchain lacks the wasm target.
fn check_target_installed() -> Result<(), String> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&rustc).display()))?;
    let sysroot = String::from_utf8_lossy(&output.stdout);
    let target_lib = Path::new(sysroot.trim()).join("lib/rustlib").join(TARGET);
    if output.status.success() && target_lib.is_dir() {
        Ok(())
    } else {
        Err(format!(
            "the {TARGET} target is not installed; run: rustup target add {TARGET}"
        ))
    }
}

/// Asks cargo to rerun this script when a plugin's sources change.
fn watch_sources(dir: &Path) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let file_type = entry
            .file_type()
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        if file_type.is_dir() {
            if name != "target" {
                watch_sources(&path)?;
            }
        } else if name == "Cargo.toml"
            || name == "Cargo.lock"
            || path.extension().is_some_and(|ext| ext == "rs")
        {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Ok(())
}
