//! Exact expectations for what no oracle can build (heredocs, `RUN --mount`,
//! `COPY --link/--parents/--exclude`, `ADD --checksum`, symbolic `--chmod`):
//! a small JSON file lists the paths, their metadata and the config.
//!
//! ```json
//! {
//!   "paths": {
//!     "/out": {"type": "dir", "mode": "0755", "owner": "0:0"},
//!     "/out/a": {"type": "file", "mode": "0644", "content": "a\n"},
//!     "/out/b": {"type": "file", "hardlinks": ["/out/a"]},
//!     "/out/l": {"type": "symlink", "target": "a"},
//!     "/out/ping": {"capability": "0100000200200000000000000000000000000000"}
//!   },
//!   "absent": ["/cache"],
//!   "exact_under": ["/out"],
//!   "config": {"Env": ["PATH=/bin", "A=1"]}
//! }
//! ```
//! Only the keys given are checked (`capability` is the hex of the
//! `security.capability` xattr, `null` for none); `exact_under` also fails
//! on any path below that directory that `paths` does not list; each
//! `config` field is compared after the same normalisation as the oracle
//! comparison.

use crate::compare::{ImageView, NodeKind, config_view};
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The ways `view` differs from the `expected` document, one line each.
pub fn check_expected(view: &ImageView, expected: &Value) -> Result<Vec<String>> {
    let Some(document) = expected.as_object() else {
        bail!("the expected-tree document must be a JSON object");
    };
    for key in document.keys() {
        if !["paths", "absent", "exact_under", "config"].contains(&key.as_str()) {
            bail!("unknown key {key:?} in the expected-tree document");
        }
    }
    let mut problems = Vec::new();
    let empty = Map::new();
    let paths = match document.get("paths") {
        Some(paths) => paths.as_object().context("`paths` must be an object")?,
        None => &empty,
    };
    for (path, want) in paths {
        check_path(view, path, want, &mut problems)
            .with_context(|| format!("bad expectation for {path}"))?;
    }
    for path in strings(document.get("absent"), "absent")? {
        if let Some(node) = view.tree.get(&path) {
            problems.push(format!("{path}: should be absent, is {node}"));
        }
    }
    for dir in strings(document.get("exact_under"), "exact_under")? {
        for path in view.tree.paths_under(&dir) {
            if !paths.contains_key(path) {
                problems.push(format!(
                    "{path}: unexpected under {dir} ({})",
                    view.tree
                        .get(path)
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ));
            }
        }
    }
    if let Some(config) = document.get("config") {
        let config = config.as_object().context("`config` must be an object")?;
        let actual = config_view(&view.config);
        let wanted = config_view(&Value::Object(config.clone()));
        for field in config.keys() {
            if wanted.get(field) != actual.get(field) {
                problems.push(format!(
                    "config {field}: expected {}, got {}",
                    show(wanted.get(field)),
                    show(actual.get(field))
                ));
            }
        }
    }
    Ok(problems)
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "(unset)".to_owned(), Value::to_string)
}

fn strings(value: Option<&Value>, key: &str) -> Result<Vec<String>> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("`{key}` must list strings"))
            })
            .collect(),
        Some(_) => bail!("`{key}` must be an array of paths"),
    }
}

fn check_path(
    view: &ImageView,
    path: &str,
    want: &Value,
    problems: &mut Vec<String>,
) -> Result<()> {
    let want = want.as_object().context("must be an object")?;
    let Some(node) = view.tree.get(path) else {
        problems.push(format!("{path}: missing"));
        return Ok(());
    };
    let mut fail = |what: String| problems.push(format!("{path}: {what} (have {node})"));
    for (key, value) in want {
        match key.as_str() {
            "type" => {
                let actual = match node.kind {
                    NodeKind::File { .. } => "file",
                    NodeKind::Dir => "dir",
                    NodeKind::Symlink(_) => "symlink",
                    NodeKind::Special(_) => "special",
                };
                let wanted = value.as_str().context("`type` must be a string")?;
                if wanted != actual {
                    fail(format!("type should be {wanted}"));
                }
            }
            "mode" => {
                let text = value.as_str().context("`mode` must be an octal string")?;
                let wanted = u32::from_str_radix(text, 8)
                    .with_context(|| format!("`mode` {text:?} is not octal"))?;
                if wanted != node.mode {
                    fail(format!("mode should be {wanted:04o}"));
                }
            }
            "owner" => {
                let text = value.as_str().context("`owner` must be \"UID:GID\"")?;
                if text != format!("{}:{}", node.uid, node.gid) {
                    fail(format!("owner should be {text}"));
                }
            }
            "content" => {
                let text = value.as_str().context("`content` must be a string")?;
                let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
                match &node.kind {
                    NodeKind::File { sha256: actual, .. } if *actual == sha256 => {}
                    _ => {
                        let actual = view_contents(view, path);
                        fail(format!("content should be {text:?}, is {actual}"));
                    }
                }
            }
            "target" => {
                let text = value.as_str().context("`target` must be a string")?;
                if node.kind != NodeKind::Symlink(text.to_owned()) {
                    fail(format!("should be a symlink to {text}"));
                }
            }
            "hardlinks" => {
                let mut wanted = strings(Some(value), "hardlinks")?;
                wanted.sort();
                if wanted != node.hardlinks {
                    fail(format!(
                        "should be hard-linked with [{}]",
                        wanted.join(", ")
                    ));
                }
            }
            "capability" => {
                let wanted = match value {
                    Value::Null => None,
                    Value::String(hex) => Some(hex.to_ascii_lowercase()),
                    _ => bail!("`capability` must be a hex string or null"),
                };
                if wanted != node.capability {
                    fail(format!(
                        "security.capability should be {}",
                        wanted.as_deref().unwrap_or("absent")
                    ));
                }
            }
            other => bail!("unknown key {other:?}"),
        }
    }
    Ok(())
}

/// The actual contents for a failure message: the text when short.
fn view_contents(view: &ImageView, path: &str) -> String {
    match view.root.read(path) {
        Ok(text) if text.len() <= 200 => format!("{text:?}"),
        Ok(text) => format!("{} bytes", text.len()),
        Err(_) => "not a readable text file".to_owned(),
    }
}
