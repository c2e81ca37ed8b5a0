//! Image paths: joining onto the working directory the way BuildKit does.

/// Go's `path.Clean`: lexical, `..` never climbs above `/`.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            name => parts.push(name),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// BuildKit's `NormalizePath` for Linux: a relative `path` is joined onto
/// `parent` and cleaned, an absolute one is kept as written. With
/// `keep_slash`, a trailing `/` (or `/.`) of `path` survives, since it tells
/// COPY that the destination is a directory.
pub fn normalize(parent: &str, path: &str, keep_slash: bool) -> String {
    let parent = if parent.starts_with('/') {
        parent.to_owned()
    } else {
        clean(&format!("/{parent}"))
    };
    let mut out = if path.is_empty() {
        parent.clone()
    } else {
        path.to_owned()
    };
    if !out.starts_with('/') {
        out = clean(&format!("{parent}/{out}"));
    }
    if keep_slash {
        if path.ends_with('/') && !out.ends_with('/') {
            out.push('/');
        } else if path.ends_with("/.") {
            if out != "/" {
                out.push('/');
            }
            out.push('.');
        }
    }
    out
}

/// Where COPY puts its files: `dest` resolved against the working directory
/// (`/` when none is set), trailing `/` kept.
pub fn copy_destination(workdir: Option<&str>, dest: &str) -> String {
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    normalize(workdir.unwrap_or("/"), dest, true)
}

/// The working directory after `WORKDIR path`.
pub fn workdir(current: Option<&str>, path: &str) -> String {
    normalize(current.unwrap_or("/"), path, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go() {
        assert_eq!(clean(""), ".");
        assert_eq!(clean("/"), "/");
        assert_eq!(clean("a/b/../c/"), "a/c");
        assert_eq!(clean("/../a//b/./"), "/a/b");
        assert_eq!(clean("../../a"), "../../a");
        assert_eq!(clean("a/.."), ".");
    }

    #[test]
    fn relative_paths_join_the_workdir() {
        assert_eq!(workdir(None, "app"), "/app");
        assert_eq!(workdir(Some("/app"), "src/../lib"), "/app/lib");
        assert_eq!(workdir(Some("/app"), ".."), "/");
        assert_eq!(workdir(Some("/app"), "../../.."), "/");
        assert_eq!(workdir(Some("rel"), "x"), "/rel/x");
    }

    #[test]
    fn absolute_paths_are_kept_as_written() {
        assert_eq!(workdir(Some("/app"), "/srv/"), "/srv/");
        assert_eq!(workdir(Some("/app"), "/srv/../x"), "/srv/../x");
    }

    #[test]
    fn empty_workdir_keeps_the_current_one() {
        assert_eq!(workdir(Some("/app"), ""), "/app");
        assert_eq!(workdir(None, ""), "/");
    }

    #[test]
    fn copy_destination_keeps_the_trailing_slash() {
        assert_eq!(copy_destination(None, "app/"), "/app/");
        assert_eq!(copy_destination(Some("/w"), "app/"), "/w/app/");
        assert_eq!(copy_destination(Some("/w"), "app"), "/w/app");
        assert_eq!(copy_destination(Some("/w"), "."), "/w/");
        assert_eq!(copy_destination(Some("/w"), ""), "/w/");
        assert_eq!(copy_destination(None, "."), "/");
        assert_eq!(copy_destination(Some("/w"), "a/."), "/w/a/.");
        assert_eq!(copy_destination(Some("/w"), "/abs/dir/"), "/abs/dir/");
        assert_eq!(copy_destination(Some("/w"), "../x/"), "/x/");
    }
}
