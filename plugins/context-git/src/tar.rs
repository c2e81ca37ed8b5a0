//! The checked-out tree as a tar stream, produced entry by entry.

use std::collections::HashMap;
use std::io::{self, Read};
use std::rc::Rc;

use crate::gitdir::{self, GitDir};
use crate::object::{EntryKind, Kind, ObjectId, TreeEntry, parse_tree};
use crate::pack::Store;

/// The longest symlink target read (Linux's `PATH_MAX`).
const MAX_LINK: u64 = 4096;

/// A fetched repository at one commit, with its fetched submodules.
pub struct Repo {
    /// The fetched objects.
    pub store: Store,
    /// The commit's root tree.
    pub tree: ObjectId,
    /// Fetched submodules by their path in this repository.
    pub submodules: HashMap<String, Rc<Repo>>,
}

/// Reads a tree object's entries.
pub fn read_tree(store: &Store, id: &ObjectId) -> Result<Vec<TreeEntry>, String> {
    let (kind, data) = store.read(id)?;
    if kind != Kind::Tree {
        return Err(format!("object {id} is a {}, not a tree", kind.name()));
    }
    parse_tree(&data).map_err(|e| format!("tree {id}: {e}"))
}

/// A directory being walked.
struct Frame {
    repo: Rc<Repo>,
    /// Its path inside `repo`, empty or ending in `/`.
    rel: String,
    /// Its path in the archive, empty or ending in `/`.
    out: String,
    entries: Vec<TreeEntry>,
    next: usize,
}

/// A tar archive of a repository's tree, read incrementally: one tree per
/// directory level and one blob reader are held at a time.
pub struct TarStream {
    display: String,
    mtime: u64,
    stack: Vec<Frame>,
    /// Header (or padding, or end-of-archive) bytes waiting to be read.
    pending: Vec<u8>,
    pending_pos: usize,
    /// The current file's content and how much of it is still due.
    body: Option<(Box<dyn Read>, u64, u64)>,
    finished: bool,
    /// The repository, for the `.git` directory.
    root: Rc<Repo>,
    /// The `.git` directory still to write after the tree, if kept.
    git: Option<GitDir>,
}

impl TarStream {
    /// A stream of `repo`'s tree, every entry dated `mtime`; errors name `display`.
    pub fn new(repo: Rc<Repo>, mtime: i64, display: &str) -> Result<Self, String> {
        let entries = read_tree(&repo.store, &repo.tree)?;
        Ok(TarStream {
            display: display.to_owned(),
            mtime: mtime.max(0) as u64,
            root: Rc::clone(&repo),
            git: None,
            stack: vec![Frame {
                repo,
                rel: String::new(),
                out: String::new(),
                entries,
                next: 0,
            }],
            pending: Vec::new(),
            pending_pos: 0,
            body: None,
            finished: false,
        })
    }

    /// Adds a `.git` directory after the tree (`keep-git-dir`).
    pub fn with_git_dir(mut self, spec: &gitdir::Spec) -> Result<Self, String> {
        self.git = Some(GitDir::new(&self.root.store, spec)?);
        Ok(self)
    }

    /// Queues the next `.git` entry; false when there is none.
    fn next_git_entry(&mut self) -> Result<bool, String> {
        let Some(git) = self.git.as_mut() else {
            return Ok(false);
        };
        match git.next(&self.root)? {
            None => {
                self.git = None;
                Ok(false)
            }
            Some(gitdir::Entry::Dir(path)) => {
                self.pending = header(&path, Type::Dir, 0o755, 0, self.mtime, "");
                self.pending_pos = 0;
                Ok(true)
            }
            Some(gitdir::Entry::File {
                path,
                mode,
                size,
                body,
            }) => {
                self.pending = header(&path, Type::File, mode, size, self.mtime, "");
                self.pending_pos = 0;
                self.body = Some((body, size, size));
                Ok(true)
            }
        }
    }

    /// Queues the next entry's header (and body); false when the tree is done.
    fn next_entry(&mut self) -> Result<bool, String> {
        loop {
            let Some(frame) = self.stack.last_mut() else {
                return self.next_git_entry();
            };
            let Some(entry) = frame.entries.get(frame.next).cloned() else {
                self.stack.pop();
                continue;
            };
            frame.next += 1;
            let repo = Rc::clone(&frame.repo);
            let rel = format!("{}{}", frame.rel, entry.name);
            let out = format!("{}{}", frame.out, entry.name);
            let context = |e: String| format!("`{out}`: {e}");
            match entry.kind {
                EntryKind::Tree => {
                    let entries = read_tree(&repo.store, &entry.id).map_err(context)?;
                    self.pending = header(&format!("{out}/"), Type::Dir, 0o755, 0, self.mtime, "");
                    self.stack.push(Frame {
                        repo,
                        rel: format!("{rel}/"),
                        out: format!("{out}/"),
                        entries,
                        next: 0,
                    });
                }
                EntryKind::File { executable } => {
                    let (size, reader) = repo.store.blob(&entry.id).map_err(context)?;
                    let mode = if executable { 0o755 } else { 0o644 };
                    self.pending = header(&out, Type::File, mode, size, self.mtime, "");
                    self.body = Some((reader, size, size));
                }
                EntryKind::Symlink => {
                    let (size, reader) = repo.store.blob(&entry.id).map_err(context)?;
                    if size > MAX_LINK {
                        return Err(context(format!("the symlink target is {size} bytes long")));
                    }
                    let mut target = Vec::new();
                    reader
                        .take(size)
                        .read_to_end(&mut target)
                        .map_err(|e| context(format!("reading the symlink target failed: {e}")))?;
                    let target = String::from_utf8(target)
                        .map_err(|_| context("the symlink target is not UTF-8".to_owned()))?;
                    if target.is_empty() || target.contains('\0') {
                        return Err(context("the symlink target is empty or has a NUL".into()));
                    }
                    self.pending = header(&out, Type::Symlink, 0o777, 0, self.mtime, &target);
                }
                EntryKind::Gitlink => {
                    self.pending = header(&format!("{out}/"), Type::Dir, 0o755, 0, self.mtime, "");
                    if let Some(sub) = repo.submodules.get(&rel) {
                        let entries = read_tree(&sub.store, &sub.tree).map_err(context)?;
                        self.stack.push(Frame {
                            repo: Rc::clone(sub),
                            rel: String::new(),
                            out: format!("{out}/"),
                            entries,
                            next: 0,
                        });
                    }
                }
            }
            self.pending_pos = 0;
            return Ok(true);
        }
    }
}

impl Read for TarStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pending_pos < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.pending_pos);
                buf[..n].copy_from_slice(&self.pending[self.pending_pos..self.pending_pos + n]);
                self.pending_pos += n;
                return Ok(n);
            }
            if let Some((reader, size, left)) = &mut self.body {
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = if want == 0 {
                    0
                } else {
                    reader.read(&mut buf[..want])?
                };
                if n > 0 {
                    *left -= n as u64;
                    return Ok(n);
                }
                if *left > 0 {
                    return Err(io::Error::other(format!(
                        "{}: a file's content ended {left} bytes early",
                        self.display
                    )));
                }
                self.pending = vec![0; padding(*size)];
                self.pending_pos = 0;
                self.body = None;
                continue;
            }
            if self.finished {
                return Ok(0);
            }
            let more = self
                .next_entry()
                .map_err(|e| io::Error::other(format!("{}: {e}", self.display)))?;
            if !more {
                // Two zero blocks end a tar archive.
                self.pending = vec![0; 1024];
                self.pending_pos = 0;
                self.finished = true;
            }
        }
    }
}

/// Zero bytes after a body of `size` up to the next 512-byte block.
fn padding(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

/// The tar entry types a checkout has.
#[derive(Clone, Copy)]
enum Type {
    File,
    Dir,
    Symlink,
}

/// A ustar header, preceded by a PAX header when a name, link or size does not fit.
fn header(path: &str, kind: Type, mode: u32, size: u64, mtime: u64, link: &str) -> Vec<u8> {
    let mut pax = Vec::new();
    if path.len() > 100 {
        pax_record(&mut pax, "path", path);
    }
    if link.len() > 100 {
        pax_record(&mut pax, "linkpath", link);
    }
    if size >= 1 << 33 {
        pax_record(&mut pax, "size", &size.to_string());
    }
    let mut out = Vec::with_capacity(512);
    if !pax.is_empty() {
        out.extend(ustar(
            "././@PaxHeader",
            b'x',
            0o644,
            pax.len() as u64,
            mtime,
            "",
        ));
        let pad = padding(pax.len() as u64);
        out.extend(pax);
        out.resize(out.len() + pad, 0);
    }
    let flag = match kind {
        Type::File => b'0',
        Type::Dir => b'5',
        Type::Symlink => b'2',
    };
    out.extend(ustar(path, flag, mode, size, mtime, link));
    out
}

/// `"<len> key=value\n"`, where `<len>` counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &str) {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}={value}\n").as_bytes());
}

/// One 512-byte ustar header; over-long fields are truncated (the PAX header holds them).
fn ustar(path: &str, flag: u8, mode: u32, size: u64, mtime: u64, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, len: usize, bytes: &[u8]| {
        let n = bytes.len().min(len);
        h[at..at + n].copy_from_slice(&bytes[..n]);
    };
    let octal = |h: &mut [u8; 512], at: usize, len: usize, value: u64| {
        // Values too large for the field are in the PAX header.
        let digits = format!(
            "{:0width$o}",
            value.min(8u64.pow(len as u32 - 1) - 1),
            width = len - 1
        );
        h[at..at + len - 1].copy_from_slice(digits.as_bytes());
    };
    put(&mut h, 0, 100, path.as_bytes());
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, mtime);
    h[156] = flag;
    put(&mut h, 157, 100, link.as_bytes());
    put(&mut h, 257, 8, b"ustar\x0000");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> Vec<(String, u8, u32, u64, u64, String)> {
        tar::Archive::new(archive)
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type().as_byte(),
                    h.mode().unwrap(),
                    e.size(),
                    h.mtime().unwrap(),
                    e.link_name()
                        .unwrap()
                        .map(|l| l.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn headers_read_back_with_the_tar_crate() {
        let long = format!("{}/file", "d".repeat(150));
        let target = "t".repeat(200);
        let mut archive = Vec::new();
        archive.extend(header("a/", Type::Dir, 0o755, 0, 1_700_000_000, ""));
        archive.extend(header("a/x.sh", Type::File, 0o755, 3, 1_700_000_000, ""));
        archive.extend(b"hi\n");
        archive.resize(archive.len() + padding(3), 0);
        archive.extend(header("a/l", Type::Symlink, 0o777, 0, 5, "x.sh"));
        archive.extend(header(&long, Type::File, 0o644, 0, 5, ""));
        archive.extend(header("a/far", Type::Symlink, 0o777, 0, 5, &target));
        archive.extend([0; 1024]);
        assert_eq!(archive.len() % 512, 0);
        assert_eq!(
            entries(&archive),
            [
                ("a/".into(), b'5', 0o755, 0, 1_700_000_000, String::new()),
                (
                    "a/x.sh".into(),
                    b'0',
                    0o755,
                    3,
                    1_700_000_000,
                    String::new()
                ),
                ("a/l".into(), b'2', 0o777, 0, 5, "x.sh".into()),
                (long, b'0', 0o644, 0, 5, String::new()),
                ("a/far".into(), b'2', 0o777, 0, 5, target),
            ]
        );
    }

    #[test]
    fn pax_records_count_their_own_length() {
        let mut out = Vec::new();
        pax_record(&mut out, "path", "abc");
        assert_eq!(out, b"12 path=abc\n");
        let mut out = Vec::new();
        // 98 bytes without the length: two digits would make 100, which needs three.
        pax_record(&mut out, "path", &"x".repeat(91));
        assert!(
            out.starts_with(b"101 path="),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(out.len(), 101);
    }

    #[test]
    fn huge_sizes_go_to_pax() {
        let h = header("big", Type::File, 0o644, 1 << 34, 0, "");
        assert_eq!(h.len(), 1536);
        assert_eq!(h[156], b'x');
        assert!(String::from_utf8_lossy(&h[512..1024]).contains(" size=17179869184\n"));
    }
}
