//! Running the real `kiln` binary.

use crate::buildah::BuildSpec;
use crate::command;
use crate::registry::Registry;
use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::env;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use tempfile::TempDir;

/// What one run of kiln did.
#[derive(Debug)]
pub struct KilnOutput {
    /// How kiln exited.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error, where kiln logs.
    pub stderr: String,
}

impl KilnOutput {
    /// The exit code (`None` if kiln was killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Fails with kiln's whole log unless kiln exited 0.
    pub fn ensure_success(&self) -> Result<()> {
        if !self.status.success() {
            bail!(
                "kiln failed ({}):\n{}{}",
                self.status,
                self.stdout,
                self.stderr
            );
        }
        Ok(())
    }

    /// Fails with kiln's whole log unless kiln exited non-zero.
    pub fn ensure_failure(&self) -> Result<()> {
        if self.status.success() {
            bail!(
                "kiln succeeded but should have failed:\n{}{}",
                self.stdout,
                self.stderr
            );
        }
        Ok(())
    }

    /// Both output streams, for searching messages.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `kiln` with `args` and extra environment `envs`.
///
/// Each build gets its own `--kaniko-dir` unless `args` names one, and an empty
/// `DOCKER_CONFIG` unless `envs` sets one, so runs never share state or pick
/// up the machine's credentials.
pub fn run_kiln<I, S>(args: I, envs: &[(&str, &OsStr)]) -> Result<KilnOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|arg| arg.as_ref().to_owned())
        .collect();
    let mut cmd = Command::new(kiln_bin()?);
    cmd.args(&args).stdin(Stdio::null());
    let scratch = tempfile::Builder::new().prefix("kiln-run-").tempdir()?;
    // Only `kiln build` has a kiln directory (`kiln warm` writes only to
    // its --cache-dir).
    let is_build = args.first().is_some_and(|a| a == "build");
    if is_build
        && !args
            .iter()
            .any(|arg| arg.to_string_lossy().starts_with("--kaniko-dir"))
    {
        cmd.arg("--kaniko-dir").arg(scratch.path().join("kaniko"));
    }
    if !envs.iter().any(|(name, _)| *name == "DOCKER_CONFIG") {
        let docker_config = scratch.path().join("docker");
        fs::create_dir(&docker_config)?;
        cmd.env("DOCKER_CONFIG", docker_config);
    }
    cmd.envs(envs.iter().copied());
    let output = command::output(&mut cmd)?;
    Ok(KilnOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Builds `spec` with kiln and pushes it to `registry` as `repo_tag`,
/// pulling from and pushing to that registry over plain HTTP; `kaniko_dir`
/// lets several builds share precompiled plugins and pulled layers.
pub fn kiln_build(
    spec: &BuildSpec,
    registry: &Registry,
    repo_tag: &str,
    kaniko_dir: Option<&Path>,
) -> Result<KilnOutput> {
    let mut args: Vec<OsString> = vec![
        "build".into(),
        "--context".into(),
        spec.context.clone().into(),
        "--dockerfile".into(),
        spec.dockerfile.clone().into(),
        "--destination".into(),
        registry.reference(repo_tag).into(),
        "--insecure-registry".into(),
        registry.addr().into(),
    ];
    args.extend(spec.shape_flags());
    if let Some(dir) = kaniko_dir {
        args.push("--kaniko-dir".into());
        args.push(dir.into());
    }
    run_kiln(args, &[])
}

/// The kiln binary: `$KILN_BIN`, else `kiln` beside the test's `deps/` directory.
pub fn kiln_bin() -> Result<PathBuf> {
    if let Some(bin) = env::var_os("KILN_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let bin = profile_dir()?.join("kiln");
    if !bin.is_file() {
        bail!(
            "{} does not exist: run `cargo build -p kiln` first, or `cargo xtask test`",
            bin.display()
        );
    }
    Ok(bin)
}

/// The path of the built plugin `name` (`template`, `spin`, `hog`):
/// `$KILN_PLUGINS_DIR/<name>.wasm`, else the target directory's plugin build.
pub fn plugin_path(name: &str) -> Result<PathBuf> {
    let dir = match env::var_os("KILN_PLUGINS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let profile = profile_dir()?;
            let Some(target) = profile.parent() else {
                bail!(
                    "{} has no parent: cannot find the target directory",
                    profile.display()
                );
            };
            target.join("plugins/wasm32-wasip2/release")
        }
    };
    let path = dir.join(format!("{name}.wasm"));
    if !path.is_file() {
        bail!(
            "plugin {} does not exist: `cargo build -p kiln` builds the plugins",
            path.display()
        );
    }
    Ok(path)
}

/// `target/<profile>`: test executables live in its `deps/` directory.
fn profile_dir() -> Result<PathBuf> {
    let exe = env::current_exe().context("cannot locate the test executable")?;
    match exe.parent().and_then(|deps| deps.parent()) {
        Some(dir) => Ok(dir.to_owned()),
        None => bail!("cannot find the target directory above {}", exe.display()),
    }
}

/// A `DOCKER_CONFIG` directory whose `config.json` holds `user`/`password`
/// for `registry` (`host:port`), as `docker login` writes it.
pub fn docker_config(registry: &str, user: &str, password: &str) -> Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-docker-config-")
        .tempdir()?;
    let auth = STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({ "auths": { registry: { "auth": auth } } });
    fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    Ok(dir)
}
