//! Safe application of a (possibly compressed) tar stream onto a directory.
//!
//! Every path is resolved relative to a directory fd for the destination
//! with `openat2(RESOLVE_IN_ROOT)`, so symlinks in the tree (absolute or
//! relative) are followed as if the destination were `/`: nothing outside
//! it is ever created, modified or removed.

use super::{
    Exclusions, LayerError, OPAQUE_MARKER, WHITEOUT_PREFIX, XattrPairs, is_overlay_xattr,
    opaque_xattr, user_xattrs,
};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tar::EntryType;

/// What to do with whiteout entries (`.wh.NAME`, `.wh..wh..opq`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whiteouts {
    /// Convert them to overlay format (image layers).
    Overlay,
    /// Carry them out: delete what they name, so the destination is the
    /// flattened filesystem of every layer applied so far.
    Apply,
    /// Fail: a build context has nothing below it to delete.
    Reject,
}

/// How to unpack.
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    /// Whiteout handling.
    pub whiteouts: Whiteouts,
    /// Chown entries to the tar's uid/gid (needs root); otherwise the
    /// current user owns everything.
    pub preserve_owners: bool,
    /// Extracted directories of the layers below this one, topmost first:
    /// where hardlinks to files this layer does not contain are resolved.
    pub lowers: Vec<PathBuf>,
    /// Paths never written, replaced or removed; entries at or under them
    /// are skipped.
    pub exclude: Exclusions,
}

/// What an unpack did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries applied (skipped ones included).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub file_bytes: u64,
    /// Device nodes skipped because this process may not create them.
    pub skipped_devices: u64,
    /// Entries skipped because they touch an excluded path.
    pub excluded: u64,
}

/// Unpacks a tar stream (gzip, zstd or plain, detected by magic number) into
/// `dest`, an existing empty directory, converting whiteouts as `opts` says.
/// Streams with bounded memory; the input is read to its end so a caller
/// hashing it sees every byte.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    let input = decompress(reader)?;
    let root = rustix::fs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("open destination directory", dest))?;
    let mut unpacker = Unpacker {
        root,
        dest: dest.to_owned(),
        opts,
        stats: UnpackStats::default(),
        dirs: Vec::new(),
        dir_index: HashMap::new(),
        parent: None,
        buf: Vec::new(),
        written: HashSet::new(),
    };
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(LayerError::Read)? {
        let mut entry = entry.map_err(LayerError::Read)?;
        unpacker
            .apply(&mut entry)
            .map_err(|e| name_entry(&entry.path_bytes(), e))?;
    }
    unpacker.finish_dirs()?;
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(LayerError::Read)?;
    Ok(unpacker.stats)
}

/// Makes sure an entry's error names the entry.
fn name_entry(raw_path: &[u8], e: LayerError) -> LayerError {
    match e {
        LayerError::UnsafePath { .. }
        | LayerError::WhiteoutRejected { .. }
        | LayerError::HardlinkTarget { .. }
        | LayerError::Unsupported { .. }
        | LayerError::Entry { .. } => e,
        other => LayerError::Entry {
            entry: lossy(raw_path),
            source: Box::new(other),
        },
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
    Plain,
}

fn sniff(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::Plain
    }
}

fn decompress<'a>(mut reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>, LayerError> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match reader.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LayerError::Read(e)),
        }
    }
    let stream = io::Cursor::new(magic).take(n as u64).chain(reader);
    match sniff(&magic[..n]) {
        Compression::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(stream))),
        Compression::Zstd => Ok(Box::new(
            zstd::stream::read::Decoder::new(stream).map_err(LayerError::Read)?,
        )),
        Compression::Plain => Ok(Box::new(stream)),
    }
}

/// What one tar entry asks for, decided from its header alone.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Nothing to do (pax globals, aufs metadata).
    Skip,
    Dir(Vec<u8>),
    File(Vec<u8>),
    Symlink(Vec<u8>, Vec<u8>),
    /// Path and normalised target.
    Hardlink(Vec<u8>, Vec<u8>),
    Device(Vec<u8>, FileType, u32, u32),
    Fifo(Vec<u8>),
    Whiteout(Vec<u8>),
    /// The directory to make opaque.
    Opaque(Vec<u8>),
}

/// Normalises a tar path to `a/b/c` (empty for the root): leading `/`, `.`
/// components and empty components are dropped. `None` if it has `..`.
fn normalize(path: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(path.len());
    for comp in path.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return None,
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    Some(out)
}

/// Splits a normalised, non-empty path into its parent and its last name.
fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn plan(
    raw_path: &[u8],
    kind: EntryType,
    link: Option<&[u8]>,
    device: (u32, u32),
    whiteouts: Whiteouts,
) -> Result<Plan, LayerError> {
    let entry = || lossy(raw_path);
    let unsupported = |reason: String| LayerError::Unsupported {
        entry: entry(),
        reason,
    };
    if kind == EntryType::XGlobalHeader {
        return Ok(Plan::Skip);
    }
    let path = normalize(raw_path).ok_or_else(|| LayerError::UnsafePath { entry: entry() })?;
    if path.is_empty() {
        return match kind {
            EntryType::Directory => Ok(Plan::Dir(path)),
            _ => Err(unsupported(
                "only a directory may name the destination root".into(),
            )),
        };
    }
    let (parent, name) = split_last(&path);
    // Such a directory could never be written back into a layer.
    if parent
        .split(|b| *b == b'/')
        .any(|c| c.starts_with(WHITEOUT_PREFIX))
    {
        return Err(match whiteouts {
            Whiteouts::Reject => LayerError::WhiteoutRejected { entry: entry() },
            Whiteouts::Overlay | Whiteouts::Apply => {
                unsupported("directory names starting with .wh. are reserved for whiteouts".into())
            }
        });
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if whiteouts == Whiteouts::Reject {
            return Err(LayerError::WhiteoutRejected { entry: entry() });
        }
        if name == OPAQUE_MARKER {
            return Ok(Plan::Opaque(parent.to_vec()));
        }
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // aufs bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): no meaning here.
            log::debug!("skipping aufs metadata entry {}", entry());
            return Ok(Plan::Skip);
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(LayerError::UnsafePath { entry: entry() });
        }
        let mut target = parent.to_vec();
        if !target.is_empty() {
            target.push(b'/');
        }
        target.extend_from_slice(hidden);
        return Ok(Plan::Whiteout(target));
    }
    let link = || {
        link.map(<[u8]>::to_vec)
            .ok_or_else(|| unsupported("link entry without a link name".into()))
    };
    Ok(match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Plan::File(path),
        EntryType::Directory => Plan::Dir(path),
        EntryType::Symlink => Plan::Symlink(path, link()?),
        EntryType::Link => {
            let target =
                normalize(&link()?).ok_or_else(|| LayerError::UnsafePath { entry: entry() })?;
            if target.is_empty() {
                return Err(unsupported("hardlink to the destination root".into()));
            }
            Plan::Hardlink(path, target)
        }
        EntryType::Char => Plan::Device(path, FileType::CharacterDevice, device.0, device.1),
        EntryType::Block => Plan::Device(path, FileType::BlockDevice, device.0, device.1),
        EntryType::Fifo => Plan::Fifo(path),
        other => return Err(unsupported(format!("unsupported entry type {other:?}"))),
    })
}

/// Parses a PAX time (`secs[.frac]`, possibly negative) into whole seconds
/// and nanoseconds.
fn parse_pax_time(s: &str) -> Option<(i64, u32)> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if secs.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(match (neg, nanos) {
        (false, _) => (secs, nanos),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

/// Metadata of one entry, headers and PAX records merged.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, u32),
    xattrs: XattrPairs,
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let h = entry.header();
    let mut meta = Meta {
        mode: h.mode()? & 0o7777,
        uid: h.uid()?,
        gid: h.gid()?,
        mtime: (h.mtime()? as i64, 0),
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let (key, value) = (ext.key_bytes(), ext.value_bytes());
            let number = || std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                meta.xattrs.push((name.to_vec(), value.to_vec()));
            } else if key == b"uid" {
                meta.uid = number().unwrap_or(meta.uid);
            } else if key == b"gid" {
                meta.gid = number().unwrap_or(meta.gid);
            } else if key == b"mtime" {
                meta.mtime = std::str::from_utf8(value)
                    .ok()
                    .and_then(parse_pax_time)
                    .unwrap_or(meta.mtime);
            }
        }
    }
    Ok(meta)
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> LayerError + 'a {
    move |e| LayerError::Io {
        action,
        path: path.to_owned(),
        source: explain(e),
    }
}

fn explain(e: Errno) -> io::Error {
    if e == Errno::NOSYS {
        io::Error::other("openat2 is unavailable: kiln needs Linux 5.6 or newer")
    } else {
        e.into()
    }
}

/// A directory whose mode and mtime are applied once all entries are in,
/// so writing children neither fails (read-only dirs) nor bumps the mtime.
struct DeferredDir {
    path: Vec<u8>,
    mode: u32,
    mtime: (i64, u32),
}

struct Unpacker<'o> {
    root: OwnedFd,
    dest: PathBuf,
    opts: &'o UnpackOptions,
    stats: UnpackStats,
    dirs: Vec<DeferredDir>,
    dir_index: HashMap<Vec<u8>, usize>,
    /// The parent dir of the previous entry: tars list siblings together.
    /// An entry only ever removes its own name, never its parent, so the
    /// cached fd stays the directory the path names.
    parent: Option<(Vec<u8>, OwnedFd)>,
    /// The copy buffer, reused across files.
    buf: Vec<u8>,
    /// With [`Whiteouts::Apply`], the paths this layer wrote, which an
    /// opaque marker of their directory must keep.
    written: HashSet<Vec<u8>>,
}

impl Plan {
    /// The path the entry creates, replaces or removes.
    fn target(&self) -> Option<&[u8]> {
        match self {
            Plan::Skip => None,
            Plan::Dir(p)
            | Plan::File(p)
            | Plan::Symlink(p, _)
            | Plan::Hardlink(p, _)
            | Plan::Device(p, ..)
            | Plan::Fifo(p)
            | Plan::Whiteout(p)
            | Plan::Opaque(p) => Some(p),
        }
    }

    /// True if applying it leaves a directory at its path.
    fn keeps_dir(&self) -> bool {
        matches!(self, Plan::Dir(_) | Plan::Opaque(_))
    }
}

/// Bytes read and written at a time when extracting a file.
const COPY_CHUNK: usize = 64 * 1024;
static ZEROS: [u8; COPY_CHUNK] = [0; COPY_CHUNK];

/// Copies `data` into `file`, seeking over all-zero chunks instead of
/// writing them, so sparse files (and tar bombs of zeros) stay sparse on
/// disk. Returns the bytes copied.
fn copy_with_holes(data: &mut impl Read, file: &mut File, buf: &mut [u8]) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    let mut total = 0u64;
    let mut ends_in_hole = false;
    loop {
        let n = match data.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ends_in_hole = buf[..n] == ZEROS[..n];
        if ends_in_hole {
            file.seek(SeekFrom::Current(n as i64))?;
        } else {
            file.write_all(&buf[..n])?;
        }
        total += n as u64;
    }
    if ends_in_hole {
        file.set_len(total)?;
    }
    Ok(total)
}

const DIR_PATH: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);
const DIR_READ: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

fn timestamps((secs, nanos): (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: nanos.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Unpacker<'_> {
    fn host_path(&self, rel: &[u8]) -> PathBuf {
        self.dest.join(OsStr::from_bytes(rel))
    }

    /// Opens the directory `rel` inside the root, following symlinks as if
    /// the root were `/`.
    fn open_in_root(&self, rel: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
        if rel.is_empty() {
            return rustix::fs::openat(&self.root, ".", flags, Mode::empty());
        }
        rustix::fs::openat2(
            &self.root,
            OsStr::from_bytes(rel),
            flags,
            Mode::empty(),
            IN_ROOT,
        )
    }

    /// Opens directory `rel`, creating missing components (mode 0755).
    fn ensure_dir(&self, rel: &[u8]) -> Result<OwnedFd, LayerError> {
        let fail = io_err("create directory", &self.dest);
        let host = self.host_path(rel);
        let err = |e: Errno| io_err("create directory", &host)(e);
        match self.open_in_root(rel, DIR_PATH) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(err(e)),
        }
        let mut cur = self.open_in_root(b"", DIR_PATH).map_err(fail)?;
        let mut end = 0;
        for comp in rel.split(|b| *b == b'/') {
            end += comp.len();
            match self.open_in_root(&rel[..end], DIR_PATH) {
                Ok(fd) => cur = fd,
                Err(Errno::NOENT) => {
                    rustix::fs::mkdirat(&cur, OsStr::from_bytes(comp), Mode::from_raw_mode(0o755))
                        .map_err(err)?;
                    let fd =
                        rustix::fs::openat(&cur, OsStr::from_bytes(comp), DIR_READ, Mode::empty())
                            .map_err(err)?;
                    // The umask must not decide the mode of implied parents.
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755)).map_err(err)?;
                    cur = fd;
                }
                Err(e) => return Err(err(e)),
            }
            end += 1;
        }
        Ok(cur)
    }

    /// The fd of directory `parent`, from the cache or created if needed.
    fn take_parent(&mut self, parent: &[u8]) -> Result<OwnedFd, LayerError> {
        match self.parent.take() {
            Some((p, fd)) if p == parent => Ok(fd),
            _ => self.ensure_dir(parent),
        }
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let h = entry.header();
        let device = (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        );
        let plan = plan(
            &raw,
            h.entry_type(),
            link.as_deref(),
            device,
            self.opts.whiteouts,
        )?;
        self.stats.entries += 1;
        let meta = read_meta(entry).map_err(LayerError::Read)?;
        // chown(2) takes 32 bits, and -1 there means "leave unchanged".
        for (what, id) in [("uid", meta.uid), ("gid", meta.gid)] {
            if id >= u64::from(u32::MAX) {
                return Err(LayerError::Unsupported {
                    entry: lossy(&raw),
                    reason: format!("{what} {id} is out of range (at most {})", u32::MAX - 1),
                });
            }
        }
        let size = entry.size();
        if let Some(target) = plan.target() {
            let excluded = &self.opts.exclude;
            if excluded.contains(target) {
                self.stats.excluded += 1;
                log::debug!("not applying {}: the path is excluded", lossy(&raw));
                return Ok(());
            }
            if !plan.keeps_dir() && excluded.holds(target) {
                self.stats.excluded += 1;
                log::warn!(
                    "not applying {}: it would replace a directory holding a path kiln must keep",
                    lossy(&raw)
                );
                return Ok(());
            }
            if self.opts.whiteouts == Whiteouts::Apply && !matches!(plan, Plan::Whiteout(_)) {
                self.written.insert(target.to_vec());
            }
        }
        match plan {
            Plan::Skip => Ok(()),
            Plan::Opaque(dir) => self.make_opaque(&dir),
            Plan::Dir(path) if path.is_empty() => {
                let fd = self
                    .open_in_root(b"", DIR_READ)
                    .map_err(io_err("open", &self.dest))?;
                self.dir_meta(&path, &fd, &meta)
            }
            Plan::Dir(path) => self.at_leaf(path, false, |this, pfd, name, path| {
                this.make_dir(pfd, name, path, &meta)
            }),
            Plan::File(path) => self.at_leaf(path, true, |this, pfd, name, path| {
                this.make_file(pfd, name, path, &meta, &mut *entry, size)
            }),
            Plan::Symlink(path, target) => self.at_leaf(path, true, |this, pfd, name, path| {
                rustix::fs::symlinkat(OsStr::from_bytes(&target), pfd, name)
                    .map_err(io_err("create symlink", &this.host_path(path)))?;
                this.node_meta(pfd, name, path, &meta, false)
            }),
            Plan::Hardlink(path, target) => self.at_leaf(path, false, |this, pfd, name, path| {
                this.make_hardlink(pfd, name, path, &target)
            }),
            Plan::Device(path, kind, major, minor) => {
                self.at_leaf(path, true, |this, pfd, name, path| {
                    this.make_device(pfd, name, path, &meta, kind, (major, minor))
                })
            }
            Plan::Fifo(path) => self.at_leaf(path, true, |this, pfd, name, path| {
                rustix::fs::mknodat(pfd, name, FileType::Fifo, Mode::from_raw_mode(meta.mode), 0)
                    .map_err(io_err("create fifo", &this.host_path(path)))?;
                this.node_meta(pfd, name, path, &meta, true)
            }),
            Plan::Whiteout(path) if self.opts.whiteouts == Whiteouts::Apply => {
                self.at_leaf(path, true, |_, _, _, _| Ok(()))
            }
            Plan::Whiteout(path) => self.at_leaf(path, true, |this, pfd, name, path| {
                let host = this.host_path(path);
                let (kind, dev) = (FileType::CharacterDevice, rustix::fs::makedev(0, 0));
                rustix::fs::mknodat(pfd, name, kind, Mode::empty(), dev)
                    .map_err(io_err("create whiteout device", &host))?;
                let times = timestamps(meta.mtime);
                rustix::fs::utimensat(pfd, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err("set mtime of", &host))
            }),
        }
    }

    fn make_device(
        &mut self,
        pfd: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        meta: &Meta,
        kind: FileType,
        (major, minor): (u32, u32),
    ) -> Result<(), LayerError> {
        let dev = rustix::fs::makedev(major, minor);
        match rustix::fs::mknodat(pfd, name, kind, Mode::from_raw_mode(meta.mode), dev) {
            Ok(()) => self.node_meta(pfd, name, path, meta, true),
            Err(Errno::PERM) => {
                let path = lossy(path);
                log::warn!("skipping device {path} ({major}:{minor}): mknod needs CAP_MKNOD");
                self.stats.skipped_devices += 1;
                Ok(())
            }
            Err(e) => Err(io_err("create device node", &self.host_path(path))(e)),
        }
    }

    /// Runs `f` on the parent fd and the last name of `path`, after
    /// clearing whatever a previous entry left at that name if `replace`.
    fn at_leaf(
        &mut self,
        path: Vec<u8>,
        replace: bool,
        f: impl FnOnce(&mut Self, &OwnedFd, &OsStr, &[u8]) -> Result<(), LayerError>,
    ) -> Result<(), LayerError> {
        let (parent, name) = split_last(&path);
        let pfd = self.take_parent(parent)?;
        let name = OsStr::from_bytes(name);
        let cleared = match replace {
            true => self.clear(&pfd, name, &path, false).map(drop),
            false => Ok(()),
        };
        let result = cleared.and_then(|()| f(self, &pfd, name, &path));
        self.parent = Some((parent.to_vec(), pfd));
        result
    }

    /// Removes `name` in `pfd` if present, unless it is a directory and
    /// `keep_dir` is set. Returns true if a directory remains.
    fn clear(
        &self,
        pfd: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        keep_dir: bool,
    ) -> Result<bool, LayerError> {
        let st = match rustix::fs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(io_err("inspect", &self.host_path(path))(e)),
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && keep_dir {
            return Ok(true);
        }
        let host = self.host_path(path);
        let fail = io_err("replace", &host);
        if is_dir {
            remove_tree(pfd, name)
        } else {
            rustix::fs::unlinkat(pfd, name, AtFlags::empty())
        }
        .map_err(fail)?;
        Ok(false)
    }

    fn make_dir(
        &mut self,
        pfd: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        meta: &Meta,
    ) -> Result<(), LayerError> {
        if !self.clear(pfd, name, path, true)? {
            rustix::fs::mkdirat(pfd, name, Mode::from_raw_mode(0o700))
                .map_err(io_err("create directory", &self.host_path(path)))?;
        }
        let fd = rustix::fs::openat(pfd, name, DIR_READ, Mode::empty())
            .map_err(io_err("open directory", &self.host_path(path)))?;
        self.dir_meta(path, &fd, meta)
    }

    /// Owner and xattrs now; mode and mtime once the tree is complete.
    fn dir_meta(&mut self, path: &[u8], fd: &OwnedFd, meta: &Meta) -> Result<(), LayerError> {
        let host = self.host_path(path);
        if self.opts.preserve_owners {
            rustix::fs::fchown(fd, Some(uid(meta.uid)), Some(gid(meta.gid)))
                .map_err(io_err("chown", &host))?;
        }
        set_xattrs(&host, &meta.xattrs, |n, v| {
            rustix::fs::fsetxattr(fd, n, v, XattrFlags::empty())
        })?;
        let deferred = DeferredDir {
            path: path.to_vec(),
            mode: meta.mode,
            mtime: meta.mtime,
        };
        match self.dir_index.get(path) {
            Some(&i) => self.dirs[i] = deferred,
            None => {
                self.dir_index.insert(path.to_vec(), self.dirs.len());
                self.dirs.push(deferred);
            }
        }
        Ok(())
    }

    fn make_file<R: Read>(
        &mut self,
        pfd: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        meta: &Meta,
        data: &mut R,
        size: u64,
    ) -> Result<(), LayerError> {
        let host = self.host_path(path);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(pfd, name, flags, Mode::from_raw_mode(0o600))
            .map_err(io_err("create", &host))?;
        let mut file = File::from(fd);
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(COPY_CHUNK, 0);
        let copied = copy_with_holes(data, &mut file, &mut buf);
        self.buf = buf;
        let extract_err = |source| LayerError::Io {
            action: "extract",
            path: host.clone(),
            source,
        };
        let copied = copied.map_err(extract_err)?;
        if copied != size {
            return Err(extract_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the archive ends after {copied} of its {size} bytes"),
            )));
        }
        self.stats.file_bytes += copied;
        // chown clears setuid bits and file capabilities: chmod and xattrs after it.
        if self.opts.preserve_owners {
            rustix::fs::fchown(&file, Some(uid(meta.uid)), Some(gid(meta.gid)))
                .map_err(io_err("chown", &host))?;
        }
        rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))
            .map_err(io_err("chmod", &host))?;
        set_xattrs(&host, &meta.xattrs, |n, v| {
            rustix::fs::fsetxattr(&file, n, v, XattrFlags::empty())
        })?;
        rustix::fs::futimens(&file, &timestamps(meta.mtime)).map_err(io_err("set mtime of", &host))
    }

    /// Metadata for entries that cannot be opened safely (symlinks,
    /// devices, fifos): addressed by parent fd and name, never followed.
    fn node_meta(
        &self,
        pfd: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), LayerError> {
        let host = self.host_path(path);
        if self.opts.preserve_owners {
            rustix::fs::chownat(
                pfd,
                name,
                Some(uid(meta.uid)),
                Some(gid(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io_err("chown", &host))?;
        }
        if chmod {
            // A device or fifo just created under this name; chmodat cannot
            // be told not to follow, but the name is not a symlink.
            rustix::fs::chmodat(pfd, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(io_err("chmod", &host))?;
        }
        if !meta.xattrs.is_empty() {
            let mut via = format!("/proc/self/fd/{}/", pfd.as_raw_fd()).into_bytes();
            via.extend_from_slice(name.as_bytes());
            let via = OsStr::from_bytes(&via);
            set_xattrs(&host, &meta.xattrs, |n, v| {
                rustix::fs::lsetxattr(via, n, v, XattrFlags::empty())
            })?;
        }
        rustix::fs::utimensat(
            pfd,
            name,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err("set mtime of", &host))
    }

    /// Links `name` to `target`; the entry's own metadata is ignored, as
    /// the shared inode got its metadata from the target's entry. A target
    /// in a lower layer cannot share an inode across layer directories, so
    /// it is copied, content and metadata, as overlayfs' copy-up would.
    fn make_hardlink(
        &mut self,
        pfd: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        target: &[u8],
    ) -> Result<(), LayerError> {
        let missing = |reason| LayerError::HardlinkTarget {
            entry: lossy(path),
            target: lossy(target),
            reason,
        };
        let (tparent, tname) = split_last(target);
        let tname = OsStr::from_bytes(tname);
        match self.open_in_root(tparent, DIR_PATH) {
            Ok(tfd) => match rustix::fs::statat(&tfd, tname, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if is_whiteout(&st) => return Err(missing("this layer deletes")),
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    return Err(missing("is a directory"));
                }
                Ok(_) => {
                    self.clear(pfd, name, path, false)?;
                    return rustix::fs::linkat(&tfd, tname, pfd, name, AtFlags::empty())
                        .map_err(io_err("create hardlink", &self.host_path(path)));
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(io_err("inspect", &self.host_path(target))(e)),
            },
            Err(Errno::NOENT | Errno::NOTDIR) => {}
            Err(e) => return Err(io_err("open", &self.host_path(tparent))(e)),
        }
        let (src_dir, st) = self.find_below(target)?.map_err(missing)?;
        self.clear(pfd, name, path, false)?;
        self.copy_node(pfd, name, path, &src_dir, tname, &st)
    }

    /// Finds `target` below this layer as overlayfs would: this layer's
    /// whiteouts, opaque directories and non-directories hide what is
    /// under them in the lowers, and the first lower that has it wins.
    /// No symlink is followed, so nothing outside the layer roots is seen.
    /// Returns the parent directory and the target's stat, or why it is
    /// missing.
    fn find_below(
        &self,
        target: &[u8],
    ) -> Result<Result<(OwnedFd, rustix::fs::Stat), &'static str>, LayerError> {
        let comps: Vec<&[u8]> = target.split(|b| *b == b'/').collect();
        let roots = std::iter::once(&self.dest).chain(&self.opts.lowers);
        for root in roots {
            let fail = |e| io_err("resolve a hardlink target in", root)(e);
            let dir = rustix::fs::open(root, DIR_READ, Mode::empty()).map_err(fail)?;
            match lookup(dir, &comps).map_err(fail)? {
                Lookup::Found(dir, st) => return Ok(Ok((dir, st))),
                Lookup::Hidden(reason) => return Ok(Err(reason)),
                Lookup::Absent { opaque: true } => {
                    return Ok(Err("is hidden by an opaque directory"));
                }
                Lookup::Absent { opaque: false } => {}
            }
        }
        Ok(Err("is neither in this layer nor in any layer below it"))
    }

    /// Recreates the node `name` in `src_dir` (stat `st`) as `name` in `pfd`.
    fn copy_node(
        &mut self,
        pfd: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        src_dir: &OwnedFd,
        src_name: &OsStr,
        st: &rustix::fs::Stat,
    ) -> Result<(), LayerError> {
        let host = self.host_path(path);
        let meta = Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid.into(),
            gid: st.st_gid.into(),
            mtime: (st.st_mtime, st.st_mtime_nsec.try_into().unwrap_or(0)),
            xattrs: node_xattrs(src_dir, src_name).map_err(|source| LayerError::Io {
                action: "read the xattrs of the hardlink target for",
                path: host.clone(),
                source,
            })?,
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let src = rustix::fs::openat(src_dir, src_name, flags, Mode::empty())
                    .map_err(io_err("open the hardlink target for", &host))?;
                let size = u64::try_from(st.st_size).unwrap_or(0);
                self.make_file(pfd, name, path, &meta, &mut File::from(src), size)
            }
            FileType::Symlink => {
                let link = rustix::fs::readlinkat(src_dir, src_name, Vec::new())
                    .map_err(io_err("read the hardlink target for", &host))?;
                rustix::fs::symlinkat(link.as_c_str(), pfd, name)
                    .map_err(io_err("create symlink", &host))?;
                self.node_meta(pfd, name, path, &meta, false)
            }
            FileType::Fifo => {
                rustix::fs::mknodat(pfd, name, FileType::Fifo, Mode::from_raw_mode(meta.mode), 0)
                    .map_err(io_err("create fifo", &host))?;
                self.node_meta(pfd, name, path, &meta, true)
            }
            kind @ (FileType::CharacterDevice | FileType::BlockDevice) => {
                let dev = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
                self.make_device(pfd, name, path, &meta, kind, dev)
            }
            other => Err(LayerError::Unsupported {
                entry: lossy(path),
                reason: format!("a hardlink to a {other:?} in a lower layer cannot be copied"),
            }),
        }
    }

    fn make_opaque(&mut self, dir: &[u8]) -> Result<(), LayerError> {
        let host = self.host_path(dir);
        // The marker names this layer's own directory: a symlink there
        // cannot be opaque, and following it would mark another directory.
        if !dir.is_empty() {
            let (parent, name) = split_last(dir);
            let pfd = self.ensure_dir(parent)?;
            match rustix::fs::statat(&pfd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
                    return Err(io_err("mark opaque", &host)(Errno::NOTDIR));
                }
                Ok(_) | Err(Errno::NOENT) => {}
                Err(e) => return Err(io_err("inspect", &host)(e)),
            }
        }
        self.ensure_dir(dir)?;
        let fd = self
            .open_in_root(dir, DIR_READ)
            .map_err(io_err("open directory", &host))?;
        if self.opts.whiteouts == Whiteouts::Apply {
            return self.empty_opaque(dir, &fd);
        }
        rustix::fs::fsetxattr(&fd, opaque_xattr(), b"y", XattrFlags::empty()).map_err(|e| {
            LayerError::Io {
                action: if user_xattrs() {
                    "set user.overlay.opaque on"
                } else {
                    "set trusted.overlay.opaque (needs root) on"
                },
                path: host,
                source: e.into(),
            }
        })
    }

    /// Carries out an opaque marker: removes what the layers below left in
    /// `dir`, keeping what this layer wrote there and excluded paths.
    fn empty_opaque(&self, dir: &[u8], fd: &OwnedFd) -> Result<(), LayerError> {
        let host = self.host_path(dir);
        let mut names = Vec::new();
        let mut listing = rustix::fs::Dir::read_from(fd).map_err(io_err("list", &host))?;
        while let Some(ent) = listing.read() {
            let ent = ent.map_err(io_err("list", &host))?;
            let name = ent.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        for name in names {
            let mut path = dir.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            let keep = self.written.contains(&path)
                || self.opts.exclude.contains(&path)
                || self.opts.exclude.holds(&path);
            if !keep {
                self.clear(fd, OsStr::from_bytes(&name), &path, false)?;
            }
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<(), LayerError> {
        // Deepest first, so a parent made read-only or non-searchable
        // never blocks its children.
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| {
            std::cmp::Reverse(
                d.path.iter().filter(|b| **b == b'/').count() + usize::from(!d.path.is_empty()),
            )
        });
        for d in dirs {
            let host = self.host_path(&d.path);
            let fd = match self.open_in_root(&d.path, DIR_READ) {
                Ok(fd) => fd,
                // A later entry replaced the directory.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(io_err("open directory", &host)(e)),
            };
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(d.mode)).map_err(io_err("chmod", &host))?;
            rustix::fs::futimens(&fd, &timestamps(d.mtime))
                .map_err(io_err("set mtime of", &host))?;
        }
        Ok(())
    }
}

/// What one layer directory holds at a path, in overlayfs' terms.
enum Lookup {
    /// A non-directory: its parent directory and its stat.
    Found(OwnedFd, rustix::fs::Stat),
    /// Nothing here; `opaque` if a directory on the way hides the lowers.
    Absent { opaque: bool },
    /// Something here hides the path from every lower layer.
    Hidden(&'static str),
}

/// Walks `comps` down from `dir` without following symlinks.
fn lookup(mut dir: OwnedFd, comps: &[&[u8]]) -> Result<Lookup, Errno> {
    let (last, parents) = comps
        .split_last()
        .expect("hardlink targets are not the root");
    let mut opaque = is_opaque(&dir)?;
    for comp in parents {
        let name = OsStr::from_bytes(comp);
        let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Lookup::Absent { opaque }),
            Err(e) => return Err(e),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                dir = rustix::fs::openat(&dir, name, DIR_READ, Mode::empty())?;
                opaque |= is_opaque(&dir)?;
            }
            _ if is_whiteout(&st) => {
                return Ok(Lookup::Hidden("is under a directory deleted by a whiteout"));
            }
            FileType::Symlink => {
                return Ok(Lookup::Hidden(
                    "is under a symlink, and hardlink targets are never resolved through symlinks",
                ));
            }
            _ => return Ok(Lookup::Hidden("is under a non-directory")),
        }
    }
    let name = OsStr::from_bytes(last);
    match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if is_whiteout(&st) => Ok(Lookup::Hidden("was deleted by a whiteout")),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            Ok(Lookup::Hidden("is a directory"))
        }
        Ok(st) => Ok(Lookup::Found(dir, st)),
        Err(Errno::NOENT) => Ok(Lookup::Absent { opaque }),
        Err(e) => Err(e),
    }
}

/// True for an overlay-format whiteout: a char device 0/0.
fn is_whiteout(st: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// True if the directory `fd` carries the opaque marker.
fn is_opaque(fd: &OwnedFd) -> Result<bool, Errno> {
    let mut value = [0u8; 2];
    match rustix::fs::fgetxattr(fd, opaque_xattr(), &mut value) {
        Ok(n) => Ok(value[..n] == *b"y"),
        // Absent, unreadable without privilege, or not supported: not opaque.
        Err(Errno::NODATA | Errno::RANGE | Errno::PERM | Errno::OPNOTSUPP) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The xattrs of the node `name` in `dir`, a symlink itself if it is one.
fn node_xattrs(dir: &OwnedFd, name: &OsStr) -> io::Result<XattrPairs> {
    let mut via = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    via.extend_from_slice(name.as_bytes());
    let via = Path::new(OsStr::from_bytes(&via));
    let mut out = Vec::new();
    for xname in xattr::list(via)? {
        if let Some(value) = xattr::get(via, &xname)? {
            out.push((xname.as_bytes().to_vec(), value));
        }
    }
    Ok(out)
}

fn uid(raw: u64) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(raw as u32)
}

fn gid(raw: u64) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(raw as u32)
}

/// Sets `xattrs` with `set`; overlayfs's own names are dropped so a layer
/// cannot forge whiteouts, redirects or opaque dirs, and names the target
/// filesystem does not support are skipped with a warning.
fn set_xattrs(
    host: &Path,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    set: impl Fn(&OsStr, &[u8]) -> Result<(), Errno>,
) -> Result<(), LayerError> {
    for (name, value) in xattrs {
        if is_overlay_xattr(name) {
            log::warn!(
                "ignoring overlayfs xattr {} on {}",
                lossy(name),
                host.display()
            );
            continue;
        }
        match set(OsStr::from_bytes(name), value) {
            Ok(()) => {}
            Err(e @ (Errno::OPNOTSUPP | Errno::PERM)) => {
                log::warn!(
                    "cannot set xattr {} on {}: {e}; skipping it",
                    lossy(name),
                    host.display()
                );
            }
            Err(e) => {
                return Err(io_err("set xattrs on", host)(e));
            }
        }
    }
    Ok(())
}

/// Removes the directory `name` in `pfd` and everything below it, never
/// following symlinks.
fn remove_tree(pfd: &impl AsFd, name: &OsStr) -> Result<(), Errno> {
    let fd = rustix::fs::openat(pfd, name, DIR_READ, Mode::empty())?;
    let mut children = Vec::new();
    let mut dir = rustix::fs::Dir::read_from(&fd)?;
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let child = ent.file_name().to_bytes();
        if child != b"." && child != b".." {
            children.push((child.to_vec(), ent.file_type()));
        }
    }
    for (child, kind) in children {
        let child = OsStr::from_bytes(&child);
        let kind = match kind {
            FileType::Unknown => FileType::from_raw_mode(
                rustix::fs::statat(&fd, child, AtFlags::SYMLINK_NOFOLLOW)?.st_mode,
            ),
            k => k,
        };
        if kind == FileType::Directory {
            remove_tree(&fd, child)?;
        } else {
            rustix::fs::unlinkat(&fd, child, AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(pfd, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
mod tests {
    use super::super::OPAQUE_XATTR;
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::Header;

    /// A tar built entry by entry, names written raw so tests can use
    /// names the `tar` crate would refuse (`..`).
    struct TarBuilder(tar::Builder<Vec<u8>>);

    impl TarBuilder {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }

        fn add(
            &mut self,
            name: &str,
            kind: EntryType,
            mode: u32,
            link: &str,
            data: &[u8],
        ) -> &mut Self {
            let mut h = Header::new_ustar();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_500_000_000);
            h.set_size(data.len() as u64);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
            self.add(name, EntryType::Regular, mode, "", data)
        }

        fn dir(&mut self, name: &str) -> &mut Self {
            self.add(name, EntryType::Directory, 0o755, "", b"")
        }

        fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            self.0
                .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
                .unwrap();
            self
        }

        fn bytes(&mut self) -> Vec<u8> {
            std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()))
                .into_inner()
                .unwrap()
        }
    }

    const OVERLAY: UnpackOptions = UnpackOptions {
        whiteouts: Whiteouts::Overlay,
        preserve_owners: true,
        lowers: Vec::new(),
        exclude: Exclusions::NONE,
    };

    fn unpack_bytes(
        tar: &[u8],
        opts: &UnpackOptions,
    ) -> (tempfile::TempDir, Result<UnpackStats, LayerError>) {
        let dest = tempfile::tempdir().unwrap();
        let result = unpack(tar, dest.path(), opts);
        (dest, result)
    }

    #[test]
    fn applied_whiteouts_delete_and_opaque_dirs_keep_only_this_layers_entries() {
        let dest = tempfile::tempdir().unwrap();
        let d = dest.path();
        let opts = UnpackOptions {
            whiteouts: Whiteouts::Apply,
            preserve_owners: true,
            lowers: Vec::new(),
            exclude: Exclusions::new(["/keep", "/o/mnt"]),
        };
        let base = TarBuilder::new()
            .dir("a/")
            .file("a/gone", 0o644, b"x")
            .file("a/stays", 0o644, b"y")
            .dir("d/")
            .file("d/deep", 0o644, b"z")
            .dir("o/")
            .file("o/old", 0o644, b"old")
            .file("keep", 0o644, b"base")
            .bytes();
        unpack(&base[..], d, &opts).unwrap();
        fs::create_dir(d.join("o/mnt")).unwrap();
        fs::write(d.join("o/mnt/volume"), b"v").unwrap();
        let top = TarBuilder::new()
            .file("a/.wh.gone", 0, b"")
            .file(".wh.d", 0, b"")
            .file("o/-first", 0o644, b"1")
            .file("o/.wh..wh..opq", 0, b"")
            .file("o/new", 0o644, b"2")
            .file("keep", 0o644, b"layer")
            .file(".wh.keep", 0, b"")
            .bytes();
        let stats = unpack(&top[..], d, &opts).unwrap();
        assert!(!d.join("a/gone").exists());
        assert_eq!(fs::read(d.join("a/stays")).unwrap(), b"y");
        assert!(!d.join("d").exists());
        assert!(!d.join("o/old").exists());
        assert_eq!(fs::read(d.join("o/-first")).unwrap(), b"1");
        assert_eq!(fs::read(d.join("o/new")).unwrap(), b"2");
        assert_eq!(fs::read(d.join("o/mnt/volume")).unwrap(), b"v");
        // Excluded: written by neither layer, removed by no whiteout.
        assert!(!d.join("keep").exists());
        assert_eq!(stats.excluded, 2);
        assert!(xattr::get(d.join("o"), OPAQUE_XATTR).unwrap().is_none());
    }

    #[test]
    fn a_layer_cannot_replace_a_directory_that_holds_an_excluded_path() {
        let dest = tempfile::tempdir().unwrap();
        let d = dest.path();
        fs::create_dir_all(d.join("var/run")).unwrap();
        fs::write(d.join("var/run/pid"), b"1").unwrap();
        let opts = UnpackOptions {
            whiteouts: Whiteouts::Apply,
            preserve_owners: true,
            lowers: Vec::new(),
            exclude: Exclusions::new(["/var/run"]),
        };
        let tar = TarBuilder::new()
            .file(".wh.var", 0, b"")
            .add("var", EntryType::Symlink, 0o777, "/elsewhere", b"")
            .file("var/run/pid", 0o644, b"image")
            .file("etc", 0o644, b"ok")
            .bytes();
        let stats = unpack(&tar[..], d, &opts).unwrap();
        assert_eq!(fs::read(d.join("var/run/pid")).unwrap(), b"1");
        assert!(fs::symlink_metadata(d.join("var")).unwrap().is_dir());
        assert_eq!(fs::read(d.join("etc")).unwrap(), b"ok");
        assert_eq!(stats.excluded, 3);
    }

    #[test]
    fn normalize_strips_roots_and_dots_and_refuses_dotdot() {
        assert_eq!(normalize(b"/a//b/./c/"), Some(b"a/b/c".to_vec()));
        assert_eq!(normalize(b"./"), Some(Vec::new()));
        assert_eq!(normalize(b"a/../b"), None);
        assert_eq!(normalize(b"../evil"), None);
        assert_eq!(normalize(b"a..b/..c"), Some(b"a..b/..c".to_vec()));
    }

    #[test]
    fn plan_converts_whiteouts_or_rejects_them() {
        let plan_of = |p: &[u8], w| plan(p, EntryType::Regular, None, (0, 0), w);
        assert_eq!(
            plan_of(b"a/.wh.b", Whiteouts::Overlay).unwrap(),
            Plan::Whiteout(b"a/b".to_vec())
        );
        assert_eq!(
            plan_of(b"./a/.wh..wh..opq", Whiteouts::Overlay).unwrap(),
            Plan::Opaque(b"a".to_vec())
        );
        assert_eq!(
            plan_of(b".wh..wh..opq", Whiteouts::Overlay).unwrap(),
            Plan::Opaque(Vec::new())
        );
        assert_eq!(
            plan_of(b".wh..wh.plnk", Whiteouts::Overlay).unwrap(),
            Plan::Skip
        );
        assert!(matches!(
            plan_of(b"a/.wh...", Whiteouts::Overlay),
            Err(LayerError::UnsafePath { .. })
        ));
        assert!(matches!(
            plan_of(b"a/.wh.b", Whiteouts::Reject),
            Err(LayerError::WhiteoutRejected { .. })
        ));
        assert!(matches!(
            plan_of(b"x/.wh.a/b", Whiteouts::Overlay),
            Err(LayerError::Unsupported { entry, .. }) if entry == "x/.wh.a/b"
        ));
        assert!(matches!(
            plan_of(b".wh.a/b", Whiteouts::Reject),
            Err(LayerError::WhiteoutRejected { .. })
        ));
        let link = plan(
            b"x",
            EntryType::Link,
            Some(b"/a/../../etc/shadow"),
            (0, 0),
            Whiteouts::Overlay,
        );
        assert!(matches!(link, Err(LayerError::UnsafePath { entry }) if entry == "x"));
        let root_file = plan(b"./", EntryType::Regular, None, (0, 0), Whiteouts::Overlay);
        assert!(matches!(root_file, Err(LayerError::Unsupported { .. })));
    }

    #[test]
    fn pax_times_parse_with_fractions_and_signs() {
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time("1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time("12.0000000019"), Some((12, 1)));
        assert_eq!(parse_pax_time("x"), None);
        assert_eq!(parse_pax_time(".5"), None);
    }

    #[test]
    fn zero_chunks_become_holes_with_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 3 * COPY_CHUNK];
        data[COPY_CHUNK + 7] = 1;
        for trailing_zeros in [true, false] {
            if !trailing_zeros {
                data.push(9);
            }
            let path = dir.path().join(format!("f{trailing_zeros}"));
            let mut file = File::create(&path).unwrap();
            let mut buf = vec![0; COPY_CHUNK];
            let n = copy_with_holes(&mut &data[..], &mut file, &mut buf).unwrap();
            assert_eq!(n, data.len() as u64);
            assert_eq!(fs::read(&path).unwrap(), data);
            let on_disk = fs::metadata(&path).unwrap().blocks() * 512;
            assert!(on_disk < data.len() as u64, "{on_disk} bytes allocated");
        }
    }

    #[test]
    fn sniff_detects_compression_by_magic() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(b"etc/"), Compression::Plain);
        assert_eq!(sniff(b""), Compression::Plain);
    }

    #[test]
    fn unpack_builds_the_tree_in_overlay_format() {
        let mut t = TarBuilder::new();
        t.dir("a/")
            .dir("a/b/")
            .file("a/b/f", 0o640, b"hello")
            .add("a/abs", EntryType::Symlink, 0o777, "/etc/passwd", b"")
            .add("a/rel", EntryType::Symlink, 0o777, "b/f", b"")
            .add("a/hl", EntryType::Link, 0o640, "a/b/f", b"")
            .file("a/b/.wh..wh..opq", 0o644, b"")
            .file("a/.wh.gone", 0o644, b"")
            .pax(&[
                ("SCHILY.xattr.user.x", b"v1"),
                ("uid", b"1000"),
                ("gid", b"1001"),
            ])
            .file("bin/su", 0o4755, b"#!");
        let (dest, stats) = unpack_bytes(&t.bytes(), &OVERLAY);
        let stats = stats.unwrap();
        assert_eq!(
            stats,
            UnpackStats {
                entries: 9,
                file_bytes: 7,
                skipped_devices: 0,
                excluded: 0,
            }
        );
        let d = dest.path();
        assert_eq!(fs::read(d.join("a/b/f")).unwrap(), b"hello");
        assert_eq!(
            fs::read_link(d.join("a/abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(fs::read_link(d.join("a/rel")).unwrap(), Path::new("b/f"));
        assert_eq!(fs::read(d.join("a/rel")).unwrap(), b"hello");
        let f = fs::metadata(d.join("a/b/f")).unwrap();
        assert_eq!(fs::metadata(d.join("a/hl")).unwrap().ino(), f.ino());
        assert_eq!(f.mode() & 0o7777, 0o640);
        let su = fs::metadata(d.join("bin/su")).unwrap();
        assert_eq!(
            (su.mode() & 0o7777, su.uid(), su.gid()),
            (0o4755, 1000, 1001)
        );
        assert_eq!(
            xattr::get(d.join("bin/su"), "user.x").unwrap(),
            Some(b"v1".to_vec())
        );
        let gone = fs::symlink_metadata(d.join("a/gone")).unwrap();
        assert!(gone.file_type().is_char_device());
        assert_eq!(gone.rdev(), 0);
        assert!(!d.join("a/.wh.gone").exists());
        assert!(!d.join("a/b/.wh..wh..opq").exists());
        assert_eq!(
            xattr::get(d.join("a/b"), OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        // Implied parent, and directory mtimes restored after their children.
        assert_eq!(fs::metadata(d.join("bin")).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(d.join("a")).unwrap().mtime(), 1_500_000_000);
        assert_eq!(fs::metadata(d.join("a/b")).unwrap().mtime(), 1_500_000_000);
    }

    #[test]
    fn dotdot_entries_are_refused_and_write_nothing_outside() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let tar = TarBuilder::new()
            .file("ok", 0o644, b"")
            .file("../evil", 0o644, b"x")
            .bytes();
        let err = unpack(&tar[..], &dest, &OVERLAY).unwrap_err();
        assert!(err.to_string().contains("\"../evil\""), "{err}");
        assert!(!outer.path().join("evil").exists());
    }

    #[test]
    fn symlinks_are_followed_only_inside_the_destination() {
        let outside = tempfile::tempdir().unwrap();
        let outside_str = outside.path().to_str().unwrap();
        let marker = format!("kiln-unpack-test-{}", std::process::id());
        let mut t = TarBuilder::new();
        t.dir(&format!("{}/", outside_str.trim_start_matches('/')))
            .add("root", EntryType::Symlink, 0o777, "/", b"")
            .file(&format!("root/etc/{marker}"), 0o644, b"inside")
            .add("out", EntryType::Symlink, 0o777, outside_str, b"")
            .file("out/x", 0o644, b"inside")
            .add("up", EntryType::Symlink, 0o777, "../../../..", b"")
            .file("up/y", 0o644, b"inside");
        let (dest, stats) = unpack_bytes(&t.bytes(), &OVERLAY);
        stats.unwrap();
        let d = dest.path();
        assert!(!Path::new("/etc").join(&marker).exists());
        assert_eq!(fs::read(d.join("etc").join(&marker)).unwrap(), b"inside");
        assert!(!outside.path().join("x").exists());
        assert_eq!(
            fs::read(d.join(outside_str.trim_start_matches('/')).join("x")).unwrap(),
            b"inside"
        );
        assert!(!d.parent().unwrap().join("y").exists());
        assert_eq!(fs::read(d.join("y")).unwrap(), b"inside");
    }

    #[test]
    fn a_dangling_symlink_parent_is_an_error_not_an_escape() {
        let target = format!("/kiln-unpack-test-{}", std::process::id());
        let mut t = TarBuilder::new();
        t.add("dangling", EntryType::Symlink, 0o777, &target, b"")
            .file("dangling/z", 0o644, b"");
        let (dest, result) = unpack_bytes(&t.bytes(), &OVERLAY);
        let Err(LayerError::Entry { entry, source }) = result else {
            panic!("{result:?}");
        };
        assert_eq!(entry, "dangling/z");
        assert!(matches!(
            *source,
            LayerError::Io {
                action: "create directory",
                ..
            }
        ));
        assert!(!Path::new(&target).exists());
        assert!(!dest.path().join(&target[1..]).exists());
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let mut t = TarBuilder::new();
        t.dir("d/")
            .file("d/child", 0o644, b"c")
            .file("d", 0o600, b"now a file");
        t.file("f", 0o644, b"was a file")
            .dir("f/")
            .file("f/inner", 0o644, b"i");
        t.file("s", 0o644, b"old")
            .add("s", EntryType::Symlink, 0o777, "f", b"");
        let (dest, stats) = unpack_bytes(&t.bytes(), &OVERLAY);
        stats.unwrap();
        let d = dest.path();
        assert_eq!(fs::read(d.join("d")).unwrap(), b"now a file");
        assert_eq!(fs::metadata(d.join("d")).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(fs::read(d.join("f/inner")).unwrap(), b"i");
        assert_eq!(fs::read_link(d.join("s")).unwrap(), Path::new("f"));
    }

    #[test]
    fn hardlinks_to_nothing_are_refused_naming_the_entry() {
        let tar = TarBuilder::new()
            .add("x", EntryType::Link, 0o644, "usr/lib/missing", b"")
            .bytes();
        let (dest, result) = unpack_bytes(&tar, &OVERLAY);
        let err = result.unwrap_err();
        assert!(
            matches!(&err, LayerError::HardlinkTarget { entry, reason, .. }
                if entry == "x" && reason.contains("neither in this layer")),
            "{err}"
        );
        assert!(!dest.path().join("x").exists());
    }

    fn mknod_whiteout(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .unwrap();
    }

    /// Two extracted lower layers: the bottom one has files, the top one
    /// deletes some of them.
    fn lower_stack() -> (tempfile::TempDir, Vec<PathBuf>) {
        let base = tempfile::tempdir().unwrap();
        let (top, bottom) = (base.path().join("top"), base.path().join("bottom"));
        fs::create_dir_all(bottom.join("usr/bin")).unwrap();
        fs::create_dir_all(bottom.join("etc/old")).unwrap();
        fs::write(bottom.join("usr/bin/tool"), b"tool bytes").unwrap();
        // chown clears setuid: chmod after it.
        std::os::unix::fs::chown(bottom.join("usr/bin/tool"), Some(12), Some(34)).unwrap();
        fs::set_permissions(
            bottom.join("usr/bin/tool"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4751),
        )
        .unwrap();
        xattr::set(bottom.join("usr/bin/tool"), "user.kept", b"v").unwrap();
        let t = timestamps((1_234_567_890, 5));
        rustix::fs::utimensat(
            rustix::fs::CWD,
            bottom.join("usr/bin/tool"),
            &t,
            AtFlags::empty(),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", bottom.join("usr/bin/abs")).unwrap();
        fs::write(bottom.join("etc/gone"), b"deleted above").unwrap();
        fs::write(bottom.join("etc/old/f"), b"hidden above").unwrap();
        // A symlinked parent: resolving through it would leave the lowers.
        std::os::unix::fs::symlink("/etc", bottom.join("hostetc")).unwrap();
        fs::create_dir_all(top.join("etc/old")).unwrap();
        mknod_whiteout(&top.join("etc/gone"));
        fs::set_permissions(
            top.join("etc"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        xattr::set(top.join("etc/old"), OPAQUE_XATTR, b"y").unwrap();
        (base, vec![top, bottom])
    }

    #[test]
    fn hardlinks_to_lower_layers_become_copies_with_the_targets_metadata() {
        let (_base, lowers) = lower_stack();
        let opts = UnpackOptions { lowers, ..OVERLAY };
        let tar = TarBuilder::new()
            .add("usr/bin/alias", EntryType::Link, 0o644, "usr/bin/tool", b"")
            .add("abs-link", EntryType::Link, 0o644, "/usr/bin/abs", b"")
            .bytes();
        let (dest, stats) = unpack_bytes(&tar, &opts);
        assert_eq!(stats.unwrap().file_bytes, 10);
        let alias = dest.path().join("usr/bin/alias");
        assert_eq!(fs::read(&alias).unwrap(), b"tool bytes");
        let m = fs::metadata(&alias).unwrap();
        assert_eq!(
            (
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec()
            ),
            (0o4751, 12, 34, 1_234_567_890, 5)
        );
        assert_eq!(m.nlink(), 1);
        assert_eq!(
            xattr::get(&alias, "user.kept").unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(
            fs::read_link(dest.path().join("abs-link")).unwrap(),
            Path::new("/etc/passwd")
        );
    }

    #[test]
    fn hardlinks_to_deleted_hidden_or_symlinked_lower_paths_are_refused() {
        let (_base, lowers) = lower_stack();
        let cases = [
            ("etc/gone", "was deleted by a whiteout"),
            ("etc/old/f", "is hidden by an opaque directory"),
            ("hostetc/passwd", "never resolved through symlinks"),
            ("usr/bin", "is a directory"),
            ("usr/bin/tool/x", "is under a non-directory"),
        ];
        for (target, reason) in cases {
            let opts = UnpackOptions {
                lowers: lowers.clone(),
                exclude: Default::default(),
                ..OVERLAY
            };
            let tar = TarBuilder::new()
                .add("l", EntryType::Link, 0o644, target, b"")
                .bytes();
            let (dest, result) = unpack_bytes(&tar, &opts);
            let err = result.unwrap_err();
            assert!(
                matches!(&err, LayerError::HardlinkTarget { entry, .. } if entry == "l"),
                "{target}: {err}"
            );
            assert!(err.to_string().contains(reason), "{target}: {err}");
            assert!(!dest.path().join("l").exists(), "{target}");
        }
    }

    #[test]
    fn this_layers_whiteouts_and_opaque_dirs_hide_lower_targets() {
        let (_base, lowers) = lower_stack();
        let opts = UnpackOptions { lowers, ..OVERLAY };
        let tar = TarBuilder::new()
            .file("usr/bin/.wh.tool", 0o644, b"")
            .add("a", EntryType::Link, 0o644, "usr/bin/tool", b"")
            .bytes();
        let err = unpack_bytes(&tar, &opts).1.unwrap_err();
        assert!(err.to_string().contains("this layer deletes"), "{err}");
        let tar = TarBuilder::new()
            .file("usr/.wh..wh..opq", 0o644, b"")
            .add("a", EntryType::Link, 0o644, "usr/bin/tool", b"")
            .bytes();
        let err = unpack_bytes(&tar, &opts).1.unwrap_err();
        assert!(err.to_string().contains("opaque"), "{err}");
        let tar = TarBuilder::new()
            .file(".wh.usr", 0o644, b"")
            .add("a", EntryType::Link, 0o644, "usr/bin/tool", b"")
            .bytes();
        let err = unpack_bytes(&tar, &opts).1.unwrap_err();
        assert!(
            err.to_string().contains("is under a directory deleted"),
            "{err}"
        );
    }

    #[test]
    fn build_contexts_refuse_whiteouts() {
        let tar = TarBuilder::new().file(".wh.x", 0o644, b"").bytes();
        let opts = UnpackOptions {
            whiteouts: Whiteouts::Reject,
            preserve_owners: false,
            lowers: Vec::new(),
            exclude: Default::default(),
        };
        let (_dest, result) = unpack_bytes(&tar, &opts);
        assert!(matches!(result, Err(LayerError::WhiteoutRejected { .. })));
    }

    #[test]
    fn gzip_and_zstd_are_detected_and_read_to_the_end() {
        let tar = TarBuilder::new().file("g", 0o644, b"zipped").bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let (dest, stats) = unpack_bytes(&gz.finish().unwrap(), &OVERLAY);
        stats.unwrap();
        assert_eq!(fs::read(dest.path().join("g")).unwrap(), b"zipped");

        // Two concatenated frames, as a parallel compressor may emit: both
        // are read, the second one's entry included.
        let first = TarBuilder::new().file("z1", 0o644, b"one").bytes();
        let second = TarBuilder::new().file("z2", 0o600, b"two").bytes();
        let mut zst = zstd::encode_all(&first[..first.len() - 1024], 3).unwrap();
        zst.extend(zstd::encode_all(&second[..], 19).unwrap());
        let mut input = io::Cursor::new(zst);
        let dest = tempfile::tempdir().unwrap();
        let stats = unpack(&mut input, dest.path(), &OVERLAY).unwrap();
        assert_eq!(stats.entries, 2);
        assert_eq!(fs::read(dest.path().join("z1")).unwrap(), b"one");
        assert_eq!(fs::read(dest.path().join("z2")).unwrap(), b"two");
        assert_eq!(input.position(), input.get_ref().len() as u64);

        let (_dest, result) = unpack_bytes(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0], &OVERLAY);
        assert!(matches!(result, Err(LayerError::Read(_))), "{result:?}");
    }

    #[test]
    fn devices_fifos_and_forged_overlay_xattrs() {
        let mut t = TarBuilder::new();
        let mut null = Header::new_ustar();
        null.as_old_mut().name[..4].copy_from_slice(b"null");
        null.set_entry_type(EntryType::Char);
        null.set_mode(0o666);
        null.set_uid(0);
        null.set_gid(0);
        null.set_mtime(0);
        null.set_size(0);
        null.set_device_major(1).unwrap();
        null.set_device_minor(3).unwrap();
        null.set_cksum();
        t.0.append(&null, io::empty()).unwrap();
        t.add("pipe", EntryType::Fifo, 0o600, "", b"");
        t.pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
            .dir("forged/");
        let (dest, stats) = unpack_bytes(&t.bytes(), &OVERLAY);
        stats.unwrap();
        let d = dest.path();
        let m = fs::symlink_metadata(d.join("null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(
            (
                rustix::fs::major(m.rdev()),
                rustix::fs::minor(m.rdev()),
                m.mode() & 0o7777
            ),
            (1, 3, 0o666)
        );
        assert!(
            fs::symlink_metadata(d.join("pipe"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(xattr::get(d.join("forged"), OPAQUE_XATTR).unwrap(), None);
    }
}
