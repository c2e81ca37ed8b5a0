//! Builds the plugins workspace (`plugins/`) into WebAssembly components and
//! tells the crate where they are: `env!("KILN_PLUGINS_DIR")` holds
//! `dockerfile.wasm`, `context_dir.wasm`, `context_tar.wasm`, `template.wasm`,
//! `spin.wasm` and `hog.wasm`.

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
    match build_plugins() {
        Ok(dir) => {
            println!("cargo:rustc-env=KILN_PLUGINS_DIR={}", dir.display());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: building the kiln plugins failed: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the plugins and returns the directory of the `.wasm` files.
fn build_plugins() -> Result<PathBuf, String> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?);
    let root = manifest_dir
        .parent()
        .ok_or("the host crate has no parent directory")?
        .to_path_buf();
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
