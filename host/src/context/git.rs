//! `ADD <git url>`: BuildKit's git source syntax (`#ref:subdir` fragments,
//! `?ref=&subdir=&...` queries) mapped onto the `git` context plugin, which
//! fetches the commit over smart HTTP and streams its tree as a tar that is
//! unpacked into the store like a remote context.

use super::{ContextError, plugin_for, remote};
use crate::plugin::{KeyValue, Opened, Plugin, Policy, Runtime};
use crate::store::Store;
use std::path::{Path, PathBuf};

/// Git source failures.
#[derive(Debug, thiserror::Error)]
pub enum GitSourceError {
    #[error(
        "{url}: kiln fetches git repositories over HTTP(S) only and has no ssh transport; \
         use the https URL instead: {https} (set GIT_USERNAME and GIT_PASSWORD, or GIT_TOKEN, for a private repository)"
    )]
    Ssh { url: String, https: String },
    #[error("invalid git source {url}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("{url}: the git plugin returned a directory instead of an archive")]
    NotAnArchive { url: String },
    #[error("{url}: subdirectory {subdir:?} {reason}")]
    Subdir {
        url: String,
        subdir: String,
        reason: String,
    },
    #[error("ADD of {url} needs kiln's git plugin, which this build step was not given")]
    NoPlugin { url: String },
}

/// A git source of ADD, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitSource {
    /// The repository URL without credentials, query or fragment, for messages.
    pub display: String,
    /// `git://[userinfo@]host[:port]/path[#ref]`, what the plugin is opened with.
    plugin_url: String,
    /// `https` or `http` for an http(s) URL; a `git://` URL follows
    /// `GIT_PULL_METHOD`, as `--context=git://` does.
    method: Option<&'static str>,
    /// The branch, tag, full ref or commit id; the remote's HEAD if none.
    pub reference: Option<String>,
    /// Only this directory of the tree is added.
    pub subdir: Option<String>,
    /// `?keep-git-dir=` in the URL.
    pub keep_git_dir: Option<bool>,
    /// `?checksum=` (or `?commit=`): the commit id, or a prefix, the ref must name.
    pub checksum: Option<String>,
    /// `?submodules=`: whether submodules are fetched (BuildKit's default: yes).
    pub submodules: bool,
}

/// The https URL suggested for an ssh one.
fn https_for_ssh(src: &str) -> String {
    let (location, fragment) = match src.split_once('#') {
        Some((l, f)) => (l, Some(f)),
        None => (src, None),
    };
    let (host, path) = match location.split_once("://") {
        Some((_, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            // An ssh port says nothing about the https one.
            let host = host.split_once(':').map_or(host, |(h, _)| h);
            (host, path)
        }
        None => {
            let (user_host, path) = location.split_once(':').unwrap_or((location, ""));
            let host = user_host.rsplit_once('@').map_or(user_host, |(_, h)| h);
            (host, path)
        }
    };
    let mut https = format!("https://{host}/{}", path.trim_start_matches('/'));
    if !https.ends_with(".git") {
        https.push_str(".git");
    }
    if let Some(f) = fragment {
        https.push('#');
        https.push_str(f);
    }
    https
}

/// `path.Join("/", p)` without the leading `/`: `..` cannot climb above the
/// root, as in BuildKit.
fn clean_subdir(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// A URL query boolean as BuildKit reads it: Go's `strconv.ParseBool`, and
/// an empty value is true.
fn query_bool(value: &str) -> Option<bool> {
    if value.is_empty() {
        Some(true)
    } else {
        super::remote::parse_bool(value)
    }
}

impl GitSource {
    /// Parses an ADD source that [`crate::build`]'s classification calls git:
    /// `git://`, `http(s)://....git`, `ssh://` or `user@host:path`.
    pub fn parse(src: &str) -> Result<GitSource, GitSourceError> {
        let lower = src.to_ascii_lowercase();
        let scheme = lower.split_once("://").map(|(s, _)| s);
        let method = match scheme {
            Some("git") => None,
            Some("https") => Some("https"),
            Some("http") => Some("http"),
            Some("ssh") | None => {
                return Err(GitSourceError::Ssh {
                    url: remote::redact_userinfo(src),
                    https: https_for_ssh(src),
                });
            }
            Some(other) => {
                return Err(GitSourceError::Invalid {
                    url: remote::redact_userinfo(src),
                    reason: format!("unknown scheme {other}://; use https://, http:// or git://"),
                });
            }
        };
        let bad = |reason: String| GitSourceError::Invalid {
            url: remote::redact_userinfo(src),
            reason,
        };
        let rest = &src[src.find("://").map_or(0, |i| i + 3)..];
        let (location, fragment) = match rest.split_once('#') {
            Some((l, f)) => (l, f),
            None => (rest, ""),
        };
        let (location, query) = match location.split_once('?') {
            Some((l, q)) => (l, q),
            None => (location, ""),
        };
        let (authority, path) = location
            .split_once('/')
            .filter(|(a, p)| !a.is_empty() && !p.is_empty())
            .ok_or_else(|| {
                bad("name the host and the repository: https://host/org/repo.git".into())
            })?;
        if method.is_some() && !path.ends_with(".git") {
            return Err(bad("an http(s) git URL must end in .git".into()));
        }
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let scheme_name = scheme.unwrap_or("git");
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        let mut source = GitSource {
            display: format!("{scheme_name}://{host}/{path}"),
            plugin_url: String::new(),
            method,
            reference: (!reference.is_empty()).then(|| reference.to_owned()),
            subdir: Some(clean_subdir(subdir)).filter(|s| !s.is_empty()),
            keep_git_dir: None,
            checksum: None,
            submodules: true,
        };
        source.load_query(query).map_err(bad)?;
        if let Some(r) = &source.reference
            && !valid_ref(r)
        {
            return Err(bad(format!("{r:?} is not a valid ref name")));
        }
        source.plugin_url = format!("git://{authority}/{path}");
        if let Some(r) = &source.reference {
            source.plugin_url.push('#');
            source.plugin_url.push_str(r);
        }
        Ok(source)
    }

    /// BuildKit's query form: `ref`, `tag`, `branch`, `subdir`,
    /// `checksum`/`commit`, `keep-git-dir`, `submodules`.
    fn load_query(&mut self, query: &str) -> Result<(), String> {
        let (mut tag, mut branch) = (None, None);
        let mut seen = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = crate::cloud::uri_decode(value);
            if seen.contains(&key) {
                return Err(format!("query {key:?} has multiple values"));
            }
            seen.push(key);
            let flag = |v: &str| query_bool(v).ok_or_else(|| format!("invalid {key} value: {v:?}"));
            if value.is_empty() && !matches!(key, "keep-git-dir" | "submodules") {
                return Err(format!("query {key:?} has no value"));
            }
            match key {
                "ref" => set_once(&mut self.reference, value, "ref")?,
                "tag" => tag = Some(value),
                "branch" => branch = Some(value),
                "subdir" => {
                    let clean = clean_subdir(&value);
                    set_once(&mut self.subdir, clean, "subdir")?;
                }
                "checksum" | "commit" => self.checksum = Some(value),
                "keep-git-dir" => self.keep_git_dir = Some(flag(&value)?),
                "submodules" => self.submodules = flag(&value)?,
                "mtime" | "fetch-by-commit" => {
                    return Err(format!("kiln does not support the {key:?} query yet"));
                }
                other => return Err(format!("unexpected query {other:?}")),
            }
        }
        match (tag, branch) {
            (Some(_), Some(_)) => return Err("branch conflicts with tag".into()),
            (Some(t), None) => set_once(&mut self.reference, full_ref("refs/tags/", t), "ref")?,
            (None, Some(b)) => set_once(&mut self.reference, full_ref("refs/heads/", b), "ref")?,
            (None, None) => {}
        }
        Ok(())
    }

    /// The `--checksum` of the ADD merged with the URL's, as BuildKit does.
    pub fn merge_checksum(&mut self, flag: Option<&str>) -> Result<(), GitSourceError> {
        let bad = |reason: String| GitSourceError::Invalid {
            url: self.display.clone(),
            reason,
        };
        match (flag, &self.checksum) {
            (Some(f), Some(q)) if f != q => {
                return Err(bad(format!("checksum mismatch {f:?} != {q:?}")));
            }
            (Some(f), _) => self.checksum = Some(f.to_owned()),
            _ => {}
        }
        match &self.checksum {
            Some(c)
                if c.is_empty() || c.len() > 40 || !c.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Err(bad(format!(
                    "invalid checksum {c:?}: a git source's checksum is its commit id (hex)"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Git's ref-name rules (`git check-ref-format`), which also keep `#`
/// (the plugin's commit separator) out.
fn valid_ref(r: &str) -> bool {
    !r.starts_with('-')
        && !r.contains("..")
        && !r.contains("@{")
        && !r.ends_with('.')
        && !r.ends_with(".lock")
        && !r
            .chars()
            .any(|c| c.is_control() || " ~^:?*[\\#".contains(c))
}

fn set_once(slot: &mut Option<String>, value: String, what: &str) -> Result<(), String> {
    match slot {
        Some(old) if *old != value => Err(format!("{what} conflicts: {old:?} vs {value:?}")),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

fn full_ref(prefix: &str, name: String) -> String {
    if name.starts_with(prefix) {
        name
    } else {
        format!("{prefix}{name}")
    }
}

/// What ADD needs to fetch git sources: the loaded plugins and the store.
#[derive(Clone, Copy)]
pub struct GitFetcher<'a> {
    pub plugins: &'a [Plugin],
    pub rt: &'a Runtime,
    pub store: &'a Store,
}

/// A fetched git tree in a temporary directory of the store.
pub struct Fetched {
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fetched {
    /// The directory to add: the tree, or its subdirectory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
    }
}

/// Fetches `source` through the `git` plugin: credentials from the URL or
/// `GIT_TOKEN` / `GIT_USERNAME` / `GIT_PASSWORD` sign the requests on the
/// host, which only the repository's host may receive. With `keep_git_dir`
/// (and no subdirectory) the tree also holds a `.git` directory.
pub fn fetch_git(
    source: &GitSource,
    keep_git_dir: bool,
    fetcher: &GitFetcher<'_>,
) -> Result<Fetched, ContextError> {
    let method = source.method;
    let env = |k: &str| match (k, method) {
        ("GIT_PULL_METHOD", Some(m)) => Some(m.to_owned()),
        _ => std::env::var(k).ok(),
    };
    let now = super::remote::now_secs();
    let resolved =
        remote::resolve("git", &source.plugin_url, &[], &env, now)?.ok_or_else(|| {
            GitSourceError::NoPlugin {
                url: source.display.clone(),
            }
        })?;
    let plugin = plugin_for(fetcher.plugins, "git", &source.display)?;
    let mut options = resolved.options;
    options.push(kv(
        "recurse-submodules",
        if source.submodules { "true" } else { "false" },
    ));
    // BuildKit keeps `.git` only when the whole tree is added.
    if keep_git_dir && source.subdir.is_none() {
        options.push(kv("keep-git-dir", "true"));
    }
    if let Some(sum) = &source.checksum {
        options.push(kv("checksum", sum));
    }
    let scratch = fetcher.store.temp_dir("git-scratch-")?;
    let policy = Policy {
        net: resolved.net,
        scratch: Some(scratch.path().to_owned()),
        ..Policy::default()
    };
    log::info!("Fetching {}", resolved.url);
    let dir = match plugin.open_context(fetcher.rt, &resolved.url, &options, &policy)? {
        Opened::Tar(stream) => super::unpack_stream(stream, fetcher.store, &source.display)?,
        Opened::Directory(_) => {
            return Err(GitSourceError::NotAnArchive {
                url: source.display.clone(),
            }
            .into());
        }
    };
    drop(scratch);
    let root = match &source.subdir {
        None => dir.path().to_owned(),
        Some(sub) => super::checked_subdir(dir.path(), Path::new(sub), "the repository").map_err(
            |reason| GitSourceError::Subdir {
                url: source.display.clone(),
                subdir: sub.clone(),
                reason,
            },
        )?,
    };
    Ok(Fetched { root, _dir: dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> GitSource {
        GitSource::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    #[test]
    fn fragments_name_a_ref_and_a_subdirectory() {
        let s = parse("https://github.com/moby/buildkit.git#v0.13.0:docs/dev");
        assert_eq!(s.display, "https://github.com/moby/buildkit.git");
        assert_eq!(s.plugin_url, "git://github.com/moby/buildkit.git#v0.13.0");
        assert_eq!(s.method, Some("https"));
        assert_eq!(s.reference.as_deref(), Some("v0.13.0"));
        assert_eq!(s.subdir.as_deref(), Some("docs/dev"));
        assert!(s.submodules);
        let s = parse("http://127.0.0.1:8080/repo.git#main:sub");
        assert_eq!(s.method, Some("http"));
        assert_eq!(s.plugin_url, "git://127.0.0.1:8080/repo.git#main");
        assert_eq!(s.subdir.as_deref(), Some("sub"));
        let s = parse("git://127.0.0.1:9/r.git#refs/pull/1/head");
        assert_eq!(s.method, None);
        assert_eq!(s.reference.as_deref(), Some("refs/pull/1/head"));
        let s = parse("https://h/r.git#:only/sub");
        assert_eq!((s.reference, s.subdir.as_deref()), (None, Some("only/sub")));
        let s = parse("https://h/r.git");
        assert_eq!((s.reference, s.subdir), (None, None));
        // path.Join("/", subdir): `..` stops at the root.
        let s = parse("https://h/r.git#main:../../etc/./x/");
        assert_eq!(s.subdir.as_deref(), Some("etc/x"));
        let s = parse("https://h/r.git#main:/");
        assert_eq!(s.subdir, None);
    }

    #[test]
    fn credentials_reach_the_plugin_url_only() {
        let s = parse("https://user:s3cret@h.example/r.git#dev");
        assert_eq!(s.display, "https://h.example/r.git");
        assert_eq!(s.plugin_url, "git://user:s3cret@h.example/r.git#dev");
        let e = GitSource::parse("https://user:s3cret@h.example/r").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn queries_follow_buildkit() {
        let s = parse("https://h/r.git?ref=main&subdir=docs&keep-git-dir=true&submodules=false");
        assert_eq!(s.reference.as_deref(), Some("main"));
        assert_eq!(s.subdir.as_deref(), Some("docs"));
        assert_eq!(s.keep_git_dir, Some(true));
        assert!(!s.submodules);
        assert_eq!(
            parse("https://h/r.git?tag=v1").reference.as_deref(),
            Some("refs/tags/v1")
        );
        assert_eq!(
            parse("https://h/r.git?branch=refs/heads/dev")
                .reference
                .as_deref(),
            Some("refs/heads/dev")
        );
        assert_eq!(
            parse("https://h/r.git?keep-git-dir").keep_git_dir,
            Some(true)
        );
        assert_eq!(
            parse("https://h/r.git?commit=abc123").checksum.as_deref(),
            Some("abc123")
        );
        for (src, message) in [
            (
                "https://h/r.git?tag=a&branch=b",
                "branch conflicts with tag",
            ),
            ("https://h/r.git?ref=a&ref=b", "multiple values"),
            ("https://h/r.git?ref=", "has no value"),
            ("https://h/r.git#main?x", "not a valid ref name"),
            ("https://h/r.git#a..b", "not a valid ref name"),
            ("https://h/r.git?ref=dev#main", "ref conflicts"),
            (
                "https://h/r.git?keep-git-dir=maybe",
                "invalid keep-git-dir value",
            ),
            ("https://h/r.git?depth=1", "unexpected query \"depth\""),
            ("https://h/r.git?mtime=commit", "does not support"),
            ("https://h/r", "must end in .git"),
            ("https://h", "name the host and the repository"),
            ("git:///r.git", "name the host and the repository"),
            ("https://h/r.git#-x", "not a valid ref name"),
        ] {
            let e = GitSource::parse(src).unwrap_err().to_string();
            assert!(e.contains(message), "{src}: {e}");
        }
    }

    #[test]
    fn ssh_urls_are_refused_with_the_https_url() {
        for (src, https) in [
            (
                "git@github.com:moby/buildkit.git",
                "https://github.com/moby/buildkit.git",
            ),
            (
                "git@github.com:moby/buildkit.git#v1:docs",
                "https://github.com/moby/buildkit.git#v1:docs",
            ),
            (
                "ssh://git@example.com:2222/org/repo",
                "https://example.com/org/repo.git",
            ),
        ] {
            let e = GitSource::parse(src).unwrap_err();
            assert!(
                matches!(&e, GitSourceError::Ssh { https: h, .. } if h == https),
                "{src}: {e}"
            );
            let text = e.to_string();
            assert!(
                text.contains("no ssh transport") && text.contains(https),
                "{text}"
            );
        }
    }

    #[test]
    fn checksums_merge_with_the_url_and_must_be_hex() {
        let mut s = parse("https://h/r.git?checksum=abc");
        s.merge_checksum(None).unwrap();
        assert_eq!(s.checksum.as_deref(), Some("abc"));
        assert!(
            s.merge_checksum(Some("abd"))
                .unwrap_err()
                .to_string()
                .contains("checksum mismatch")
        );
        let mut s = parse("https://h/r.git");
        s.merge_checksum(Some("0123abcd")).unwrap();
        assert_eq!(s.checksum.as_deref(), Some("0123abcd"));
        let mut s = parse("https://h/r.git");
        let e = s.merge_checksum(Some("sha256:00")).unwrap_err().to_string();
        assert!(e.contains("commit id"), "{e}");
    }
}
