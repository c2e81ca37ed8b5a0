//! The digest of what a COPY or ADD copies: exactly the entries the copy
//! engine would write (globs, `.dockerignore`, `--parents`, `--exclude`
//! applied), each with where it lands, its type, mode, owner, xattrs,
//! link target and content. Modification times are left out, so touching
//! a file does not invalidate the cache; content is streamed, never held.

use super::file_digests::FileDigests;
use crate::build::FsError;
use crate::build::fs::{CopySource, Planned, copied_xattrs, plan_copy};
use crate::digest::{Digest, HashingWriter};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Prefixes every sources digest; bump it whenever the encoding changes.
const VERSION: &str = "kiln-sources-v1";

/// Why the sources of a COPY could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error("cannot hash the sources of a COPY to {dest} for its cache key: {source}")]
    Walk {
        dest: String,
        #[source]
        source: FsError,
    },
}

/// The digest of the entries `COPY [--parents] [--exclude] sources dest`
/// copies from `source`. Files from the context count as owned by root,
/// which is what the copy gives them; files from a root filesystem keep
/// their owners. `dest` is covered too, so the digest stands on its own.
/// Files' content digests come from, and go to, `memo`.
pub fn digest_sources(
    source: &CopySource<'_>,
    sources: &[String],
    dest: &str,
    parents: bool,
    excludes: &[String],
    memo: Option<&FileDigests>,
) -> Result<Digest, SourcesError> {
    let mut hasher = EntryHasher {
        out: HashingWriter::new(io::sink()),
        keeps_owners: source.keeps_owners(),
        links: HashMap::new(),
        memo,
    };
    hasher.str(VERSION.as_bytes());
    hasher.str(dest.as_bytes());
    plan_copy(*source, sources, parents, excludes, &mut |p| {
        hasher.entry(p)
    })
    .map_err(|source| SourcesError::Walk {
        dest: dest.into(),
        source,
    })?;
    let (_, digest, _) = hasher.out.finish();
    Ok(digest)
}

/// Streams the canonical encoding of each planned entry into a hash.
struct EntryHasher<'m> {
    memo: Option<&'m FileDigests>,
    out: HashingWriter<io::Sink>,
    keeps_owners: bool,
    /// Files with several links, by (device, inode), and where the first
    /// landed: the copy makes the later ones hardlinks to it.
    links: HashMap<(u64, u64), PathBuf>,
}

impl EntryHasher<'_> {
    fn raw(&mut self, b: &[u8]) {
        // A sink never fails, and the hash sees everything written.
        let _ = self.out.write_all(b);
    }

    fn num(&mut self, n: u64) {
        self.raw(&n.to_be_bytes());
    }

    fn str(&mut self, b: &[u8]) {
        self.num(b.len() as u64);
        self.raw(b);
    }

    fn entry(&mut self, p: &Planned<'_>) -> Result<(), FsError> {
        let md = p.md;
        let ft = md.file_type();
        self.raw(&[u8::from(p.named)]);
        self.str(p.dest.as_os_str().as_bytes());
        let (uid, gid) = if self.keeps_owners {
            (md.uid(), md.gid())
        } else {
            (0, 0)
        };
        let kind = if ft.is_dir() {
            b'd'
        } else if ft.is_symlink() {
            b'l'
        } else if ft.is_file() {
            b'f'
        } else if ft.is_char_device() {
            b'c'
        } else if ft.is_block_device() {
            b'b'
        } else if ft.is_fifo() {
            b'p'
        } else {
            b's'
        };
        self.raw(&[kind]);
        self.num(u64::from(md.mode() & 0o7777));
        self.num(u64::from(uid));
        self.num(u64::from(gid));
        let xattrs = copied_xattrs(p.host);
        self.num(xattrs.len() as u64);
        for (name, value) in &xattrs {
            self.str(name.as_bytes());
            self.str(value);
        }
        match kind {
            b'l' => {
                let target = std::fs::read_link(p.host).map_err(io_at(p.host))?;
                self.str(target.as_os_str().as_bytes());
            }
            b'c' | b'b' => self.num(md.rdev()),
            b'f' => self.file(p)?,
            _ => {}
        }
        Ok(())
    }

    /// A regular file: a hardlink to an entry already hashed, or its content.
    fn file(&mut self, p: &Planned<'_>) -> Result<(), FsError> {
        let key = (p.md.dev(), p.md.ino());
        if p.md.nlink() > 1 {
            if let Some(first) = self.links.get(&key) {
                let first = first.as_os_str().as_bytes().to_vec();
                self.raw(b"h");
                self.str(&first);
                return Ok(());
            }
            self.links.insert(key, p.dest.to_owned());
        }
        let digest = match self.memo.and_then(|m| m.get(p.md)) {
            Some(digest) => digest,
            None => {
                let started = std::time::SystemTime::now();
                let mut file = File::open(p.host).map_err(io_at(p.host))?;
                let mut content = HashingWriter::new(io::sink());
                io::copy(&mut file, &mut content).map_err(io_at(p.host))?;
                let (_, digest, _) = content.finish();
                if let Some(memo) = self.memo {
                    memo.remember(p.md, &digest, started);
                }
                digest
            }
        };
        self.raw(b"c");
        self.str(digest.as_str().as_bytes());
        Ok(())
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::ContextTree;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, lchown, symlink};

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(files: &[(&str, &str)]) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            for (path, content) in files {
                let p = dir.path().join(path);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, content).unwrap();
            }
            Fixture { dir }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        /// The digest of `COPY sources /app/` from this directory as the
        /// build context.
        fn context_digest(&self, sources: &[&str], excludes: &[&str]) -> Digest {
            let tree = ContextTree::new(self.dir.path().to_owned(), None).unwrap();
            digest(&CopySource::Context(&tree), sources, false, excludes)
        }

        /// The same, from this directory as a stage's root filesystem.
        fn root_digest(&self, sources: &[&str]) -> Digest {
            digest(&CopySource::Root(self.dir.path()), sources, false, &[])
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn digest(src: &CopySource<'_>, sources: &[&str], parents: bool, ex: &[&str]) -> Digest {
        digest_sources(src, &strings(sources), "/app/", parents, &strings(ex), None).unwrap()
    }

    #[test]
    fn remembered_digests_stand_in_for_file_content() {
        let f = Fixture::new(&[("small.txt", "s")]);
        fs::write(f.path("big.bin"), vec![7u8; 1 << 20]).unwrap();
        let tree = ContextTree::new(f.dir.path().to_owned(), None).unwrap();
        let src = CopySource::Context(&tree);
        let memo = FileDigests::open(&f.dir.path().join("memo"));
        let sources = strings(&["big.bin", "small.txt"]);
        let read = digest_sources(&src, &sources, "/app/", false, &[], Some(&memo)).unwrap();
        assert_eq!(read, f.context_digest(&["big.bin", "small.txt"], &[]));
        // A file written just now is trusted within this build only.
        let again = digest_sources(&src, &sources, "/app/", false, &[], Some(&memo)).unwrap();
        assert_eq!(again, read);
        memo.save().unwrap();
        let next_build = FileDigests::open(&f.dir.path().join("memo"));
        assert_eq!(
            next_build.get(&fs::metadata(f.path("big.bin")).unwrap()),
            None
        );
        // Once remembered, the digest is used without reading the file:
        // a planted one shows through.
        let md = fs::metadata(f.path("big.bin")).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
        next_build.remember(&md, &Digest::of(b"planted"), later);
        let planted =
            digest_sources(&src, &sources, "/app/", false, &[], Some(&next_build)).unwrap();
        assert_ne!(planted, read);
    }

    fn set_mtime(path: &Path, secs: u64) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        fs::File::open(path)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(t))
            .unwrap();
    }

    fn sample() -> Fixture {
        Fixture::new(&[
            ("a.txt", "alpha"),
            ("dir/b.txt", "beta"),
            ("dir/c/d", "delta"),
        ])
    }

    #[test]
    fn identical_trees_digest_alike_and_content_changes_count() {
        let (one, two) = (sample(), sample());
        let d = one.context_digest(&["."], &[]);
        assert_eq!(d, two.context_digest(&["."], &[]));
        fs::write(two.path("dir/c/d"), "delta!").unwrap();
        assert_ne!(d, two.context_digest(&["."], &[]));
    }

    #[test]
    fn touching_a_file_changes_nothing() {
        let f = sample();
        let d = f.context_digest(&["."], &[]);
        set_mtime(&f.path("dir/b.txt"), 1_000_000);
        set_mtime(&f.path("dir"), 2_000_000);
        assert_eq!(d, f.context_digest(&["."], &[]));
    }

    #[test]
    fn dockerignored_and_excluded_files_do_not_count() {
        let f = sample();
        fs::write(f.path(".dockerignore"), "secret\ndir/*.log\n").unwrap();
        let d = f.context_digest(&["."], &["*.tmp"]);
        fs::write(f.path("secret"), "s1").unwrap();
        fs::write(f.path("dir/x.log"), "log").unwrap();
        fs::write(f.path("scratch.tmp"), "tmp").unwrap();
        assert_eq!(d, f.context_digest(&["."], &["*.tmp"]));
        fs::write(f.path("dir/x.txt"), "kept").unwrap();
        assert_ne!(d, f.context_digest(&["."], &["*.tmp"]));
    }

    #[test]
    fn only_the_named_sources_count() {
        let f = sample();
        let d = f.context_digest(&["dir/*.txt"], &[]);
        fs::write(f.path("a.txt"), "changed").unwrap();
        fs::write(f.path("dir/c/d"), "changed").unwrap();
        assert_eq!(d, f.context_digest(&["dir/*.txt"], &[]));
        fs::write(f.path("dir/new.txt"), "new").unwrap();
        assert_ne!(d, f.context_digest(&["dir/*.txt"], &[]));
    }

    #[test]
    fn mode_changes_count() {
        let f = sample();
        let d = f.context_digest(&["."], &[]);
        fs::set_permissions(f.path("a.txt"), fs::Permissions::from_mode(0o755)).unwrap();
        let file_mode = f.context_digest(&["."], &[]);
        assert_ne!(d, file_mode);
        fs::set_permissions(f.path("dir/c"), fs::Permissions::from_mode(0o700)).unwrap();
        assert_ne!(file_mode, f.context_digest(&["."], &[]));
    }

    #[test]
    fn renaming_counts() {
        let f = sample();
        let d = f.context_digest(&["."], &[]);
        fs::rename(f.path("dir/c/d"), f.path("dir/c/e")).unwrap();
        assert_ne!(d, f.context_digest(&["."], &[]));
        // A file named directly and the same file inside a copied
        // directory land in different places.
        let named = Fixture::new(&[("x", "same")]);
        let inside = Fixture::new(&[("d/x", "same")]);
        assert_ne!(
            named.context_digest(&["x"], &[]),
            inside.context_digest(&["d"], &[])
        );
    }

    #[test]
    fn owners_count_for_root_filesystems_only() {
        let f = sample();
        let (ctx, root) = (f.context_digest(&["."], &[]), f.root_digest(&["/"]));
        lchown(f.path("dir/b.txt"), Some(1000), Some(1000)).unwrap();
        assert_eq!(ctx, f.context_digest(&["."], &[]));
        assert_ne!(root, f.root_digest(&["/"]));
    }

    #[test]
    fn symlink_targets_and_hardlinks_count() {
        let f = sample();
        symlink("a.txt", f.path("link")).unwrap();
        let d = f.context_digest(&["."], &[]);
        fs::remove_file(f.path("link")).unwrap();
        symlink("dir/b.txt", f.path("link")).unwrap();
        assert_ne!(d, f.context_digest(&["."], &[]));
        let copies = Fixture::new(&[("one", "same"), ("two", "same")]);
        let linked = Fixture::new(&[("one", "same")]);
        fs::hard_link(linked.path("one"), linked.path("two")).unwrap();
        assert_ne!(
            copies.context_digest(&["."], &[]),
            linked.context_digest(&["."], &[])
        );
    }

    #[test]
    fn parents_dest_and_missing_sources() {
        let f = sample();
        let tree = ContextTree::new(f.dir.path().to_owned(), None).unwrap();
        let src = CopySource::Context(&tree);
        let flat = digest(&src, &["dir/c/d"], false, &[]);
        let kept = digest(&src, &["dir/c/d"], true, &[]);
        assert_ne!(flat, kept);
        let elsewhere =
            digest_sources(&src, &strings(&["dir/c/d"]), "/other/", false, &[], None).unwrap();
        assert_ne!(flat, elsewhere);
        let err =
            digest_sources(&src, &strings(&["missing"]), "/app/", false, &[], None).unwrap_err();
        assert!(err.to_string().contains("\"missing\" not found"), "{err}");
    }
}
