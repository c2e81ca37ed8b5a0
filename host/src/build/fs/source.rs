//! Where COPY and ADD read from: the build context (filtered by its
//! `.dockerignore`) or a root filesystem (a stage's or an image's, for
//! `COPY --from`). Source paths resolve inside that root, symlinks
//! included, as if it were `/`.

use super::{FsError, resolve_in_root};
use crate::context::ContextTree;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The tree a COPY reads its sources from.
#[derive(Clone, Copy)]
pub enum CopySource<'a> {
    /// The build context: `.dockerignore` applies, and files belong to
    /// root unless `--chown` says otherwise.
    Context(&'a ContextTree),
    /// A root filesystem: nothing is ignored, and files keep their owners.
    Root(&'a Path),
}

/// One source entry a COPY or ADD copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    /// The path as named or globbed, relative to the source root.
    pub rel: PathBuf,
    /// The host path after following symlinks inside the source root.
    pub host: PathBuf,
    /// `host` relative to the source root, for `.dockerignore` checks below it.
    pub resolved: PathBuf,
}

/// Cleans a source path to components relative to the root; `..` stops
/// at the root, as `filepath.Join("/", p)` does in BuildKit.
pub fn clean(path: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// True if `s` has a glob metacharacter outside a backslash escape.
pub fn has_wildcards(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// A glob pattern for one path component, with Go's `filepath.Match`
/// rules: `*`, `?`, `[...]` with ranges and `^` negation, `\` escapes.
#[derive(Debug)]
pub struct ComponentPattern(Vec<Tok>);

#[derive(Debug)]
enum Tok {
    Lit(char),
    Any,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl ComponentPattern {
    /// Compiles `pattern`; a malformed class or a trailing `\` is an error.
    pub fn new(pattern: &str) -> Result<ComponentPattern, String> {
        let mut toks = Vec::new();
        let mut chars = pattern.chars().peekable();
        let escaped = |c: Option<char>| c.ok_or_else(|| "it ends with a lone \\".to_string());
        while let Some(c) = chars.next() {
            toks.push(match c {
                '*' => Tok::Star,
                '?' => Tok::Any,
                '\\' => Tok::Lit(escaped(chars.next())?),
                '[' => {
                    let negated = chars.next_if_eq(&'^').is_some();
                    let mut ranges = Vec::new();
                    loop {
                        let lo = match chars.next() {
                            None => return Err("a [ is never closed".into()),
                            Some(']') if !ranges.is_empty() => break,
                            Some(']') => return Err("a character class is empty".into()),
                            Some('\\') => escaped(chars.next())?,
                            Some(c) => c,
                        };
                        let hi = if chars.next_if_eq(&'-').is_some() {
                            match chars.next() {
                                None | Some(']') => return Err("a range has no end".into()),
                                Some('\\') => escaped(chars.next())?,
                                Some(c) => c,
                            }
                        } else {
                            lo
                        };
                        if lo > hi {
                            return Err(format!("the range {lo}-{hi} is backwards"));
                        }
                        ranges.push((lo, hi));
                    }
                    Tok::Class { negated, ranges }
                }
                c => Tok::Lit(c),
            });
        }
        Ok(ComponentPattern(toks))
    }

    /// Whether `name` (one component, no `/`) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        // Iterative matching with one backtrack point per `*`, which is
        // enough because a later star subsumes an earlier one.
        let (mut p, mut n) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            let step = match self.0.get(p) {
                Some(Tok::Star) => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                Some(Tok::Lit(c)) => *c == name[n],
                Some(Tok::Any) => name[n] != '/',
                Some(Tok::Class { negated, ranges }) => {
                    let inside = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&name[n]));
                    name[n] != '/' && inside != *negated
                }
                None => false,
            };
            if step {
                p += 1;
                n += 1;
            } else if let Some((sp, sn)) = star.filter(|(_, sn)| name[*sn] != '/') {
                star = Some((sp, sn + 1));
                p = sp + 1;
                n = sn + 1;
            } else {
                return false;
            }
        }
        self.0[p..].iter().all(|t| matches!(t, Tok::Star))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl CopySource<'_> {
    /// The host directory the source paths are relative to.
    pub fn dir(&self) -> &Path {
        match self {
            CopySource::Context(c) => c.root(),
            CopySource::Root(p) => p,
        }
    }

    /// Whether copied entries keep their owners when there is no `--chown`.
    pub fn keeps_owners(&self) -> bool {
        matches!(self, CopySource::Root(_))
    }

    /// True if `.dockerignore` leaves out `rel` and everything below it.
    pub fn hides(&self, rel: &Path) -> bool {
        match self {
            CopySource::Context(c) => !c.keeps_any_below(rel),
            CopySource::Root(_) => false,
        }
    }

    /// True if `.dockerignore` leaves out `rel` itself (an ignored
    /// directory may still hold re-included entries).
    pub fn ignores(&self, rel: &Path) -> bool {
        match self {
            CopySource::Context(c) => !rel.as_os_str().is_empty() && c.is_ignored(rel),
            CopySource::Root(_) => false,
        }
    }

    /// Resolves `rel`, following every symlink inside the root; `None` if
    /// nothing is there or `.dockerignore` hides it.
    pub fn resolve(&self, rel: &Path) -> Result<Option<Matched>, FsError> {
        let image_path = Path::new("/").join(rel);
        let host = resolve_in_root(self.dir(), &image_path.to_string_lossy(), true)?;
        let resolved = host
            .strip_prefix(self.dir())
            .map(Path::to_owned)
            .unwrap_or_default();
        // The resolved path decides; the name as given only counts when a
        // symlink led elsewhere, and is never read through on the host.
        let hidden = self.hides(&resolved) || (resolved != rel && self.ignores(rel));
        if hidden || fs::symlink_metadata(&host).is_err() {
            return Ok(None);
        }
        Ok(Some(Matched {
            rel: rel.to_owned(),
            host,
            resolved,
        }))
    }

    /// The entries a source names: the path itself, or the sorted matches
    /// of its glob (which may be none).
    pub fn expand(&self, source: &str) -> Result<Vec<Matched>, FsError> {
        let cleaned = clean(source);
        if !has_wildcards(&cleaned.to_string_lossy()) {
            return Ok(self.resolve(&cleaned)?.into_iter().collect());
        }
        let mut current = vec![PathBuf::new()];
        for comp in cleaned.components() {
            let text = comp.as_os_str().to_string_lossy();
            if !has_wildcards(&text) {
                current.iter_mut().for_each(|p| p.push(comp));
                continue;
            }
            let pattern = ComponentPattern::new(&text).map_err(|reason| FsError::BadPattern {
                pattern: source.into(),
                reason,
            })?;
            let mut next = Vec::new();
            for dir in &current {
                let Some(found) = self.resolve(dir)? else {
                    continue;
                };
                if !found.host.is_dir() {
                    continue;
                }
                let entries = fs::read_dir(&found.host).map_err(io_err(&found.host))?;
                for entry in entries {
                    let entry = entry.map_err(io_err(&found.host))?;
                    let name = entry.file_name();
                    let hidden = self.hides(&found.resolved.join(&name));
                    if pattern.matches(&name.to_string_lossy()) && !hidden {
                        next.push(dir.join(name));
                    }
                }
            }
            current = next;
        }
        current.sort();
        let mut out = Vec::new();
        for rel in current {
            out.extend(self.resolve(&rel)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn component_patterns_follow_go_filepath_match() {
        let table = [
            ("*", "abc", true),
            ("*", "", true),
            ("a*", "abc", true),
            ("a*c", "abc", true),
            ("a*c", "abd", false),
            ("*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("?", "a", true),
            ("?", "", false),
            ("a?c", "abc", true),
            ("[abc]", "b", true),
            ("[^abc]", "b", false),
            ("[^abc]", "d", true),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("[\\]]", "]", true),
            ("*.txt", ".hidden.txt", true),
            ("hom*", "home.txt", true),
        ];
        for (pattern, name, want) in table {
            let p = ComponentPattern::new(pattern).unwrap();
            assert_eq!(p.matches(name), want, "{pattern} vs {name}");
        }
        for bad in ["[", "[]", "[a-", "a\\", "[z-a]"] {
            assert!(ComponentPattern::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcards_respect_escapes() {
        assert!(has_wildcards("a/*.txt"));
        assert!(!has_wildcards("a/\\*.txt"));
        assert!(!has_wildcards("plain/path"));
        assert_eq!(clean("/../a/./b/../c/"), PathBuf::from("a/c"));
    }

    #[test]
    fn root_sources_follow_symlinks_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("opt/app/bin")).unwrap();
        fs::write(r.join("opt/app/bin/tool"), "t").unwrap();
        fs::write(r.join("opt/app/a.txt"), "a").unwrap();
        fs::write(r.join("opt/app/b.txt"), "b").unwrap();
        symlink("/opt/app", r.join("current")).unwrap();
        symlink("../../../../../../etc", r.join("opt/escape")).unwrap();
        let src = CopySource::Root(r);
        let m = src.resolve(Path::new("current/bin")).unwrap().unwrap();
        assert_eq!(m.host, r.join("opt/app/bin"));
        assert_eq!(m.rel, PathBuf::from("current/bin"));
        let globbed: Vec<_> = src
            .expand("/current/*.txt")
            .unwrap()
            .into_iter()
            .map(|m| m.rel)
            .collect();
        assert_eq!(
            globbed,
            [
                PathBuf::from("current/a.txt"),
                PathBuf::from("current/b.txt")
            ]
        );
        // A symlink climbing out lands on the root's own /etc, absent here.
        assert!(
            src.resolve(Path::new("opt/escape/passwd"))
                .unwrap()
                .is_none()
        );
        assert!(src.expand("nothing*").unwrap().is_empty());
    }
}
