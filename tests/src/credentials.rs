//! Docker client configurations beyond plain `auths`: a
//! `docker-credential-<name>` helper script on `PATH`, and `identitytoken`
//! (OAuth2 refresh token) entries.

use anyhow::Result;
use serde_json::{Value, json};
use std::env;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A `docker-credential-<name>` script answering `get` for one registry,
/// with a `DOCKER_CONFIG` whose `config.json` names it as `credsStore`.
/// Every call is logged, so tests can check the helper was used.
pub struct CredentialHelper {
    dir: TempDir,
}

impl CredentialHelper {
    /// A helper `name` that returns `user`/`secret` for `registry`
    /// (`host:port`, with or without a scheme) and fails for anything else.
    pub fn new(name: &str, registry: &str, user: &str, secret: &str) -> Result<CredentialHelper> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-cred-helper-")
            .tempdir()?;
        let bin = dir.path().join("bin");
        fs::create_dir(&bin)?;
        let log = dir.path().join("calls.log");
        let answer = json!({"ServerURL": registry, "Username": user, "Secret": secret});
        // The server URL arrives on stdin; accept it with or without scheme.
        let script = format!(
            r#"#!/bin/sh
read -r server
echo "$1 $server" >> '{log}'
case "$1" in
  get)
    case "$server" in
      {registry}|http://{registry}|https://{registry}) printf '%s\n' '{answer}' ;;
      *) echo "credentials not found in native keychain" ; exit 1 ;;
    esac ;;
  *) echo "unsupported action $1" >&2 ; exit 1 ;;
esac
"#,
            log = log.display()
        );
        let path = bin.join(format!("docker-credential-{name}"));
        fs::write(&path, script)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        write_config(dir.path(), &json!({"credsStore": name}))?;
        Ok(CredentialHelper { dir })
    }

    /// The `DOCKER_CONFIG` directory naming the helper as `credsStore`.
    pub fn docker_config(&self) -> &Path {
        self.dir.path()
    }

    /// `PATH` with the helper's directory first.
    pub fn path_env(&self) -> Result<OsString> {
        let mut paths = vec![self.dir.path().join("bin")];
        if let Some(path) = env::var_os("PATH") {
            paths.extend(env::split_paths(&path));
        }
        Ok(env::join_paths(paths)?)
    }

    /// The helper's invocations so far, one `ACTION SERVER` line each.
    pub fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }
}

/// A `DOCKER_CONFIG` directory whose `config.json` is `config`.
pub fn docker_config_json(config: &Value) -> Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-docker-config-")
        .tempdir()?;
    write_config(dir.path(), config)?;
    Ok(dir)
}

fn write_config(dir: &Path, config: &Value) -> Result<()> {
    fs::write(dir.join("config.json"), serde_json::to_vec_pretty(config)?)?;
    Ok(())
}
