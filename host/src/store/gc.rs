//! Garbage collection of the store by size: `kiln gc`, and the same
//! collection after every build when the store is over its limit.
//!
//! **What goes.** Extracted layers (`layers/<hex>`) and blobs
//! (`blobs/sha256/<hex>`), least recently used first, until the store is at
//! most the limit; besides, whatever crashed builds left in `tmp/`, the
//! registrations of builds that died, and the trash of a gc that died. The
//! size of an entry is the apparent size of its files (a hard-linked file
//! counts once); a layer's is measured once and kept in `sizes/<hex>`, as
//! layers never change. A blob that is hard-linked elsewhere (the base-image
//! cache, an OCI layout) is neither counted nor removed: removing it would
//! free nothing.
//!
//! **Never what a running build uses.**
//! - Every open [`Store`](super::Store) holds an exclusive `flock` on its own
//!   file in `live/`, whose modification time is when it opened. The lock
//!   dies with the process, so a crashed build stops counting at once.
//! - A build marks an entry used before relying on it by setting the entry's
//!   access time to now: explicitly, because `relatime` makes the kernel's
//!   own access times unreliable. It marks and creates entries under the
//!   shared side of `gc.lock`.
//! - gc decides and moves entries out under the exclusive side of
//!   `gc.lock`, and keeps every entry marked since the oldest live
//!   registration opened (less a minute of clock slack): whatever a live
//!   build has marked is at least that recent. A build that looks for an
//!   entry after gc took it finds it missing and fetches or extracts it
//!   again, as a first build would.
//! - Entries leave by an atomic rename into `trash/` under the lock, and are
//!   deleted after it is released, so builds wait for gc's decision, never
//!   for its deletions. gc does not block on builds, nor builds on each other.
//! - A `tmp/` entry is stale when its status-change time, which nothing can
//!   set back, is older than an hour and than the oldest live registration.

use super::{BLOBS_DIR, GC_LOCK, LAYERS_DIR, LIVE_DIR, TMP_DIR, open_gc_lock, write_atomic};
use rustix::fs::{FlockOperation, Mode, OFlags};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The automatic limit's ceiling: 20 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 20 << 30;
/// How far gc trusts the clock: marks this much older than a live
/// registration still count as that build's.
const CLOCK_SLACK: Duration = Duration::from_secs(60);
/// How old an unowned temporary must be before gc removes it.
const TEMP_GRACE: Duration = Duration::from_secs(3600);
const SIZES_DIR: &str = "sizes";
const TRASH_DIR: &str = "trash";

/// Garbage-collection failures.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("kiln gc cannot {action} {path}: {source}; run it as the user that runs the builds")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GcError + 'a {
    move |source| GcError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What a store entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    /// An extracted layer directory.
    Layer,
    /// A content-addressed blob.
    Blob,
    /// A leftover of a crashed build in `tmp/`.
    Temp,
}

/// One removable entry of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// Where it is (for a removed entry: where it was).
    pub path: PathBuf,
    /// Apparent size of its files, in bytes.
    pub size: u64,
    /// When a build last marked it used (for a temporary: its last change).
    pub last_used: SystemTime,
}

/// How to collect.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// The size to shrink the store to, in bytes.
    pub max_size: u64,
    /// Only report what would go.
    pub dry_run: bool,
    /// The time that temporaries' ages are measured from.
    pub now: SystemTime,
}

impl GcOptions {
    /// Options for collecting now.
    pub fn new(max_size: u64, dry_run: bool) -> GcOptions {
        GcOptions {
            max_size,
            dry_run,
            now: SystemTime::now(),
        }
    }
}

/// What a collection removed (or would have, in a dry run).
#[derive(Clone, Debug)]
pub struct GcReport {
    /// The removed entries, oldest use first, temporaries last.
    pub removed: Vec<Entry>,
    /// Size of the layers and blobs before.
    pub size_before: u64,
    /// Size of the layers and blobs after.
    pub size_after: u64,
    /// The limit collected to.
    pub max_size: u64,
    pub dry_run: bool,
}

impl GcReport {
    /// Bytes freed, temporaries included.
    pub fn freed(&self) -> u64 {
        self.removed.iter().map(|e| e.size).sum()
    }

    /// How many entries of `kind` were removed.
    pub fn count(&self, kind: EntryKind) -> usize {
        self.removed.iter().filter(|e| e.kind == kind).count()
    }

    /// The one-line account for the log.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = [
            (EntryKind::Layer, "layer", "layers"),
            (EntryKind::Blob, "blob", "blobs"),
            (EntryKind::Temp, "stale temp file", "stale temp files"),
        ]
        .into_iter()
        .filter_map(|(kind, one, many)| match self.count(kind) {
            0 => None,
            1 => Some(format!("1 {one}")),
            n => Some(format!("{n} {many}")),
        })
        .collect();
        let mut line = match (parts.as_slice(), self.dry_run) {
            ([], _) => format!(
                "Nothing to remove; store is {} (limit {})",
                format_size(self.size_after),
                format_size(self.max_size)
            ),
            (_, true) => format!(
                "Would remove {}, freeing {}; store would be {}",
                join_list(&parts),
                format_size(self.freed()),
                format_size(self.size_after)
            ),
            (_, false) => format!(
                "Removed {}, freed {}; store is now {}",
                join_list(&parts),
                format_size(self.freed()),
                format_size(self.size_after)
            ),
        };
        if self.size_after > self.max_size {
            line.push_str(&format!(
                "; still above the limit of {}: the rest is in use by running builds",
                format_size(self.max_size)
            ));
        }
        line
    }
}

fn join_list(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Parses a size such as `500MB`, `10GiB`, `1.5G` or `4096`: decimal units
/// (`kB`, `MB`, `GB`, `TB`) count in thousands, binary ones (`KiB`, `MiB`,
/// `GiB`, `TiB`, and the bare letters `K`, `M`, `G`, `T`) in 1024s; case is
/// ignored.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let err = || {
        format!("invalid size {s:?}: expected a number and a unit, such as 500MB, 10GiB or 1.5G")
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(err());
    }
    let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        _ => return Err(err()),
    };
    let parse = |digits: &str| -> Result<u128, String> {
        if digits.is_empty() {
            Ok(0)
        } else {
            digits.parse::<u128>().map_err(|_| err())
        }
    };
    let frac_digits = u32::try_from(frac.len()).map_err(|_| err())?;
    let scale = 10u128.checked_pow(frac_digits).ok_or_else(err)?;
    let bytes = parse(whole)?
        .checked_mul(multiplier)
        .and_then(|w| w.checked_add(parse(frac).ok()? * multiplier / scale))
        .ok_or_else(err)?;
    u64::try_from(bytes).map_err(|_| err())
}

/// Renders a byte count for people: `512 B`, `1.2 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The automatic limit for a store on a filesystem of `fs_size` bytes:
/// a tenth of it, at most [`DEFAULT_MAX_SIZE`].
fn default_limit(fs_size: Option<u64>) -> u64 {
    fs_size.map_or(DEFAULT_MAX_SIZE, |s| (s / 10).min(DEFAULT_MAX_SIZE))
}

/// The automatic limit of the store in `kiln_dir`: a tenth of its
/// filesystem, at most 20 GiB.
pub fn default_max_size(kiln_dir: &Path) -> u64 {
    let fs_size = kiln_dir
        .ancestors()
        .find_map(|p| rustix::fs::statvfs(p).ok())
        .map(|s| s.f_blocks.saturating_mul(s.f_frsize));
    default_limit(fs_size)
}

/// The entries gc removes, as indices into `entries`: least recently used
/// first, until what is left is at most `limit`. Entries used at or after
/// `in_use_since` (when some build that is still running may have marked
/// them) are never chosen.
#[derive(Debug, PartialEq, Eq)]
struct Selection {
    victims: Vec<usize>,
    /// Size of the entries left.
    remaining: u64,
}

fn select(entries: &[Entry], limit: u64, in_use_since: Option<SystemTime>) -> Selection {
    let mut remaining: u64 = entries.iter().map(|e| e.size).sum();
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| in_use_since.is_none_or(|t| entries[i].last_used < t))
        .collect();
    order.sort_by(|&a, &b| {
        let key = |e: &Entry| (e.last_used, e.kind, e.path.clone());
        key(&entries[a]).cmp(&key(&entries[b]))
    });
    let mut victims = Vec::new();
    for i in order {
        if remaining <= limit {
            break;
        }
        remaining -= entries[i].size;
        victims.push(i);
    }
    Selection { victims, remaining }
}

/// Whether a temporary last changed at `changed` belongs to nobody: older
/// than an hour and than any live build.
fn is_stale_temp(changed: SystemTime, in_use_since: Option<SystemTime>, now: SystemTime) -> bool {
    let hour_ago = now.checked_sub(TEMP_GRACE).unwrap_or(UNIX_EPOCH);
    changed < hour_ago && in_use_since.is_none_or(|t| changed < t)
}

/// Runs the automatic collection after a build: to `max_size`, or to
/// [`default_max_size`]. It logs what it freed and never fails the build.
pub fn after_build(kiln_dir: &Path, max_size: Option<u64>) {
    let max_size = max_size.unwrap_or_else(|| default_max_size(kiln_dir));
    match collect(kiln_dir, &GcOptions::new(max_size, false)) {
        Ok(report) if report.removed.is_empty() => log::debug!("{}", report.summary()),
        Ok(report) => log::info!("{}", report.summary()),
        Err(e) => log::warn!("{e}; the store was not collected (kiln gc retries it)"),
    }
}

/// Collects the store in `kiln_dir` down to `opts.max_size`.
pub fn collect(kiln_dir: &Path, opts: &GcOptions) -> Result<GcReport, GcError> {
    let root = kiln_dir.join("store");
    let mut report = GcReport {
        removed: Vec::new(),
        size_before: 0,
        size_after: 0,
        max_size: opts.max_size,
        dry_run: opts.dry_run,
    };
    if !root.is_dir() {
        log::debug!("{} holds no store; nothing to collect", kiln_dir.display());
        return Ok(report);
    }
    // Measuring layers walks them: done before taking the lock, which only
    // covers the decision.
    let layer_sizes = measure_layers(&root, !opts.dry_run, opts.now)?;

    let lock_path = root.join(GC_LOCK);
    let lock = open_gc_lock(&root).map_err(io_err("open", &lock_path))?;
    rustix::fs::flock(&lock, FlockOperation::LockExclusive)
        .map_err(|e| io_err("lock", &lock_path)(e.into()))?;
    let in_use_since = oldest_live(&root, opts.dry_run)?;
    let entries = list_entries(&root, &layer_sizes)?;
    report.size_before = entries.iter().map(|e| e.size).sum();
    let selection = select(&entries, opts.max_size, in_use_since);
    report.size_after = selection.remaining;
    let temps = stale_temps(&root, in_use_since, opts.now)?;
    let mut removed: Vec<Entry> = selection
        .victims
        .iter()
        .map(|&i| entries[i].clone())
        .collect();

    if opts.dry_run {
        drop(lock);
        for path in temps {
            let size = tree_size(&path);
            removed.push(Entry {
                kind: EntryKind::Temp,
                path,
                size,
                last_used: opts.now,
            });
        }
        report.removed = removed;
        return Ok(report);
    }

    let trash_root = root.join(TRASH_DIR);
    fs::create_dir_all(&trash_root).map_err(io_err("create", &trash_root))?;
    let run = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&trash_root)
        .map_err(io_err("create", &trash_root))?
        .keep();
    let mut moved = Vec::new();
    for (n, entry) in removed.into_iter().enumerate() {
        let to = run.join(format!("{n}"));
        match fs::rename(&entry.path, &to) {
            Ok(()) => {
                if entry.kind == EntryKind::Layer
                    && let Some(name) = entry.path.file_name()
                {
                    let _ = fs::remove_file(root.join(SIZES_DIR).join(name));
                }
                log::debug!("Removing {}", entry.path.display());
                moved.push(entry);
            }
            Err(e) => {
                log::warn!("kiln gc cannot remove {}: {e}", entry.path.display());
                report.size_after += entry.size;
            }
        }
    }
    let mut stale = Vec::new();
    for (n, path) in temps.into_iter().enumerate() {
        let to = run.join(format!("temp-{n}"));
        match fs::rename(&path, &to) {
            Ok(()) => stale.push((path, to)),
            Err(e) => log::warn!("kiln gc cannot remove {}: {e}", path.display()),
        }
    }
    drop(lock);

    for (path, to) in stale {
        log::debug!("Removing stale temporary {}", path.display());
        moved.push(Entry {
            kind: EntryKind::Temp,
            path,
            size: tree_size(&to),
            last_used: opts.now,
        });
    }
    report.removed = moved;
    empty_trash(&trash_root);
    Ok(report)
}

/// The apparent size of every extracted layer, from `sizes/` or by walking
/// it (and then remembered there when `remember`). Size records whose
/// layer is gone are dropped.
fn measure_layers(
    root: &Path,
    remember: bool,
    now: SystemTime,
) -> Result<HashMap<String, u64>, GcError> {
    let layers = root.join(LAYERS_DIR);
    let sizes_dir = root.join(SIZES_DIR);
    let mut sizes = HashMap::new();
    for (name, path) in list_dir(&layers)? {
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let record = sizes_dir.join(&name);
        let recorded = fs::read_to_string(&record)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let size = match recorded {
            Some(size) => size,
            None => {
                let size = tree_size(&path);
                if remember {
                    let saved = fs::create_dir_all(&sizes_dir)
                        .and_then(|()| write_atomic(&record, size.to_string().as_bytes()));
                    if let Err(e) = saved {
                        log::debug!("cannot record the size of {}: {e}", path.display());
                    }
                }
                size
            }
        };
        sizes.insert(name, size);
    }
    if remember {
        for (name, path) in list_dir(&sizes_dir)? {
            // A write_atomic temp belongs to a concurrent gc until it is old.
            let orphan = if name.starts_with('.') {
                fs::symlink_metadata(&path).is_ok_and(|m| is_stale_temp(ctime(&m), None, now))
            } else {
                !layers.join(&name).exists()
            };
            if orphan {
                let _ = fs::remove_file(&path);
            }
        }
    }
    Ok(sizes)
}

/// When the oldest live user of the store opened it, less the clock slack;
/// none when no build is running. Registrations of dead builds are
/// removed unless `dry_run`.
fn oldest_live(root: &Path, dry_run: bool) -> Result<Option<SystemTime>, GcError> {
    let mut oldest: Option<SystemTime> = None;
    for (_, path) in list_dir(&root.join(LIVE_DIR))? {
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared) {
            Ok(()) => {
                log::debug!("Registration {} is left by a dead build", path.display());
                if !dry_run {
                    let _ = fs::remove_file(&path);
                }
            }
            // Held (or unknowable): a live build, counted from when it opened.
            Err(_) => {
                let opened = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .map_err(io_err("read", &path))?;
                oldest = Some(oldest.map_or(opened, |o| o.min(opened)));
            }
        }
    }
    Ok(oldest.map(|t| t.checked_sub(CLOCK_SLACK).unwrap_or(UNIX_EPOCH)))
}

/// The layers (of known size) and the blobs that only the store holds,
/// with their last use.
fn list_entries(root: &Path, layer_sizes: &HashMap<String, u64>) -> Result<Vec<Entry>, GcError> {
    let mut entries = Vec::new();
    for (name, path) in list_dir(&root.join(LAYERS_DIR))? {
        let (Some(&size), Ok(meta)) = (layer_sizes.get(&name), fs::symlink_metadata(&path)) else {
            continue;
        };
        if meta.is_dir() {
            entries.push(Entry {
                kind: EntryKind::Layer,
                path,
                size,
                last_used: atime(&meta),
            });
        }
    }
    for (_, path) in list_dir(&root.join(BLOBS_DIR))? {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() && meta.nlink() == 1 {
            entries.push(Entry {
                kind: EntryKind::Blob,
                path,
                size: meta.len(),
                last_used: atime(&meta),
            });
        }
    }
    Ok(entries)
}

/// The entries of `tmp/` that no live build can own.
fn stale_temps(
    root: &Path,
    in_use_since: Option<SystemTime>,
    now: SystemTime,
) -> Result<Vec<PathBuf>, GcError> {
    Ok(list_dir(&root.join(TMP_DIR))?
        .into_iter()
        .filter(|(_, path)| {
            fs::symlink_metadata(path).is_ok_and(|m| is_stale_temp(ctime(&m), in_use_since, now))
        })
        .map(|(_, path)| path)
        .collect())
}

/// The names and paths in `dir`, sorted; none when it does not exist.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, GcError> {
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(io_err("list", dir))?;
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    out.sort();
    Ok(out)
}

fn atime(meta: &fs::Metadata) -> SystemTime {
    timestamp(meta.atime(), meta.atime_nsec())
}

fn ctime(meta: &fs::Metadata) -> SystemTime {
    timestamp(meta.ctime(), meta.ctime_nsec())
}

fn timestamp(secs: i64, nanos: i64) -> SystemTime {
    let secs = u64::try_from(secs).unwrap_or(0);
    let nanos = u32::try_from(nanos).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// The apparent size of the files under `path`, each hard-linked inode
/// once; what cannot be read counts as nothing. The top directory is read
/// without touching its access time, which is the store's use mark.
fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut pending: Vec<PathBuf> = top_level_names(path)
        .into_iter()
        .map(|name| path.join(name))
        .collect();
    while let Some(p) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(read) = fs::read_dir(&p) {
                pending.extend(read.filter_map(|e| e.ok().map(|e| e.path())));
            }
        } else if meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino())) {
            total += meta.len();
        }
    }
    total
}

/// The names in directory `path`, read with `O_NOATIME` where the kernel
/// allows it (the owner, or root).
fn top_level_names(path: &Path) -> Vec<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags | OFlags::NOATIME, Mode::empty())
        .or_else(|_| rustix::fs::open(path, flags, Mode::empty()));
    let Ok(dir) = fd.and_then(rustix::fs::Dir::new) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .map(|e| std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
        .filter(|n| n != "." && n != "..")
        .collect()
}

/// Deletes everything in the trash: this run's and what a crashed gc
/// left. A concurrent gc may be deleting the same trees, so what vanishes
/// meanwhile is fine.
fn empty_trash(trash: &Path) {
    let Ok(read) = fs::read_dir(trash) else {
        return;
    };
    for entry in read.flatten() {
        if let Err(e) = remove_tree(&entry.path()) {
            log::warn!(
                "kiln gc cannot delete {}: {e}; remove it by hand (as root if needed)",
                entry.path().display()
            );
        }
    }
}

/// Removes `path` and everything under it, making directories writable
/// first (images hold read-only ones), tolerating concurrent removal.
fn remove_tree(path: &Path) -> io::Result<()> {
    let ignore_missing = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return ignore_missing(fs::remove_file(path));
    }
    if meta.mode() & 0o700 != 0o700 {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() | 0o700));
    }
    let read = match fs::read_dir(path) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in read {
        match entry {
            Ok(entry) => remove_tree(&entry.path())?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    ignore_missing(fs::remove_dir(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(hours_ago: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000) - HOUR * hours_ago as u32
    }

    fn entry(kind: EntryKind, name: &str, size: u64, hours_ago: u64) -> Entry {
        Entry {
            kind,
            path: PathBuf::from(name),
            size,
            last_used: at(hours_ago),
        }
    }

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        let cases: [(&str, u64); 14] = [
            ("0", 0),
            ("4096", 4096),
            ("12B", 12),
            ("500MB", 500_000_000),
            ("500mb", 500_000_000),
            ("10GiB", 10 << 30),
            ("10 GiB", 10 << 30),
            ("10G", 10 << 30),
            ("1.5G", 3 << 29),
            ("2kB", 2000),
            ("2KiB", 2048),
            ("1TB", 1_000_000_000_000),
            ("0.5k", 512),
            (".5Ki", 512),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "GiB",
            "10 parsecs",
            "1.2.3G",
            "-1G",
            "1e9",
            "99999999999TiB",
            ".",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("such as 500MB"), "{bad}: {err}");
        }
    }

    #[test]
    fn sizes_render_in_binary_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(1_288_490_189), "1.2 GiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(20 << 30), "20.0 GiB");
        assert_eq!(format_size(5 << 40), "5.0 TiB");
    }

    #[test]
    fn the_automatic_limit_is_a_tenth_of_the_filesystem_at_most_20_gib() {
        assert_eq!(default_limit(None), 20 << 30);
        assert_eq!(default_limit(Some(50 << 30)), 5 << 30);
        assert_eq!(default_limit(Some(1 << 40)), 20 << 30);
    }

    #[test]
    fn the_least_recently_used_go_first_until_the_store_fits() {
        let entries = [
            entry(EntryKind::Layer, "l-new", 1000, 1),
            entry(EntryKind::Blob, "b-old", 300, 5),
            entry(EntryKind::Layer, "l-old", 2000, 4),
            entry(EntryKind::Blob, "b-mid", 700, 2),
        ];
        // 4000 in all: removing the 5h and 4h entries leaves 1700.
        assert_eq!(
            select(&entries, 2000, None),
            Selection {
                victims: vec![1, 2],
                remaining: 1700
            }
        );
        assert_eq!(
            select(&entries, 4000, None),
            Selection {
                victims: vec![],
                remaining: 4000
            }
        );
        assert_eq!(
            select(&entries, 0, None),
            Selection {
                victims: vec![1, 2, 3, 0],
                remaining: 0
            }
        );
    }

    #[test]
    fn entries_a_live_build_may_have_marked_are_never_chosen() {
        let entries = [
            entry(EntryKind::Blob, "b-old", 300, 5),
            entry(EntryKind::Layer, "l-used", 2000, 3),
            entry(EntryKind::Blob, "b-used", 700, 2),
        ];
        // A build running since 3h ago may use anything marked since then.
        assert_eq!(
            select(&entries, 0, Some(at(3))),
            Selection {
                victims: vec![0],
                remaining: 2700
            }
        );
    }

    #[test]
    fn equal_marks_are_ordered_layers_first_then_by_path() {
        let entries = [
            entry(EntryKind::Blob, "a", 10, 1),
            entry(EntryKind::Layer, "z", 10, 1),
            entry(EntryKind::Layer, "m", 10, 1),
        ];
        assert_eq!(select(&entries, 10, None).victims, vec![2, 1]);
    }

    #[test]
    fn temporaries_are_stale_after_an_hour_and_the_oldest_live_build() {
        let now = at(0);
        assert!(is_stale_temp(at(2), None, now));
        assert!(!is_stale_temp(now - HOUR / 2, None, now));
        assert!(
            !is_stale_temp(at(2), Some(at(3)), now),
            "may be a live build's"
        );
        assert!(is_stale_temp(at(4), Some(at(3)), now));
    }

    #[test]
    fn the_summary_counts_each_kind_and_says_what_is_left() {
        let mut report = GcReport {
            removed: vec![
                entry(EntryKind::Layer, "l1", 1 << 30, 5),
                entry(EntryKind::Layer, "l2", 1 << 29, 5),
                entry(EntryKind::Blob, "b", 1 << 20, 4),
            ],
            size_before: (5 << 30) + (1 << 29) + (1 << 20),
            size_after: 4 << 30,
            max_size: 4 << 30,
            dry_run: false,
        };
        assert_eq!(
            report.summary(),
            "Removed 2 layers and 1 blob, freed 1.5 GiB; store is now 4.0 GiB"
        );
        report.removed.push(entry(EntryKind::Temp, "t", 1024, 0));
        report.dry_run = true;
        assert_eq!(
            report.summary(),
            "Would remove 2 layers, 1 blob and 1 stale temp file, freeing 1.5 GiB; store would be 4.0 GiB"
        );
        report.removed.clear();
        report.size_after = 5 << 30;
        assert_eq!(
            report.summary(),
            "Nothing to remove; store is 5.0 GiB (limit 4.0 GiB); still above the limit of 4.0 GiB: the rest is in use by running builds"
        );
    }
}
