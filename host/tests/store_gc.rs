//! `kiln gc` on a kiln directory filled with layers and blobs of known sizes
//! and last uses: least recently used first, down to the limit; never what
//! a live build marked; leftovers of crashed builds; dry runs; the CLI.

use kiln::digest::Digest;
use kiln::store::Store;
use kiln::store::gc::{self, EntryKind, GcOptions, GcReport};
use std::fs::{self, File, FileTimes};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

const HOUR: Duration = Duration::from_secs(3600);

/// Sets the store's use mark (the access time) of `path` to `hours` ago.
fn last_used(path: &Path, hours: u32) {
    let when = SystemTime::now() - HOUR * hours;
    File::open(path)
        .unwrap()
        .set_times(FileTimes::new().set_accessed(when))
        .unwrap();
}

/// A kiln directory with two layers and three blobs, 4500 bytes in all:
///
/// | entry | size | last used |
/// |---|---|---|
/// | layer `l1` (600 + 400 bytes, and a hard link counted once) | 1000 | 5h ago |
/// | blob `b1` | 300 | 4h ago |
/// | blob `b2` | 700 | 3h ago |
/// | blob `b3` | 500 | 2h ago |
/// | layer `l2` (1995 bytes and a 5-byte symlink) | 2000 | 1h ago |
struct Fixture {
    dir: tempfile::TempDir,
    l1: Digest,
    l2: Digest,
    b1: Digest,
    b2: Digest,
    b3: Digest,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let fx = Fixture {
            l1: Digest::of(b"layer one"),
            l2: Digest::of(b"layer two"),
            b1: Digest::of(&[1; 300]),
            b2: Digest::of(&[2; 700]),
            b3: Digest::of(&[3; 500]),
            dir,
        };
        let l1 = fx.layer(&fx.l1);
        fs::create_dir_all(l1.join("sub")).unwrap();
        fs::write(l1.join("a"), [b'a'; 600]).unwrap();
        fs::write(l1.join("sub/b"), [b'b'; 400]).unwrap();
        fs::hard_link(l1.join("a"), l1.join("sub/c")).unwrap();
        let l2 = fx.layer(&fx.l2);
        fs::create_dir(&l2).unwrap();
        fs::write(l2.join("f"), [b'f'; 1995]).unwrap();
        std::os::unix::fs::symlink("abcde", l2.join("s")).unwrap();
        for (d, fill, size) in [(&fx.b1, 1, 300), (&fx.b2, 2, 700), (&fx.b3, 3, 500)] {
            fs::write(fx.blob(d), vec![fill; size]).unwrap();
        }
        last_used(&l1, 5);
        last_used(&fx.blob(&fx.b1), 4);
        last_used(&fx.blob(&fx.b2), 3);
        last_used(&fx.blob(&fx.b3), 2);
        last_used(&l2, 1);
        fx
    }

    fn kiln(&self) -> &Path {
        self.dir.path()
    }

    fn store(&self) -> PathBuf {
        self.kiln().join("store")
    }

    fn layer(&self, id: &Digest) -> PathBuf {
        self.store().join("layers").join(id.hex())
    }

    fn blob(&self, d: &Digest) -> PathBuf {
        self.store().join("blobs/sha256").join(d.hex())
    }

    fn collect(&self, max_size: u64, dry_run: bool) -> GcReport {
        gc::collect(self.kiln(), &GcOptions::new(max_size, dry_run)).unwrap()
    }
}

fn removed(report: &GcReport) -> Vec<(EntryKind, PathBuf, u64)> {
    report
        .removed
        .iter()
        .map(|e| (e.kind, e.path.clone(), e.size))
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(read) => read
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[test]
fn the_least_recently_used_go_first_down_to_the_limit() {
    let fx = Fixture::new();
    let report = fx.collect(2600, false);
    assert_eq!(
        removed(&report),
        vec![
            (EntryKind::Layer, fx.layer(&fx.l1), 1000),
            (EntryKind::Blob, fx.blob(&fx.b1), 300),
            (EntryKind::Blob, fx.blob(&fx.b2), 700),
        ]
    );
    assert_eq!((report.size_before, report.size_after), (4500, 2500));
    assert_eq!(report.freed(), 2000);
    assert_eq!(
        report.summary(),
        "Removed 1 layer and 2 blobs, freed 2.0 KiB; store is now 2.4 KiB"
    );
    assert_eq!(names(&fx.store().join("layers")), vec![fx.l2.hex()]);
    assert_eq!(names(&fx.store().join("blobs/sha256")), vec![fx.b3.hex()]);
    assert_eq!(names(&fx.store().join("trash")), Vec::<String>::new());
    // Layer sizes are measured once and remembered; the removed one's goes.
    assert_eq!(names(&fx.store().join("sizes")), vec![fx.l2.hex()]);
    assert_eq!(
        fs::read_to_string(fx.store().join("sizes").join(fx.l2.hex())).unwrap(),
        "2000"
    );

    let again = fx.collect(2600, false);
    assert_eq!(again.removed, vec![]);
    assert_eq!(again.size_after, 2500);
    assert_eq!(
        again.summary(),
        "Nothing to remove; store is 2.4 KiB (limit 2.5 KiB)"
    );
}

#[test]
fn a_dry_run_deletes_nothing_and_reports_the_same() {
    let fx = Fixture::new();
    let l1_mark = fs::metadata(fx.layer(&fx.l1)).unwrap().atime();
    let report = fx.collect(2600, true);
    assert_eq!(
        removed(&report),
        vec![
            (EntryKind::Layer, fx.layer(&fx.l1), 1000),
            (EntryKind::Blob, fx.blob(&fx.b1), 300),
            (EntryKind::Blob, fx.blob(&fx.b2), 700),
        ]
    );
    assert_eq!(
        report.summary(),
        "Would remove 1 layer and 2 blobs, freeing 2.0 KiB; store would be 2.4 KiB"
    );
    let mut layers = vec![fx.l1.hex(), fx.l2.hex()];
    layers.sort();
    assert_eq!(names(&fx.store().join("layers")), layers);
    assert_eq!(names(&fx.store().join("blobs/sha256")).len(), 3);
    assert!(!fx.store().join("sizes").exists());
    assert!(!fx.store().join("trash").exists());
    // Measuring a layer must not count as using it.
    assert_eq!(fs::metadata(fx.layer(&fx.l1)).unwrap().atime(), l1_mark);
}

#[test]
fn what_a_live_build_marked_is_kept_and_dead_builds_count_for_nothing() {
    let fx = Fixture::new();
    // A crashed build's registration: present but unlocked.
    let dead = fx.store().join("live/999999-dead");
    fs::write(&dead, b"").unwrap();
    // A running build uses the oldest layer and the oldest blob.
    let build = Store::open(fx.kiln()).unwrap();
    assert_eq!(build.layer_dir(&fx.l1), fx.layer(&fx.l1));
    assert!(build.has_blob(&fx.b1));
    let scratch = build.temp_dir("upper-").unwrap();
    fs::write(scratch.path().join("file"), b"in progress").unwrap();

    // Two hours on, with no limit left, the rest goes.
    let opts = GcOptions {
        now: SystemTime::now() + 2 * HOUR,
        ..GcOptions::new(0, false)
    };
    let report = gc::collect(fx.kiln(), &opts).unwrap();
    assert_eq!(
        removed(&report),
        vec![
            (EntryKind::Blob, fx.blob(&fx.b2), 700),
            (EntryKind::Blob, fx.blob(&fx.b3), 500),
            (EntryKind::Layer, fx.layer(&fx.l2), 2000),
        ]
    );
    assert_eq!(report.size_after, 1300);
    assert_eq!(
        report.summary(),
        "Removed 1 layer and 2 blobs, freed 3.1 KiB; store is now 1.3 KiB; \
         still above the limit of 0 B: the rest is in use by running builds"
    );
    assert!(fx.layer(&fx.l1).join("sub/b").is_file());
    assert!(fx.blob(&fx.b1).is_file());
    assert!(
        scratch.path().join("file").is_file(),
        "a live build's scratch"
    );
    assert!(!dead.exists(), "the dead registration is cleared");
    assert_eq!(names(&fx.store().join("live")).len(), 1);

    drop(scratch);
    drop(build);
    let report = fx.collect(0, false);
    let mut gone = removed(&report);
    gone.sort();
    assert_eq!(
        gone,
        vec![
            (EntryKind::Layer, fx.layer(&fx.l1), 1000),
            (EntryKind::Blob, fx.blob(&fx.b1), 300),
        ],
        "once the build is over, its entries are ordinary"
    );
    assert_eq!(report.size_after, 0);
}

#[test]
fn crashed_builds_leftovers_go_after_an_hour() {
    let fx = Fixture::new();
    let tmp = fx.store().join("tmp");
    fs::create_dir_all(tmp.join("upper-crashed/etc")).unwrap();
    fs::write(tmp.join("upper-crashed/etc/conf"), [0; 123]).unwrap();
    // Read-only directories, as images have, must not stop the removal.
    fs::set_permissions(
        tmp.join("upper-crashed/etc"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    fs::write(tmp.join(".tmpblob"), [0; 77]).unwrap();
    let trash = fx.store().join("trash/run-crashed");
    fs::create_dir_all(&trash).unwrap();
    fs::write(trash.join("0"), b"left by a crashed gc").unwrap();

    let young = fx.collect(1 << 30, false);
    assert_eq!(young.removed, vec![], "not an hour old yet");
    assert_eq!(names(&tmp).len(), 2);

    let opts = GcOptions {
        now: SystemTime::now() + 2 * HOUR,
        ..GcOptions::new(1 << 30, false)
    };
    let report = gc::collect(fx.kiln(), &opts).unwrap();
    assert_eq!(
        removed(&report),
        vec![
            (EntryKind::Temp, tmp.join(".tmpblob"), 77),
            (EntryKind::Temp, tmp.join("upper-crashed"), 123),
        ]
    );
    assert_eq!(
        report.summary(),
        "Removed 2 stale temp files, freed 200 B; store is now 4.4 KiB"
    );
    assert_eq!(names(&tmp), Vec::<String>::new());
    assert_eq!(names(&fx.store().join("trash")), Vec::<String>::new());
    assert_eq!(
        report.size_after, 4500,
        "layers and blobs are under the limit"
    );
}

#[test]
fn blobs_linked_elsewhere_are_neither_counted_nor_removed() {
    let fx = Fixture::new();
    let layout = fx.dir.path().join("layout-blob");
    fs::hard_link(fx.blob(&fx.b3), &layout).unwrap();
    let report = fx.collect(0, false);
    assert_eq!(report.size_before, 4000);
    assert_eq!(report.count(EntryKind::Blob), 2);
    assert!(fx.blob(&fx.b3).is_file());
    // The store still works after a full collection.
    let store = Store::open(fx.kiln()).unwrap();
    let d = store.put_bytes(b"fresh").unwrap();
    assert!(store.has_blob(&d));
}

#[test]
fn kiln_gc_logs_what_it_freed() {
    let fx = Fixture::new();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["gc", "--kaniko-dir"])
        .arg(fx.kiln())
        .args(["--max-size", "2600B", "--log-format", "text"])
        .env_remove("KILN_STORE_MAX_SIZE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("] Removed 1 layer and 2 blobs, freed 2.0 KiB; store is now 2.4 KiB"),
        "{stderr}"
    );
    assert!(!fx.layer(&fx.l1).exists());

    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["gc", "--dry-run", "--max-size", "ten gigs", "--kaniko-dir"])
        .arg(fx.kiln())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid size \"ten gigs\""), "{stderr}");
}
