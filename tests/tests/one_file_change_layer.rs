//! A RUN that changes one file among 10,000 produces a layer with only that
//! file and its parent directory.

use anyhow::Result;
use kiln_e2e::{BaseImage, BuildContext, EntryKind, Registry, run_kiln};

#[test]
fn one_file_change_layer() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox_with_files(10_000)?.push(&registry, "library/many:latest")?;
    let context =
        BuildContext::with_dockerfile(&format!("FROM {base}\nRUN echo changed > /data/f5000\n"))?;

    let out = run_kiln(
        [
            "build",
            "--context",
            &context.path().display().to_string(),
            "--destination",
            &registry.reference("changed:latest"),
            "--insecure-registry",
            &registry.addr(),
        ],
        &[],
    )?;
    out.ensure_success()?;

    let image = registry.image("changed:latest");
    let layers = image.layer_count()?;
    assert_eq!(layers, 2, "expected the base layer plus one");
    let entries = image.layer_entries(layers - 1)?;
    let mut summary: Vec<(&str, &EntryKind)> =
        entries.iter().map(|e| (e.path.as_str(), &e.kind)).collect();
    summary.sort_by_key(|(path, _)| *path);
    assert_eq!(
        summary,
        [("data", &EntryKind::Dir), ("data/f5000", &EntryKind::File)]
    );
    let file = entries.iter().find(|e| e.path == "data/f5000").unwrap();
    assert_eq!(file.data, b"changed\n");
    assert_eq!((file.mode, file.uid, file.gid), (0o644, 0, 0));
    Ok(())
}
