//! Content digests of build-context files, remembered across builds, so
//! that keying a warm rebuild's `COPY` does not read the files again (the
//! cache key needs their content: reading 500 MiB costs more than the rest
//! of a cached build, and so do the 20,000 opens and reads of a tree of
//! small files, where a lookup costs a tenth of a microsecond).
//!
//! An entry is trusted only while the file's device, inode, size,
//! modification time and change time are all unchanged. The change time
//! cannot be set by anyone, and moves on every write. What stays is git's
//! "racy" case: a write in the same clock tick as the recorded times. So a
//! digest is only recorded for a file whose change time is at least
//! [`SETTLED`] older than the moment its hashing started. Within one build,
//! where keys are worked out ahead of the steps and again when they run,
//! every digest is kept: nothing writes to the context meanwhile.

use crate::digest::Digest;
use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a file must have been left alone before its digest counts.
pub const SETTLED: Duration = Duration::from_secs(2);
/// Entries kept on disk at most (about 12 MiB); a larger table keeps only
/// those this build used.
const MAX_ENTRIES: usize = 1 << 17;
/// The first line of the file; a table in another format is dropped.
const HEADER: &str = "kiln-file-digests-v1";

/// What identifies one version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(md: &Metadata) -> Stamp {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
        }
    }

    fn line(&self, digest: &Digest) -> String {
        format!(
            "{} {} {} {} {} {digest}\n",
            self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns
        )
    }

    fn parse(line: &str) -> Option<(Stamp, Digest)> {
        let mut f = line.split(' ');
        let stamp = Stamp {
            dev: f.next()?.parse().ok()?,
            ino: f.next()?.parse().ok()?,
            size: f.next()?.parse().ok()?,
            mtime_ns: f.next()?.parse().ok()?,
            ctime_ns: f.next()?.parse().ok()?,
        };
        let digest: Digest = f.next()?.parse().ok()?;
        f.next().is_none().then_some((stamp, digest))
    }
}

/// The remembered digests, loaded once per build and saved at its end.
pub struct FileDigests {
    path: PathBuf,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    known: HashMap<Stamp, Digest>,
    /// Digests of this build that are not settled enough to keep.
    session: HashMap<Stamp, Digest>,
    /// Entries this build looked up or added.
    used: HashSet<Stamp>,
    changed: bool,
}

impl FileDigests {
    /// Loads the table at `path`; a missing or unreadable one is empty,
    /// since everything in it can be computed again.
    pub fn open(path: &Path) -> FileDigests {
        let mut table = Table::default();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut lines = text.lines();
                if lines.next() == Some(HEADER) {
                    table.known = lines.filter_map(Stamp::parse).collect();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::debug!("ignoring the file digest table {}: {e}", path.display()),
        }
        FileDigests {
            path: path.to_owned(),
            table: Mutex::new(table),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The remembered digest of the file `md` describes, if it is unchanged.
    pub fn get(&self, md: &Metadata) -> Option<Digest> {
        let stamp = Stamp::of(md);
        let mut table = self.table();
        if let Some(digest) = table.session.get(&stamp) {
            return Some(digest.clone());
        }
        let digest = table.known.get(&stamp).cloned()?;
        table.used.insert(stamp);
        Some(digest)
    }

    /// Remembers `digest` for the file `md` describes: for this build, and
    /// for later ones if that file had been left alone for [`SETTLED`] when
    /// hashing began at `started`.
    pub fn remember(&self, md: &Metadata, digest: &Digest, started: SystemTime) {
        let stamp = Stamp::of(md);
        let started_ns = started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let mut table = self.table();
        if started_ns - stamp.ctime_ns < SETTLED.as_nanos() as i128 {
            table.session.insert(stamp, digest.clone());
            return;
        }
        table.used.insert(stamp);
        if table.known.insert(stamp, digest.clone()).as_ref() != Some(digest) {
            table.changed = true;
        }
    }

    /// Writes the table back if this build added to it (atomically: builds
    /// sharing the kiln directory never see half a table).
    pub fn save(&self) -> io::Result<()> {
        let table = self.table();
        if !table.changed {
            return Ok(());
        }
        let keep_all = table.known.len() <= MAX_ENTRIES;
        let mut text = format!("{HEADER}\n");
        for (stamp, digest) in &table.known {
            if keep_all || table.used.contains(stamp) {
                text.push_str(&stamp.line(digest));
            }
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        io::Write::write_all(&mut tmp, text.as_bytes())?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![byte; 1 << 20]).unwrap();
        path
    }

    fn later() -> SystemTime {
        SystemTime::now() + SETTLED + Duration::from_secs(1)
    }

    #[test]
    fn digests_survive_a_reload_and_die_with_any_change() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("state/file-digests");
        let file = big_file(dir.path(), "big", 1);
        let digest = Digest::of(b"content");
        let memo = FileDigests::open(&table);
        let md = std::fs::metadata(&file).unwrap();
        assert_eq!(memo.get(&md), None);
        memo.remember(&md, &digest, later());
        memo.save().unwrap();

        let memo = FileDigests::open(&table);
        assert_eq!(memo.get(&md), Some(digest.clone()));
        // A rewrite with the same size and a restored mtime still moves ctime.
        let mtime = filetime_of(&md);
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&file, vec![2u8; 1 << 20]).unwrap();
        set_mtime(&file, mtime);
        let rewritten = std::fs::metadata(&file).unwrap();
        assert_eq!(rewritten.mtime(), md.mtime());
        assert_eq!(memo.get(&rewritten), None);
    }

    #[test]
    fn fresh_files_are_remembered_for_one_build_and_small_ones_too() {
        let dir = tempfile::tempdir().unwrap();
        let memo = FileDigests::open(&dir.path().join("t"));
        let file = big_file(dir.path(), "fresh", 1);
        let md = std::fs::metadata(&file).unwrap();
        // Hashing began right after the write: a write in the same tick
        // could follow unseen, so only this build may use the digest.
        memo.remember(&md, &Digest::of(b"x"), SystemTime::now());
        assert_eq!(memo.get(&md), Some(Digest::of(b"x")));
        memo.save().unwrap();
        assert_eq!(FileDigests::open(&dir.path().join("t")).get(&md), None);
        assert!(!dir.path().join("t").exists(), "nothing to save");
        std::fs::write(dir.path().join("small"), b"tiny").unwrap();
        let small = std::fs::metadata(dir.path().join("small")).unwrap();
        memo.remember(&small, &Digest::of(b"y"), later());
        memo.save().unwrap();
        assert_eq!(
            FileDigests::open(&dir.path().join("t")).get(&small),
            Some(Digest::of(b"y"))
        );
    }

    #[test]
    fn damaged_tables_are_empty_tables() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("t");
        std::fs::write(&table, "kiln-file-digests-v1\n1 2 nonsense\n").unwrap();
        let file = big_file(dir.path(), "big", 3);
        let md = std::fs::metadata(&file).unwrap();
        assert_eq!(FileDigests::open(&table).get(&md), None);
        std::fs::write(&table, "another-format\n").unwrap();
        assert_eq!(FileDigests::open(&table).get(&md), None);
    }

    fn filetime_of(md: &Metadata) -> (i64, i64) {
        (md.mtime(), md.mtime_nsec())
    }

    fn set_mtime(path: &Path, (secs, nsec): (i64, i64)) {
        let t = UNIX_EPOCH + Duration::new(secs as u64, nsec as u32);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(t))
            .unwrap();
    }
}
