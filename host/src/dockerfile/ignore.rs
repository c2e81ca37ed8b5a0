//! `.dockerignore` rules as BuildKit applies them when it sends a build context:
//! `moby/patternmatcher` patterns, evaluated directory by directory the way
//! `tonistiigi/fsutil` walks a context (each path reuses its parent's results).

/// A `.dockerignore` pattern Docker would reject.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error(".dockerignore line {line}: invalid pattern {pattern:?}: {reason}")]
pub struct IgnoreError {
    /// 1-based line of the pattern.
    pub line: u32,
    /// The pattern after cleaning.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parsed `.dockerignore` patterns.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<Pattern>,
    exceptions: bool,
    errors: Vec<IgnoreError>,
}

#[derive(Debug, Clone)]
struct Pattern {
    exclusion: bool,
    kind: Kind,
}

/// patternmatcher's match strategies.
#[derive(Debug, Clone)]
enum Kind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(Vec<Tok>),
    /// A pattern Docker rejects; it matches nothing and is listed in `errors`.
    Invalid,
}

/// One element of the regular expression patternmatcher builds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `[^/]*`
    NotSlashRun,
    /// `[^/]`
    NotSlash,
    /// `(.*/)?`
    Dirs,
    /// `.*`
    Any,
    /// `^` outside a class: only matches at the start.
    Start,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Ignore {
    /// Parses `.dockerignore` text. Invalid patterns match nothing and are listed by `errors`.
    pub fn parse(text: &str) -> Ignore {
        let mut ignore = Ignore::default();
        for (index, raw) in text.split('\n').enumerate() {
            let line = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let raw = if index == 0 {
                raw.strip_prefix('\u{FEFF}').unwrap_or(raw)
            } else {
                raw
            };
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            // Only a `#` in the first column starts a comment.
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            if pattern.is_empty() {
                continue;
            }
            let invert = pattern.starts_with('!');
            if invert {
                pattern = pattern[1..].trim();
            }
            let mut cleaned = String::new();
            if !pattern.is_empty() {
                cleaned = clean(pattern);
                if cleaned.len() > 1 && cleaned.starts_with('/') {
                    cleaned.remove(0);
                }
            }
            if invert {
                cleaned.insert(0, '!');
            }
            // patternmatcher trims and cleans once more, so "/ x" ends up as "x".
            let full = cleaned.trim();
            if !full.is_empty() {
                ignore.add(line, clean(full));
            }
        }
        ignore
    }

    fn add(&mut self, line: u32, full: String) {
        let (exclusion, body) = match full.strip_prefix('!') {
            Some(body) => (true, body),
            None => (false, full.as_str()),
        };
        let kind = if exclusion && body.is_empty() {
            Err("illegal exclusion pattern: \"!\": name what to re-include after the !".into())
        } else {
            compile(body)
        };
        let kind = kind.unwrap_or_else(|reason| {
            self.errors.push(IgnoreError {
                line,
                pattern: full.clone(),
                reason,
            });
            Kind::Invalid
        });
        self.exceptions |= exclusion;
        self.patterns.push(Pattern { exclusion, kind });
    }

    /// Patterns Docker would reject; a build should fail when there are any.
    pub fn errors(&self) -> &[IgnoreError] {
        &self.errors
    }

    /// Whether any pattern re-includes paths with `!`.
    pub fn has_exceptions(&self) -> bool {
        self.exceptions
    }

    /// Whether `rel_path` (slash-separated, relative to the context root) is left out.
    /// An ignored directory may still have re-included entries below it.
    pub fn is_ignored(&self, rel_path: &str) -> bool {
        let path = clean(rel_path.trim_start_matches('/'));
        if path == "." || path == "/" || self.patterns.is_empty() {
            return false;
        }
        let mut parent: Option<Vec<bool>> = None;
        let mut matched = false;
        for (end, _) in path
            .match_indices('/')
            .chain(std::iter::once((path.len(), "")))
        {
            let (m, info) = self.matches_with_parent(&path[..end], parent.as_deref());
            matched = m;
            parent = Some(info);
        }
        matched
    }

    /// patternmatcher's `MatchesUsingParentResults`: a pattern that matched the
    /// parent directory matches the child; patterns skipped for the parent are not
    /// carried over.
    fn matches_with_parent(&self, path: &str, parent: Option<&[bool]>) -> (bool, Vec<bool>) {
        let mut matched = false;
        let mut info = vec![false; self.patterns.len()];
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut m = parent.is_some_and(|p| p[i]);
            if !m {
                if pattern.exclusion != matched {
                    continue;
                }
                m = pattern.matches(path);
                if !m && parent.is_none() {
                    m = path
                        .match_indices('/')
                        .any(|(end, _)| pattern.matches(&path[..end]));
                }
            }
            info[i] = m;
            if m {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact(p) => path == p,
            Kind::Prefix(p) => path.starts_with(p.as_str()),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Kind::Regex(toks) => full_match(toks, &path.chars().collect::<Vec<_>>()),
            Kind::Invalid => false,
        }
    }
}

/// Go's `path.Clean`.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Turns a cleaned pattern into patternmatcher's match strategy.
fn compile(pattern: &str) -> Result<Kind, String> {
    #[derive(PartialEq)]
    enum Type {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut chars = pattern.chars().peekable();
    // Go's text/scanner skips a leading byte-order mark.
    chars.next_if_eq(&'\u{FEFF}');
    let mut toks = Vec::new();
    let mut kind = Type::Exact;
    let mut first = true;
    while let Some(ch) = chars.next() {
        match ch {
            '*' if chars.next_if_eq(&'*').is_some() => {
                chars.next_if_eq(&'/');
                if chars.peek().is_none() {
                    if kind == Type::Exact {
                        kind = Type::Prefix;
                    } else {
                        toks.push(Tok::Any);
                        kind = Type::Regex;
                    }
                } else {
                    toks.push(Tok::Dirs);
                    kind = Type::Regex;
                }
                if first {
                    kind = Type::Suffix;
                }
            }
            '*' => {
                toks.push(Tok::NotSlashRun);
                kind = Type::Regex;
            }
            '?' => {
                toks.push(Tok::NotSlash);
                kind = Type::Regex;
            }
            '\\' => {
                let escaped = chars.next().ok_or("a trailing \\ escapes nothing")?;
                toks.push(Tok::Lit(escaped_literal(escaped)?));
                kind = Type::Regex;
            }
            '[' => {
                toks.push(class(&mut chars)?);
                kind = Type::Regex;
            }
            ']' => {
                toks.push(Tok::Lit(']'));
                kind = Type::Regex;
            }
            '^' => toks.push(Tok::Start),
            c => toks.push(Tok::Lit(c)),
        }
        first = false;
    }
    Ok(match kind {
        Type::Exact => Kind::Exact(pattern.to_owned()),
        Type::Prefix => Kind::Prefix(pattern[..pattern.len() - 2].to_owned()),
        // Go slices bytes here; after a leading byte-order mark that suffix is not
        // valid text and matches no path, which the exact pattern reproduces.
        Type::Suffix => match pattern.get(2..) {
            Some(suffix) => Kind::Suffix(suffix.to_owned()),
            None => Kind::Exact(pattern.to_owned()),
        },
        Type::Regex => Kind::Regex(toks),
    })
}

/// The character a `\x` escape stands for in Go's regexp, where only ASCII
/// punctuation escapes to itself.
fn escaped_literal(c: char) -> Result<char, String> {
    if c.is_ascii() && !c.is_ascii_alphanumeric() {
        Ok(c)
    } else {
        Err(format!(
            "the escape \\{c} is not supported: escape only punctuation"
        ))
    }
}

/// Parses a `[...]` class after its `[` with `filepath.Match` rules.
fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Tok, String> {
    const UNCLOSED: &str = "a [ class is not closed: escape a literal [ as \\[";
    let negated = chars.next_if_eq(&'^').is_some();
    let mut ranges = Vec::new();
    let item = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Result<char, String> {
        match chars.next() {
            None => Err(UNCLOSED.into()),
            Some('-' | ']') => Err("a class item cannot start with - or ]".into()),
            Some('\\') => escaped_literal(chars.next().ok_or(UNCLOSED)?),
            Some('*' | '?') => Err(
                "* and ? inside [ ] are not supported: Docker turns them into nested classes"
                    .into(),
            ),
            Some('[') if chars.peek() == Some(&':') => {
                Err("POSIX classes like [:alpha:] are not supported".into())
            }
            Some(c) => Ok(c),
        }
    };
    loop {
        if !ranges.is_empty() && chars.next_if_eq(&']').is_some() {
            return Ok(Tok::Class { negated, ranges });
        }
        let lo = item(chars)?;
        let hi = if chars.next_if_eq(&'-').is_some() {
            item(chars)?
        } else {
            lo
        };
        if hi < lo {
            return Err(format!("the class range {lo}-{hi} is reversed"));
        }
        ranges.push((lo, hi));
    }
}

/// Whether `toks` match all of `s` (Go's `.` stops at a newline). Computed token
/// by token from the end: `next[pos]` says whether the remaining tokens match `s[pos..]`.
fn full_match(toks: &[Tok], s: &[char]) -> bool {
    let n = s.len();
    let mut next: Vec<bool> = (0..=n).map(|pos| pos == n).collect();
    for tok in toks.iter().rev() {
        let mut cur = vec![false; n + 1];
        let one = |ok: &dyn Fn(char) -> bool, cur: &mut Vec<bool>| {
            for pos in 0..n {
                cur[pos] = ok(s[pos]) && next[pos + 1];
            }
        };
        match tok {
            Tok::Lit(c) => one(&|x| x == *c, &mut cur),
            Tok::NotSlash => one(&|x| x != '/', &mut cur),
            Tok::Class { negated, ranges } => one(
                &|x| ranges.iter().any(|&(lo, hi)| lo <= x && x <= hi) != *negated,
                &mut cur,
            ),
            Tok::Start => cur[0] = next[0],
            Tok::NotSlashRun | Tok::Any => {
                let stop = if *tok == Tok::Any { '\n' } else { '/' };
                for pos in (0..=n).rev() {
                    cur[pos] = next[pos] || (pos < n && s[pos] != stop && cur[pos + 1]);
                }
            }
            Tok::Dirs => {
                // `ends_dir[pos]`: some newline-free run from `pos` ends with '/'
                // where the remaining tokens match.
                let mut ends_dir = false;
                for pos in (0..=n).rev() {
                    if pos < n {
                        ends_dir = s[pos] != '\n' && ((s[pos] == '/' && next[pos + 1]) || ends_dir);
                    }
                    cur[pos] = next[pos] || (pos < n && ends_dir);
                }
            }
        }
        next = cur;
    }
    next[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(rules: &str, ignored: &[&str], kept: &[&str]) {
        let ig = Ignore::parse(rules);
        assert_eq!(ig.errors(), [], "{rules:?}");
        for p in ignored {
            assert!(ig.is_ignored(p), "{rules:?} should ignore {p:?}");
        }
        for p in kept {
            assert!(!ig.is_ignored(p), "{rules:?} should keep {p:?}");
        }
    }

    #[test]
    fn literal_patterns_and_directories() {
        check(
            "node_modules\n",
            &["node_modules", "node_modules/a/b"],
            &["a/node_modules", "node_modules2"],
        );
        check(
            "/build/\n./dist\n",
            &["build", "build/x", "dist/y"],
            &["src/build"],
        );
        check("a/../b\n", &["b", "b/c"], &["a"]);
    }

    #[test]
    fn comments_blank_lines_and_whitespace() {
        check(
            "# comment\n\n  *.log  \r\n",
            &["x.log"],
            &["# comment", "a/x.log"],
        );
        // Only a # in the first column starts a comment.
        check(" #x\n", &["#x"], &[]);
        check("\u{FEFF}a\n", &["a"], &[]);
    }

    #[test]
    fn single_stars_stay_in_one_directory() {
        check("*.md\n", &["README.md", "x.md/y"], &["docs/a.md"]);
        check("*/*.md\n", &["docs/a.md"], &["a.md", "a/b/c.md"]);
        check("a?c\n", &["abc"], &["a/c", "ac"]);
    }

    #[test]
    fn double_stars_cross_directories() {
        check("**/*.go\n", &["a.go", "x/y/z.go"], &["a.goo"]);
        check(
            "**/vendor\n",
            &["vendor", "a/b/vendor", "a/vendor/x"],
            &["vendorx"],
        );
        check("docs/**\n", &["docs/a", "docs/a/b"], &["docs", "docsx"]);
        check("a/**/b\n", &["a/b", "a/x/y/b", "a/x/b/c"], &["a/xb"]);
        check("**\n", &["anything", "a/b"], &[]);
        check("foo**\n", &["foo", "foobar/x"], &["fo"]);
    }

    #[test]
    fn exceptions_last_match_wins() {
        let ig = Ignore::parse("*.md\n!README.md\n");
        assert!(ig.has_exceptions());
        check("*.md\n!README.md\n", &["a.md"], &["README.md"]);
        check("*\n!src\n", &["x", "docs/y"], &["src", "src/a/b"]);
        check("*\n!src\nsrc/*.tmp\n", &["src/a.tmp"], &["src/a.rs"]);
        check(
            "docs\n!docs/keep.md\n",
            &["docs", "docs/a.md"],
            &["docs/keep.md"],
        );
        assert!(!Ignore::parse("*.md\n").has_exceptions());
    }

    #[test]
    fn parent_results_are_carried_like_fsutil() {
        // The third pattern is skipped for "a" (already ignored), so "a/b" stays
        // re-included although "a" matches it again.
        check("a\n!a/b\na\n", &["a", "a/c"], &["a/b", "a/b/c"]);
    }

    #[test]
    fn escapes_classes_and_specials() {
        check("\\*.txt\n", &["*.txt"], &["a.txt"]);
        check(
            "file[0-9].txt\n",
            &["file1.txt"],
            &["filea.txt", "file10.txt"],
        );
        check("x[^a]b\n", &["xcb", "x/b"], &["xab"]);
        check("a.b+(c)\n", &["a.b+(c)"], &["axb+(c)"]);
        check("x]y\n", &["x]y"], &[]);
        // `^` is literal in an exact pattern but anchors in a regular one.
        check("a^b\n", &["a^b"], &[]);
        check("a^b*\n", &[], &["a^b", "a^bc"]);
    }

    #[test]
    fn invalid_patterns_are_reported() {
        for bad in [
            "!\n", "[abc\n", "a\\\n", "[]a]\n", "[z-a]\n", "\\d\n", "[*]\n", "! \n",
        ] {
            let ig = Ignore::parse(bad);
            assert_eq!(ig.errors().len(), 1, "{bad:?}");
            assert_eq!(ig.errors()[0].line, 1);
        }
        let ig = Ignore::parse("ok\n[x\n");
        assert_eq!(
            ig.errors()[0].to_string(),
            ".dockerignore line 2: invalid pattern \"[x\": a [ class is not closed: escape a literal [ as \\["
        );
        assert!(ig.is_ignored("ok"));
    }

    #[test]
    fn root_is_never_ignored() {
        check("*\n", &["a"], &["", ".", "/", "./"]);
    }

    #[test]
    fn clean_matches_go() {
        for (i, o) in [
            ("", "."),
            ("a//b/", "a/b"),
            ("./a/./b", "a/b"),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("a/../..", ".."),
            ("/", "/"),
        ] {
            assert_eq!(clean(i), o, "{i:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(rules in "[a-c*?!/\\[\\]^\\\\.# \n-]{0,30}", path in "[a-c/.*]{0,12}") {
            let ig = Ignore::parse(&rules);
            let _ = ig.is_ignored(&path);
        }
    }
}
