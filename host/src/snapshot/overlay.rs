//! An overlayfs upper dir read as a layer.
//!
//! The upper dir is already in overlay format (whiteouts are char devices
//! 0/0, opaque dirs carry `trusted.overlay.opaque=y`), which is exactly what
//! [`write_layer`] converts to tar whiteouts. Overlayfs keeps its scratch
//! files in the work dir, a sibling of the upper dir, so the upper dir holds
//! nothing but the step's changes. What remains specific to an upper dir:
//! overlayfs's bookkeeping xattrs (`origin`, `impure`, `nlink`) are dropped,
//! and a redirected directory or a metacopy file is refused, since its
//! content would be in a lower layer (the sandbox mounts with
//! `redirect_dir=off,metacopy=off`).

use super::SnapshotError;
use crate::layer::{LayerBlob, WriteOptions, write_layer};
use crate::store::Store;
use std::path::Path;

/// Turns a step's overlay upper dir into a layer blob in the store; `None`
/// when the step changed nothing.
pub fn snapshot_upper(
    upper: &Path,
    store: &Store,
    opts: &WriteOptions,
) -> Result<Option<LayerBlob>, SnapshotError> {
    match std::fs::symlink_metadata(upper) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(SnapshotError::NotADirectory {
                path: upper.to_owned(),
                reason: "not a directory".into(),
            });
        }
        Err(e) => {
            return Err(SnapshotError::NotADirectory {
                path: upper.to_owned(),
                reason: e.to_string(),
            });
        }
    }
    log::info!("Taking snapshot of files...");
    let layer = write_layer(upper, store, opts).map_err(|source| SnapshotError::Layer {
        path: upper.to_owned(),
        source,
    })?;
    match &layer {
        Some(blob) => log::debug!(
            "snapshot of {} is layer {} ({} bytes)",
            upper.display(),
            blob.digest,
            blob.size
        ),
        None => log::debug!("snapshot of {}: no files changed", upper.display()),
    }
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{UnpackOptions, Whiteouts, unpack};
    use std::ffi::CString;
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// Runs `change` on a real overlay mount of `lower` and returns the
    /// upper dir it leaves behind.
    fn overlay_step(
        lower: &Path,
        scratch: &Path,
        change: impl FnOnce(&Path),
    ) -> std::path::PathBuf {
        let [upper, work, merged] = ["upper", "work", "merged"].map(|d| scratch.join(d));
        for d in [&upper, &work, &merged] {
            fs::create_dir(d).unwrap();
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off",
            lower.display(),
            upper.display(),
            work.display()
        );
        let data = CString::new(data).unwrap();
        rustix::mount::mount(
            "overlay",
            &merged,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .expect("mounting overlayfs (these tests run as root)");
        change(&merged);
        rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::empty()).unwrap();
        upper
    }

    fn tar_names(store: &Store, blob: &LayerBlob) -> Vec<String> {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(store.open_blob(&blob.digest).unwrap())
            .read_to_end(&mut tar)
            .unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let entries = archive.entries().unwrap();
        entries
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect()
    }

    #[test]
    fn an_overlay_step_becomes_a_layer_of_its_changes() {
        let scratch = tempfile::tempdir().unwrap();
        let lower = scratch.path().join("lower");
        fs::create_dir_all(lower.join("etc/old")).unwrap();
        fs::write(lower.join("etc/old/x"), b"x").unwrap();
        fs::write(lower.join("etc/gone"), b"bye").unwrap();
        fs::write(lower.join("etc/gone2"), b"bye").unwrap();
        fs::write(lower.join("keep"), b"same").unwrap();
        let upper = overlay_step(&lower, scratch.path(), |m| {
            fs::remove_file(m.join("etc/gone")).unwrap();
            fs::remove_file(m.join("etc/gone2")).unwrap();
            fs::remove_dir_all(m.join("etc/old")).unwrap();
            fs::create_dir(m.join("etc/old")).unwrap();
            fs::write(m.join("etc/old/y"), b"y").unwrap();
            fs::write(m.join("new"), b"new").unwrap();
        });
        let kiln = tempfile::tempdir().unwrap();
        let store = Store::open(kiln.path()).unwrap();
        let blob = snapshot_upper(&upper, &store, &WriteOptions::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            tar_names(&store, &blob),
            [
                "etc/",
                "etc/.wh.gone",
                "etc/.wh.gone2",
                "etc/old/",
                "etc/old/.wh..wh..opq",
                "etc/old/y",
                "new"
            ]
        );

        // Applied back, the layer is the upper dir again, ready to be a lower.
        let applied = tempfile::tempdir().unwrap();
        let opts = UnpackOptions {
            whiteouts: Whiteouts::Overlay,
            preserve_owners: true,
            lowers: Vec::new(),
            exclude: Default::default(),
        };
        unpack(
            store.open_blob(&blob.digest).unwrap(),
            applied.path(),
            &opts,
        )
        .unwrap();
        let gone = fs::symlink_metadata(applied.path().join("etc/gone")).unwrap();
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        let opaque = xattr::get(applied.path().join("etc/old"), "trusted.overlay.opaque").unwrap();
        assert_eq!(opaque, Some(b"y".to_vec()));
        assert_eq!(fs::read(applied.path().join("new")).unwrap(), b"new");
        assert!(!applied.path().join("keep").exists());
    }

    #[test]
    fn an_unchanged_upper_gives_no_layer_and_a_file_is_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let lower = scratch.path().join("lower");
        fs::create_dir(&lower).unwrap();
        fs::write(lower.join("f"), b"f").unwrap();
        let upper = overlay_step(&lower, scratch.path(), |m| {
            assert_eq!(fs::read(m.join("f")).unwrap(), b"f")
        });
        let kiln = tempfile::tempdir().unwrap();
        let store = Store::open(kiln.path()).unwrap();
        assert_eq!(
            snapshot_upper(&upper, &store, &WriteOptions::default()).unwrap(),
            None
        );
        let err = snapshot_upper(&lower.join("f"), &store, &WriteOptions::default()).unwrap_err();
        assert!(matches!(err, SnapshotError::NotADirectory { .. }), "{err}");
    }
}
