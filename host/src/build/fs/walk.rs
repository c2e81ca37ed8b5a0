//! The entries a COPY would write, found without writing anything: what a
//! cache key hashes. The walk takes the copy engine's decisions (globs,
//! `.dockerignore`, `--exclude`, `--parents`) from the same functions, and
//! a test holds it to what [`Copy`](super::Copy) really writes.

use super::copy::{OVERLAY_XATTRS, exclude_matcher, excludes_name, sorted_entries, wanted};
use super::source::{CopySource, Matched, clean, has_wildcards};
use super::{FsError, io_at};
use crate::dockerfile::Ignore;
use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// One entry a COPY writes.
pub struct Planned<'p> {
    /// Where it lands, relative to the destination. For a file that a
    /// source names directly this is its name alone: it lands at
    /// `dest/name`, or at `dest` itself when that is not a directory.
    pub dest: &'p Path,
    /// True for a file that a source names directly.
    pub named: bool,
    /// The host path it is read from.
    pub host: &'p Path,
    /// Its metadata, without following a final symlink.
    pub md: &'p fs::Metadata,
}

/// What a walk hands each planned entry to.
pub type Visit<'v> = dyn FnMut(&Planned<'_>) -> Result<(), FsError> + 'v;

/// Calls `visit` for every entry `COPY [--parents] [--exclude] sources`
/// would write, in the order the copy writes them; directories come
/// before their contents. Fails as the copy would when a source that is
/// not a glob names nothing.
pub fn plan_copy(
    source: CopySource<'_>,
    sources: &[String],
    parents: bool,
    excludes: &[String],
    visit: &mut Visit<'_>,
) -> Result<(), FsError> {
    let excludes = exclude_matcher(excludes)?;
    if parents {
        for src in sources {
            plan_parents(source, &excludes, src, visit)?;
        }
        return Ok(());
    }
    let mut matched = Vec::new();
    for src in sources {
        let found = source.expand(src)?;
        if found.is_empty() && !has_wildcards(src) {
            return Err(source.not_found(src));
        }
        matched.extend(found);
    }
    for m in &matched {
        let md = fs::symlink_metadata(&m.host).map_err(io_at(&m.host))?;
        if md.is_dir() {
            plan_tree(
                source,
                &excludes,
                &m.host,
                &m.resolved,
                Path::new(""),
                visit,
            )?;
        } else if !excludes_name(&excludes, m) {
            let name = m.rel.file_name().unwrap_or_default();
            visit(&Planned {
                dest: Path::new(name),
                named: true,
                host: &m.host,
                md: &md,
            })?;
        }
    }
    Ok(())
}

/// The extended attributes a copy carries over, sorted by name; the ones
/// that cannot be read count as absent, as the copy skips them too.
pub fn copied_xattrs(host: &Path) -> Vec<(OsString, Vec<u8>)> {
    let Ok(names) = xattr::list(host) else {
        return Vec::new();
    };
    let mut out: Vec<_> = names
        .filter(|n| {
            let text = n.to_string_lossy();
            !OVERLAY_XATTRS.iter().any(|p| text.starts_with(p))
        })
        .filter_map(|n| match xattr::get(host, &n) {
            Ok(Some(v)) => Some((n, v)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// The contents of directory `src`, landing under `rel` (relative to the
/// destination, and to the copied source for `--exclude`).
fn plan_tree(
    source: CopySource<'_>,
    excludes: &Ignore,
    src: &Path,
    ctx_rel: &Path,
    rel: &Path,
    visit: &mut Visit<'_>,
) -> Result<(), FsError> {
    for entry in sorted_entries(src)? {
        let name = entry.file_name();
        let child = entry.path();
        let (ctx_child, rel_child) = (ctx_rel.join(&name), rel.join(&name));
        let md = fs::symlink_metadata(&child).map_err(io_at(&child))?;
        if !wanted(
            &source,
            excludes,
            &child,
            &ctx_child,
            &rel_child,
            md.is_dir(),
        )? {
            continue;
        }
        visit(&Planned {
            dest: &rel_child,
            named: false,
            host: &child,
            md: &md,
        })?;
        if md.is_dir() {
            plan_tree(source, excludes, &child, &ctx_child, &rel_child, visit)?;
        }
    }
    Ok(())
}

/// A directory `--parents` writes only once something below it is copied.
struct Pending {
    rel: PathBuf,
    host: PathBuf,
    md: fs::Metadata,
    visited: bool,
}

/// One `--parents` source, as `Copier::copy_parents` walks it.
fn plan_parents(
    source: CopySource<'_>,
    excludes: &Ignore,
    src: &str,
    visit: &mut Visit<'_>,
) -> Result<(), FsError> {
    let (base, pattern) = src.split_once("/./").unwrap_or(("/", src));
    let pattern = clean(pattern);
    let required = !has_wildcards(base) && !has_wildcards(&pattern.to_string_lossy());
    let include = Ignore::parse(&pattern.to_string_lossy());
    let mut copied = false;
    for b in source.expand(base)?.iter().filter(|b| b.host.is_dir()) {
        let mut walk = ParentsPlan {
            source,
            excludes,
            base: b,
            include: &include,
            pending: Vec::new(),
            copied: false,
        };
        walk.start(&pattern, visit)?;
        copied |= walk.copied;
    }
    if required && !copied {
        return Err(source.not_found(src));
    }
    Ok(())
}

/// One `--parents` source under one base directory.
struct ParentsPlan<'w> {
    source: CopySource<'w>,
    excludes: &'w Ignore,
    base: &'w Matched,
    include: &'w Ignore,
    pending: Vec<Pending>,
    copied: bool,
}

impl ParentsPlan<'_> {
    /// Walks down the pattern's literal prefix, then searches below it.
    fn start(&mut self, pattern: &Path, visit: &mut Visit<'_>) -> Result<(), FsError> {
        let mut rel = PathBuf::new();
        for comp in pattern.components() {
            let Component::Normal(name) = comp else {
                continue;
            };
            if has_wildcards(&name.to_string_lossy()) {
                break;
            }
            rel.push(name);
            let host = self.base.host.join(&rel);
            let Ok(md) = fs::symlink_metadata(&host) else {
                return Ok(());
            };
            if self.visit(&host, &rel, md.clone(), visit)? || !md.is_dir() {
                return Ok(());
            }
        }
        let host = self.base.host.join(&rel);
        if rel.as_os_str().is_empty() || host.is_dir() {
            self.search(&host, &rel, visit)?;
        }
        Ok(())
    }

    /// Plans `host` if the pattern includes it and returns true; otherwise
    /// queues it as a directory written if something below is copied.
    fn visit(
        &mut self,
        host: &Path,
        rel: &Path,
        md: fs::Metadata,
        visit: &mut Visit<'_>,
    ) -> Result<bool, FsError> {
        let ctx_rel = self.base.resolved.join(rel);
        if self.source.hides(&ctx_rel) {
            return Ok(true);
        }
        let rel_text = rel.to_string_lossy();
        let excluded = self.excludes.is_ignored(&rel_text);
        if self.include.is_ignored(&rel_text) && !excluded && !self.source.ignores(&ctx_rel) {
            for p in self.pending.iter_mut().filter(|p| !p.visited) {
                p.visited = true;
                visit(&Planned {
                    dest: &p.rel,
                    named: false,
                    host: &p.host,
                    md: &p.md,
                })?;
            }
            self.copied = true;
            visit(&Planned {
                dest: rel,
                named: false,
                host,
                md: &md,
            })?;
            if md.is_dir() {
                plan_tree(self.source, self.excludes, host, &ctx_rel, rel, visit)?;
            }
            return Ok(true);
        }
        if md.is_dir() {
            self.pending.push(Pending {
                rel: rel.to_owned(),
                host: host.to_owned(),
                md,
                visited: false,
            });
        }
        Ok(false)
    }

    fn search(&mut self, dir: &Path, rel: &Path, visit: &mut Visit<'_>) -> Result<(), FsError> {
        for entry in sorted_entries(dir)? {
            let host = entry.path();
            let child = rel.join(entry.file_name());
            let md = fs::symlink_metadata(&host).map_err(io_at(&host))?;
            let is_dir = md.is_dir();
            if !self.visit(&host, &child, md, visit)? && is_dir {
                self.search(&host, &child, visit)?;
                self.pending.pop();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Copy, CopySource};
    use super::*;
    use crate::context::ContextTree;
    use std::os::unix::fs::symlink;

    fn populate(dir: &Path, files: &[&str]) {
        for f in files {
            let p = dir.join(f);
            if f.ends_with('/') {
                fs::create_dir_all(&p).unwrap();
            } else {
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, format!("content of {f}")).unwrap();
            }
        }
    }

    /// Every path below `root`, sorted.
    fn listing(root: &Path) -> Vec<PathBuf> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
            for e in sorted_entries(dir).unwrap() {
                out.push(e.path().strip_prefix(root).unwrap().to_owned());
                if e.file_type().unwrap().is_dir() {
                    walk(root, &e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out
    }

    /// What the planner says lands below a directory destination.
    fn planned(
        source: CopySource<'_>,
        sources: &[String],
        parents: bool,
        excludes: &[String],
    ) -> Vec<PathBuf> {
        let mut out = Vec::new();
        plan_copy(source, sources, parents, excludes, &mut |p| {
            out.push(p.dest.to_owned());
            Ok(())
        })
        .unwrap();
        out.sort();
        out.dedup();
        out
    }

    /// The planner lists exactly what the copy engine writes into an
    /// empty directory destination.
    #[test]
    fn plans_match_what_copy_writes() {
        let ctx_dir = tempfile::tempdir().unwrap();
        let c = ctx_dir.path();
        populate(
            c,
            &[
                "a.txt",
                "b.md",
                "secret",
                "dir/x.txt",
                "dir/y.png",
                "dir/sub/z.txt",
                "dir/empty/",
                "logs/x.log",
                "logs/keep.log",
                "src/a/none.md",
                "src/p/q/c.txt",
                "src/p/d.md",
            ],
        );
        symlink("dir", c.join("link-dir")).unwrap();
        symlink("a.txt", c.join("dir/inner-link")).unwrap();
        fs::write(c.join(".dockerignore"), "secret\nlogs\n!logs/keep.log\n").unwrap();
        let tree = ContextTree::new(c.to_owned(), None).unwrap();
        let src = CopySource::Context(&tree);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases: Vec<(Vec<String>, bool, Vec<String>)> = vec![
            (s(&["."]), false, vec![]),
            (s(&["*.txt", "dir"]), false, vec![]),
            (s(&["a.txt", "b.md"]), false, s(&["a.*"])),
            (s(&["link-dir"]), false, vec![]),
            (s(&["."]), false, s(&["*/*.png", "!dir/y.png", "src"])),
            (s(&["dir"]), false, s(&["*.txt"])),
            (s(&["src/**/*.txt", "dir/sub"]), true, vec![]),
            (s(&["./src/./p/*.md"]), true, vec![]),
            (s(&["logs"]), true, vec![]),
            (s(&["dir"]), true, s(&["**/*.txt"])),
        ];
        for (sources, parents, excludes) in cases {
            let root = tempfile::tempdir().unwrap();
            Copy {
                source: src,
                sources: &sources,
                dest: "/out/",
                owner: None,
                chmod: None,
                parents,
                excludes: &excludes,
            }
            .run(root.path())
            .unwrap();
            let written = listing(&root.path().join("out"));
            assert!(!written.is_empty(), "{sources:?} copied nothing");
            assert_eq!(
                planned(src, &sources, parents, &excludes),
                written,
                "COPY {sources:?} parents={parents} excludes={excludes:?}"
            );
        }
    }

    #[test]
    fn named_files_are_marked_and_missing_sources_fail() {
        let ctx_dir = tempfile::tempdir().unwrap();
        populate(ctx_dir.path(), &["f", "d/f"]);
        let tree = ContextTree::new(ctx_dir.path().to_owned(), None).unwrap();
        let src = CopySource::Context(&tree);
        let mut seen = Vec::new();
        plan_copy(src, &["f".into(), "d".into()], false, &[], &mut |p| {
            seen.push((p.dest.to_owned(), p.named));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [("f".into(), true), ("f".into(), false)]);
        let err = plan_copy(src, &["nope".into()], false, &[], &mut |_| Ok(())).unwrap_err();
        assert!(matches!(err, FsError::SourceNotFound { .. }), "{err}");
        let err = plan_copy(src, &["d/nope".into()], true, &[], &mut |_| Ok(())).unwrap_err();
        assert!(matches!(err, FsError::SourceNotFound { .. }), "{err}");
    }
}
