//! Direct skopeo calls for registry and output tests: raw manifests, tag
//! lookups that are expected to fail, and copies between transports.

use crate::command;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::process::Command;

/// The manifest of `transport_ref` (e.g. `docker://127.0.0.1:5000/a:b`,
/// `oci:DIR:tag`) exactly as served (`skopeo inspect --raw`).
pub fn raw_manifest(transport_ref: &str, credentials: Option<(&str, &str)>) -> Result<Value> {
    let mut inspect = Command::new("skopeo");
    inspect.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some((user, password)) = credentials {
        inspect.arg("--creds").arg(format!("{user}:{password}"));
    }
    let out = command::run(inspect.arg(transport_ref))?;
    serde_json::from_slice(&out)
        .with_context(|| format!("the manifest of {transport_ref} is not JSON"))
}

/// The layer digests a manifest lists, base first.
pub fn layer_digests(manifest: &Value) -> Result<Vec<String>> {
    let Some(layers) = manifest["layers"].as_array() else {
        bail!("the manifest lists no layers: {manifest}");
    };
    layers
        .iter()
        .map(|layer| match layer["digest"].as_str() {
            Some(digest) => Ok(digest.to_owned()),
            None => bail!("a layer without a digest in {manifest}"),
        })
        .collect()
}

/// skopeo's error text when `transport_ref` does not resolve, or `None`
/// when it does.
pub fn inspect_error(
    transport_ref: &str,
    credentials: Option<(&str, &str)>,
) -> Result<Option<String>> {
    let mut inspect = Command::new("skopeo");
    inspect.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some((user, password)) = credentials {
        inspect.arg("--creds").arg(format!("{user}:{password}"));
    }
    let out = command::output(inspect.arg(transport_ref))?;
    Ok((!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// `skopeo copy SRC DST` without TLS verification on either side.
pub fn copy(source: &str, destination: &str) -> Result<()> {
    command::run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        source,
        destination,
    ]))
    .with_context(|| format!("cannot copy {source} to {destination}"))?;
    Ok(())
}
