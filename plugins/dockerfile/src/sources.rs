//! What a COPY/ADD source is (context path, URL or git repository) and
//! `ADD --checksum` digests, decided as BuildKit decides them.

/// Where a COPY/ADD source comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A path or glob in the context (or in `--from`).
    Local,
    /// An `http://` or `https://` download.
    Http,
    /// A git repository.
    Git,
}

/// Classifies a source the way BuildKit's `ParseGitRef` and
/// `isHTTPSource` do: git URLs are `git://`, `ssh://`, `user@host:path`, or
/// `http(s)://` URLs whose path ends in `.git`; other `http(s)://` URLs
/// (scheme in lower case) are downloads; everything else, `github.com/...`
/// included, is a local path.
pub fn kind(source: &str) -> Kind {
    if is_git(source) {
        Kind::Git
    } else if source.starts_with("http://") || source.starts_with("https://") {
        Kind::Http
    } else {
        Kind::Local
    }
}

fn is_git(source: &str) -> bool {
    if source.starts_with("./") || source.starts_with("../") || source.starts_with("github.com/") {
        return false;
    }
    if let Some((scheme, rest)) = source.split_once("://")
        && !scheme.is_empty()
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return match scheme.to_ascii_lowercase().as_str() {
            "git" | "ssh" => true,
            "http" | "https" => url_path(rest).ends_with(".git"),
            _ => false,
        };
    }
    is_scp_style(source)
}

/// The path of `host/path?query#fragment`.
fn url_path(rest: &str) -> &str {
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    rest.find('/').map_or("", |slash| &rest[slash..])
}

/// `user@host:path`, BuildKit's implicit SSH transport.
fn is_scp_style(source: &str) -> bool {
    let Some((user, rest)) = source.split_once('@') else {
        return false;
    };
    let Some((host, _)) = rest.split_once(':') else {
        return false;
    };
    let user_ok = !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    user_ok && host_ok
}

/// Checks a digest the way go-digest's `Parse` does: `algorithm:hex` with
/// sha256, sha384 or sha512 and the right number of lower-case hex digits.
pub fn check_digest(digest: &str) -> Result<(), String> {
    const FORMAT: &str = "invalid checksum digest format";
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return Err(FORMAT.to_owned());
    };
    if algorithm.is_empty() || encoded.is_empty() {
        return Err(FORMAT.to_owned());
    }
    let size = match algorithm {
        "sha256" => 32,
        "sha384" => 48,
        "sha512" => 64,
        _ if is_digest_shaped(algorithm, encoded) => {
            return Err("unsupported digest algorithm".to_owned());
        }
        _ => return Err(FORMAT.to_owned()),
    };
    if encoded.len() != size * 2 {
        return Err("invalid checksum digest length".to_owned());
    }
    if !encoded
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(FORMAT.to_owned());
    }
    Ok(())
}

/// go-digest's `[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+`.
fn is_digest_shaped(algorithm: &str, encoded: &str) -> bool {
    let component = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    algorithm.split(['.', '+', '_', '-']).all(component)
        && !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_sources() {
        let cases = [
            ("src/app.py", Kind::Local),
            ("*.txt", Kind::Local),
            ("./x", Kind::Local),
            ("github.com/moby/buildkit", Kind::Local),
            ("s3://bucket/key", Kind::Local),
            ("HTTP://example.com/a.tar", Kind::Local),
            ("https://example.com/a.tar.gz", Kind::Http),
            ("http://example.com/", Kind::Http),
            ("https://example.com/x.git/raw?x=1", Kind::Http),
            ("https://github.com/moby/buildkit.git", Kind::Git),
            ("https://github.com/moby/buildkit.git#v0.1:docs", Kind::Git),
            ("https://github.com/moby/buildkit.git?ref=main", Kind::Git),
            ("git://example.com/repo", Kind::Git),
            ("ssh://git@example.com/repo", Kind::Git),
            ("GIT://example.com/repo", Kind::Git),
            ("git@github.com:moby/buildkit.git", Kind::Git),
            ("user@host:path", Kind::Git),
            ("a@b", Kind::Local),
            ("us er@host:path", Kind::Local),
        ];
        for (source, expected) in cases {
            assert_eq!(kind(source), expected, "{source}");
        }
    }

    #[test]
    fn digests_like_go_digest() {
        let hex64 = "a".repeat(64);
        assert_eq!(check_digest(&format!("sha256:{hex64}")), Ok(()));
        assert_eq!(check_digest(&format!("sha384:{}", "0".repeat(96))), Ok(()));
        assert_eq!(check_digest(&format!("sha512:{}", "f".repeat(128))), Ok(()));
        let err = |d: &str| check_digest(d).unwrap_err();
        assert_eq!(err("sha256"), "invalid checksum digest format");
        assert_eq!(err(":abc"), "invalid checksum digest format");
        assert_eq!(err("sha256:"), "invalid checksum digest format");
        assert_eq!(err("sha256:abc"), "invalid checksum digest length");
        assert_eq!(
            err(&format!("sha256:{}", "A".repeat(64))),
            "invalid checksum digest format"
        );
        assert_eq!(err("md5:abcd"), "unsupported digest algorithm");
        assert_eq!(err("MD5:abcd"), "invalid checksum digest format");
    }
}
