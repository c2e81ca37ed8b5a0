//! examples/hello, the README's first command: a scratch image written to an
//! OCI layout with no registry at all, checked with umoci and skopeo.

use anyhow::Result;
use kiln_e2e::{EntryKind, Image, run_kiln};
use std::path::Path;
use std::process::Command;

#[test]
fn oci_layout_scratch() -> Result<()> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let scratch = tempfile::tempdir()?;
    let layout = scratch.path().join("hello-oci");

    let out = run_kiln(
        [
            "build",
            "--context",
            &example.display().to_string(),
            "--no-push",
            "--oci-layout-path",
            &layout.display().to_string(),
        ],
        &[],
    )?;
    out.ensure_success()?;

    let listed = Command::new("umoci")
        .args(["ls", "--layout"])
        .arg(&layout)
        .output()?;
    assert!(
        listed.status.success(),
        "umoci rejects the layout: {}",
        String::from_utf8_lossy(&listed.stderr)
    );

    let image = Image::layout(&layout, None);
    let config = image.config()?;
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "hello");
    assert_eq!(
        labels["org.opencontainers.image.description"],
        "A file-only image built by kiln"
    );

    assert_eq!(image.layer_count()?, 1);
    let expected = std::fs::read(example.join("hello.txt"))?;
    let entries = image.layer_entries(0)?;
    let hello = entries
        .iter()
        .find(|e| e.path == "hello.txt")
        .expect("hello.txt is in the layer");
    assert_eq!(hello.kind, EntryKind::File);
    assert_eq!(hello.data, expected);
    assert_eq!(image.flatten()?.read("/hello.txt")?.as_bytes(), expected);
    Ok(())
}
