//! Container-root mode, kaniko's model, for containers that refuse mounts
//! and namespaces: a stage's layers are applied onto kiln's own `/`, RUN
//! runs there directly, and a step's layer is what a stat walk finds
//! changed since the walk before it.
//!
//! One root serves every stage, one stage at a time. The root always holds
//! the flattened layers listed in `applied`; a stage whose layers extend
//! that list only applies the rest, any other stage wipes the root first.
//! Excluded paths (kiln's directory, the pseudo filesystems, mount points,
//! `/var/run`, `--ignore-path`s, the build's own inputs and outputs) are
//! never applied, wiped or snapshotted.

use super::stage::{Layer, StageCtx, apply_layer};
use super::{BuildError, Options};
use crate::cache::store::CacheRepo;
use crate::digest::Digest;
use crate::layer::write::Watcher;
use crate::layer::{Change, Exclusions, LayerBlob, WriteOptions, write_changes};
use crate::snapshot::SnapshotError;
use crate::snapshot::scan::{self, Index, SnapshotMode, Stamp};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The container-root settings of a build.
#[derive(Clone, Debug)]
pub struct ContainerRootOptions {
    /// Why kiln may build on its own root: the container it found, or `--force`.
    pub reason: String,
    /// `--snapshot-mode`.
    pub mode: SnapshotMode,
    /// `--use-new-run`: a RUN's changes are what it touched after it started.
    pub use_new_run: bool,
    /// `--ignore-path`s.
    pub ignore_paths: Vec<PathBuf>,
    /// `--ignore-var-run`.
    pub ignore_var_run: bool,
}

/// The pseudo filesystems kiln never touches.
const SYSTEM_PATHS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Everything a build on `/` must leave alone: the fixed system paths,
/// every mount point in `mountinfo`, `/var/run` with `--ignore-var-run`,
/// the user's `--ignore-path`s, and `own`, the build's own files (the
/// kiln directory and executable, the context, output paths).
pub fn exclusions(cr: &ContainerRootOptions, mountinfo: &str, own: &[PathBuf]) -> Exclusions {
    let mut paths: Vec<Vec<u8>> = SYSTEM_PATHS.iter().map(|p| p.as_bytes().to_vec()).collect();
    paths.extend(scan::mount_points(mountinfo));
    if cr.ignore_var_run {
        paths.push(b"/var/run".to_vec());
    }
    paths.extend(
        cr.ignore_paths
            .iter()
            .chain(own)
            .map(|p| p.as_os_str().as_bytes().to_vec()),
    );
    Exclusions::new(paths)
}

/// The build's own paths on this machine, made absolute.
pub fn own_paths(opts: &Options, context_dir: Option<&Path>) -> Vec<PathBuf> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let mut own: Vec<PathBuf> = [Some(opts.kiln_dir.as_path()), Some(opts.init_exe.as_path())]
        .into_iter()
        .chain([
            context_dir,
            opts.oci_layout_path.as_deref(),
            opts.tar_path.as_deref(),
            opts.digest_file.as_deref(),
            opts.image_name_with_digest_file.as_deref(),
            opts.image_name_tag_with_digest_file.as_deref(),
        ])
        .flatten()
        .map(absolute)
        .collect();
    // kaniko's debug image keeps its shell in /busybox, outside the image
    // being built; so does kiln's.
    if Path::new("/busybox").is_dir() {
        own.push(PathBuf::from("/busybox"));
    }
    own.extend(crate::plugin::shipped_plugins_dir());
    own.extend(
        opts.cache
            .as_ref()
            .map(|c| absolute(&c.dir))
            .into_iter()
            .chain(opts.cache.as_ref().and_then(|c| match &c.repo {
                CacheRepo::Layout(dir) => Some(absolute(dir)),
                CacheRepo::Registry(_) => None,
            })),
    );
    own
}

/// The root filesystem kiln builds on, and what it holds.
pub struct ContainerRoot {
    root: PathBuf,
    exclude: Exclusions,
    mode: SnapshotMode,
    use_new_run: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Diff ids of the layers on the root, bottom first.
    applied: Vec<Digest>,
    /// The walk after the last apply or snapshot; `None` when the root's
    /// content is not known.
    index: Option<Index>,
}

impl ContainerRoot {
    /// Builds on `root` (`/` except in tests), leaving `exclude` alone.
    pub fn new(root: PathBuf, exclude: Exclusions, cr: &ContainerRootOptions) -> Self {
        ContainerRoot {
            root,
            exclude,
            mode: cr.mode,
            use_new_run: cr.use_new_run,
            state: Mutex::new(State::default()),
        }
    }

    /// The directory steps write into.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// With `--use-new-run`, when a RUN that starts now began, moved back
    /// by the kernel clock's granularity.
    pub fn run_started(&self) -> Option<Stamp> {
        self.use_new_run
            .then(|| scan::before_racy_window(scan::now()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the root hold exactly `layers`, applying only what is missing
    /// when the root already holds a prefix of them.
    pub fn prepare(&self, sctx: &StageCtx<'_>, layers: &[Layer]) -> Result<(), BuildError> {
        let mut st = self.lock();
        let wanted: Vec<&Digest> = layers.iter().map(|l| &l.diff_id).collect();
        let holds_prefix = st.applied.len() <= wanted.len()
            && st.applied.iter().zip(&wanted).all(|(a, b)| a == *b);
        if !holds_prefix || st.index.is_none() && !st.applied.is_empty() {
            wipe(&self.root, &self.exclude, b"")?;
            st.applied.clear();
            st.index = None;
        }
        for layer in &layers[st.applied.len()..] {
            apply_layer(sctx, layer, &self.root, &self.exclude)?;
            st.applied.push(layer.diff_id.clone());
            st.index = None;
        }
        if st.index.is_none() {
            st.index = Some(self.scan()?);
        }
        Ok(())
    }

    fn scan(&self) -> Result<Index, SnapshotError> {
        scan::scan(&self.root, &self.exclude, self.mode == SnapshotMode::Full)
    }

    /// Writes what changed since the last walk as a layer, and makes it
    /// part of what the root holds; `None` if nothing changed. `since` is
    /// the start of a `--use-new-run` RUN.
    pub fn snapshot(
        &self,
        sctx: &StageCtx<'_>,
        since: Option<Stamp>,
        watcher: Option<Watcher>,
    ) -> Result<Option<LayerBlob>, BuildError> {
        let mut st = self.lock();
        let old = st
            .index
            .take()
            .expect("a step prepares the root before it snapshots it");
        log::info!("Taking snapshot of full filesystem...");
        let new = self.scan()?;
        let mut changes = scan::diff(&old, &new, self.mode, since);
        for path in std::mem::take(&mut changes.ambiguous) {
            let host = self.root.join(OsStr::from_bytes(&path));
            let digest = scan::hash_file(&host).map_err(|source| SnapshotError::Walk {
                path: host.clone(),
                source,
            })?;
            if old.get(&path).and_then(|s| s.digest) != Some(digest) {
                changes.present.push(path);
            }
        }
        let listed: Vec<(Vec<u8>, Change)> = changes
            .present
            .into_iter()
            .map(|p| (p, Change::Present))
            .chain(changes.deleted.into_iter().map(|p| (p, Change::Deleted)))
            .collect();
        log::debug!(
            "snapshot: {} paths walked, {} changed",
            new.len(),
            listed.len()
        );
        let opts = WriteOptions {
            compression: sctx.opts.compression,
            mtime_clamp: sctx.opts.reproducible,
            watcher,
        };
        let blob = write_changes(&self.root, &listed, sctx.store, &opts)?;
        if let Some(b) = &blob {
            st.applied.push(b.diff_id.clone());
        }
        st.index = Some(new);
        Ok(blob)
    }

    /// Removes everything the build put on the root (`--cleanup`).
    pub fn clean(&self) -> Result<(), BuildError> {
        let mut st = self.lock();
        wipe(&self.root, &self.exclude, b"")?;
        st.applied.clear();
        st.index = None;
        Ok(())
    }
}

/// Removes everything under `root`'s directory `rel` except excluded
/// paths, descending only into directories that hold one.
fn wipe(root: &Path, exclude: &Exclusions, rel: &[u8]) -> Result<(), BuildError> {
    let dir = root.join(OsStr::from_bytes(rel));
    let fail = |path: &Path, source| BuildError::Output {
        path: path.to_owned(),
        source,
    };
    for ent in std::fs::read_dir(&dir).map_err(|e| fail(&dir, e))? {
        let ent = ent.map_err(|e| fail(&dir, e))?;
        let mut child = rel.to_vec();
        if !child.is_empty() {
            child.push(b'/');
        }
        child.extend_from_slice(ent.file_name().as_bytes());
        if exclude.contains(&child) {
            continue;
        }
        let path = ent.path();
        let is_dir = ent.file_type().map_err(|e| fail(&path, e))?.is_dir();
        if exclude.holds(&child) {
            if is_dir {
                wipe(root, exclude, &child)?;
            }
            continue;
        }
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| fail(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn options() -> ContainerRootOptions {
        ContainerRootOptions {
            reason: "test".into(),
            mode: SnapshotMode::Full,
            use_new_run: false,
            ignore_paths: vec!["/cache".into()],
            ignore_var_run: true,
        }
    }

    #[test]
    fn exclusions_cover_system_mounts_ignores_and_own_paths() {
        let info = "1 0 0:1 / / rw - overlay o rw\n2 1 0:2 / /etc/hosts rw - ext4 x rw\n";
        let ex = exclusions(&options(), info, &["/kiln".into()]);
        let paths: Vec<&str> = ex
            .paths()
            .iter()
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "cache",
                "dev",
                "etc/hosts",
                "kiln",
                "proc",
                "sys",
                "var/run"
            ]
        );
        let mut no_var_run = options();
        no_var_run.ignore_var_run = false;
        assert!(!exclusions(&no_var_run, "", &[]).contains(b"var/run"));
    }

    #[test]
    fn wipe_keeps_excluded_paths_and_their_parents_only() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in ["kiln/store", "etc/sub", "var/run/x", "var/lib", "bin"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in [
            "kiln/store/blob",
            "etc/passwd",
            "etc/hosts",
            "var/lib/db",
            "bin/sh",
        ] {
            fs::write(r.join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink("/etc", r.join("link")).unwrap();
        let ex = Exclusions::new(["/kiln", "/etc/hosts", "/var/run"]);
        wipe(r, &ex, b"").unwrap();
        let mut left = Vec::new();
        for e in walkdir(r) {
            left.push(e);
        }
        left.sort();
        assert_eq!(
            left,
            [
                "etc",
                "etc/hosts",
                "kiln",
                "kiln/store",
                "kiln/store/blob",
                "var",
                "var/run",
                "var/run/x"
            ]
        );
    }

    fn walkdir(root: &Path) -> Vec<String> {
        fn go(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.push(rel);
                if e.file_type().unwrap().is_dir() {
                    go(root, &e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        go(root, root, &mut out);
        out
    }
}
