//! The snapshot of a step that changes one file, on rootfs of growing size.
//! Isolated mode snapshots the overlay's upper dir, so its cost should not
//! grow with the rootfs; a full-filesystem snapshotter must at least stat
//! every file, which the note reports as the time of a `find` stat walk.
//! Container-root mode is such a snapshotter: its parallel stat walk, diff
//! and layer are measured against that `find` walk alone.

use super::data;
use crate::{Config, Report, median, settle, time, time_command};
use anyhow::{Context, Result};
use kiln::layer::{Change, Exclusions, WriteOptions, write_changes};
use kiln::sandbox::overlay::mount_overlay;
use kiln::snapshot::scan::{SnapshotMode, diff, scan};
use kiln::snapshot::{prune_unchanged_dirs, snapshot_upper};
use kiln::store::Store;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// What one step's snapshot cost in one mode.
struct Sample {
    /// Seconds kiln took to turn the change into a layer blob.
    kiln: f64,
    /// Seconds the peer took for the same change.
    peer: f64,
    /// Size of kiln's layer blob.
    layer_bytes: u64,
    /// Seconds of the parts of kiln's work, in order, some maybe outside
    /// `kiln` (such as setting up the step).
    phases: Vec<(&'static str, f64)>,
}

/// A way kiln snapshots a step: `run` makes the one-file change on a
/// rootfs whose base is `lower`, in scratch space, and times kiln's
/// snapshot and the peer's, kiln first when `kiln_first`.
struct Mode {
    name: &'static str,
    peer: &'static str,
    run: fn(lower: &Path, scratch: &Path, kiln_first: bool) -> Result<Sample>,
}

const MODES: [Mode; 2] = [
    Mode {
        name: "isolated",
        peer: "tar -c <upper> | gzip -6",
        run: isolated,
    },
    Mode {
        name: "container-root",
        peer: "find <rootfs> -printf (a stat walk alone)",
        run: container_root,
    },
];

/// File counts of the rootfs.
fn sizes(cfg: &Config) -> &'static [usize] {
    if cfg.quick {
        &[2_000, 10_000]
    } else {
        &[10_000, 100_000, 300_000]
    }
}

/// Every mode on every rootfs size.
pub fn run(cfg: &Config) -> Result<()> {
    for mode in &MODES {
        for &files in sizes(cfg) {
            let bench = format!("snapshot-{}-{}k", mode.name, files / 1000);
            if !cfg.wants(&bench) {
                continue;
            }
            let lower = data::rootfs(&cfg.data_dir, files)?;
            let scratch = cfg.scratch("snapshot-")?;
            let (mut kiln, mut peer, mut walks, mut layer_bytes) = (vec![], vec![], vec![], 0);
            let mut phases: Vec<(&str, Vec<f64>)> = Vec::new();
            for i in 0..cfg.runs {
                let step = scratch.path().join(format!("step-{i}"));
                fs::create_dir(&step)?;
                settle();
                let s = (mode.run)(&lower, &step, i % 2 == 0)
                    .with_context(|| format!("{bench}, run {}", i + 1))?;
                let walk = stat_walk(&lower)?;
                eprintln!(
                    "micro: {bench} run {}/{}: kiln {:.4}, peer {:.4}, stat walk {walk:.3}",
                    i + 1,
                    cfg.runs,
                    s.kiln,
                    s.peer
                );
                kiln.push(s.kiln);
                peer.push(s.peer);
                walks.push(walk);
                layer_bytes = s.layer_bytes;
                for (j, (phase, secs)) in s.phases.into_iter().enumerate() {
                    match phases.get_mut(j) {
                        Some((_, v)) => v.push(secs),
                        None => phases.push((phase, vec![secs])),
                    }
                }
                fs::remove_dir_all(&step)?;
            }
            let phases: Vec<String> = phases
                .iter()
                .map(|(phase, v)| format!("{phase} {:.4}", median(v)))
                .collect();
            Report {
                bench,
                unit: "s",
                note: format!(
                    "rootfs of {files} files in dirs of 500; one new file in one of them; kiln's layer \
                     {layer_bytes} bytes; kiln's phases (median s): {}; a full stat walk of the rootfs \
                     (find -printf size/mtime/mode/owner, dentries cached) takes {:.3} s (median)",
                    phases.join(", "),
                    median(&walks)
                ),
                kiln,
                peer: Some(mode.peer.into()),
                peer_runs: peer,
            }
            .print();
        }
    }
    Ok(())
}

/// Isolated mode: the step runs on an overlay of `lower`; its snapshot is
/// what kiln's build does after a step (unmount, prune copied-up but
/// unchanged dirs, write the upper dir as a layer). The peer tars and
/// gzips the same upper dir.
fn isolated(lower: &Path, scratch: &Path, kiln_first: bool) -> Result<Sample> {
    let [upper, work, merged] = ["upper", "work", "merged"].map(|d| scratch.join(d));
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let store = Store::open(&scratch.join("kiln"))?;
    let (mount_secs, mount) = time(|| Ok(mount_overlay(&[lower], &upper, &work, &merged)?))?;
    fs::write(merged.join("d0000/written-by-the-step"), "one change\n")?;
    let peer = |out: &Path| {
        time_command(
            Command::new("sh")
                .args(["-c", "tar -cf - -C \"$1\" . | gzip -6 > \"$2\"", "sh"])
                .arg(&upper)
                .arg(out)
                .stdout(Stdio::null()),
        )
    };
    let peer_first = if kiln_first {
        None
    } else {
        Some(peer(&scratch.join("peer-first.tar.gz"))?)
    };
    let (kiln, (unmount_secs, prune_secs, (write_secs, blob))) = time(|| {
        Ok((
            time(|| Ok(mount.unmount()?))?.0,
            time(|| Ok(prune_unchanged_dirs(&upper, &[lower])?))?.0,
            time(|| Ok(snapshot_upper(&upper, &store, &WriteOptions::default())?))?,
        ))
    })?;
    let blob = blob.context("the snapshot found no change")?;
    let peer = match peer_first {
        Some(p) => p,
        None => peer(&scratch.join("peer.tar.gz"))?,
    };
    Ok(Sample {
        kiln,
        peer,
        layer_bytes: blob.size,
        phases: vec![
            ("mount (not in kiln's time)", mount_secs),
            ("unmount", unmount_secs),
            ("prune", prune_secs),
            ("write layer", write_secs),
        ],
    })
}

/// Container-root mode: the rootfs is the live root. The walk before the
/// step is not timed (the previous step's snapshot made it); kiln's time is
/// the walk after the step, the diff (`--snapshot-mode=full`, so racy files
/// are hashed) and the layer of the changes. The peer is a `find` stat walk
/// of the same tree, what any snapshotter of a live root pays at least.
fn container_root(lower: &Path, scratch: &Path, kiln_first: bool) -> Result<Sample> {
    let store = Store::open(&scratch.join("kiln"))?;
    let exclude = Exclusions::NONE;
    let (before_secs, before) = time(|| Ok(scan(lower, &exclude, true)?))?;
    let changed = lower.join("d0000/written-by-the-step");
    fs::write(&changed, "one change\n")?;
    let result = (|| {
        let peer_first = if kiln_first {
            None
        } else {
            Some(stat_walk(lower)?)
        };
        let (kiln, ((walk_secs, after), (diff_secs, _), (write_secs, blob))) = time(|| {
            let walked = time(|| Ok(scan(lower, &exclude, true)?))?;
            let diffed = time(|| {
                let changes = diff(&before, &walked.1, SnapshotMode::Full, None);
                Ok(changes
                    .present
                    .into_iter()
                    .map(|p| (p, Change::Present))
                    .chain(changes.deleted.into_iter().map(|p| (p, Change::Deleted)))
                    .collect::<Vec<_>>())
            })?;
            let written = time(|| {
                Ok(write_changes(
                    lower,
                    &diffed.1,
                    &store,
                    &WriteOptions::default(),
                )?)
            })?;
            Ok((walked, diffed, written))
        })?;
        let blob = blob.context("the snapshot found no change")?;
        anyhow::ensure!(
            after.len() == before.len() + 1,
            "the walk after the step saw {} paths, expected {}",
            after.len(),
            before.len() + 1
        );
        let peer = match peer_first {
            Some(p) => p,
            None => stat_walk(lower)?,
        };
        Ok(Sample {
            kiln,
            peer,
            layer_bytes: blob.size,
            phases: vec![
                ("walk before the step (not in kiln's time)", before_secs),
                ("walk", walk_secs),
                ("diff", diff_secs),
                ("write layer", write_secs),
            ],
        })
    })();
    fs::remove_file(&changed)?;
    result
}

/// Seconds a `find` walk that stats every file of `root` takes.
fn stat_walk(root: &Path) -> Result<f64> {
    time_command(
        Command::new("find")
            .arg(root)
            .args(["-printf", "%p %s %T@ %m %U %G\\n"])
            .stdout(Stdio::null()),
    )
}
