//! What a `git://` context URL and its `--git` options ask for.

use kiln_plugin_sdk::{KeyValue, PluginError};

use crate::object::ObjectId;

/// Option keys the host may pass, for error messages.
const KNOWN_OPTIONS: &str =
    "pull-method, branch, single-branch, recurse-submodules, keep-git-dir, checksum";

/// A parsed `git://host[:port]/path[#ref[#commit]]` URL plus options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The URL as the user wrote it (without credentials), for messages.
    pub display: String,
    /// The repository's smart-HTTP base URL, e.g. `https://host/org/repo.git`.
    pub repo_url: String,
    /// What to check out.
    pub target: Target,
    /// Whether to fetch and emit submodules.
    pub recurse_submodules: bool,
    /// Whether the archive also carries a `.git` directory (ADD --keep-git-dir).
    pub keep_git_dir: bool,
    /// A commit (or annotated tag) id prefix, lowercase, that the target must resolve to.
    pub checksum: Option<String>,
}

/// The revision a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The remote's `HEAD`.
    Head,
    /// A branch, tag or full ref name.
    Ref(String),
    /// A full commit id.
    Commit(ObjectId),
    /// `#ref#commit`: a commit that the ref must exist for.
    RefCommit(String, ObjectId),
}

impl Request {
    /// Parses `url` and the host-set `options`.
    pub fn parse(url: &str, options: &[KeyValue]) -> Result<Self, PluginError> {
        let hint = "write --context=git://host/org/repo.git[#branch-tag-or-ref[#commit]]";
        let parsed = parse_url(url).map_err(|m| PluginError::new(m).with_hint(hint))?;
        let mut scheme = "https";
        let mut branch = None;
        let mut recurse_submodules = false;
        let mut keep_git_dir = false;
        let mut checksum = None;
        for option in options {
            let value = option.value.as_str();
            match option.key.as_str() {
                "pull-method" => {
                    scheme = match value {
                        "https" | "" => "https",
                        "http" => "http",
                        other => {
                            return Err(PluginError::new(format!(
                                "{url}: unknown git pull method `{other}`"
                            ))
                            .with_hint("set GIT_PULL_METHOD to https (the default) or http"));
                        }
                    }
                }
                "branch" => {
                    if value.is_empty() {
                        return Err(PluginError::new(format!("{url}: --git branch= is empty"))
                            .with_hint("name a branch, tag or ref, e.g. --git branch=main"));
                    }
                    branch = Some(value.to_owned());
                }
                // Only the needed commit is ever fetched, so a single branch is all there is.
                "single-branch" => {
                    parse_bool(url, "single-branch", value)?;
                }
                "recurse-submodules" => {
                    recurse_submodules = parse_bool(url, "recurse-submodules", value)?;
                }
                "keep-git-dir" => {
                    keep_git_dir = parse_bool(url, "keep-git-dir", value)?;
                }
                "checksum" => {
                    if value.is_empty()
                        || value.len() > 40
                        || !value.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        return Err(PluginError::new(format!(
                            "{url}: checksum `{value}` is not a commit id"
                        ))
                        .with_hint("give the commit id (or a prefix of it) in hex"));
                    }
                    checksum = Some(value.to_ascii_lowercase());
                }
                other => {
                    return Err(PluginError::new(format!(
                        "{url}: unknown git option `{other}`; known options: {KNOWN_OPTIONS}"
                    ))
                    .with_hint("check the --git flag"));
                }
            }
        }
        let target = match (branch.or(parsed.reference), parsed.commit) {
            (None, None) => Target::Head,
            (None, Some(commit)) => Target::Commit(commit),
            (Some(name), None) => match ObjectId::from_hex(&name) {
                Some(id) => Target::Commit(id),
                None => Target::Ref(name),
            },
            (Some(name), Some(commit)) => Target::RefCommit(name, commit),
        };
        Ok(Request {
            display: url.to_owned(),
            repo_url: format!("{scheme}://{}", parsed.location),
            target,
            recurse_submodules,
            keep_git_dir,
            checksum,
        })
    }
}

/// Kaniko's booleans (Go's `strconv.ParseBool`).
fn parse_bool(url: &str, key: &str, value: &str) -> Result<bool, PluginError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(
            PluginError::new(format!("{url}: --git {key}={other} is not a boolean"))
                .with_hint(format!("write --git {key}=true or --git {key}=false")),
        ),
    }
}

/// The parts of a `git://` URL.
#[derive(Debug, PartialEq, Eq)]
struct ParsedUrl {
    /// `host[:port]/path`, without a trailing slash.
    location: String,
    reference: Option<String>,
    commit: Option<ObjectId>,
}

fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let rest = url
        .strip_prefix("git://")
        .ok_or_else(|| format!("`{url}` is not a git:// URL"))?;
    let (location, fragment) = match rest.split_once('#') {
        Some((location, fragment)) => (location, Some(fragment)),
        None => (rest, None),
    };
    let (host, path) = location
        .split_once('/')
        .ok_or_else(|| format!("`{url}` names no repository path after the host"))?;
    if host.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    if host.contains('@') {
        return Err("the git URL still carries credentials".to_owned());
    }
    if location.contains(['?', ' ', '\0']) {
        return Err(format!(
            "`{}` contains a query or a space",
            url.escape_debug()
        ));
    }
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return Err(format!("`{url}` names no repository path after the host"));
    }
    let (reference, commit) = match fragment {
        None => (None, None),
        Some(fragment) => {
            let (reference, commit) = match fragment.split_once('#') {
                Some((reference, commit)) => (reference, Some(commit)),
                None => (fragment, None),
            };
            if reference.is_empty() {
                return Err(format!("`{url}` has an empty ref after `#`"));
            }
            let commit = match commit {
                None => None,
                Some(hex) => Some(ObjectId::from_hex(hex).ok_or_else(|| {
                    format!("`{url}`: `{hex}` after the second `#` is not a full 40-hex commit id")
                })?),
            };
            (Some(reference.to_owned()), commit)
        }
    };
    Ok(ParsedUrl {
        location: format!("{host}/{path}"),
        reference,
        commit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef01234567";

    fn id() -> ObjectId {
        ObjectId::from_hex(ID).unwrap()
    }

    fn request(url: &str, options: &[(&str, &str)]) -> Result<Request, PluginError> {
        let options: Vec<KeyValue> = options.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect();
        Request::parse(url, &options)
    }

    fn target(url: &str) -> Target {
        request(url, &[]).unwrap().target
    }

    #[test]
    fn repository_urls_default_to_https_and_head() {
        let r = request("git://github.com/org/repo.git", &[]).unwrap();
        assert_eq!(r.repo_url, "https://github.com/org/repo.git");
        assert_eq!(r.target, Target::Head);
        assert!(!r.recurse_submodules);
        let r = request("git://127.0.0.1:8080/repo/", &[("pull-method", "http")]).unwrap();
        assert_eq!(r.repo_url, "http://127.0.0.1:8080/repo");
    }

    #[test]
    fn fragments_name_branches_tags_refs_and_commits() {
        assert_eq!(target("git://h/r.git#main"), Target::Ref("main".into()));
        assert_eq!(target("git://h/r.git#v1.0"), Target::Ref("v1.0".into()));
        assert_eq!(
            target("git://h/r.git#refs/pull/12/head"),
            Target::Ref("refs/pull/12/head".into())
        );
        assert_eq!(target(&format!("git://h/r.git#{ID}")), Target::Commit(id()));
        assert_eq!(
            target(&format!("git://h/r.git#{}", ID.to_uppercase())),
            Target::Commit(id())
        );
        assert_eq!(
            target(&format!("git://h/r.git#dev#{ID}")),
            Target::RefCommit("dev".into(), id())
        );
        // An abbreviated id is a ref name; resolving it fails later with the refs that exist.
        assert_eq!(
            target("git://h/r.git#0123abc"),
            Target::Ref("0123abc".into())
        );
    }

    #[test]
    fn the_branch_option_overrides_the_url_ref() {
        let r = request("git://h/r.git#main", &[("branch", "dev")]).unwrap();
        assert_eq!(r.target, Target::Ref("dev".into()));
        let r = request(&format!("git://h/r.git#main#{ID}"), &[("branch", "dev")]).unwrap();
        assert_eq!(r.target, Target::RefCommit("dev".into(), id()));
        let r = request("git://h/r.git", &[("branch", ID)]).unwrap();
        assert_eq!(r.target, Target::Commit(id()));
    }

    #[test]
    fn boolean_options_take_go_spellings() {
        let r = request(
            "git://h/r.git",
            &[("recurse-submodules", "True"), ("single-branch", "false")],
        )
        .unwrap();
        assert!(r.recurse_submodules);
        let e = request("git://h/r.git", &[("recurse-submodules", "yes")]).unwrap_err();
        assert!(
            e.message
                .contains("recurse-submodules=yes is not a boolean"),
            "{e:?}"
        );
    }

    #[test]
    fn keep_git_dir_and_checksums_are_options() {
        let r = request("git://h/r.git#v1", &[]).unwrap();
        assert!(!r.keep_git_dir);
        assert_eq!(r.checksum, None);
        let r = request(
            "git://h/r.git#v1",
            &[("keep-git-dir", "true"), ("checksum", "ABC123")],
        )
        .unwrap();
        assert!(r.keep_git_dir);
        assert_eq!(r.checksum.as_deref(), Some("abc123"));
        for bad in ["", "xyz", &"a".repeat(41)] {
            let e = request("git://h/r.git", &[("checksum", bad)]).unwrap_err();
            assert!(e.message.contains("is not a commit id"), "{e:?}");
        }
        let e = request("git://h/r.git", &[("keep-git-dir", "y")]).unwrap_err();
        assert!(
            e.message.contains("keep-git-dir=y is not a boolean"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_options_and_methods_are_named() {
        let e = request("git://h/r.git", &[("depth", "1")]).unwrap_err();
        assert!(e.message.contains("unknown git option `depth`"), "{e:?}");
        assert!(e.message.contains("recurse-submodules"), "{e:?}");
        let e = request("git://h/r.git", &[("pull-method", "ssh")]).unwrap_err();
        assert!(e.message.contains("unknown git pull method `ssh`"), "{e:?}");
        assert!(e.hint.unwrap().contains("GIT_PULL_METHOD"));
        let e = request("git://h/r.git", &[("branch", "")]).unwrap_err();
        assert!(e.message.contains("branch= is empty"), "{e:?}");
    }

    #[test]
    fn malformed_urls_are_refused() {
        for (url, message) in [
            ("https://h/r.git", "is not a git:// URL"),
            ("git://h", "names no repository path"),
            ("git://h/", "names no repository path"),
            ("git:///r.git", "names no host"),
            ("git://h/r.git#", "empty ref"),
            ("git://h/r.git##0123", "empty ref"),
            ("git://h/r.git#main#abc", "not a full 40-hex commit id"),
            (
                &format!("git://h/r.git#a#{ID}#b"),
                "not a full 40-hex commit id",
            ),
            ("git://h/r.git?x=1", "query or a space"),
        ] {
            let e = request(url, &[]).unwrap_err();
            assert!(e.message.contains(message), "{url}: {e:?}");
            assert!(e.hint.is_some());
        }
        let e = request("git://user:secret@h/r.git", &[]).unwrap_err();
        assert!(!e.message.contains("secret"), "{e:?}");
    }
}
