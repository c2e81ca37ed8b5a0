//! Canonical layer writing: a directory tree in overlay format becomes a
//! reproducible compressed tar blob in the store, diff_id and digest
//! computed in the same single pass.
//!
//! Canonical means: entries sorted byte-wise by path (directories carry a
//! trailing `/`), ustar headers with empty user and group names, whole-second
//! mtimes (optionally clamped), long names and xattrs as sorted PAX records,
//! gzip as pigz-style fixed-size blocks compressed in parallel (see
//! [`super::pgzip`]) behind a header without name or time, and zstd always
//! in libzstd's multithreaded mode (single-threaded mode frames the data
//! differently). Neither output depends on the number of threads.

use super::pgzip::ParGzWriter;
use super::{LayerError, OPAQUE_MARKER, WHITEOUT_PREFIX, XattrPairs, is_overlay_xattr};
use crate::digest::{Digest, HashingWriter};
use crate::image::manifest::{DOCKER_LAYER_GZIP, OCI_LAYER_ZSTD};
use crate::store::{BlobWriter, Store};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tar::{EntryType, Header};

/// A layer written to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    /// Digest of the compressed blob (what manifests reference).
    pub digest: Digest,
    /// Digest of the uncompressed tar (what image configs list).
    pub diff_id: Digest,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// The blob's media type: Docker's gzip layer, or OCI's zstd layer
    /// (Docker schema 2 has none for zstd).
    pub media_type: &'static str,
}

/// How a layer is compressed, and how hard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip, level 0 (store) to 9 (smallest).
    Gzip { level: u32 },
    /// zstd, level 1 (fastest) to 22 (smallest).
    Zstd { level: i32 },
}

impl Compression {
    /// gzip at its default level, as kaniko writes.
    pub const GZIP: Self = Self::Gzip { level: 6 };
    /// zstd at its default level, that of the `zstd` command.
    pub const ZSTD: Self = Self::Zstd { level: 3 };

    /// Checks the level is one the format has.
    pub fn validate(self) -> Result<Self, LayerError> {
        match self {
            Self::Gzip { level } if level > 9 => Err(LayerError::GzipLevel(level)),
            Self::Zstd { level } if !(1..=22).contains(&level) => Err(LayerError::ZstdLevel(level)),
            ok => Ok(ok),
        }
    }

    /// The media type of a layer blob compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Gzip { .. } => DOCKER_LAYER_GZIP,
            Self::Zstd { .. } => OCI_LAYER_ZSTD,
        }
    }
}

impl Default for Compression {
    fn default() -> Self {
        Self::GZIP
    }
}

/// How to write a layer.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// Clamp mtimes to this many seconds since the epoch (`SOURCE_DATE_EPOCH`).
    pub mtime_clamp: Option<u64>,
    /// Compression of the blob.
    pub compression: Compression,
    /// Sees the blob while it is written.
    pub watcher: Option<Watcher>,
}

/// Sees a layer blob while it is being written, to upload it meanwhile.
pub trait BlobWatcher: Send + Sync {
    /// A blob is being written to `file`, which only grows until the
    /// returned watch hears that the blob is complete; a watch dropped
    /// unheard means the blob was abandoned.
    fn watch(&self, file: File) -> Box<dyn BlobWatch>;
}

/// How one watched blob ends.
pub trait BlobWatch {
    /// The blob is complete, with this digest and size.
    fn complete(self: Box<Self>, digest: &Digest, size: u64);
}

/// A shared [`BlobWatcher`], as [`WriteOptions`] holds it.
#[derive(Clone)]
pub struct Watcher(pub Arc<dyn BlobWatcher>);

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Watcher")
    }
}

/// A compressor in front of the blob (which hashes what it is given).
enum Encoder {
    Gzip(ParGzWriter<BlobWriter>),
    Zstd(zstd::stream::write::Encoder<'static, BlobWriter>),
}

impl Encoder {
    /// `workers` is the number of compression threads.
    fn new(compression: Compression, blob: BlobWriter, workers: u32) -> io::Result<Self> {
        Ok(match compression {
            Compression::Gzip { level } => {
                Self::Gzip(ParGzWriter::new(blob, level, workers as usize)?)
            }
            Compression::Zstd { level } => {
                let mut zstd = zstd::stream::write::Encoder::new(blob, level)?;
                zstd.include_checksum(true)?;
                zstd.multithread(workers)?;
                Self::Zstd(zstd)
            }
        })
    }

    /// Ends the stream and hands back the blob, ready to commit.
    fn finish(self) -> io::Result<BlobWriter> {
        match self {
            Self::Gzip(gzip) => gzip.finish(),
            Self::Zstd(zstd) => zstd.finish(),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Gzip(e) => e.write(buf),
            Self::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Gzip(e) => e.flush(),
            Self::Zstd(e) => e.flush(),
        }
    }
}

/// Compression threads: one per CPU. At least one, so zstd's frame layout
/// (and the digest) is that of multithreaded mode everywhere.
fn default_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
}

/// Writes the tree under `root` as a canonical compressed layer blob into
/// the store; `None` if `root` has no entries. The root directory's own
/// metadata is not part of the layer.
pub fn write_layer(
    root: &Path,
    store: &Store,
    opts: &WriteOptions,
) -> Result<Option<LayerBlob>, LayerError> {
    let mut first = fs::read_dir(root).map_err(io_err("read directory", root))?;
    if first.next().is_none() {
        opts.compression.validate()?;
        return Ok(None);
    }
    write_blob(root, store, opts, |w| w.walk(root, b"")).map(Some)
}

/// One path of a layer made from a list rather than a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The path as it is now under the root.
    Present,
    /// Deleted: stored as a whiteout.
    Deleted,
}

/// Writes the listed paths under `root` (relative, normalised) as a
/// canonical layer blob: a present path with its current metadata and
/// content, preceded by its parent directories; a deleted one as a
/// whiteout. A listed directory stands for itself only, not its
/// children. `None` if the list is empty.
pub fn write_changes(
    root: &Path,
    changes: &[(Vec<u8>, Change)],
    store: &Store,
    opts: &WriteOptions,
) -> Result<Option<LayerBlob>, LayerError> {
    if changes.is_empty() {
        opts.compression.validate()?;
        return Ok(None);
    }
    // Tar names sort as the tree walk of `write_layer` lists them: a
    // directory is `name/`, so its children follow it directly.
    let mut entries: BTreeMap<Vec<u8>, Listed> = BTreeMap::new();
    for (rel, change) in changes {
        let (up, name) = match rel.iter().rposition(|b| *b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&rel[..0], &rel[..]),
        };
        let mut dir = Vec::new();
        for comp in up.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            if !dir.is_empty() {
                dir.push(b'/');
            }
            dir.extend_from_slice(comp);
            entries.insert([dir.as_slice(), b"/"].concat(), Listed::Path(dir.clone()));
        }
        let prefix = if up.is_empty() {
            Vec::new()
        } else {
            [up, b"/"].concat()
        };
        match change {
            Change::Present => {
                let path = root.join(std::ffi::OsStr::from_bytes(rel));
                let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
                let key = tar_name(name, &kind_of(&meta));
                entries.insert([prefix, key].concat(), Listed::Path(rel.clone()));
            }
            Change::Deleted => {
                let key = [prefix.as_slice(), WHITEOUT_PREFIX, name].concat();
                entries.insert(key, Listed::Whiteout(up.to_vec()));
            }
        }
    }
    write_blob(root, store, opts, |w| {
        for (tar_path, listed) in &entries {
            match listed {
                Listed::Path(rel) => {
                    let path = root.join(std::ffi::OsStr::from_bytes(rel));
                    let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
                    let kind = kind_of(&meta);
                    let child = Child {
                        name: OsString::new(),
                        key: Vec::new(),
                        meta,
                        kind,
                    };
                    w.entry(&path, tar_path, &child)?;
                }
                Listed::Whiteout(dir) => {
                    let path = root.join(std::ffi::OsStr::from_bytes(dir));
                    let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
                    let mut h = w.header(EntryType::Regular, &meta);
                    h.set_mode(0);
                    h.set_uid(0);
                    h.set_gid(0);
                    w.append(&path, tar_path, h, None, &BTreeMap::new(), None)?;
                }
            }
        }
        Ok(())
    })
    .map(Some)
}

/// An entry of [`write_changes`]: a path under the root, or a whiteout in
/// a directory.
enum Listed {
    Path(Vec<u8>),
    Whiteout(Vec<u8>),
}

/// Streams the tar that `fill` writes through the compressor into a new
/// blob of the store.
fn write_blob(
    root: &Path,
    store: &Store,
    opts: &WriteOptions,
    fill: impl FnOnce(&mut TreeWriter<HashingWriter<Encoder>>) -> Result<(), LayerError>,
) -> Result<LayerBlob, LayerError> {
    let compression = opts.compression.validate()?;
    let blob = store.blob_writer()?;
    let watch = opts.watcher.as_ref().and_then(|w| match blob.reopen() {
        Ok(file) => Some(w.0.watch(file)),
        Err(e) => {
            log::debug!("cannot watch a layer blob while it is written: {e}");
            None
        }
    });
    let encoder = Encoder::new(compression, blob, default_workers())
        .map_err(io_err("start compressing", root))?;
    let mut writer = TreeWriter {
        tar: tar::Builder::new(HashingWriter::new(encoder)),
        clamp: opts.mtime_clamp,
        links: HashMap::new(),
    };
    fill(&mut writer)?;
    let tar = writer.tar.into_inner();
    let (encoder, diff_id, _) = tar.map_err(io_err("finish layer for", root))?.finish();
    let blob = encoder.finish().map_err(io_err("finish layer for", root))?;
    let (digest, size) = blob.commit(None)?;
    if let Some(watch) = watch {
        watch.complete(&digest, size);
    }
    Ok(LayerBlob {
        digest,
        diff_id,
        size,
        media_type: compression.media_type(),
    })
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// How a filesystem object is stored in the tar.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    /// An overlay whiteout (char device 0/0): stored as `.wh.NAME`.
    Whiteout,
    /// Sockets only exist while their server runs; images never carry them.
    Socket,
}

fn kind_of(meta: &Metadata) -> Kind {
    let ft = meta.file_type();
    let dev = || {
        (
            rustix::fs::major(meta.rdev()),
            rustix::fs::minor(meta.rdev()),
        )
    };
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        match dev() {
            (0, 0) => Kind::Whiteout,
            (major, minor) => Kind::Char(major, minor),
        }
    } else if ft.is_block_device() {
        let (major, minor) = dev();
        Kind::Block(major, minor)
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        Kind::File
    }
}

/// The name an entry takes in the tar, which is also its sort key among
/// siblings: a directory sorts as `name/`, so a depth-first walk in this
/// order lists full paths in byte order.
fn tar_name(name: &[u8], kind: &Kind) -> Vec<u8> {
    match kind {
        Kind::Dir => [name, b"/"].concat(),
        Kind::Whiteout => [WHITEOUT_PREFIX, name].concat(),
        _ => name.to_vec(),
    }
}

/// One PAX extended-header record: `"<len> <key>=<value>\n"`, where `len`
/// counts the whole record including its own digits.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while rest + len.to_string().len() != len {
        len = rest + len.to_string().len();
    }
    let mut rec = format!("{len} ").into_bytes();
    rec.extend_from_slice(key);
    rec.push(b'=');
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// Overlay xattrs that mean part of an entry lives in a lower layer.
const NOT_SELF_CONTAINED: [&[u8]; 4] = [
    b"trusted.overlay.redirect",
    b"trusted.overlay.metacopy",
    b"user.overlay.redirect",
    b"user.overlay.metacopy",
];

/// The xattrs of an entry as stored in the tar, and whether it is an
/// opaque directory.
#[derive(Debug, Default, PartialEq, Eq)]
struct Xattrs {
    stored: BTreeMap<Vec<u8>, Vec<u8>>,
    opaque: bool,
}

/// Decides which xattrs go into the tar. `security.selinux` is dropped: it
/// is the build host's label, not image content.
fn classify_xattrs(path: &Path, all: XattrPairs) -> Result<Xattrs, LayerError> {
    let mut out = Xattrs::default();
    for (name, value) in all {
        if NOT_SELF_CONTAINED.contains(&name.as_slice()) {
            return Err(LayerError::OverlayNotSelfContained {
                path: path.to_owned(),
                xattr: lossy(&name),
            });
        }
        if name.ends_with(b".overlay.opaque") && is_overlay_xattr(&name) {
            out.opaque |= value == b"y";
        } else if !is_overlay_xattr(&name) && name != b"security.selinux" {
            out.stored.insert(name, value);
        }
    }
    Ok(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn read_xattrs(path: &Path) -> Result<XattrPairs, LayerError> {
    let fail = |source| LayerError::Io {
        action: "read xattrs of",
        path: path.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for name in xattr::list(path).map_err(fail)? {
        if let Some(value) = xattr::get(path, &name).map_err(fail)? {
            out.push((name.into_vec(), value));
        }
    }
    Ok(out)
}

struct TreeWriter<W: Write> {
    tar: tar::Builder<W>,
    clamp: Option<u64>,
    /// First tar path of every multiply-linked regular file seen so far.
    links: HashMap<(u64, u64), Vec<u8>>,
}

struct Child {
    name: OsString,
    key: Vec<u8>,
    meta: Metadata,
    kind: Kind,
}

impl<W: Write> TreeWriter<W> {
    fn walk(&mut self, dir: &Path, prefix: &[u8]) -> Result<(), LayerError> {
        let mut children = Vec::new();
        for ent in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
            let ent = ent.map_err(io_err("read directory", dir))?;
            let path = ent.path();
            let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
            let kind = kind_of(&meta);
            let name = ent.file_name();
            children.push(Child {
                key: tar_name(name.as_bytes(), &kind),
                name,
                meta,
                kind,
            });
        }
        children.sort_by(|a, b| a.key.cmp(&b.key));
        for child in children {
            let path = dir.join(&child.name);
            let tar_path = [prefix, &child.key].concat();
            self.entry(&path, &tar_path, &child)?;
            if child.kind == Kind::Dir {
                self.walk(&path, &tar_path)?;
            }
        }
        Ok(())
    }

    fn mtime(&self, meta: &Metadata) -> u64 {
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        self.clamp.map_or(mtime, |c| mtime.min(c))
    }

    fn header(&self, kind: EntryType, meta: &Metadata) -> Header {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid().into());
        h.set_gid(meta.gid().into());
        h.set_mtime(self.mtime(meta));
        h.set_size(0);
        zero_devices(&mut h);
        h
    }

    fn entry(&mut self, path: &Path, tar_path: &[u8], child: &Child) -> Result<(), LayerError> {
        let meta = &child.meta;
        let xattrs = match child.kind {
            Kind::Whiteout | Kind::Socket => Xattrs::default(),
            _ => classify_xattrs(path, read_xattrs(path)?)?,
        };
        let mut link = None;
        let header = match child.kind {
            Kind::Socket => {
                log::warn!("not storing socket {} in the layer", path.display());
                return Ok(());
            }
            Kind::Dir => self.header(EntryType::Directory, meta),
            Kind::Whiteout => self.header(EntryType::Regular, meta),
            Kind::Fifo => self.header(EntryType::Fifo, meta),
            Kind::Symlink => {
                link = Some(
                    fs::read_link(path)
                        .map_err(io_err("read symlink", path))?
                        .into_os_string()
                        .into_vec(),
                );
                self.header(EntryType::Symlink, meta)
            }
            Kind::Char(major, minor) | Kind::Block(major, minor) => {
                let kind = if matches!(child.kind, Kind::Char(..)) {
                    EntryType::Char
                } else {
                    EntryType::Block
                };
                let mut h = self.header(kind, meta);
                let set = |h: &mut Header| -> io::Result<()> {
                    h.set_device_major(major)?;
                    h.set_device_minor(minor)
                };
                set(&mut h).map_err(io_err("store device numbers of", path))?;
                h
            }
            // Overlayfs shares one inode among the whiteouts it creates, so
            // only regular files are tracked as hardlinks.
            Kind::File if meta.nlink() > 1 => match self.links.get(&(meta.dev(), meta.ino())) {
                Some(first) => {
                    link = Some(first.clone());
                    self.header(EntryType::Link, meta)
                }
                None => {
                    self.links
                        .insert((meta.dev(), meta.ino()), tar_path.to_vec());
                    self.header(EntryType::Regular, meta)
                }
            },
            Kind::File => self.header(EntryType::Regular, meta),
        };
        let is_data = header.entry_type() == EntryType::Regular && child.kind == Kind::File;
        self.append(
            path,
            tar_path,
            header,
            link.as_deref(),
            &xattrs.stored,
            is_data.then_some(meta.len()),
        )?;
        if xattrs.opaque {
            let marker = [tar_path, OPAQUE_MARKER].concat();
            let mut h = self.header(EntryType::Regular, meta);
            h.set_mode(meta.mode() & 0o777);
            self.append(path, &marker, h, None, &BTreeMap::new(), None)?;
        }
        Ok(())
    }

    /// Appends one entry, preceded by a PAX header when the path or link
    /// does not fit ustar or there are xattrs; `data` is the file length
    /// to copy from `path`.
    fn append(
        &mut self,
        path: &Path,
        tar_path: &[u8],
        mut header: Header,
        link: Option<&[u8]>,
        xattrs: &BTreeMap<Vec<u8>, Vec<u8>>,
        data: Option<u64>,
    ) -> Result<(), LayerError> {
        let mut pax = Vec::new();
        for (name, value) in xattrs {
            pax.extend(pax_record(
                &[b"SCHILY.xattr.", name.as_slice()].concat(),
                value,
            ));
        }
        let old = header.as_old_mut();
        if let Some(link) = link {
            if link.len() <= old.linkname.len() {
                old.linkname[..link.len()].copy_from_slice(link);
            } else {
                pax.extend(pax_record(b"linkpath", link));
            }
        }
        if tar_path.len() <= old.name.len() {
            old.name[..tar_path.len()].copy_from_slice(tar_path);
        } else {
            pax.extend(pax_record(b"path", tar_path));
            let cut = old.name.len();
            old.name.copy_from_slice(&tar_path[..cut]);
        }
        let fail = io_err("write layer entry for", path);
        if !pax.is_empty() {
            let mut h = Header::new_ustar();
            h.set_entry_type(EntryType::XHeader);
            h.as_old_mut().name[..14].copy_from_slice(b"././@PaxHeader");
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            zero_devices(&mut h);
            h.set_size(pax.len() as u64);
            h.set_cksum();
            self.tar.append(&h, pax.as_slice()).map_err(fail)?;
        }
        let fail = io_err("write layer entry for", path);
        match data {
            None => {
                header.set_cksum();
                self.tar.append(&header, io::empty()).map_err(fail)
            }
            Some(len) => {
                header.set_size(len);
                header.set_cksum();
                let file = File::open(path).map_err(io_err("open", path))?;
                let mut counted = CountingReader {
                    inner: file.take(len),
                    count: 0,
                };
                self.tar.append(&header, &mut counted).map_err(fail)?;
                if counted.count != len {
                    return Err(LayerError::Io {
                        action: "archive",
                        path: PathBuf::from(path),
                        source: io::Error::other(
                            "the file shrank while being archived; nothing may write to the tree during a snapshot",
                        ),
                    });
                }
                Ok(())
            }
        }
    }
}

/// Writes device numbers 0 rather than leaving the fields NUL, as GNU tar
/// does, so strict readers parse every numeric field.
fn zero_devices(h: &mut Header) {
    if let Some(ustar) = h.as_ustar_mut() {
        ustar.set_device_major(0);
        ustar.set_device_minor(0);
    }
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{UnpackOptions, Whiteouts, unpack};
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn uncompressed(store: &Store, blob: &LayerBlob) -> Vec<u8> {
        let mut out = Vec::new();
        let file = store.open_blob(&blob.digest).unwrap();
        match blob.media_type {
            DOCKER_LAYER_GZIP => flate2::read::GzDecoder::new(file).read_to_end(&mut out),
            OCI_LAYER_ZSTD => zstd::stream::read::Decoder::new(file)
                .unwrap()
                .read_to_end(&mut out),
            other => panic!("unexpected media type {other}"),
        }
        .unwrap();
        out
    }

    /// (path, type, link, mode, mtime, xattrs) of every entry.
    type Listed = (String, EntryType, String, u32, u64, Vec<(String, Vec<u8>)>);

    fn list(tar: &[u8]) -> Vec<Listed> {
        let mut archive = tar::Archive::new(tar);
        let mut out = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut xattrs = Vec::new();
            if let Some(pax) = e.pax_extensions().unwrap() {
                for ext in pax {
                    let ext = ext.unwrap();
                    if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                        xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                    }
                }
            }
            let h = e.header();
            out.push((
                lossy(&e.path_bytes()),
                h.entry_type(),
                e.link_name_bytes().map(|l| lossy(&l)).unwrap_or_default(),
                h.mode().unwrap(),
                h.mtime().unwrap(),
                xattrs,
            ));
        }
        out
    }

    fn names(tar: &[u8]) -> Vec<String> {
        list(tar).into_iter().map(|e| e.0).collect()
    }

    fn mknod(path: &Path, kind: rustix::fs::FileType, major: u32, minor: u32) {
        let mode = rustix::fs::Mode::from_raw_mode(0o600);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            kind,
            mode,
            rustix::fs::makedev(major, minor),
        )
        .unwrap();
    }

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record(b"path", b"abc"), b"12 path=abc\n");
        // 3 + 1 + 94 = 98 bytes without the length; "100 " tips it over.
        let rec = pax_record(b"k", &[b'v'; 94]);
        assert_eq!(rec.len(), 101);
        assert!(rec.starts_with(b"101 k="));
    }

    #[test]
    fn classify_keeps_content_xattrs_and_drops_overlay_ones() {
        let x = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
        let all = vec![
            x("user.x", "1"),
            x("security.capability", "cap"),
            x("security.selinux", "host_t"),
            x("trusted.overlay.origin", "o"),
            x("trusted.overlay.opaque", "y"),
        ];
        let got = classify_xattrs(Path::new("p"), all).unwrap();
        assert!(got.opaque);
        assert_eq!(
            got.stored.keys().map(|k| lossy(k)).collect::<Vec<_>>(),
            ["security.capability", "user.x"]
        );
        let redirect = classify_xattrs(Path::new("d"), vec![x("trusted.overlay.redirect", "/a")]);
        assert!(matches!(
            redirect,
            Err(LayerError::OverlayNotSelfContained { .. })
        ));
    }

    #[test]
    fn empty_tree_gives_no_layer() {
        let (_k, store) = store();
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            write_layer(root.path(), &store, &WriteOptions::default()).unwrap(),
            None
        );
        assert_eq!(
            fs::read_dir(store.blob_path(&Digest::of(b"")).parent().unwrap())
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn layers_are_sorted_deterministic_and_hash_right() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in ["a", "a/x", "B"] {
            fs::create_dir(r.join(d)).unwrap();
        }
        for f in ["a-b", "a/x/f", "a/z", "B/c", "\u{e4}", "a.txt"] {
            fs::write(r.join(f), f.as_bytes()).unwrap();
        }
        let long = "l".repeat(150);
        fs::write(r.join(&long), b"long").unwrap();
        symlink("a/z", r.join("sym")).unwrap();
        let (_k1, s1) = store();
        let (_k2, s2) = store();
        let b1 = write_layer(r, &s1, &WriteOptions::default())
            .unwrap()
            .unwrap();
        let b2 = write_layer(r, &s2, &WriteOptions::default())
            .unwrap()
            .unwrap();
        assert_eq!(b1, b2);
        assert_eq!(
            fs::read(s1.blob_path(&b1.digest)).unwrap(),
            fs::read(s2.blob_path(&b2.digest)).unwrap()
        );
        assert_eq!(
            b1.size,
            fs::metadata(s1.blob_path(&b1.digest)).unwrap().len()
        );
        let tar = uncompressed(&s1, &b1);
        assert_eq!(Digest::of(&tar), b1.diff_id);
        let got = names(&tar);
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted);
        assert_eq!(
            got,
            [
                "B/",
                "B/c",
                "a-b",
                "a.txt",
                "a/",
                "a/x/",
                "a/x/f",
                "a/z",
                long.as_str(),
                "sym",
                "\u{e4}"
            ]
        );
        let sym = list(&tar).into_iter().find(|e| e.0 == "sym").unwrap();
        assert_eq!((sym.1, sym.2.as_str()), (EntryType::Symlink, "a/z"));
    }

    #[test]
    fn a_change_list_is_written_like_the_tree_walk_with_parents_and_whiteouts() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("a/x")).unwrap();
        fs::create_dir(r.join("B")).unwrap();
        fs::write(r.join("a/x/f"), b"f").unwrap();
        fs::write(r.join("a.txt"), b"t").unwrap();
        fs::write(r.join("B/unlisted"), b"u").unwrap();
        fs::hard_link(r.join("a.txt"), r.join("B/link")).unwrap();
        let changes: Vec<(Vec<u8>, Change)> = vec![
            (b"a/x/f".to_vec(), Change::Present),
            (b"B/link".to_vec(), Change::Present),
            (b"a.txt".to_vec(), Change::Present),
            (b"a/gone".to_vec(), Change::Deleted),
            (b"top".to_vec(), Change::Deleted),
            (b"B".to_vec(), Change::Present),
        ];
        let (_k, store) = store();
        let blob = write_changes(r, &changes, &store, &WriteOptions::default())
            .unwrap()
            .unwrap();
        let tar = uncompressed(&store, &blob);
        assert_eq!(Digest::of(&tar), blob.diff_id);
        assert_eq!(
            names(&tar),
            [
                ".wh.top",
                "B/",
                "B/link",
                "a.txt",
                "a/",
                "a/.wh.gone",
                "a/x/",
                "a/x/f"
            ]
        );
        let entries = list(&tar);
        let link = entries.iter().find(|e| e.0 == "a.txt").unwrap();
        assert_eq!((link.1, link.2.as_str()), (EntryType::Link, "B/link"));
        let whiteout = entries.iter().find(|e| e.0 == "a/.wh.gone").unwrap();
        assert_eq!((whiteout.1, whiteout.3), (EntryType::Regular, 0));
        assert_eq!(
            write_changes(r, &[], &store, &WriteOptions::default()).unwrap(),
            None
        );
    }

    #[test]
    fn overlay_format_becomes_tar_whiteouts_and_hardlinks_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir(r.join("opq")).unwrap();
        fs::write(r.join("opq/.a"), b"").unwrap();
        xattr::set(r.join("opq"), "trusted.overlay.opaque", b"y").unwrap();
        mknod(&r.join("gone"), rustix::fs::FileType::CharacterDevice, 0, 0);
        mknod(&r.join("tty"), rustix::fs::FileType::CharacterDevice, 5, 0);
        fs::write(r.join("h1"), b"shared").unwrap();
        fs::hard_link(r.join("h1"), r.join("h2")).unwrap();
        fs::write(r.join("suid"), b"").unwrap();
        fs::set_permissions(r.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        xattr::set(r.join("suid"), "user.x", b"1").unwrap();
        xattr::set(r.join("suid"), "trusted.overlay.origin", b"o").unwrap();
        let (_k, s) = store();
        let blob = write_layer(r, &s, &WriteOptions::default())
            .unwrap()
            .unwrap();
        let entries = list(&uncompressed(&s, &blob));
        let brief: Vec<_> = entries
            .iter()
            .map(|e| (e.0.as_str(), e.1, e.2.as_str()))
            .collect();
        assert_eq!(
            brief,
            [
                (".wh.gone", EntryType::Regular, ""),
                ("h1", EntryType::Regular, ""),
                ("h2", EntryType::Link, "h1"),
                ("opq/", EntryType::Directory, ""),
                ("opq/.wh..wh..opq", EntryType::Regular, ""),
                ("opq/.a", EntryType::Regular, ""),
                ("suid", EntryType::Regular, ""),
                ("tty", EntryType::Char, ""),
            ]
        );
        let suid = entries.iter().find(|e| e.0 == "suid").unwrap();
        assert_eq!(suid.3, 0o4755);
        assert_eq!(suid.5, [("user.x".to_owned(), b"1".to_vec())]);
        assert!(entries.iter().all(|e| e.0 == "suid" || e.5.is_empty()));
    }

    #[test]
    fn mtimes_are_clamped_when_asked() {
        let root = tempfile::tempdir().unwrap();
        let set = |name: &str, secs: i64| {
            let path = root.path().join(name);
            fs::write(&path, b"").unwrap();
            let t = rustix::fs::Timespec {
                tv_sec: secs,
                tv_nsec: 5,
            };
            let times = rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            };
            rustix::fs::utimensat(rustix::fs::CWD, &path, &times, rustix::fs::AtFlags::empty())
                .unwrap();
        };
        set("new", 2_000_000_000);
        set("old", 500);
        let (_k, s) = store();
        let opts = WriteOptions {
            mtime_clamp: Some(1000),
            ..WriteOptions::default()
        };
        let blob = write_layer(root.path(), &s, &opts).unwrap().unwrap();
        let mtimes: Vec<_> = list(&uncompressed(&s, &blob))
            .into_iter()
            .map(|e| (e.0, e.4))
            .collect();
        assert_eq!(mtimes, [("new".to_owned(), 1000), ("old".to_owned(), 500)]);
        let unclamped = write_layer(root.path(), &s, &WriteOptions::default())
            .unwrap()
            .unwrap();
        assert_eq!(list(&uncompressed(&s, &unclamped))[0].4, 2_000_000_000);
    }

    #[test]
    fn bad_levels_are_refused_before_anything_is_written() {
        let (_k, s) = store();
        let refused = |compression| {
            let opts = WriteOptions {
                compression,
                ..WriteOptions::default()
            };
            write_layer(Path::new("/"), &s, &opts).unwrap_err()
        };
        assert!(matches!(
            refused(Compression::Gzip { level: 10 }),
            LayerError::GzipLevel(10)
        ));
        for level in [0, -1, 23] {
            let err = refused(Compression::Zstd { level });
            assert!(matches!(err, LayerError::ZstdLevel(l) if l == level));
            assert!(err.to_string().contains("1 (fastest) to 22"), "{err}");
        }
        for ok in [
            Compression::Gzip { level: 0 },
            Compression::Gzip { level: 9 },
            Compression::Zstd { level: 1 },
            Compression::Zstd { level: 22 },
        ] {
            assert_eq!(ok.validate().unwrap(), ok);
        }
        assert_eq!(Compression::default(), Compression::Gzip { level: 6 });
        assert_eq!(Compression::ZSTD, Compression::Zstd { level: 3 });
    }

    /// A tree with text, repetitive and incompressible files.
    fn mixed_tree(root: &Path, random_bytes: usize) {
        fs::create_dir(root.join("etc")).unwrap();
        let text: String = (0..2000)
            .map(|i| format!("line {i} of a config\n"))
            .collect();
        fs::write(root.join("etc/conf"), text).unwrap();
        fs::write(root.join("zeros"), vec![0u8; 100_000]).unwrap();
        fs::write(root.join("random"), pseudo_random(random_bytes)).unwrap();
        symlink("etc/conf", root.join("link")).unwrap();
    }

    /// Deterministic bytes that do not compress (xorshift).
    fn pseudo_random(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn zstd_layers_hash_right_round_trip_and_are_deterministic() {
        let root = tempfile::tempdir().unwrap();
        mixed_tree(root.path(), 300_000);
        let opts = WriteOptions {
            compression: Compression::ZSTD,
            ..WriteOptions::default()
        };
        let (_k1, s1) = store();
        let (_k2, s2) = store();
        let b1 = write_layer(root.path(), &s1, &opts).unwrap().unwrap();
        let b2 = write_layer(root.path(), &s2, &opts).unwrap().unwrap();
        assert_eq!(b1, b2);
        assert_eq!(b1.media_type, OCI_LAYER_ZSTD);
        let blob = fs::read(s1.blob_path(&b1.digest)).unwrap();
        assert!(blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]));
        assert_eq!(Digest::of(&blob), b1.digest);
        assert_eq!(blob.len() as u64, b1.size);

        let tar = uncompressed(&s1, &b1);
        assert_eq!(Digest::of(&tar), b1.diff_id);
        // Only the random file keeps its size; text and zeros shrink.
        assert!(b1.size < 310_000, "{} of {}", b1.size, tar.len());
        assert_eq!(names(&tar), ["etc/", "etc/conf", "link", "random", "zeros"]);
        // The same tree gives the same tar whatever the compression.
        let gzip = write_layer(root.path(), &s1, &WriteOptions::default())
            .unwrap()
            .unwrap();
        assert_eq!(gzip.media_type, DOCKER_LAYER_GZIP);
        assert_eq!(gzip.diff_id, b1.diff_id);
        assert_ne!(gzip.digest, b1.digest);

        let dest = tempfile::tempdir().unwrap();
        let unpack_opts = UnpackOptions {
            whiteouts: Whiteouts::Overlay,
            preserve_owners: true,
            lowers: Vec::new(),
            exclude: Default::default(),
        };
        unpack(s1.open_blob(&b1.digest).unwrap(), dest.path(), &unpack_opts).unwrap();
        for f in ["etc/conf", "zeros", "random"] {
            assert_eq!(
                fs::read(dest.path().join(f)).unwrap(),
                fs::read(root.path().join(f)).unwrap(),
                "{f}"
            );
        }
        assert_eq!(
            fs::read_link(dest.path().join("link")).unwrap(),
            Path::new("etc/conf")
        );
    }

    #[test]
    fn output_does_not_depend_on_the_number_of_threads() {
        // Larger than several libzstd jobs at level 3 and many gzip blocks,
        // so the threads really split the work.
        let data: Vec<u8> = pseudo_random(1 << 20)
            .iter()
            .flat_map(|b| [*b, b'a', b'b', *b & 0x0f])
            .chain(std::iter::repeat_n(b'z', 16 << 20))
            .collect();
        let (_k, s) = store();
        for compression in [Compression::ZSTD, Compression::GZIP] {
            let encode = |workers| {
                let mut e = Encoder::new(compression, s.blob_writer().unwrap(), workers).unwrap();
                for chunk in data.chunks(10_000) {
                    e.write_all(chunk).unwrap();
                }
                e.finish().unwrap().commit(None).unwrap().0
            };
            let one = encode(1);
            assert_eq!(encode(2), one, "{compression:?}");
            assert_eq!(encode(4), one, "{compression:?}");
            let blob = s.open_blob(&one).unwrap();
            let mut back = Vec::new();
            match compression {
                Compression::Zstd { .. } => zstd::stream::read::Decoder::new(blob)
                    .unwrap()
                    .read_to_end(&mut back),
                Compression::Gzip { .. } => {
                    flate2::read::GzDecoder::new(blob).read_to_end(&mut back)
                }
            }
            .unwrap();
            assert!(back == data, "{compression:?}");
        }
    }
}
