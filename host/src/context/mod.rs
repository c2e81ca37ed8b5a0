//! Build contexts: a `--context` URL goes to the plugin that claims its
//! scheme, and comes back as a directory tree the host reads natively.

pub mod git;
pub mod remote;

use crate::dockerfile::Ignore;
use crate::layer::apply::{UnpackOptions, Whiteouts, unpack};
use crate::plugin::{self, Kind, Opened, Plugin, Policy, Preopen, Runtime};
use crate::store::Store;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Context failures.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("unknown context scheme {scheme:?} in {url:?}; known schemes: {known}")]
    UnknownScheme {
        scheme: String,
        url: String,
        known: String,
    },
    #[error(transparent)]
    Plugin(#[from] plugin::PluginError),
    #[error(transparent)]
    Remote(#[from] remote::RemoteError),
    #[error(transparent)]
    Git(#[from] git::GitSourceError),
    #[error("--context-sub-path {path:?} {reason}")]
    SubPath { path: String, reason: String },
    #[error("--git applies to git:// contexts only, and --context is {url:?}")]
    GitOptionsWithoutGit { url: String },
    #[error("context directory {path} does not exist or is not a directory: check --context")]
    NotADirectory { path: PathBuf },
    #[error("cannot unpack context archive from {url}: {message}")]
    Unpack { url: String, message: String },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("context path {path:?} escapes the build context")]
    Escapes { path: String },
    #[error("cannot read {path} in the build context: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}: fix or remove the pattern")]
    Ignore(crate::dockerfile::IgnoreError),
    #[error("context file {path:?} is {size} bytes; a plugin may read at most {max} bytes")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error(
        "--context=tar://stdin reads a tar archive (plain, gzip or zstd) from standard input, \
         but standard input is a terminal: pipe the archive in, as in \
         `tar -cz -C DIR . | kiln build -i --context=tar://stdin ...` \
         (in a container: `docker run -i`, `kubectl run -i`, or `ctr run` without `-t`)"
    )]
    StdinIsTerminal,
    #[error(
        "-i/--interactive reads the build context from standard input, but --context is {url:?}: \
         use --context=tar://stdin, or drop -i"
    )]
    InteractiveWithoutStdin { url: String },
}

/// Whether `url` is `tar://stdin`, the context read from standard input.
pub fn reads_stdin(url: &str) -> bool {
    let (scheme, rest) = split_url(url);
    scheme == "tar" && rest == "stdin"
}

/// Checks `-i/--interactive` against `--context` before anything is read:
/// `tar://stdin` needs an archive piped in, never a terminal, and `-i`
/// only makes sense with `tar://stdin`. kaniko's executor has no `-i` (its
/// users write `docker run -i`), so `tar://stdin` works without it too.
pub fn check_stdin(
    url: &str,
    interactive: bool,
    stdin_is_terminal: bool,
) -> Result<(), ContextError> {
    match (reads_stdin(url), interactive) {
        (true, _) if stdin_is_terminal => Err(ContextError::StdinIsTerminal),
        (false, true) => Err(ContextError::InteractiveWithoutStdin { url: url.into() }),
        _ => Ok(()),
    }
}

/// How to open a context besides its URL.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// `--context-sub-path`: the context is this directory inside what the
    /// URL names.
    pub sub_path: Option<String>,
    /// `--git` options (`key=value[,key=value]`).
    pub git: Vec<String>,
}

/// The hosts a user plugin's URL names: its `host:port`, or both the
/// http and https ports when it names none.
fn user_plugin_net(url: &str) -> plugin::NetPolicy {
    // A fragment is the plugin's business; `http::Uri` takes none.
    let uri = url.split('#').next().unwrap_or("").parse::<http::Uri>();
    let allowed = match uri
        .as_ref()
        .ok()
        .and_then(|u| Some((u.host()?, u.port_u16())))
    {
        None => Vec::new(),
        Some((host, Some(port))) => vec![format!("{}:{port}", host.to_ascii_lowercase())],
        Some((host, None)) => {
            let host = host.to_ascii_lowercase();
            vec![format!("{host}:443"), format!("{host}:80")]
        }
    };
    plugin::NetPolicy {
        allowed,
        ..plugin::NetPolicy::default()
    }
}

/// The most a plugin may read from one context file.
pub const MAX_PLUGIN_READ: u64 = 1 << 20;

/// A build context on the host's filesystem, read-only from here on.
pub struct ContextTree {
    root: PathBuf,
    ignore: Ignore,
    // Keeps an unpacked archive alive for the build.
    _unpacked: Option<tempfile::TempDir>,
}

/// The plugin that claims `scheme`.
fn plugin_for<'p>(
    plugins: &'p [Plugin],
    scheme: &str,
    url: &str,
) -> Result<&'p Plugin, ContextError> {
    let mut known = Vec::new();
    for p in plugins {
        if let Kind::Contexts(schemes) = p.kind() {
            if schemes.iter().any(|s| s == scheme) {
                return Ok(p);
            }
            known.extend(schemes.iter().map(|s| format!("{s}://")));
        }
    }
    known.sort();
    Err(ContextError::UnknownScheme {
        scheme: scheme.into(),
        url: url.into(),
        known: known.join(", "),
    })
}

/// Splits a context URL into its scheme and the rest; a plain path is `dir`.
pub fn split_url(url: &str) -> (String, &str) {
    match url.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            (scheme.to_ascii_lowercase(), rest)
        }
        _ => ("dir".into(), url),
    }
}

fn absolute(path: &str) -> Result<PathBuf, ContextError> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    let cwd = std::env::current_dir().map_err(|source| ContextError::Io {
        path: ".".into(),
        source,
    })?;
    Ok(cwd.join(p))
}

/// Opens `url` through its plugin and returns the context tree.
pub fn open(
    url: &str,
    opts: &ContextOptions,
    plugins: &[Plugin],
    rt: &Runtime,
    store: &Store,
) -> Result<ContextTree, ContextError> {
    let (scheme, rest) = split_url(url);
    let plugin = plugin_for(plugins, &scheme, url)?;
    if !opts.git.is_empty() && scheme != "git" {
        return Err(ContextError::GitOptionsWithoutGit { url: url.into() });
    }
    let mut options = Vec::new();
    // Lives until the archive is unpacked: the plugin's working space.
    let mut scratch = None;
    // Local paths are made absolute here so the plugin sees the same path
    // the host grants it, whatever the working directory.
    let mut policy = Policy::default();
    let url = match scheme.as_str() {
        "dir" => format!("dir://{}", absolute(rest)?.display()),
        "tar" if rest == "stdin" => {
            log::info!("Reading the build context from standard input");
            policy.stdin = true;
            url.to_owned()
        }
        "tar" => {
            let file = absolute(rest)?;
            if let Some(parent) = file.parent() {
                policy.read_dirs.push(Preopen {
                    host: parent.to_owned(),
                    guest: parent.display().to_string(),
                });
            }
            format!("tar://{}", file.display())
        }
        _ => {
            let env = |k: &str| std::env::var(k).ok();
            let now = remote::now_secs();
            match remote::resolve(&scheme, url, &opts.git, &env, now)? {
                Some(r) => {
                    log::info!("Fetching the build context from {}", r.url);
                    policy.net = r.net;
                    options = r.options;
                    if r.scratch {
                        let dir = store.temp_dir("context-scratch-")?;
                        policy.scratch = Some(dir.path().to_owned());
                        scratch = Some(dir);
                    }
                    r.url
                }
                None => {
                    policy.net = user_plugin_net(url);
                    url.to_owned()
                }
            }
        }
    };
    log::debug!(
        "opening context {url} with plugin {} (network: {:?})",
        plugin.name(),
        policy.net
    );
    let tree = match plugin.open_context(rt, &url, &options, &policy)? {
        Opened::Directory(dir) => {
            if !dir.is_dir() {
                return Err(ContextError::NotADirectory { path: dir });
            }
            ContextTree::new(sub_dir(dir, opts)?, None)
        }
        Opened::Tar(stream) => {
            let tmp = unpack_stream(stream, store, &url)?;
            ContextTree::new(sub_dir(tmp.path().to_owned(), opts)?, Some(tmp))
        }
    };
    drop(scratch);
    tree
}

/// Unpacks a context plugin's tar stream into a fresh directory of the
/// store, counted on the progress display. Context archives may not delete
/// anything, so whiteouts are refused.
fn unpack_stream(
    stream: impl io::Read,
    store: &Store,
    url: &str,
) -> Result<tempfile::TempDir, ContextError> {
    let tmp = store.temp_dir("context-")?;
    let unpack_opts = UnpackOptions {
        whiteouts: Whiteouts::Reject,
        preserve_owners: false,
        lowers: Vec::new(),
        exclude: Default::default(),
    };
    let transfer = crate::progress::Transfer::context();
    let counted = crate::progress::Counted::new(stream, &transfer);
    unpack(counted, tmp.path(), &unpack_opts).map_err(|e| ContextError::Unpack {
        url: url.to_owned(),
        message: e.to_string(),
    })?;
    transfer.finish();
    Ok(tmp)
}

/// `root/sub` for a clean relative `sub`, which must be a directory reached
/// through directories only: a symlink could lead anywhere on the host.
/// On failure, why, ending in `place` ("the context").
fn checked_subdir(root: &Path, sub: &Path, place: &str) -> Result<PathBuf, String> {
    let mut at = root.to_owned();
    for part in sub.components() {
        at.push(part);
        let md = fs::symlink_metadata(&at).map_err(|_| format!("does not exist in {place}"))?;
        if md.file_type().is_symlink() {
            return Err("passes through a symlink".into());
        }
        if !md.is_dir() {
            return Err(format!("is not a directory in {place}"));
        }
    }
    Ok(at)
}

/// The directory `--context-sub-path` names inside `root`.
fn sub_dir(root: PathBuf, opts: &ContextOptions) -> Result<PathBuf, ContextError> {
    let Some(sub) = &opts.sub_path else {
        return Ok(root);
    };
    let bad = |reason: String| ContextError::SubPath {
        path: sub.clone(),
        reason,
    };
    let clean = clean_relative(sub).ok_or_else(|| bad("climbs out of the context".into()))?;
    let dir = checked_subdir(&root, &clean, "the context").map_err(bad)?;
    log::info!("Using {sub} inside the context as the context");
    Ok(dir)
}

/// Cleans a context-relative path; `None` if it climbs out of the root.
pub fn clean_relative(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// The type and permission bits of a context entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: plugin::HostFileKind,
    pub size: u64,
    pub mode: u32,
}

impl ContextTree {
    pub(crate) fn new(
        root: PathBuf,
        unpacked: Option<tempfile::TempDir>,
    ) -> Result<ContextTree, ContextError> {
        let ignore_file = root.join(".dockerignore");
        let ignore = match fs::read_to_string(&ignore_file) {
            Ok(text) => Ignore::parse(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ignore::parse(""),
            Err(source) => {
                return Err(ContextError::Io {
                    path: ".dockerignore".into(),
                    source,
                });
            }
        };
        if let Some(e) = ignore.errors().first() {
            return Err(ContextError::Ignore(e.clone()));
        }
        Ok(ContextTree {
            root,
            ignore,
            _unpacked: unpacked,
        })
    }

    /// Uses `<Dockerfile>.dockerignore` instead of the context's
    /// `.dockerignore` when it exists, as BuildKit does.
    pub fn use_dockerfile_ignore(&mut self, dockerfile: &Path) -> Result<(), ContextError> {
        let mut name = dockerfile.as_os_str().to_owned();
        name.push(".dockerignore");
        let path = PathBuf::from(name);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let ignore = Ignore::parse(&text);
                if let Some(e) = ignore.errors().first() {
                    return Err(ContextError::Ignore(e.clone()));
                }
                log::debug!("using {} for .dockerignore rules", path.display());
                self.ignore = ignore;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ContextError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The directory the context lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True if `.dockerignore` excludes `rel`.
    pub fn is_ignored(&self, rel: &Path) -> bool {
        self.ignore.is_ignored(&rel.to_string_lossy())
    }

    /// The host path of a context-relative path, refusing escapes.
    pub fn host_path(&self, rel: &str) -> Result<PathBuf, ContextError> {
        let clean =
            clean_relative(rel).ok_or_else(|| ContextError::Escapes { path: rel.into() })?;
        Ok(self.root.join(clean))
    }

    /// `lstat` of a context path; `None` if it is missing or ignored.
    pub fn stat(&self, rel: &str) -> Option<Stat> {
        let clean = clean_relative(rel)?;
        if !clean.as_os_str().is_empty() && self.is_ignored(&clean) {
            return None;
        }
        let md = fs::symlink_metadata(self.root.join(&clean)).ok()?;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            plugin::HostFileKind::Directory
        } else if ft.is_file() {
            plugin::HostFileKind::File
        } else if ft.is_symlink() {
            plugin::HostFileKind::Symlink
        } else {
            plugin::HostFileKind::Other
        };
        Some(Stat {
            kind,
            size: md.size(),
            mode: md.permissions().mode() & 0o7777,
        })
    }

    /// Context paths matching a Docker (Go `filepath.Match`) glob, sorted,
    /// with `.dockerignore` applied.
    pub fn glob(&self, pattern: &str) -> Result<Vec<String>, ContextError> {
        let clean = clean_relative(pattern).ok_or_else(|| ContextError::Escapes {
            path: pattern.into(),
        })?;
        let pattern_text = clean.to_string_lossy().into_owned();
        let compiled = glob::Pattern::new(&pattern_text).map_err(|e| ContextError::Io {
            path: pattern.into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        let depth = clean.components().count();
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let mut found = Vec::new();
        // Only walk as deep as the pattern has components: a glob never
        // crosses a `/`.
        self.walk_to_depth(Path::new(""), depth, &mut |rel| {
            if rel.components().count() == depth && compiled.matches_path_with(rel, opts) {
                found.push(rel.to_string_lossy().into_owned());
            }
        })?;
        found.sort();
        Ok(found)
    }

    fn walk_to_depth(
        &self,
        rel: &Path,
        depth: usize,
        visit: &mut dyn FnMut(&Path),
    ) -> Result<(), ContextError> {
        if depth == 0 {
            return Ok(());
        }
        let dir = self.root.join(rel);
        let entries = fs::read_dir(&dir).map_err(|source| ContextError::Io {
            path: rel.display().to_string(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ContextError::Io {
                path: rel.display().to_string(),
                source,
            })?;
            let child = rel.join(entry.file_name());
            let ignored = self.is_ignored(&child);
            if !ignored {
                visit(&child);
            }
            // An exception (`!pattern`) can bring back a path below an
            // ignored directory, so such directories are still walked.
            let descend = !ignored || self.ignore.has_exceptions();
            if descend && entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                self.walk_to_depth(&child, depth - 1, visit)?;
            }
        }
        Ok(())
    }

    /// True if anything at or below `rel` survives `.dockerignore`.
    pub fn keeps_any_below(&self, rel: &Path) -> bool {
        if !self.is_ignored(rel) {
            return true;
        }
        if !self.ignore.has_exceptions() {
            return false;
        }
        let Ok(entries) = fs::read_dir(self.root.join(rel)) else {
            return false;
        };
        entries
            .flatten()
            .any(|e| self.keeps_any_below(&rel.join(e.file_name())))
    }

    /// Reads a small context file for a plugin.
    pub fn read_small(&self, rel: &str) -> Result<Vec<u8>, ContextError> {
        let stat = self.stat(rel).ok_or_else(|| ContextError::Io {
            path: rel.into(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "not found in the build context or excluded by .dockerignore",
            ),
        })?;
        if stat.size > MAX_PLUGIN_READ {
            return Err(ContextError::TooLarge {
                path: rel.into(),
                size: stat.size,
                max: MAX_PLUGIN_READ,
            });
        }
        let path = self.host_path(rel)?;
        fs::read(&path).map_err(|source| ContextError::Io {
            path: rel.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_plugin_may_reach_the_host_its_url_names() {
        let allowed = |url: &str| user_plugin_net(url).allowed;
        assert_eq!(
            allowed("blob+x://U:p@Store.example:8443/b/k#v1"),
            ["store.example:8443"]
        );
        assert_eq!(
            allowed("blob+x://store.example/b/k"),
            ["store.example:443", "store.example:80"]
        );
        assert!(allowed("blob+x:///local/path").is_empty());
    }

    #[test]
    fn subdirectories_must_be_real_directories() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/f"), "x").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("l")).unwrap();
        assert_eq!(
            checked_subdir(dir.path(), Path::new("a/b"), "the repository").unwrap(),
            dir.path().join("a/b")
        );
        assert!(
            checked_subdir(dir.path(), Path::new("a/f"), "the repository")
                .unwrap_err()
                .contains("not a directory")
        );
        assert!(
            checked_subdir(dir.path(), Path::new("l/b"), "the repository")
                .unwrap_err()
                .contains("symlink")
        );
        assert!(
            checked_subdir(dir.path(), Path::new("nope"), "the repository")
                .unwrap_err()
                .contains("does not exist in the repository")
        );
    }

    #[test]
    fn urls_split_into_scheme_and_rest() {
        assert_eq!(split_url("tar:///a/b.tgz"), ("tar".into(), "/a/b.tgz"));
        assert_eq!(split_url("DIR://x"), ("dir".into(), "x"));
        assert_eq!(split_url("./ctx"), ("dir".into(), "./ctx"));
        assert_eq!(split_url("/abs/path"), ("dir".into(), "/abs/path"));
    }

    #[test]
    fn stdin_contexts_need_a_pipe_and_interactive_needs_stdin() {
        assert!(reads_stdin("tar://stdin"));
        assert!(reads_stdin("TAR://stdin"));
        assert!(!reads_stdin("tar:///stdin"));
        assert!(!reads_stdin("stdin"));
        assert!(check_stdin("tar://stdin", true, false).is_ok());
        assert!(check_stdin("tar://stdin", false, false).is_ok());
        assert!(check_stdin("dir:///workspace", false, true).is_ok());
        let tty = check_stdin("tar://stdin", true, true).unwrap_err();
        assert!(matches!(tty, ContextError::StdinIsTerminal));
        assert!(tty.to_string().contains("standard input is a terminal"));
        assert!(matches!(
            check_stdin("tar://stdin", false, true),
            Err(ContextError::StdinIsTerminal)
        ));
        let err = check_stdin("/workspace/", true, false).unwrap_err();
        assert!(
            err.to_string().contains("use --context=tar://stdin"),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_cannot_escape() {
        assert_eq!(clean_relative("a/../b/./c").unwrap(), PathBuf::from("b/c"));
        assert_eq!(clean_relative("/a").unwrap(), PathBuf::from("a"));
        assert!(clean_relative("../x").is_none());
        assert!(clean_relative("a/../../x").is_none());
    }

    #[test]
    fn glob_matches_per_component_and_honours_dockerignore() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.txt", "b.txt", "c.md", "sub/d.txt", "secret.txt"] {
            let p = dir.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, f).unwrap();
        }
        fs::write(
            dir.path().join(".dockerignore"),
            "secret.txt\nsub\n!sub/d.txt\n",
        )
        .unwrap();
        let ctx = ContextTree::new(dir.path().to_owned(), None).unwrap();
        assert_eq!(ctx.glob("*.txt").unwrap(), vec!["a.txt", "b.txt"]);
        assert_eq!(ctx.glob("*/*.txt").unwrap(), vec!["sub/d.txt"]);
        assert!(ctx.stat("secret.txt").is_none());
        assert!(ctx.stat("sub").is_none());
        assert!(ctx.keeps_any_below(Path::new("sub")));
        assert!(!ctx.keeps_any_below(Path::new("secret.txt")));
        assert_eq!(ctx.read_small("a.txt").unwrap(), b"a.txt");
        assert!(ctx.host_path("../etc/passwd").is_err());
    }
}
