//! `.gitmodules`: where each submodule lives and where to fetch it from.

/// One `[submodule "name"]` section with a path and a URL.
#[derive(Debug, PartialEq, Eq)]
pub struct Submodule {
    /// Its path in the superproject, without leading `./` or trailing `/`.
    pub path: String,
    /// The URL as written (absolute or relative to the superproject's).
    pub url: String,
}

/// Parses the git-config text of `.gitmodules`; sections lacking a path or URL are skipped.
pub fn parse_gitmodules(text: &str) -> Vec<Submodule> {
    let mut modules = Vec::new();
    let mut current: Option<(Option<String>, Option<String>)> = None;
    let mut finish = |current: Option<(Option<String>, Option<String>)>| {
        if let Some((Some(path), Some(url))) = current {
            modules.push(Submodule { path, url });
        }
    };
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            finish(current.take());
            let section = section.split(']').next().unwrap_or("").trim();
            let is_submodule = section
                .split_once(char::is_whitespace)
                .is_some_and(|(name, _)| name.eq_ignore_ascii_case("submodule"));
            current = is_submodule.then_some((None, None));
            continue;
        }
        let Some((path, url)) = current.as_mut() else {
            continue;
        };
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let value = config_value(value);
        match key.trim().to_ascii_lowercase().as_str() {
            "path" => {
                let clean = value.trim_start_matches("./").trim_end_matches('/');
                *path = Some(clean.to_owned());
            }
            "url" => *url = Some(value),
            _ => {}
        }
    }
    finish(current);
    modules
}

/// A git-config value: quotes removed, escapes applied, a trailing comment dropped.
fn config_value(raw: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut chars = raw.trim().chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            },
            '#' | ';' if !quoted => break,
            c => out.push(c),
        }
    }
    out.trim_end().to_owned()
}

/// Resolves a submodule URL against the superproject's smart-HTTP URL, as
/// git does: `./x` is below it, each `../` climbs one path segment.
pub fn resolve_url(base: &str, url: &str) -> Result<String, String> {
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    if !url.starts_with("./") && !url.starts_with("../") {
        return Err(format!(
            "the submodule URL `{url}` is neither http(s) nor relative; kiln fetches \
             submodules over HTTP(S) only"
        ));
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut remote = base.trim_end_matches('/').to_owned();
    let mut rest = url;
    loop {
        if let Some(after) = rest.strip_prefix("./") {
            rest = after;
        } else if let Some(after) = rest.strip_prefix("../") {
            let cut = remote
                .rfind('/')
                .filter(|&i| i >= host_end)
                .ok_or_else(|| {
                    format!("the submodule URL `{url}` climbs above the host of {base}")
                })?;
            remote.truncate(cut);
            rest = after;
        } else {
            break;
        }
    }
    let rest = rest.trim_end_matches('/');
    Ok(if rest.is_empty() {
        remote
    } else {
        format!("{remote}/{rest}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitmodules_sections_yield_paths_and_urls() {
        let text = r#"
# generated
[submodule "lib"]
	path = ./vendor/lib/
	url = ../lib.git
[core]
	url = ignored
[Submodule "quoted"]
	PATH = "with space" ; comment
	url = "https://example.com/q.git" # another
[submodule "no-url"]
	path = nowhere
[submodule "escaped"]
	path = a\"b
	url = https://h/e.git
"#;
        assert_eq!(
            parse_gitmodules(text),
            [
                Submodule {
                    path: "vendor/lib".into(),
                    url: "../lib.git".into()
                },
                Submodule {
                    path: "with space".into(),
                    url: "https://example.com/q.git".into()
                },
                Submodule {
                    path: "a\"b".into(),
                    url: "https://h/e.git".into()
                },
            ]
        );
        assert!(parse_gitmodules("").is_empty());
    }

    #[test]
    fn relative_urls_resolve_like_git() {
        let base = "https://h:8080/org/repo.git";
        assert_eq!(
            resolve_url(base, "../lib.git").unwrap(),
            "https://h:8080/org/lib.git"
        );
        assert_eq!(
            resolve_url(base, "../../x/lib").unwrap(),
            "https://h:8080/x/lib"
        );
        assert_eq!(
            resolve_url(base, "./sub").unwrap(),
            "https://h:8080/org/repo.git/sub"
        );
        assert_eq!(
            resolve_url(base, ".././lib/").unwrap(),
            "https://h:8080/org/lib"
        );
        assert_eq!(
            resolve_url(base, "http://other/a.git/").unwrap(),
            "http://other/a.git"
        );
        let e = resolve_url(base, "../../../x").unwrap_err();
        assert!(e.contains("climbs above the host"), "{e}");
        for url in [
            "git@github.com:o/r.git",
            "ssh://h/r",
            "file:///r",
            "git://h/r",
        ] {
            let e = resolve_url(base, url).unwrap_err();
            assert!(e.contains("HTTP(S) only"), "{url}: {e}");
        }
    }
}
