//! Image references (`[registry/]repository[:tag][@digest]`) with Docker's
//! normalisation rules, as in distribution's `reference` package.

use crate::digest::Digest;
use std::fmt;

/// The registry that short names such as `busybox` refer to.
pub const DOCKER_HUB: &str = "index.docker.io";

/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_LENGTH_MAX: usize = 128;

/// A fully normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with `:port` if any; Docker Hub is `index.docker.io`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when the input named neither tag nor digest.
    pub tag: Option<String>,
    /// Digest, when the input pinned one.
    pub digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {kind}")]
pub struct ReferenceError {
    /// The string as given.
    pub input: String,
    /// What is wrong with it.
    pub kind: ReferenceErrorKind,
}

/// The particular defect of an invalid reference.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceErrorKind {
    #[error("the reference is empty")]
    Empty,
    #[error("repository name must be lowercase")]
    Uppercase,
    #[error(
        "repository path component {0:?} is invalid: use lowercase letters and digits, separated by '.', '_', '__' or '-'"
    )]
    BadComponent(String),
    #[error("registry {0:?} is not a valid host[:port]")]
    BadRegistry(String),
    #[error(
        "tag {0:?} is invalid: use up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
    )]
    BadTag(String),
    #[error("digest {0:?} is invalid: expected sha256:<64 lowercase hex digits>")]
    BadDigest(String),
    #[error("repository name is longer than 255 characters")]
    TooLong,
    #[error("a 64-hex-digit string is an image ID, not a repository name")]
    ImageId,
}

impl Reference {
    /// Parses and normalises `s` (`busybox` becomes `index.docker.io/library/busybox:latest`).
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        parse(s).map_err(|kind| ReferenceError {
            input: s.to_owned(),
            kind,
        })
    }

    /// What to ask the registry for: the digest if pinned, else the tag, else `latest`.
    pub fn tag_or_digest(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The same image pinned to `d`, keeping the tag for display.
    pub fn with_digest(&self, d: &Digest) -> Reference {
        Reference {
            digest: Some(d.clone()),
            ..self.clone()
        }
    }

    /// `registry/repository`, for logs and digest files.
    pub fn repo_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The host[:port] that serves the registry API for this reference.
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }
}

/// The host[:port] that serves the registry API for `registry`.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(s)
    }
}

fn parse(s: &str) -> Result<Reference, ReferenceErrorKind> {
    if s.is_empty() {
        return Err(ReferenceErrorKind::Empty);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((name, d)) => {
            let digest = d
                .parse::<Digest>()
                .map_err(|_| ReferenceErrorKind::BadDigest(d.to_owned()))?;
            (name, Some(digest))
        }
        None => (s, None),
    };
    // A ':' after the last '/' starts a tag; one before it belongs to a port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if name.is_empty() {
        return Err(ReferenceErrorKind::Empty);
    }
    if let Some(t) = tag
        && !valid_tag(t)
    {
        return Err(ReferenceErrorKind::BadTag(t.to_owned()));
    }
    if digest.is_none()
        && tag.is_none()
        && name.len() == 64
        && name.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(ReferenceErrorKind::ImageId);
    }

    let (registry, path) = split_registry(name);
    if !valid_registry(registry) {
        return Err(ReferenceErrorKind::BadRegistry(registry.to_owned()));
    }
    if path.is_empty() {
        return Err(ReferenceErrorKind::Empty);
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceErrorKind::Uppercase);
    }
    if let Some(bad) = path.split('/').find(|c| !valid_component(c)) {
        return Err(ReferenceErrorKind::BadComponent(bad.to_owned()));
    }

    let registry = if registry == "docker.io" {
        DOCKER_HUB
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_owned()
    };
    // Docker limits the normalised name, with Docker Hub spelled `docker.io`, so
    // `busybox` and `index.docker.io/library/busybox` are limited alike and the
    // canonical form of every accepted reference is accepted too.
    let domain = if registry == DOCKER_HUB {
        "docker.io"
    } else {
        registry
    };
    if domain.len() + 1 + repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceErrorKind::TooLong);
    }
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_owned()),
        (None, Some(_)) => None,
        (None, None) => Some("latest".to_owned()),
    };
    Ok(Reference {
        registry: registry.to_owned(),
        repository,
        tag,
        digest,
    })
}

/// Docker's rule: the first component is a registry only if it looks like a
/// host (has '.' or ':', is `localhost`, or has uppercase, which a path
/// component never may).
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

/// Whether `r` is a valid `host[:port]` (or `[ipv6][:port]`).
pub(super) fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        let Some((ip6, after)) = rest.split_once(']') else {
            return false;
        };
        if ip6.is_empty() || !ip6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            a => ("", a.strip_prefix(':').unwrap_or("x")),
        }
    } else {
        match r.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (r, "0"),
        }
    };
    let port_ok = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let host_ok = r.starts_with('[')
        || (!host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            }));
    port_ok && host_ok
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
pub(super) fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    t.len() <= TAG_LENGTH_MAX
        && t.bytes().next().is_some_and(word)
        && t.bytes().all(|x| word(x) || x == b'.' || x == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn ok(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (
            r.registry,
            r.repository,
            r.tag,
            r.digest.map(|d| d.to_string()),
        )
    }

    fn kind(s: &str) -> ReferenceErrorKind {
        Reference::parse(s).expect_err(s).kind
    }

    fn t(
        r: &str,
        p: &str,
        tag: Option<&str>,
        d: Option<&str>,
    ) -> (String, String, Option<String>, Option<String>) {
        (r.into(), p.into(), tag.map(Into::into), d.map(Into::into))
    }

    #[test]
    fn docker_hub_short_names_are_normalised() {
        assert_eq!(
            ok("busybox"),
            t("index.docker.io", "library/busybox", Some("latest"), None)
        );
        assert_eq!(
            ok("busybox:1.36"),
            t("index.docker.io", "library/busybox", Some("1.36"), None)
        );
        assert_eq!(
            ok("user/app"),
            t("index.docker.io", "user/app", Some("latest"), None)
        );
        assert_eq!(
            ok("docker.io/busybox"),
            t("index.docker.io", "library/busybox", Some("latest"), None)
        );
        assert_eq!(
            ok("index.docker.io/library/busybox:x"),
            t("index.docker.io", "library/busybox", Some("x"), None)
        );
        assert_eq!(
            ok("docker.io/user/app"),
            t("index.docker.io", "user/app", Some("latest"), None)
        );
    }

    #[test]
    fn registries_ports_and_nested_paths() {
        assert_eq!(
            ok("gcr.io/p/a/b:v1"),
            t("gcr.io", "p/a/b", Some("v1"), None)
        );
        assert_eq!(
            ok("localhost/app"),
            t("localhost", "app", Some("latest"), None)
        );
        assert_eq!(
            ok("localhost:5000/app:1"),
            t("localhost:5000", "app", Some("1"), None)
        );
        assert_eq!(
            ok("127.0.0.1:5000/library/busybox"),
            t("127.0.0.1:5000", "library/busybox", Some("latest"), None)
        );
        assert_eq!(
            ok("[::1]:5000/app"),
            t("[::1]:5000", "app", Some("latest"), None)
        );
        assert_eq!(
            ok("Registry.Example.com/app"),
            t("Registry.Example.com", "app", Some("latest"), None)
        );
        assert_eq!(
            ok("my-reg.example.com/a.b_c__d---e/f"),
            t("my-reg.example.com", "a.b_c__d---e/f", Some("latest"), None)
        );
    }

    #[test]
    fn digests_with_and_without_tags() {
        let d = format!("sha256:{HEX}");
        assert_eq!(
            ok(&format!("busybox@{d}")),
            t("index.docker.io", "library/busybox", None, Some(&d))
        );
        assert_eq!(
            ok(&format!("reg:5000/a:v1@{d}")),
            t("reg:5000", "a", Some("v1"), Some(&d))
        );
        let r = Reference::parse(&format!("reg:5000/a:v1@{d}")).unwrap();
        assert_eq!(r.tag_or_digest(), d);
        assert_eq!(r.to_string(), format!("reg:5000/a:v1@{d}"));
    }

    #[test]
    fn display_tag_or_digest_and_helpers() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "index.docker.io/library/busybox:latest");
        assert_eq!(r.tag_or_digest(), "latest");
        assert_eq!(r.repo_name(), "index.docker.io/library/busybox");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        let pinned = r.with_digest(&d);
        assert_eq!(
            pinned.to_string(),
            format!("index.docker.io/library/busybox:latest@{d}")
        );
        assert_eq!(pinned.tag_or_digest(), d.to_string());
        assert_eq!(
            Reference::parse("localhost:5000/x").unwrap().api_host(),
            "localhost:5000"
        );
        let bare = Reference { tag: None, ..r };
        assert_eq!(bare.tag_or_digest(), "latest");
    }

    #[test]
    fn parse_of_display_is_identity() {
        let pinned = format!("localhost:5000/x@sha256:{HEX}");
        for s in ["busybox", "gcr.io/a/b:c", pinned.as_str()] {
            let r = Reference::parse(s).unwrap();
            assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        }
    }

    #[test]
    fn name_length_is_measured_after_normalisation() {
        // Found by the `reference` fuzz target: a 240-character short name was
        // accepted, but its canonical form `index.docker.io/library/...` was not.
        let longest = "a".repeat(255 - "docker.io/library/".len());
        let r = Reference::parse(&longest).unwrap();
        assert_eq!(r.repository, format!("library/{longest}"));
        assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        assert_eq!(kind(&format!("{longest}a")), ReferenceErrorKind::TooLong);
        assert_eq!(
            kind(&format!("index.docker.io/library/{longest}a:v1")),
            ReferenceErrorKind::TooLong
        );
        // The input is longer than 255, its normalised name is not.
        assert!(Reference::parse(&format!("index.docker.io/library/{longest}")).is_ok());
        let other = format!("x.io/{}", "b".repeat(250));
        assert!(Reference::parse(&other).is_ok());
        assert_eq!(kind(&format!("{other}b")), ReferenceErrorKind::TooLong);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(kind(""), ReferenceErrorKind::Empty);
        assert_eq!(kind(":tag"), ReferenceErrorKind::Empty);
        assert_eq!(kind("gcr.io/"), ReferenceErrorKind::Empty);
        assert_eq!(kind("Busybox"), ReferenceErrorKind::Uppercase);
        assert_eq!(kind("gcr.io/Proj/app"), ReferenceErrorKind::Uppercase);
        assert_eq!(kind("busybox:"), ReferenceErrorKind::BadTag(String::new()));
        assert_eq!(kind("busybox:-x"), ReferenceErrorKind::BadTag("-x".into()));
        assert_eq!(
            kind("busybox:a/b"),
            ReferenceErrorKind::BadRegistry("busybox:a".into())
        );
        assert_eq!(
            kind(&format!("busybox:{}", "a".repeat(129))),
            ReferenceErrorKind::BadTag("a".repeat(129))
        );
        assert!(Reference::parse(&format!("busybox:{}", "a".repeat(128))).is_ok());
        assert_eq!(
            kind("busybox@sha256:abc"),
            ReferenceErrorKind::BadDigest("sha256:abc".into())
        );
        assert_eq!(
            kind(&format!("busybox@sha512:{HEX}")),
            ReferenceErrorKind::BadDigest(format!("sha512:{HEX}"))
        );
        assert_eq!(
            kind("a//b"),
            ReferenceErrorKind::BadComponent(String::new())
        );
        assert_eq!(
            kind("a/b_-c"),
            ReferenceErrorKind::BadComponent("b_-c".into())
        );
        assert_eq!(
            kind("a/b___c"),
            ReferenceErrorKind::BadComponent("b___c".into())
        );
        assert_eq!(kind("a/-b"), ReferenceErrorKind::BadComponent("-b".into()));
        assert_eq!(kind("a/b."), ReferenceErrorKind::BadComponent("b.".into()));
        assert_eq!(
            kind("reg.io:port/app"),
            ReferenceErrorKind::BadRegistry("reg.io:port".into())
        );
        assert_eq!(
            kind("-reg.io/app"),
            ReferenceErrorKind::BadRegistry("-reg.io".into())
        );
        assert_eq!(
            kind("reg..io/app"),
            ReferenceErrorKind::BadRegistry("reg..io".into())
        );
        assert_eq!(
            kind("[::1/app"),
            ReferenceErrorKind::BadRegistry("[::1".into())
        );
        assert_eq!(
            kind(&format!("x.io/{}", "a".repeat(260))),
            ReferenceErrorKind::TooLong
        );
        assert_eq!(kind(HEX), ReferenceErrorKind::ImageId);
        let msg = Reference::parse("Busybox").unwrap_err().to_string();
        assert_eq!(
            msg,
            "invalid image reference \"Busybox\": repository name must be lowercase"
        );
    }
}
