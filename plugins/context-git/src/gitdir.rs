//! The `.git` directory that `ADD --keep-git-dir` keeps: a shallow clone of
//! the one fetched commit that the `git` CLI accepts.
//!
//! `HEAD` is detached at the commit (as BuildKit leaves it), the named ref
//! (branch, tag or other) points where the server said, `shallow` cuts the
//! history at the commit, and `index` lists the tree so `git status` is clean.
//! Every fetched object is written loose. Its zlib stream uses stored
//! (uncompressed) deflate blocks, whose size is known before the content is
//! read, so each object streams into the archive straight from the pack; the
//! image layer is compressed as a whole anyway.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::rc::Rc;

use crate::object::{EntryKind, ObjectId, TreeEntry};
use crate::pack::Store;
use crate::tar::{Repo, read_tree};

/// The largest stored deflate block.
const BLOCK: u64 = 65_535;
/// The fixed part of an index v2 entry: stat data, id and flags.
const INDEX_ENTRY: usize = 62;

/// An entry of the `.git` directory, its path relative to the archive root.
pub enum Entry {
    /// A directory.
    Dir(String),
    /// A file of `size` bytes read from `body`, with its permission bits.
    File {
        path: String,
        mode: u32,
        size: u64,
        body: Box<dyn Read>,
    },
}

/// What the `.git` directory records about the fetch.
pub struct Spec {
    /// The commit checked out.
    pub commit: ObjectId,
    /// The full ref name the request named and what it points at.
    pub reference: Option<(String, ObjectId)>,
    /// The repository URL, recorded as `origin`.
    pub remote: String,
    /// The commit's root tree.
    pub tree: ObjectId,
}

/// The `.git` entries, produced one at a time.
pub struct GitDir {
    /// Small files and directories, ready to go.
    queued: VecDeque<(String, Option<Vec<u8>>)>,
    /// The root tree, the index's size and entry count, until it is written.
    index: Option<(ObjectId, u64, u32)>,
    ids: Vec<ObjectId>,
    next: usize,
    /// The first id byte of the last `objects/xx/` directory written.
    fanout: Option<u8>,
}

impl GitDir {
    /// Plans the `.git` directory of `spec` over the objects of `store`.
    pub fn new(store: &Store, spec: &Spec) -> Result<Self, String> {
        let mut queued = VecDeque::new();
        let file = |path: &str, text: String| (format!(".git/{path}"), Some(text.into_bytes()));
        let dir = |path: &str| (format!(".git/{path}"), None);
        queued.push_back((".git/".to_owned(), None));
        queued.push_back(file("HEAD", format!("{}\n", spec.commit)));
        queued.push_back(file("config", config(&spec.remote)?));
        queued.push_back(file("shallow", format!("{}\n", spec.commit)));
        queued.push_back(dir("refs/"));
        queued.push_back(dir("refs/heads/"));
        queued.push_back(dir("refs/tags/"));
        if let Some((name, id)) = &spec.reference {
            let rest = name
                .strip_prefix("refs/")
                .filter(|r| r.split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
                .ok_or_else(|| format!("the ref `{name}` is not a valid ref name"))?;
            let parts: Vec<&str> = rest.split('/').collect();
            for depth in 1..parts.len() {
                let parent = parts[..depth].join("/");
                if parent != "heads" && parent != "tags" {
                    queued.push_back(dir(&format!("refs/{parent}/")));
                }
            }
            queued.push_back(file(name, format!("{id}\n")));
        }
        queued.push_back(dir("objects/"));
        let (size, count) = index_size(store, &spec.tree)?;
        Ok(GitDir {
            queued,
            index: Some((spec.tree, size, count)),
            ids: store.ids(),
            next: 0,
            fanout: None,
        })
    }

    /// The next entry; `None` when the directory is complete.
    pub fn next(&mut self, repo: &Rc<Repo>) -> Result<Option<Entry>, String> {
        if let Some((path, content)) = self.queued.pop_front() {
            return Ok(Some(match content {
                None => Entry::Dir(path),
                Some(bytes) => Entry::File {
                    path,
                    mode: 0o644,
                    size: bytes.len() as u64,
                    body: Box::new(io::Cursor::new(bytes)),
                },
            }));
        }
        if let Some((tree, size, count)) = self.index.take() {
            return Ok(Some(Entry::File {
                path: ".git/index".to_owned(),
                mode: 0o644,
                size,
                body: Box::new(IndexReader::new(Rc::clone(repo), tree, size, count)?),
            }));
        }
        let Some(id) = self.ids.get(self.next).copied() else {
            return Ok(None);
        };
        let hex = id.to_string();
        if self.fanout != Some(id.0[0]) {
            self.fanout = Some(id.0[0]);
            return Ok(Some(Entry::Dir(format!(".git/objects/{}/", &hex[..2]))));
        }
        self.next += 1;
        let (kind, size, body) = repo.store.stream(&id)?;
        let head = format!("{} {size}\0", kind.name()).into_bytes();
        let raw = head.len() as u64 + size;
        Ok(Some(Entry::File {
            path: format!(".git/objects/{}/{}", &hex[..2], &hex[2..]),
            mode: 0o444,
            size: stored_zlib_size(raw),
            body: Box::new(StoredZlib::new(head, body, raw)),
        }))
    }
}

/// The repository's `config`, with `origin` at `remote`.
fn config(remote: &str) -> Result<String, String> {
    if remote.contains(['\n', '\r', '\0']) {
        return Err(format!(
            "the URL `{}` has a line break",
            remote.escape_debug()
        ));
    }
    let quoted = remote.replace('\\', "\\\\").replace('"', "\\\"");
    Ok(format!(
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\
         [remote \"origin\"]\n\turl = \"{quoted}\"\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
    ))
}

/// The size of a zlib stream of `raw` bytes in stored blocks: the header,
/// each block's five-byte header, the bytes, and the Adler-32 trailer.
pub fn stored_zlib_size(raw: u64) -> u64 {
    let blocks = raw.div_ceil(BLOCK).max(1);
    2 + 5 * blocks + raw + 4
}

/// Where a [`StoredZlib`] is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    BlockHeader,
    Data,
    Trailer,
    Done,
}

/// A zlib stream of stored deflate blocks around `head` then `body`.
pub struct StoredZlib {
    head: io::Cursor<Vec<u8>>,
    body: Box<dyn Read>,
    /// Raw bytes still to come, and in the current block.
    left: u64,
    left_in_block: u64,
    stage: Stage,
    /// Control bytes waiting to be read.
    control: Vec<u8>,
    control_pos: usize,
    adler: (u32, u32),
}

impl StoredZlib {
    /// Wraps `head` and then `body`, `raw` bytes in all.
    pub fn new(head: Vec<u8>, body: Box<dyn Read>, raw: u64) -> Self {
        StoredZlib {
            head: io::Cursor::new(head),
            body,
            left: raw,
            left_in_block: 0,
            stage: Stage::Header,
            control: Vec::new(),
            control_pos: 0,
            adler: (1, 0),
        }
    }

    fn update_adler(&mut self, bytes: &[u8]) {
        const MOD: u32 = 65_521;
        let (mut a, mut b) = self.adler;
        // 5552 bytes is the most that can be summed before the sums overflow.
        for chunk in bytes.chunks(5552) {
            for &byte in chunk {
                a += u32::from(byte);
                b += a;
            }
            a %= MOD;
            b %= MOD;
        }
        self.adler = (a, b);
    }
}

impl Read for StoredZlib {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.control_pos < self.control.len() {
                let n = buf.len().min(self.control.len() - self.control_pos);
                buf[..n].copy_from_slice(&self.control[self.control_pos..self.control_pos + n]);
                self.control_pos += n;
                return Ok(n);
            }
            self.control.clear();
            self.control_pos = 0;
            match self.stage {
                Stage::Header => {
                    // Deflate with a 32 KiB window, no dictionary, check bits making it a multiple of 31.
                    self.control.extend_from_slice(&[0x78, 0x01]);
                    self.stage = Stage::BlockHeader;
                }
                Stage::BlockHeader => {
                    let n = self.left.min(BLOCK);
                    let last = n == self.left;
                    let len = n as u16;
                    self.control.push(u8::from(last));
                    self.control.extend_from_slice(&len.to_le_bytes());
                    self.control.extend_from_slice(&(!len).to_le_bytes());
                    self.left_in_block = n;
                    self.stage = Stage::Data;
                }
                Stage::Data if self.left_in_block == 0 => {
                    self.stage = if self.left == 0 {
                        Stage::Trailer
                    } else {
                        Stage::BlockHeader
                    };
                }
                Stage::Data => {
                    let want = buf
                        .len()
                        .min(usize::try_from(self.left_in_block).unwrap_or(usize::MAX));
                    let mut n = self.head.read(&mut buf[..want])?;
                    if n == 0 {
                        n = self.body.read(&mut buf[..want])?;
                    }
                    if n == 0 && want > 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("an object ended {} bytes early", self.left),
                        ));
                    }
                    self.update_adler(&buf[..n]);
                    self.left -= n as u64;
                    self.left_in_block -= n as u64;
                    return Ok(n);
                }
                Stage::Trailer => {
                    let (a, b) = self.adler;
                    self.control
                        .extend_from_slice(&((b << 16) | a).to_be_bytes());
                    self.stage = Stage::Done;
                }
                Stage::Done => return Ok(0),
            }
        }
    }
}

/// The size of an index v2 entry for a path of `name_len` bytes: padded
/// with one to eight NULs to a multiple of eight.
fn index_entry_size(name_len: usize) -> u64 {
    ((INDEX_ENTRY + name_len + 8) & !7) as u64
}

/// The size of the index of `tree` (header, entries, checksum) and its entry count.
fn index_size(store: &Store, tree: &ObjectId) -> Result<(u64, u32), String> {
    let mut total = 12 + 20;
    let mut count = 0u64;
    let mut walk = TreeWalk::new(store, tree)?;
    while let Some((path, _)) = walk.next(store)? {
        total += index_entry_size(path.len());
        count += 1;
    }
    let count = u32::try_from(count)
        .map_err(|_| format!("the tree has {count} files, too many for a git index"))?;
    Ok((total, count))
}

/// A depth-first walk of a tree's non-tree entries in git's index order
/// (tree order sorts a directory as its name plus `/`, which is the same).
struct TreeWalk {
    stack: Vec<(String, Vec<TreeEntry>, usize)>,
}

impl TreeWalk {
    fn new(store: &Store, tree: &ObjectId) -> Result<Self, String> {
        Ok(TreeWalk {
            stack: vec![(String::new(), read_tree(store, tree)?, 0)],
        })
    }

    fn next(&mut self, store: &Store) -> Result<Option<(String, TreeEntry)>, String> {
        loop {
            let Some((prefix, entries, next)) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(entry) = entries.get(*next).cloned() else {
                self.stack.pop();
                continue;
            };
            *next += 1;
            let path = format!("{prefix}{}", entry.name);
            if entry.kind == EntryKind::Tree {
                let entries = read_tree(store, &entry.id).map_err(|e| format!("`{path}`: {e}"))?;
                self.stack.push((format!("{path}/"), entries, 0));
                continue;
            }
            return Ok(Some((path, entry)));
        }
    }
}

/// The index file, built entry by entry as it is read, its SHA-1 last.
struct IndexReader {
    repo: Rc<Repo>,
    walk: TreeWalk,
    hasher: sha1_smol::Sha1,
    out: Vec<u8>,
    pos: usize,
    /// Bytes still due, checked against the planned size.
    left: u64,
    done: bool,
}

impl IndexReader {
    fn new(repo: Rc<Repo>, tree: ObjectId, size: u64, entries: u32) -> Result<Self, String> {
        let walk = TreeWalk::new(&repo.store, &tree)?;
        let mut reader = IndexReader {
            repo,
            walk,
            hasher: sha1_smol::Sha1::new(),
            out: Vec::new(),
            pos: 0,
            left: size,
            done: false,
        };
        let mut header = b"DIRC".to_vec();
        header.extend_from_slice(&2u32.to_be_bytes());
        header.extend_from_slice(&entries.to_be_bytes());
        reader.emit(header);
        Ok(reader)
    }

    fn emit(&mut self, bytes: Vec<u8>) {
        self.hasher.update(&bytes);
        self.out = bytes;
        self.pos = 0;
    }

    /// Queues the next entry, or the checksum; false at the end.
    fn refill(&mut self) -> Result<bool, String> {
        if self.done {
            return Ok(false);
        }
        let store = &self.repo.store;
        let Some((path, entry)) = self.walk.next(store)? else {
            self.out = self.hasher.digest().bytes().to_vec();
            self.pos = 0;
            self.done = true;
            return Ok(true);
        };
        let (mode, size) = match entry.kind {
            EntryKind::File { executable: true } => (0o100_755, store.size(&entry.id)),
            EntryKind::File { executable: false } => (0o100_644, store.size(&entry.id)),
            EntryKind::Symlink => (0o120_000, store.size(&entry.id)),
            EntryKind::Gitlink => (0o160_000, Some(0)),
            EntryKind::Tree => unreachable!("the walk descends into trees"),
        };
        let size = size.ok_or_else(|| format!("`{path}`: object {} is missing", entry.id))?;
        let mut record = vec![0u8; 24];
        record.extend_from_slice(&(mode as u32).to_be_bytes());
        record.extend_from_slice(&[0; 8]);
        // The index stores the size modulo 2^32, as git does.
        record.extend_from_slice(&(size as u32).to_be_bytes());
        record.extend_from_slice(&entry.id.0);
        let flags = path.len().min(0xfff) as u16;
        record.extend_from_slice(&flags.to_be_bytes());
        record.extend_from_slice(path.as_bytes());
        record.resize(index_entry_size(path.len()) as usize, 0);
        self.emit(record);
        Ok(true)
    }
}

impl Read for IndexReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if !self.refill().map_err(io::Error::other)? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        self.left = self
            .left
            .checked_sub(n as u64)
            .ok_or_else(|| io::Error::other("the index came out longer than planned"))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (head, body) = data.split_at(data.len().min(3));
        StoredZlib::new(
            head.to_vec(),
            Box::new(io::Cursor::new(body.to_vec())),
            data.len() as u64,
        )
        .read_to_end(&mut out)
        .unwrap();
        out
    }

    #[test]
    fn stored_streams_inflate_and_have_the_planned_size() {
        for len in [3, 100, 65_535, 65_536, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let out = stored(&data);
            assert_eq!(out.len() as u64, stored_zlib_size(len as u64), "{len}");
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&out[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "{len}");
        }
    }

    #[test]
    fn configs_quote_the_remote() {
        let text = config("https://h/a\"b.git").unwrap();
        assert!(
            text.contains("\turl = \"https://h/a\\\"b.git\"\n"),
            "{text}"
        );
        assert!(config("https://h/\nx").is_err());
    }

    #[test]
    fn index_entries_pad_to_eight_bytes() {
        assert_eq!(index_entry_size(1), 64);
        assert_eq!(index_entry_size(2), 72);
        assert_eq!(index_entry_size(10), 80);
        assert_eq!(index_entry_size(9), 72);
    }
}
