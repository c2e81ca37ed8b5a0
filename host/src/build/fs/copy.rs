//! COPY with BuildKit's semantics: a directory source copies its contents,
//! a destination ending in `/` (or an existing directory) receives sources
//! by their base names, the top-level source symlink is followed, and
//! `--parents`, `--exclude`, `--chown` and `--chmod` apply as in
//! `tonistiigi/fsutil`'s copier.

use super::chmod::Chmod;
use super::source::{CopySource, Matched, clean, has_wildcards};
use super::{FsError, Owner, image_parent, io_at, make_dirs_mode, resolve_in_root};
use crate::dockerfile::Ignore;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};

/// Xattr namespaces that belong to overlayfs, never to the copied content.
pub(super) const OVERLAY_XATTRS: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// One COPY into an image root.
pub struct Copy<'a> {
    pub source: CopySource<'a>,
    /// Paths or globs relative to the source root.
    pub sources: &'a [String],
    /// Absolute destination in the image; a trailing `/` means a directory.
    pub dest: &'a str,
    /// `--chown`; without it, context files belong to root and files from
    /// a root filesystem keep their owners.
    pub owner: Option<Owner>,
    pub chmod: Option<&'a Chmod>,
    /// `--parents`: keep each source's path (below a `/./` pivot, if any).
    pub parents: bool,
    /// `--exclude` patterns, in `.dockerignore` syntax.
    pub excludes: &'a [String],
}

/// Parses `--exclude` patterns.
pub(super) fn exclude_matcher(excludes: &[String]) -> Result<Ignore, FsError> {
    let ignore = Ignore::parse(&excludes.join("\n"));
    match ignore.errors().first() {
        Some(e) => Err(FsError::Exclude(e.clone())),
        None => Ok(ignore),
    }
}

/// True if `dest` names a directory: it ends in `/` or `/.`, or it is one.
pub(super) fn dest_is_dir(root: &Path, dest: &str) -> Result<bool, FsError> {
    if dest.ends_with('/') || dest.ends_with("/.") || dest == "." {
        return Ok(true);
    }
    let host = resolve_in_root(root, dest, true)?;
    Ok(fs::metadata(host).map(|m| m.is_dir()).unwrap_or(false))
}

impl Copy<'_> {
    /// Runs the copy into `root`.
    pub fn run(&self, root: &Path) -> Result<(), FsError> {
        let mut copier = Copier::new(self.source, root, self.owner, self.chmod, self.excludes)?;
        if self.parents {
            for src in self.sources {
                copier.copy_parents(src, self.dest)?;
            }
            return Ok(());
        }
        let mut matched = Vec::new();
        for src in self.sources {
            let found = self.source.expand(src)?;
            // A glob that matches nothing copies nothing, as in BuildKit.
            if found.is_empty() && !has_wildcards(src) {
                return Err(self.source.not_found(src));
            }
            matched.extend(found);
        }
        let dest_is_dir = dest_is_dir(root, self.dest)?;
        if matched.len() > 1 && !dest_is_dir {
            return Err(FsError::DestNotDir);
        }
        for m in &matched {
            copier.copy_match(m, self.dest, dest_is_dir)?;
        }
        Ok(())
    }
}

impl CopySource<'_> {
    /// The error for a source that names nothing.
    pub(super) fn not_found(&self, src: &str) -> FsError {
        FsError::SourceNotFound {
            source_path: src.into(),
            place: match self {
                CopySource::Context(_) => "the build context (or it is excluded by .dockerignore)",
                CopySource::Root(_) => "the stage or image copied from",
            },
        }
    }
}

/// A directory `--parents` creates only once something below it is copied.
struct Pending {
    src: PathBuf,
    dest: PathBuf,
    state: PendingState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PendingState {
    Waiting,
    Created,
    Existed,
}

/// The copy engine shared by COPY and ADD.
pub(super) struct Copier<'a> {
    source: CopySource<'a>,
    root: &'a Path,
    /// The owner every copied entry gets; `None` keeps the source's.
    owner: Option<Owner>,
    /// The owner of created destination directories (`--chown` only).
    chown: Option<Owner>,
    chmod: Option<&'a Chmod>,
    excludes: Ignore,
    /// Copied files with several links, by (device, inode), so hardlinks
    /// stay hardlinks.
    links: HashMap<(u64, u64), PathBuf>,
}

impl<'a> Copier<'a> {
    pub(super) fn new(
        source: CopySource<'a>,
        root: &'a Path,
        chown: Option<Owner>,
        chmod: Option<&'a Chmod>,
        excludes: &[String],
    ) -> Result<Copier<'a>, FsError> {
        let owner = match chown {
            None if !source.keeps_owners() => Some(Owner::ROOT),
            other => other,
        };
        Ok(Copier {
            source,
            root,
            owner,
            chown,
            chmod,
            excludes: exclude_matcher(excludes)?,
            links: HashMap::new(),
        })
    }

    /// An image path for messages.
    fn shown(&self, host: &Path) -> String {
        match host.strip_prefix(self.root) {
            Ok(rel) => Path::new("/").join(rel).display().to_string(),
            Err(_) => host.display().to_string(),
        }
    }

    fn created_dir_mode(&self) -> u32 {
        Chmod::created_dir_mode(self.chmod)
    }

    /// Copies one matched source to `dest`.
    pub(super) fn copy_match(
        &mut self,
        m: &Matched,
        dest: &str,
        dest_is_dir: bool,
    ) -> Result<(), FsError> {
        let md = fs::symlink_metadata(&m.host).map_err(io_at(&m.host))?;
        if md.is_dir() {
            let target = make_dirs_mode(self.root, dest, self.chown, self.created_dir_mode())?;
            self.copy_tree(&m.host, &m.resolved, Path::new(""), &target)?;
            // BuildKit gives the destination the source directory's mtime,
            // whether it created it or not.
            return set_mtime(&target, &md);
        }
        // `--exclude` also applies to the files a source names directly, as
        // documented (BuildKit itself misses this: moby/buildkit#5489).
        if self.excludes_name(m) {
            return Ok(());
        }
        let name = m.rel.file_name().unwrap_or_default();
        let target = if dest_is_dir {
            let dir = make_dirs_mode(self.root, dest, self.chown, self.created_dir_mode())?;
            dir.join(name)
        } else {
            make_dirs_mode(
                self.root,
                &image_parent(dest),
                self.chown,
                self.created_dir_mode(),
            )?;
            resolve_in_root(self.root, dest, true)?
        };
        self.copy_entry(&m.host, &target, &md)
    }

    /// True if `--exclude` leaves out a file a source names directly.
    pub(super) fn excludes_name(&self, m: &Matched) -> bool {
        excludes_name(&self.excludes, m)
    }

    /// Copies the contents of directory `src` into `dest`, an existing
    /// directory. `ctx_rel` is `src` relative to the source root (for
    /// `.dockerignore`), `ex_rel` relative to the copied source (for
    /// `--exclude`).
    pub(super) fn copy_tree(
        &mut self,
        src: &Path,
        ctx_rel: &Path,
        ex_rel: &Path,
        dest: &Path,
    ) -> Result<(), FsError> {
        for entry in sorted_entries(src)? {
            let name = entry.file_name();
            let src_child = entry.path();
            let (ctx_child, ex_child) = (ctx_rel.join(&name), ex_rel.join(&name));
            let md = fs::symlink_metadata(&src_child).map_err(io_at(&src_child))?;
            if !self.wanted(&src_child, &ctx_child, &ex_child, md.is_dir())? {
                continue;
            }
            let dest_child = dest.join(&name);
            if md.is_dir() {
                self.ensure_dir(&src_child, &dest_child)?;
                self.copy_tree(&src_child, &ctx_child, &ex_child, &dest_child)?;
                // After the children, so that writing them does not change
                // the directory's copied mtime. Existing directories take the
                // source's metadata too, as in BuildKit.
                self.set_meta(&dest_child, &md)?;
            } else {
                self.copy_entry(&src_child, &dest_child, &md)?;
            }
        }
        Ok(())
    }

    /// [`wanted`] with this copy's source and `--exclude` patterns.
    fn wanted(
        &self,
        src: &Path,
        ctx_rel: &Path,
        ex_rel: &Path,
        is_dir: bool,
    ) -> Result<bool, FsError> {
        wanted(&self.source, &self.excludes, src, ctx_rel, ex_rel, is_dir)
    }

    /// Makes `dest` a directory for the copy of `src`; true if created.
    fn ensure_dir(&self, src: &Path, dest: &Path) -> Result<bool, FsError> {
        match fs::symlink_metadata(dest) {
            Ok(md) if md.is_dir() => Ok(false),
            // BuildKit refuses to replace a file or symlink by a directory.
            Ok(_) => Err(FsError::DirOntoNonDir {
                source_path: src.display().to_string(),
                dest: self.shown(dest),
            }),
            Err(_) => {
                fs::create_dir(dest).map_err(io_at(dest))?;
                Ok(true)
            }
        }
    }

    fn copy_entry(&mut self, src: &Path, dest: &Path, md: &fs::Metadata) -> Result<(), FsError> {
        match fs::symlink_metadata(dest) {
            Ok(existing) if existing.is_dir() => {
                return Err(FsError::FileOntoDir {
                    source_path: src.display().to_string(),
                    dest: self.shown(dest),
                });
            }
            Ok(_) => fs::remove_file(dest).map_err(io_at(dest))?,
            Err(_) => {}
        }
        let ft = md.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(src).map_err(io_at(src))?;
            symlink(&target, dest).map_err(io_at(dest))?;
            let owner = self.owner_of(md);
            lchown(dest, Some(owner.uid), Some(owner.gid)).map_err(io_at(dest))?;
            copy_xattrs(src, dest);
            return set_mtime(dest, md);
        }
        if ft.is_file() {
            let key = (md.dev(), md.ino());
            if md.nlink() > 1 {
                if let Some(first) = self.links.get(&key) {
                    return fs::hard_link(first, dest).map_err(io_at(dest));
                }
                self.links.insert(key, dest.to_owned());
            }
            fs::copy(src, dest).map_err(io_at(dest))?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let kind = rustix::fs::FileType::from_raw_mode(md.mode());
            let mode = rustix::fs::Mode::from_raw_mode(md.mode() & 0o7777);
            match rustix::fs::mknodat(rustix::fs::CWD, dest, kind, mode, md.rdev()) {
                Ok(()) => {}
                Err(rustix::io::Errno::PERM) => {
                    log::warn!("skipping {}: creating it needs CAP_MKNOD", self.shown(dest));
                    return Ok(());
                }
                Err(e) => return Err(io_at(dest)(e.into())),
            }
        } else {
            log::warn!("skipping {}: sockets cannot be copied", src.display());
            return Ok(());
        }
        copy_xattrs(src, dest);
        self.set_meta(dest, md)
    }

    fn owner_of(&self, md: &fs::Metadata) -> Owner {
        self.owner.unwrap_or(Owner {
            uid: md.uid(),
            gid: md.gid(),
        })
    }

    /// Owner, mode (after `--chmod`) and mtime of `md` onto `dest`.
    fn set_meta(&self, dest: &Path, md: &fs::Metadata) -> Result<(), FsError> {
        let owner = self.owner_of(md);
        // chown clears setuid bits: the mode comes after it.
        lchown(dest, Some(owner.uid), Some(owner.gid)).map_err(io_at(dest))?;
        let mode = match self.chmod {
            Some(c) => c.apply(md.mode(), md.is_dir()),
            None => md.mode() & 0o7777,
        };
        fs::set_permissions(dest, fs::Permissions::from_mode(mode)).map_err(io_at(dest))?;
        set_mtime(dest, md)
    }

    /// `COPY --parents`: the source's path below the root, or below a
    /// `/./` pivot, is kept under `dest`.
    pub(super) fn copy_parents(&mut self, src: &str, dest: &str) -> Result<(), FsError> {
        let (base, pattern) = src.split_once("/./").unwrap_or(("/", src));
        let pattern = clean(pattern);
        let required = !has_wildcards(base) && !has_wildcards(&pattern.to_string_lossy());
        let include = Ignore::parse(&pattern.to_string_lossy());
        let bases = self.source.expand(base)?;
        let dest_dir = make_dirs_mode(self.root, dest, self.chown, self.created_dir_mode())?;
        let mut copied = false;
        for b in bases.iter().filter(|b| b.host.is_dir()) {
            let mut walk = ParentsWalk {
                base: b,
                include: &include,
                dest: &dest_dir,
                pending: Vec::new(),
                copied: false,
            };
            walk.start(self, &pattern)?;
            copied |= walk.copied;
        }
        if required && !copied {
            return Err(self.source.not_found(src));
        }
        Ok(())
    }
}

/// One `--parents` source under one base directory.
struct ParentsWalk<'w> {
    base: &'w Matched,
    include: &'w Ignore,
    dest: &'w Path,
    pending: Vec<Pending>,
    copied: bool,
}

impl ParentsWalk<'_> {
    /// Walks down the pattern's literal prefix, then searches below it.
    fn start(&mut self, c: &mut Copier<'_>, pattern: &Path) -> Result<(), FsError> {
        let mut rel = PathBuf::new();
        for comp in pattern.components() {
            let Component::Normal(name) = comp else {
                continue;
            };
            if has_wildcards(&name.to_string_lossy()) {
                break;
            }
            rel.push(name);
            let src = self.base.host.join(&rel);
            let Ok(md) = fs::symlink_metadata(&src) else {
                return Ok(());
            };
            if self.visit(c, &src, &rel, &md)? || !md.is_dir() {
                return self.finish_pending(c);
            }
        }
        let src = self.base.host.join(&rel);
        if rel.as_os_str().is_empty() || src.is_dir() {
            self.search(c, &src, &rel)?;
        }
        self.finish_pending(c)
    }

    /// Copies `src` if the pattern includes it and returns true; otherwise
    /// queues it as a directory to create if something below is copied.
    fn visit(
        &mut self,
        c: &mut Copier<'_>,
        src: &Path,
        rel: &Path,
        md: &fs::Metadata,
    ) -> Result<bool, FsError> {
        let ctx_rel = self.base.resolved.join(rel);
        if c.source.hides(&ctx_rel) {
            return Ok(true);
        }
        let rel_text = rel.to_string_lossy();
        let excluded = c.excludes.is_ignored(&rel_text);
        let dest = self.dest.join(rel);
        if self.include.is_ignored(&rel_text) && !excluded && !c.source.ignores(&ctx_rel) {
            self.create_pending(c)?;
            self.copied = true;
            if md.is_dir() {
                c.ensure_dir(src, &dest)?;
                c.copy_tree(src, &ctx_rel, rel, &dest)?;
                c.set_meta(&dest, md)?;
            } else {
                c.copy_entry(src, &dest, md)?;
            }
            return Ok(true);
        }
        if md.is_dir() {
            self.pending.push(Pending {
                src: src.to_owned(),
                dest,
                state: PendingState::Waiting,
            });
        }
        Ok(false)
    }

    fn search(&mut self, c: &mut Copier<'_>, dir: &Path, rel: &Path) -> Result<(), FsError> {
        for entry in sorted_entries(dir)? {
            let src = entry.path();
            let child = rel.join(entry.file_name());
            let md = fs::symlink_metadata(&src).map_err(io_at(&src))?;
            if !self.visit(c, &src, &child, &md)? && md.is_dir() {
                self.search(c, &src, &child)?;
                self.finish_last(c)?;
            }
        }
        Ok(())
    }

    /// Creates the queued directories, as copies of their sources.
    fn create_pending(&mut self, c: &Copier<'_>) -> Result<(), FsError> {
        for p in self
            .pending
            .iter_mut()
            .filter(|p| p.state == PendingState::Waiting)
        {
            let created = c.ensure_dir(&p.src, &p.dest)?;
            p.state = if created {
                PendingState::Created
            } else {
                // BuildKit gives an existing parent the source's mode only.
                let md = fs::symlink_metadata(&p.src).map_err(io_at(&p.src))?;
                fs::set_permissions(&p.dest, fs::Permissions::from_mode(md.mode() & 0o7777))
                    .map_err(io_at(&p.dest))?;
                PendingState::Existed
            };
        }
        Ok(())
    }

    /// Pops the innermost queued directory, finishing it if it was created.
    fn finish_last(&mut self, c: &Copier<'_>) -> Result<(), FsError> {
        match self.pending.pop() {
            Some(p) if p.state == PendingState::Created => {
                let md = fs::symlink_metadata(&p.src).map_err(io_at(&p.src))?;
                c.set_meta(&p.dest, &md)
            }
            _ => Ok(()),
        }
    }

    fn finish_pending(&mut self, c: &Copier<'_>) -> Result<(), FsError> {
        while !self.pending.is_empty() {
            self.finish_last(c)?;
        }
        Ok(())
    }
}

/// True if `--exclude` leaves out a file a source names directly.
pub(super) fn excludes_name(excludes: &Ignore, m: &Matched) -> bool {
    let name = m.rel.file_name().unwrap_or_default();
    excludes.is_ignored(&name.to_string_lossy())
}

/// Whether an entry survives `.dockerignore` and `--exclude`; a left-out
/// directory is still wanted if an exception keeps something below it.
/// `ctx_rel` is the entry relative to the source root, `ex_rel` relative
/// to the copied source.
pub(super) fn wanted(
    source: &CopySource<'_>,
    excludes: &Ignore,
    src: &Path,
    ctx_rel: &Path,
    ex_rel: &Path,
    is_dir: bool,
) -> Result<bool, FsError> {
    let ignored = source.ignores(ctx_rel);
    let excluded = excludes.is_ignored(&ex_rel.to_string_lossy());
    if !ignored && !excluded {
        return Ok(true);
    }
    if !is_dir || (ignored && source.hides(ctx_rel)) || (excluded && !excludes.has_exceptions()) {
        return Ok(false);
    }
    for entry in sorted_entries(src)? {
        let name = entry.file_name();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if wanted(
            source,
            excludes,
            &entry.path(),
            &ctx_rel.join(&name),
            &ex_rel.join(&name),
            is_dir,
        )? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The entries of `dir`, sorted by name.
pub(super) fn sorted_entries(dir: &Path) -> Result<Vec<fs::DirEntry>, FsError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_at(dir))?
        .collect::<Result<_, _>>()
        .map_err(io_at(dir))?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Copies extended attributes, as BuildKit does; failures (a filesystem
/// without xattrs, a namespace this process may not write) are logged.
fn copy_xattrs(src: &Path, dest: &Path) {
    let Ok(names) = xattr::list(src) else {
        return;
    };
    for name in names {
        let text = name.to_string_lossy();
        if OVERLAY_XATTRS.iter().any(|p| text.starts_with(p)) {
            continue;
        }
        let copied = xattr::get(src, &name).and_then(|value| match value {
            Some(v) => xattr::set(dest, &name, &v),
            None => Ok(()),
        });
        if let Err(e) = copied {
            log::debug!("cannot copy xattr {text} to {}: {e}", dest.display());
        }
    }
}

/// Gives `dest` the modification time of `md`, without following symlinks.
fn set_mtime(dest: &Path, md: &fs::Metadata) -> Result<(), FsError> {
    let t = rustix::fs::Timespec {
        tv_sec: md.mtime(),
        tv_nsec: md.mtime_nsec(),
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        dest,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_at(dest)(io::Error::from(e)))
}

#[cfg(test)]
mod tests {
    use super::super::chmod::parse_chmod;
    use super::*;
    use crate::context::ContextTree;

    /// Writes `files` (path, content; a trailing `/` makes a directory).
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

    fn context(files: &[&str], dockerignore: &str) -> (tempfile::TempDir, ContextTree) {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), files);
        if !dockerignore.is_empty() {
            fs::write(dir.path().join(".dockerignore"), dockerignore).unwrap();
        }
        let tree = ContextTree::new(dir.path().to_owned(), None).unwrap();
        (dir, tree)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Every path below `root`, sorted, directories with a trailing `/`.
    fn listing(root: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in sorted_entries(dir).unwrap() {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                if e.file_type().unwrap().is_dir() {
                    out.push(format!("{rel}/"));
                    walk(root, &e.path(), out);
                } else {
                    out.push(rel);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out
    }

    fn copy<'a>(
        source: CopySource<'a>,
        root: &Path,
        sources: &'a [String],
        dest: &'a str,
        tweak: impl FnOnce(&mut Copy<'a>),
    ) -> Result<(), FsError> {
        let mut c = Copy {
            source,
            sources,
            dest,
            owner: None,
            chmod: None,
            parents: false,
            excludes: &[],
        };
        tweak(&mut c);
        c.run(root)
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn owner(p: &Path) -> (u32, u32) {
        let md = fs::symlink_metadata(p).unwrap();
        (md.uid(), md.gid())
    }

    #[test]
    fn files_and_directory_contents_land_where_docker_puts_them() {
        let (_c, ctx) = context(&["a.txt", "b.txt", "dir/x", "dir/sub/y"], "");
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let src = CopySource::Context(&ctx);
        copy(src, r, &strings(&["a.txt"]), "/renamed", |_| {}).unwrap();
        copy(src, r, &strings(&["a.txt", "b.txt"]), "/multi/", |_| {}).unwrap();
        copy(src, r, &strings(&["dir"]), "/d", |_| {}).unwrap();
        assert_eq!(
            listing(r),
            [
                "d/",
                "d/sub/",
                "d/sub/y",
                "d/x",
                "multi/",
                "multi/a.txt",
                "multi/b.txt",
                "renamed"
            ]
        );
        assert_eq!(fs::read(r.join("renamed")).unwrap(), b"content of a.txt");
        let err = copy(src, r, &strings(&["a.txt", "b.txt"]), "/notdir", |_| {}).unwrap_err();
        assert!(matches!(err, FsError::DestNotDir), "{err}");
    }

    #[test]
    fn globs_may_match_nothing_but_missing_paths_fail() {
        let (_c, ctx) = context(&["a.txt"], "");
        let root = tempfile::tempdir().unwrap();
        let src = CopySource::Context(&ctx);
        copy(src, root.path(), &strings(&["*.md"]), "/d/", |_| {}).unwrap();
        assert!(listing(root.path()).is_empty());
        let err = copy(src, root.path(), &strings(&["missing"]), "/d/", |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"missing\" not found in the build context"),
            "{err}"
        );
    }

    #[test]
    fn dockerignore_applies_to_sources_and_below_them() {
        let (_c, ctx) = context(
            &[
                "keep",
                "secret",
                "dir/a",
                "dir/b.log",
                "logs/x.log",
                "logs/keep.log",
            ],
            "secret\n*/*.log\n!logs/keep.log\n",
        );
        let root = tempfile::tempdir().unwrap();
        let src = CopySource::Context(&ctx);
        assert!(copy(src, root.path(), &strings(&["secret"]), "/", |_| {}).is_err());
        copy(src, root.path(), &strings(&["."]), "/all/", |_| {}).unwrap();
        assert_eq!(
            listing(root.path()),
            [
                "all/",
                "all/.dockerignore",
                "all/dir/",
                "all/dir/a",
                "all/keep",
                "all/logs/",
                "all/logs/keep.log"
            ]
        );
    }

    #[test]
    fn chown_reaches_created_parents_and_existing_dirs_keep_theirs() {
        let (_c, ctx) = context(&["f"], "");
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir(r.join("opt")).unwrap();
        fs::set_permissions(r.join("opt"), fs::Permissions::from_mode(0o700)).unwrap();
        let app = Owner { uid: 1000, gid: 50 };
        copy(
            CopySource::Context(&ctx),
            r,
            &strings(&["f"]),
            "/opt/app/bin/",
            |c| c.owner = Some(app),
        )
        .unwrap();
        assert_eq!(owner(&r.join("opt/app")), (1000, 50));
        assert_eq!(owner(&r.join("opt/app/bin")), (1000, 50));
        assert_eq!(mode(&r.join("opt/app/bin")), 0o755);
        assert_eq!(owner(&r.join("opt/app/bin/f")), (1000, 50));
        assert_eq!(
            (owner(&r.join("opt")), mode(&r.join("opt"))),
            ((0, 0), 0o700)
        );
    }

    #[test]
    fn context_files_belong_to_root_and_keep_mode_and_mtime() {
        let (c, ctx) = context(&["tool"], "");
        let tool = c.path().join("tool");
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o751)).unwrap();
        lchown(&tool, Some(7), Some(8)).unwrap();
        let past = fs::FileTimes::new()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000));
        fs::File::options()
            .write(true)
            .open(&tool)
            .unwrap()
            .set_times(past)
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        copy(
            CopySource::Context(&ctx),
            root.path(),
            &strings(&["tool"]),
            "/bin/",
            |_| {},
        )
        .unwrap();
        let copied = root.path().join("bin/tool");
        assert_eq!((mode(&copied), owner(&copied)), (0o751, (0, 0)));
        assert_eq!(fs::metadata(&copied).unwrap().mtime(), 1_000_000);
    }

    #[test]
    fn symbolic_and_octal_chmod() {
        let (c, ctx) = context(&["dir/script", "dir/data", "dir/sub/"], "");
        fs::set_permissions(
            c.path().join("dir/script"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        fs::set_permissions(c.path().join("dir/data"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(c.path().join("dir/sub"), fs::Permissions::from_mode(0o700)).unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let src = CopySource::Context(&ctx);
        let sym = parse_chmod("a+rX,g-w").unwrap();
        copy(src, r, &strings(&["dir"]), "/sym", |c| c.chmod = Some(&sym)).unwrap();
        assert_eq!(mode(&r.join("sym/script")), 0o755);
        assert_eq!(mode(&r.join("sym/data")), 0o644);
        assert_eq!(mode(&r.join("sym/sub")), 0o755);
        let octal = parse_chmod("640").unwrap();
        copy(src, r, &strings(&["dir/data"]), "/new/deep/", |c| {
            c.chmod = Some(&octal)
        })
        .unwrap();
        assert_eq!(mode(&r.join("new/deep/data")), 0o640);
        // BuildKit creates the missing destination directories with the mode too.
        assert_eq!(mode(&r.join("new/deep")), 0o640);
    }

    #[test]
    fn top_level_symlinks_are_followed_and_inner_ones_copied() {
        let (c, ctx) = context(&["real/f", "target.txt"], "");
        symlink("real", c.path().join("link-dir")).unwrap();
        symlink("target.txt", c.path().join("link-file")).unwrap();
        symlink("../target.txt", c.path().join("real/inner")).unwrap();
        // Absolute links resolve inside the context, never on the host.
        symlink("/etc/passwd", c.path().join("host-passwd")).unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let src = CopySource::Context(&ctx);
        copy(src, r, &strings(&["link-dir"]), "/a/", |_| {}).unwrap();
        copy(src, r, &strings(&["link-file"]), "/b/", |_| {}).unwrap();
        assert_eq!(fs::read(r.join("a/f")).unwrap(), b"content of real/f");
        assert_eq!(
            fs::read_link(r.join("a/inner")).unwrap(),
            Path::new("../target.txt")
        );
        assert_eq!(
            fs::read(r.join("b/link-file")).unwrap(),
            b"content of target.txt"
        );
        assert!(copy(src, r, &strings(&["host-passwd"]), "/c/", |_| {}).is_err());
        assert!(!r.join("c/host-passwd").exists());
    }

    #[test]
    fn copy_from_a_root_filesystem_resolves_symlinks_inside_it() {
        let stage = tempfile::tempdir().unwrap();
        let s = stage.path();
        populate(
            s,
            &["opt/app-1.2/bin/tool", "opt/app-1.2/lib/x.so", "etc/passwd"],
        );
        symlink("/opt/app-1.2", s.join("opt/app")).unwrap();
        symlink("../../etc/passwd", s.join("opt/app-1.2/pw")).unwrap();
        lchown(s.join("opt/app-1.2/bin/tool"), Some(33), Some(44)).unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let src = CopySource::Root(s);
        copy(
            src,
            r,
            &strings(&["/opt/app/bin"]),
            "/usr/local/bin/",
            |_| {},
        )
        .unwrap();
        assert_eq!(owner(&r.join("usr/local/bin/tool")), (33, 44));
        copy(src, r, &strings(&["/opt/app/*/x.so"]), "/lib/", |_| {}).unwrap();
        assert!(r.join("lib/x.so").is_file());
        copy(src, r, &strings(&["/opt/app/pw"]), "/copied-pw", |_| {}).unwrap();
        assert_eq!(
            fs::read(r.join("copied-pw")).unwrap(),
            b"content of etc/passwd"
        );
        let err = copy(src, r, &strings(&["/nope"]), "/", |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("the stage or image copied from"), "{err}");
    }

    #[test]
    fn parents_keep_the_source_path_below_the_pivot() {
        let (_c, ctx) = context(
            &[
                "x/a.txt",
                "y/a.txt",
                "x/y/b.txt",
                "x/y/c.md",
                "src/a.txt",
                "src/p/b.txt",
                "src/p/q/c.txt",
                "src/p/d.md",
            ],
            "",
        );
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let src = CopySource::Context(&ctx);
        let parents = |c: &mut Copy<'_>| c.parents = true;
        copy(
            src,
            r,
            &strings(&["./x/a.txt", "./y/a.txt"]),
            "/p/",
            parents,
        )
        .unwrap();
        copy(src, r, &strings(&["./x/./y/*.txt"]), "/pivot/", parents).unwrap();
        copy(src, r, &strings(&["src/**/*.txt"]), "/deep/", parents).unwrap();
        copy(src, r, &strings(&["x/y"]), "/dir/", parents).unwrap();
        assert_eq!(
            listing(r),
            [
                "deep/",
                "deep/src/",
                "deep/src/a.txt",
                "deep/src/p/",
                "deep/src/p/b.txt",
                "deep/src/p/q/",
                "deep/src/p/q/c.txt",
                "dir/",
                "dir/x/",
                "dir/x/y/",
                "dir/x/y/b.txt",
                "dir/x/y/c.md",
                "p/",
                "p/x/",
                "p/x/a.txt",
                "p/y/",
                "p/y/a.txt",
                "pivot/",
                "pivot/y/",
                "pivot/y/b.txt"
            ]
        );
        assert!(copy(src, r, &strings(&["x/missing.txt"]), "/p/", parents).is_err());
    }

    #[test]
    fn parent_directories_copy_their_source_metadata() {
        let (c, ctx) = context(&["a/b/f"], "");
        fs::set_permissions(c.path().join("a"), fs::Permissions::from_mode(0o750)).unwrap();
        let root = tempfile::tempdir().unwrap();
        let app = Owner { uid: 9, gid: 9 };
        copy(
            CopySource::Context(&ctx),
            root.path(),
            &strings(&["a/b/f"]),
            "/out/",
            |c| {
                c.parents = true;
                c.owner = Some(app);
            },
        )
        .unwrap();
        let a = root.path().join("out/a");
        assert_eq!((mode(&a), owner(&a)), (0o750, (9, 9)));
        assert_eq!(owner(&root.path().join("out/a/b/f")), (9, 9));
    }

    #[test]
    fn excludes_filter_directory_contents_and_named_files() {
        let (_c, ctx) = context(
            &[
                "dir1/a.png",
                "dir1/b.txt",
                "dir2/c.txt",
                "dir2/keep.png",
                "home.txt",
                "home.md",
            ],
            "",
        );
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let src = CopySource::Context(&ctx);
        let ex = strings(&["*/*.png", "!dir2/keep.png"]);
        copy(src, r, &strings(&["."]), "/1/", |c| c.excludes = &ex).unwrap();
        let ex2 = strings(&["*.txt"]);
        copy(src, r, &strings(&["hom*"]), "/2/", |c| c.excludes = &ex2).unwrap();
        copy(src, r, &strings(&["dir*"]), "/3/", |c| c.excludes = &ex2).unwrap();
        let all = strings(&["*"]);
        copy(src, r, &strings(&["dir1"]), "/4/", |c| c.excludes = &all).unwrap();
        assert_eq!(
            listing(r),
            [
                "1/",
                "1/dir1/",
                "1/dir1/b.txt",
                "1/dir2/",
                "1/dir2/c.txt",
                "1/dir2/keep.png",
                "1/home.md",
                "1/home.txt",
                "2/",
                "2/home.md",
                "3/",
                "3/a.png",
                "3/keep.png",
                "4/"
            ]
        );
        let bad = strings(&["!"]);
        assert!(matches!(
            copy(src, r, &strings(&["."]), "/5/", |c| c.excludes = &bad),
            Err(FsError::Exclude(_))
        ));
    }

    #[test]
    fn hardlinks_stay_hardlinks_and_dirs_never_replace_files() {
        let (c, ctx) = context(&["d/one", "e/sub/"], "");
        fs::hard_link(c.path().join("d/one"), c.path().join("d/two")).unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        copy(CopySource::Context(&ctx), r, &strings(&["d"]), "/d", |_| {}).unwrap();
        let (one, two) = (
            fs::metadata(r.join("d/one")).unwrap(),
            fs::metadata(r.join("d/two")).unwrap(),
        );
        assert_eq!(one.ino(), two.ino());
        fs::create_dir(r.join("t")).unwrap();
        fs::write(r.join("t/sub"), "a file").unwrap();
        let err = copy(CopySource::Context(&ctx), r, &strings(&["e"]), "/t", |_| {}).unwrap_err();
        assert!(err.to_string().contains("/t/sub"), "{err}");
    }
}
