//! Container-root snapshots: a parallel stat walk of the live root, and the
//! difference between two walks.
//!
//! Without overlayfs nothing records what a step changed, so kiln compares
//! what `stat` says now with what it said after the previous step. Every
//! change to a file's content, mode, owner or xattrs moves its ctime, which
//! user space cannot set, so stat alone decides almost everything. The
//! exception is git's "racy" file: one written within the kernel's
//! timestamp granularity before the previous walk, where a second write in
//! the same tick leaves every stat field equal. With `--snapshot-mode=full`
//! such files are hashed at the walk and hashed again at the next one.

use super::SnapshotError;
use crate::layer::Exclusions;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// `--snapshot-mode`: which attributes decide that a path changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Every stat field, and a content hash where stat is ambiguous.
    #[default]
    Full,
    /// Every stat field (type, mode, owner, size, times, inode), no hashing.
    Redo,
    /// The timestamps only (mtime and ctime), as kaniko's `time` mode
    /// looks at mtime; ctime is kept because chmod, chown and setcap
    /// move nothing else.
    Time,
}

/// A point in time as seconds and nanoseconds since the epoch.
pub type Stamp = (i64, i64);

/// How long after a write the kernel may still give a second write the
/// same timestamp: its coarse clock ticks every 1 to 10 ms, and the walk's
/// own clock is a finer one.
const RACY_WINDOW_NS: i64 = 100_000_000;

/// What one walk saw of one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `st_mode`, file type bits included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Stamp,
    pub ctime: Stamp,
    pub ino: u64,
    pub nlink: u64,
    pub rdev: u64,
    /// SHA-256 of a regular file's content, for files the walk found racy.
    pub digest: Option<[u8; 32]>,
}

impl Stat {
    fn of(meta: &std::fs::Metadata) -> Stat {
        Stat {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            nlink: meta.nlink(),
            rdev: meta.rdev(),
            digest: None,
        }
    }

    fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }

    fn is_file(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }
}

/// Everything one walk saw: relative paths (`a/b`) to their stat.
#[derive(Clone, Debug, Default)]
pub struct Index {
    entries: HashMap<Vec<u8>, Stat>,
}

impl Index {
    /// An index of the given entries.
    pub fn from_entries(entries: impl IntoIterator<Item = (Vec<u8>, Stat)>) -> Self {
        Index {
            entries: entries.into_iter().collect(),
        }
    }

    /// Number of paths.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the walk found nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the walk saw at `path`.
    pub fn get(&self, path: &[u8]) -> Option<&Stat> {
        self.entries.get(path)
    }
}

/// What changed between two walks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Paths that are new or changed, sorted.
    pub present: Vec<Vec<u8>>,
    /// Paths that are gone, sorted; only the topmost of a deleted tree, and
    /// nothing under a directory that a non-directory replaced.
    pub deleted: Vec<Vec<u8>>,
    /// Regular files whose stat is unchanged but was racy: the caller
    /// compares their content with the digest the previous walk recorded.
    pub ambiguous: Vec<Vec<u8>>,
}

fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

fn stamp_ge(a: Stamp, b: Stamp) -> bool {
    a >= b
}

fn changed(old: &Stat, new: &Stat, mode: SnapshotMode, since: Option<Stamp>) -> bool {
    if old.file_type() != new.file_type() {
        return true;
    }
    if let Some(t) = since {
        return stamp_ge(new.ctime, t) || stamp_ge(new.mtime, t);
    }
    let times = old.mtime != new.mtime || old.ctime != new.ctime;
    match mode {
        SnapshotMode::Time => times,
        SnapshotMode::Full | SnapshotMode::Redo => {
            times
                || old.mode != new.mode
                || old.uid != new.uid
                || old.gid != new.gid
                || old.size != new.size
                || old.ino != new.ino
                || old.rdev != new.rdev
                || (!new.is_dir() && old.nlink != new.nlink)
        }
    }
}

/// The difference between the walk before a step (`old`) and after it
/// (`new`). With `since` (`--use-new-run`), a path that exists in both
/// counts as changed only if its mtime or ctime is at or after `since`.
pub fn diff(old: &Index, new: &Index, mode: SnapshotMode, since: Option<Stamp>) -> Changes {
    let mut out = Changes::default();
    let mut kept = 0;
    for (path, n) in &new.entries {
        let Some(o) = old.entries.get(path) else {
            out.present.push(path.clone());
            continue;
        };
        kept += 1;
        if changed(o, n, mode, since) {
            out.present.push(path.clone());
        } else if mode == SnapshotMode::Full && o.digest.is_some() && n.is_file() {
            out.ambiguous.push(path.clone());
        }
    }
    // Most steps delete nothing: then every old path was found above, and
    // looking each up again is the walk's most expensive part.
    let deletions = old.entries.len() > kept;
    for path in old.entries.keys().filter(|_| deletions) {
        if new.entries.contains_key(path) {
            continue;
        }
        let up = parent(path);
        let parent_is_dir = up.is_empty() || new.entries.get(up).is_some_and(Stat::is_dir);
        let parent_gone = !up.is_empty() && !new.entries.contains_key(up);
        if parent_is_dir && !parent_gone {
            out.deleted.push(path.clone());
        }
    }
    out.present.sort();
    out.deleted.sort();
    out.ambiguous.sort();
    out
}

/// The current time as a [`Stamp`].
pub fn now() -> Stamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i64::from(d.subsec_nanos()),
    )
}

/// `t` moved back by the racy window, so that a write the coarse kernel
/// clock stamped a little before `t` still counts as at or after it.
pub fn before_racy_window((secs, nanos): Stamp) -> Stamp {
    let total = nanos - RACY_WINDOW_NS;
    if total >= 0 {
        (secs, total)
    } else {
        (secs - 1, total + 1_000_000_000)
    }
}

/// The SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hasher.finalize().into())
}

/// Directories waiting to be read, shared by the walkers.
struct Queue {
    state: Mutex<(Vec<Vec<u8>>, usize)>,
    ready: Condvar,
}

impl Queue {
    /// The next directory, or `None` once every walker is idle and the
    /// queue is empty.
    fn pop(&self) -> Option<Vec<u8>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(dir) = state.0.pop() {
                state.1 += 1;
                return Some(dir);
            }
            if state.1 == 0 {
                self.ready.notify_all();
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn push_all(&self, dirs: Vec<Vec<u8>>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0.extend(dirs);
        state.1 -= 1;
        self.ready.notify_all();
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        p.extend_from_slice(dir);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Walks `root` with one thread per CPU, skipping `exclude`, and records
/// every path's stat; with `hash_racy`, racy regular files are hashed too.
pub fn scan(root: &Path, exclude: &Exclusions, hash_racy: bool) -> Result<Index, SnapshotError> {
    let racy_from = before_racy_window(now());
    let queue = Queue {
        state: Mutex::new((vec![Vec::new()], 0)),
        ready: Condvar::new(),
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let results: Vec<Result<Walked, SnapshotError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| s.spawn(|| walk(root, exclude, &queue, hash_racy.then_some(racy_from))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut entries = HashMap::new();
    for r in results {
        entries.extend(r?);
    }
    Ok(Index { entries })
}

/// What one walker saw.
type Walked = Vec<(Vec<u8>, Stat)>;

fn walk(
    root: &Path,
    exclude: &Exclusions,
    queue: &Queue,
    racy_from: Option<Stamp>,
) -> Result<Walked, SnapshotError> {
    let mut out = Vec::new();
    while let Some(dir) = queue.pop() {
        let read = read_dir(root, &dir, exclude, racy_from, &mut out);
        match read {
            Ok(subdirs) => queue.push_all(subdirs),
            Err(e) => {
                // Let the other walkers finish instead of waiting forever.
                queue.push_all(Vec::new());
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn read_dir(
    root: &Path,
    dir: &[u8],
    exclude: &Exclusions,
    racy_from: Option<Stamp>,
    out: &mut Walked,
) -> Result<Vec<Vec<u8>>, SnapshotError> {
    let host: PathBuf = root.join(OsStr::from_bytes(dir));
    let fail = |source: std::io::Error, path: &Path| SnapshotError::Walk {
        path: path.to_owned(),
        source,
    };
    let mut subdirs = Vec::new();
    let entries = match std::fs::read_dir(&host) {
        Ok(e) => e,
        // Removed by a process still running after its step.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(subdirs),
        Err(e) => return Err(fail(e, &host)),
    };
    for ent in entries {
        let ent = ent.map_err(|e| fail(e, &host))?;
        let rel = join(dir, ent.file_name().as_bytes());
        if exclude.contains(&rel) {
            continue;
        }
        let meta = match ent.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail(e, &ent.path())),
        };
        let mut stat = Stat::of(&meta);
        if stat.is_dir() {
            subdirs.push(rel.clone());
        } else if let Some(from) = racy_from
            && stat.is_file()
            && stamp_ge(stat.ctime, from)
        {
            stat.digest = Some(hash_file(&ent.path()).map_err(|e| fail(e, &ent.path()))?);
        }
        out.push((rel, stat));
    }
    Ok(subdirs)
}

/// Mount points named in `/proc/self/mountinfo` content (field 5, with the
/// kernel's octal escapes for space, tab, newline and backslash undone).
pub fn mount_points(mountinfo: &str) -> Vec<Vec<u8>> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

fn unescape_octal(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| {
            b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn st(mode: u32, size: u64, mtime: i64, ctime: i64, ino: u64) -> Stat {
        Stat {
            mode,
            uid: 0,
            gid: 0,
            size,
            mtime: (mtime, 0),
            ctime: (ctime, 0),
            ino,
            nlink: 1,
            rdev: 0,
            digest: None,
        }
    }

    const F: u32 = libc::S_IFREG | 0o644;
    const D: u32 = libc::S_IFDIR | 0o755;
    const L: u32 = libc::S_IFLNK | 0o777;

    fn index(entries: &[(&str, Stat)]) -> Index {
        Index::from_entries(
            entries
                .iter()
                .map(|(p, s)| (p.as_bytes().to_vec(), s.clone())),
        )
    }

    fn names(v: &[Vec<u8>]) -> Vec<&str> {
        v.iter().map(|p| std::str::from_utf8(p).unwrap()).collect()
    }

    #[test]
    fn new_changed_and_deleted_paths_are_found() {
        let old = index(&[
            ("etc", st(D, 0, 1, 1, 1)),
            ("etc/a", st(F, 3, 1, 1, 2)),
            ("etc/b", st(F, 3, 1, 1, 3)),
            ("etc/gone", st(F, 3, 1, 1, 4)),
            ("keep", st(F, 3, 1, 1, 5)),
        ]);
        let new = index(&[
            ("etc", st(D, 0, 2, 2, 1)),
            ("etc/a", st(F, 4, 2, 2, 2)),
            ("etc/b", st(F | 0o4000, 3, 1, 2, 3)),
            ("etc/new", st(F, 1, 2, 2, 6)),
            ("keep", st(F, 3, 1, 1, 5)),
        ]);
        let c = diff(&old, &new, SnapshotMode::Redo, None);
        assert_eq!(names(&c.present), ["etc", "etc/a", "etc/b", "etc/new"]);
        assert_eq!(names(&c.deleted), ["etc/gone"]);
        assert!(c.ambiguous.is_empty());
    }

    #[test]
    fn only_the_top_of_a_deleted_tree_is_a_whiteout() {
        let old = index(&[
            ("d", st(D, 0, 1, 1, 1)),
            ("d/x", st(D, 0, 1, 1, 2)),
            ("d/x/y", st(F, 1, 1, 1, 3)),
            ("f", st(D, 0, 1, 1, 4)),
            ("f/child", st(F, 1, 1, 1, 5)),
        ]);
        // d removed; f, a directory, replaced by a file.
        let new = index(&[("f", st(F, 1, 2, 2, 6))]);
        let c = diff(&old, &new, SnapshotMode::Full, None);
        assert_eq!(names(&c.deleted), ["d"]);
        assert_eq!(names(&c.present), ["f"]);
    }

    #[test]
    fn modes_differ_in_what_they_compare() {
        // A metadata change that left both timestamps alone (only possible
        // in a racy tick): redo sees it, time does not.
        let old = index(&[("f", st(F, 3, 1, 1, 2))]);
        let new = index(&[("f", st(F | 0o100, 3, 1, 1, 2))]);
        assert_eq!(
            names(&diff(&old, &new, SnapshotMode::Redo, None).present),
            ["f"]
        );
        assert!(
            diff(&old, &new, SnapshotMode::Time, None)
                .present
                .is_empty()
        );
        // A ctime change alone (chmod, setcap) is seen by every mode.
        let new = index(&[("f", st(F, 3, 1, 5, 2))]);
        for mode in [SnapshotMode::Full, SnapshotMode::Redo, SnapshotMode::Time] {
            assert_eq!(names(&diff(&old, &new, mode, None).present), ["f"]);
        }
        // A type change always counts.
        let new = index(&[("f", st(L, 3, 1, 1, 2))]);
        assert_eq!(
            names(&diff(&old, &new, SnapshotMode::Time, None).present),
            ["f"]
        );
    }

    #[test]
    fn racy_files_are_ambiguous_in_full_mode_only() {
        let mut racy = st(F, 3, 1, 1, 2);
        racy.digest = Some([7; 32]);
        let old = index(&[("f", racy)]);
        let new = index(&[("f", st(F, 3, 1, 1, 2))]);
        assert_eq!(
            names(&diff(&old, &new, SnapshotMode::Full, None).ambiguous),
            ["f"]
        );
        assert!(
            diff(&old, &new, SnapshotMode::Redo, None)
                .ambiguous
                .is_empty()
        );
    }

    #[test]
    fn since_counts_only_paths_touched_after_it() {
        let old = index(&[("a", st(F, 1, 1, 1, 1)), ("b", st(F, 1, 1, 1, 2))]);
        let new = index(&[("a", st(F, 1, 1, 1, 1)), ("b", st(F, 2, 9, 9, 2))]);
        let c = diff(&old, &new, SnapshotMode::Full, Some((5, 0)));
        assert_eq!(names(&c.present), ["b"]);
    }

    #[test]
    fn the_racy_window_borrows_from_the_seconds() {
        assert_eq!(before_racy_window((10, 50_000_000)), (9, 950_000_000));
        assert_eq!(before_racy_window((10, 500_000_000)), (10, 400_000_000));
    }

    #[test]
    fn mountinfo_mount_points_are_unescaped() {
        let info = "22 1 0:21 / / rw,relatime - overlay overlay rw\n\
                    30 22 0:5 / /dev rw - devtmpfs udev rw\n\
                    31 22 8:1 /ctx /work\\040space rw - ext4 /dev/sda1 rw\n\
                    32 22 8:1 /x /a\\134b rw - ext4 /dev/sda1 rw\n";
        assert_eq!(
            mount_points(info),
            [
                b"/".to_vec(),
                b"/dev".to_vec(),
                b"/work space".to_vec(),
                b"/a\\b".to_vec()
            ]
        );
    }

    #[test]
    fn a_walk_sees_every_path_but_the_excluded_ones() {
        let root = tempfile::tempdir().unwrap();
        for d in ["a/b/c", "skip/deep", "d"] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        for (i, f) in ["a/1", "a/b/2", "a/b/c/3", "skip/deep/x", "d/4"]
            .iter()
            .enumerate()
        {
            fs::write(root.path().join(f), vec![b'x'; i]).unwrap();
        }
        std::os::unix::fs::symlink("/nowhere", root.path().join("a/link")).unwrap();
        let ex = Exclusions::new(["/skip"]);
        let idx = scan(root.path(), &ex, true).unwrap();
        let mut got: Vec<&str> = idx
            .entries
            .keys()
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "a", "a/1", "a/b", "a/b/2", "a/b/c", "a/b/c/3", "a/link", "d", "d/4"
            ]
        );
        assert_eq!(idx.get(b"a/b/c/3").unwrap().size, 2);
        assert_eq!(
            idx.get(b"a/link").unwrap().mode & libc::S_IFMT,
            libc::S_IFLNK
        );
        // Just written, so racy: hashed.
        let digest: [u8; 32] = Sha256::digest(b"xx").into();
        assert_eq!(idx.get(b"a/b/c/3").unwrap().digest, Some(digest));
        // Nothing changed since: no difference.
        let again = scan(root.path(), &ex, false).unwrap();
        let c = diff(&idx, &again, SnapshotMode::Redo, None);
        assert_eq!(c, Changes::default());
    }
}
