//! How BuildKit's parser cuts an instruction's text into words, before any
//! expansion (which the host does), and the rewriting of words that lets the
//! host's expansion stand in for BuildKit's special cases.

/// BuildKit always lexes heredoc markers with `\` as the escape.
const HEREDOC_ESCAPE: char = '\\';

/// Whitespace as BuildKit's `[\t\v\f\r ]+` splits it.
fn is_blank(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Splits on runs of blanks, ignoring quotes (`COPY`, `EXPOSE`, `FROM`,
/// `VOLUME` in shell form).
pub fn split_blanks(text: &str) -> Vec<String> {
    text.split(is_blank)
        .filter(|word| !word.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Splits on whitespace outside quotes, keeping the quotes and escapes in the
/// words for the expansion to remove (`ENV`, `LABEL`, `ARG`).
pub fn split_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // True once the word has a quote: `""` is an (empty) word.
    let mut nonempty = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if nonempty || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                nonempty = false;
            }
            None => {
                if c == '\'' || c == '"' {
                    quote = Some(c);
                    nonempty = true;
                }
                word.push(c);
                if c == escape {
                    match chars.next() {
                        Some(next) => word.push(next),
                        // A trailing escape is dropped.
                        None => {
                            word.pop();
                        }
                    }
                }
            }
            Some(q) => {
                if c == q {
                    quote = None;
                }
                word.push(c);
                if c == escape && q != '\'' {
                    match chars.next() {
                        Some(next) => word.push(next),
                        None => {
                            word.pop();
                        }
                    }
                }
            }
        }
    }
    if nonempty || !word.is_empty() {
        words.push(word);
    }
    words
}

/// A `key=value` pair as written, before expansion.
#[derive(Debug, PartialEq, Eq)]
pub struct RawPair {
    /// The key as written.
    pub key: String,
    /// The value as written (quotes included).
    pub value: String,
}

/// Parses `ENV`/`LABEL` arguments: `key=value ...`, or the legacy `key value`
/// form (the first word has no `=`) where the value is the rest of the line.
pub fn name_values(keyword: &str, text: &str, escape: char) -> Result<Vec<RawPair>, String> {
    let words = split_words(text, escape);
    let Some(first) = words.first() else {
        return Err(format!("{keyword} requires at least one argument"));
    };
    if !first.contains('=') {
        let text = text.trim_matches(is_blank);
        let Some(at) = text.find(is_blank) else {
            return Err(format!("{keyword} must have two arguments"));
        };
        return Ok(vec![RawPair {
            key: text[..at].to_owned(),
            value: text[at..].trim_start_matches(is_blank).to_owned(),
        }]);
    }
    words
        .into_iter()
        .map(|word| {
            let Some((key, value)) = word.split_once('=') else {
                return Err(format!(
                    "syntax error - can't find = in {word:?}. Must be of the form: name=value"
                ));
            };
            if key.is_empty() {
                return Err(format!("{keyword} names can not be blank"));
            }
            Ok(RawPair {
                key: key.to_owned(),
                value: value.to_owned(),
            })
        })
        .collect()
}

/// An `ARG` declaration as written: a name and maybe a default.
#[derive(Debug, PartialEq, Eq)]
pub struct RawArg {
    /// The ARG's name.
    pub name: String,
    /// The default as written, before expansion.
    pub default: Option<String>,
}

/// Parses `ARG name[=default] ...`.
pub fn arg_declarations(text: &str, escape: char) -> Result<Vec<RawArg>, String> {
    let words = split_words(text, escape);
    if words.is_empty() {
        return Err("ARG requires at least one argument".to_owned());
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some(("", _)) => Err("ARG names can not be blank".to_owned()),
            Some((name, default)) => Ok(RawArg {
                name: name.to_owned(),
                default: Some(default.to_owned()),
            }),
            None => Ok(RawArg {
                name: word,
                default: None,
            }),
        })
        .collect()
}

/// The delimiter of a heredoc marker (`<<EOF`, `<<-"EOF"`, `2<<EOF`) when
/// `word` is exactly one marker, as BuildKit's `ParseHeredoc` decides.
pub fn heredoc_marker(word: &str) -> Option<String> {
    let rest = word.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest.strip_prefix("<<")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest).trim();
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let mut name = String::new();
    let mut quote: Option<char> = None;
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => return None,
            (q, HEREDOC_ESCAPE) if q != Some('\'') => name.push(chars.next()?),
            (_, c) => name.push(c),
        }
    }
    (quote.is_none() && !name.is_empty()).then_some(name)
}

/// Rewrites a COPY/ADD heredoc body so that the host's expansion (which
/// removes quotes and escapes with the Dockerfile's escape character) gives
/// what BuildKit's expansion of heredoc bodies gives: quotes kept as
/// written and `\` as the escape whatever `# escape=` says.
pub fn heredoc_body_for_host(body: &str, escape: char) -> String {
    let mut out = String::with_capacity(body.len() + body.len() / 8);
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            // BuildKit's escape: the next character stands for itself, and
            // a trailing escape is dropped.
            '\\' => {
                if let Some(next) = chars.next() {
                    out.push(escape);
                    out.push(next);
                }
            }
            '\'' | '"' => {
                out.push(escape);
                out.push(c);
            }
            c if c == escape => {
                out.push(escape);
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether BuildKit's expansion would change `word` even with no variable
/// set: it holds quotes, escapes or variable references.
pub fn changes_when_expanded(word: &str, escape: char) -> bool {
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' || c == '"' || c == escape {
            return true;
        }
        if c == '$'
            && chars
                .peek()
                .is_some_and(|n| *n == '{' || is_name_char(*n) || is_special_param(*n))
        {
            return true;
        }
    }
    false
}

/// Replaces references to `locals` (the ARGs declared earlier on the same
/// line, which the host's scope does not know yet) by their values, quoted
/// so that the host's expansion yields them unchanged. A reference it
/// cannot replace (`${A:-x}`, or one nested in another expansion) is
/// returned as the error.
pub fn substitute_locals(
    word: &str,
    locals: &[(String, String)],
    escape: char,
) -> Result<String, String> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let local = |name: &str| locals.iter().rev().find(|(n, _)| n == name);
    let mut out = String::with_capacity(word.len());
    let mut quote = Quote::None;
    // Open `${...}` of variables the host expands itself.
    let mut depth = 0usize;
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match (&quote, c) {
            (Quote::Single, '\'') | (Quote::Double, '"') => {
                quote = Quote::None;
                out.push(c);
            }
            (Quote::Single, c) => out.push(c),
            (Quote::None, '\'') => {
                quote = Quote::Single;
                out.push(c);
            }
            (Quote::None, '"') => {
                quote = Quote::Double;
                out.push(c);
            }
            (Quote::None, c) if c == escape => {
                out.push(c);
                out.extend(chars.next());
            }
            (Quote::Double, c) if c == escape => {
                out.push(c);
                if let Some(next) = chars.next_if(|n| *n == '"' || *n == '$' || *n == escape) {
                    out.push(next);
                }
            }
            (Quote::None, '}') if depth > 0 => {
                depth -= 1;
                out.push(c);
            }
            (_, '$') => {
                let braced = chars.next_if_eq(&'{').is_some();
                let name = read_name(&mut chars);
                let Some((_, value)) = local(&name) else {
                    out.push('$');
                    if braced {
                        out.push('{');
                        depth += 1;
                    }
                    out.push_str(&name);
                    continue;
                };
                if depth > 0 || (braced && chars.next_if_eq(&'}').is_none()) {
                    return Err(name);
                }
                for v in value.chars() {
                    if quote == Quote::None || v == '"' || v == '$' || v == escape {
                        out.push(escape);
                    }
                    out.push(v);
                }
            }
            (_, c) => out.push(c),
        }
    }
    Ok(out)
}

/// A variable name after `$`, read as BuildKit's lexer reads it: digits
/// only, one special parameter, or letters, digits and `_`.
fn read_name(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut name = String::new();
    if let Some(first) = chars.next_if(|c| c.is_numeric()) {
        name.push(first);
        while let Some(c) = chars.next_if(|c| c.is_numeric()) {
            name.push(c);
        }
        return name;
    }
    if let Some(special) = chars.next_if(|c| is_special_param(*c)) {
        name.push(special);
        return name;
    }
    while let Some(c) = chars.next_if(|c| is_name_char(*c)) {
        name.push(c);
    }
    name
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The shell's special parameters, which BuildKit reads as names.
fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, value: &str) -> RawPair {
        RawPair {
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn blanks_split_without_quote_handling() {
        assert_eq!(split_blanks(" a\t b  \"c d\" "), ["a", "b", "\"c", "d\""]);
        assert!(split_blanks("   ").is_empty());
    }

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(
            split_words(r#"a="x y" b=c\ d e='f"g' """#, '\\'),
            [r#"a="x y""#, r"b=c\ d", r#"e='f"g'"#, r#""""#]
        );
        assert_eq!(split_words(r#"k="a\"b c""#, '\\'), [r#"k="a\"b c""#]);
        assert_eq!(split_words("a\\", '\\'), ["a"]);
    }

    #[test]
    fn env_pairs_in_both_forms() {
        assert_eq!(
            name_values("ENV", r#"A=1 B="two words" C="#, '\\').unwrap(),
            [pair("A", "1"), pair("B", "\"two words\""), pair("C", "")]
        );
        assert_eq!(
            name_values("ENV", "PATH  /usr/bin:$PATH  with spaces", '\\').unwrap(),
            [pair("PATH", "/usr/bin:$PATH  with spaces")]
        );
        assert_eq!(
            name_values("LABEL", "a=b=c", '\\').unwrap(),
            [pair("a", "b=c")]
        );
    }

    #[test]
    fn env_pair_errors() {
        assert_eq!(
            name_values("ENV", "  ", '\\').unwrap_err(),
            "ENV requires at least one argument"
        );
        assert_eq!(
            name_values("ENV", "A", '\\').unwrap_err(),
            "ENV must have two arguments"
        );
        assert_eq!(
            name_values("LABEL", "=x", '\\').unwrap_err(),
            "LABEL names can not be blank"
        );
        assert!(
            name_values("ENV", "A=1 B", '\\')
                .unwrap_err()
                .contains("can't find = in \"B\"")
        );
    }

    #[test]
    fn arg_declarations_with_and_without_defaults() {
        assert_eq!(
            arg_declarations(r#"A B="x y" C="#, '\\').unwrap(),
            [
                RawArg {
                    name: "A".into(),
                    default: None
                },
                RawArg {
                    name: "B".into(),
                    default: Some("\"x y\"".into())
                },
                RawArg {
                    name: "C".into(),
                    default: Some(String::new())
                },
            ]
        );
        assert_eq!(
            arg_declarations("=1", '\\').unwrap_err(),
            "ARG names can not be blank"
        );
        assert!(arg_declarations("", '\\').is_err());
    }

    #[test]
    fn heredoc_markers() {
        assert_eq!(heredoc_marker("<<EOF").as_deref(), Some("EOF"));
        assert_eq!(heredoc_marker("<<-EOF").as_deref(), Some("EOF"));
        assert_eq!(heredoc_marker("<<'EOF'").as_deref(), Some("EOF"));
        assert_eq!(heredoc_marker("<<\"E O\"").as_deref(), Some("E O"));
        assert_eq!(heredoc_marker("3<<EOF").as_deref(), Some("EOF"));
        assert_eq!(heredoc_marker("<<EOF python3"), None);
        assert_eq!(heredoc_marker("<<"), None);
        assert_eq!(heredoc_marker("<<<x"), None);
        assert_eq!(heredoc_marker("file.txt"), None);
    }

    #[test]
    fn words_split_with_the_backtick_escape() {
        assert_eq!(split_words("a=`\" b` c=\\x", '`'), ["a=`\"", "b` c=\\x"]);
        assert_eq!(split_words("a=\"x` y\" b", '`'), ["a=\"x` y\"", "b"]);
    }

    #[test]
    fn heredoc_bodies_keep_quotes_for_the_host() {
        assert_eq!(
            heredoc_body_for_host("echo \"$A\" 'b'\n", '\\'),
            "echo \\\"$A\\\" \\'b\\'\n"
        );
        assert_eq!(
            heredoc_body_for_host("a\\$b \\\\ c\\", '\\'),
            "a\\$b \\\\ c"
        );
        assert_eq!(heredoc_body_for_host("a\\$b `x` \"", '`'), "a`$b ``x`` `\"");
    }

    #[test]
    fn words_that_expansion_changes() {
        for changed in ["$A", "${A}", "a\\b", "'a'", "\"a\"", "$1", "$@", "x$_y"] {
            assert!(changes_when_expanded(changed, '\\'), "{changed}");
        }
        for same in ["build", "stage-1", "0", "a$", "a$/b", "a\\b"] {
            assert!(!changes_when_expanded(same, '`'), "{same}");
        }
        assert!(changes_when_expanded("a`b", '`'));
    }

    #[test]
    fn locals_are_substituted_in_context() {
        let locals = vec![
            ("A".to_owned(), "1".to_owned()),
            ("Q".to_owned(), "a \"b\" $c".to_owned()),
        ];
        let sub = |w: &str| substitute_locals(w, &locals, '\\');
        assert_eq!(sub("$A").as_deref(), Ok("\\1"));
        assert_eq!(sub("${A}x$B").as_deref(), Ok("\\1x$B"));
        assert_eq!(sub("'$A'").as_deref(), Ok("'$A'"));
        assert_eq!(sub("\"$Q\"").as_deref(), Ok("\"a \\\"b\\\" \\$c\""));
        assert_eq!(sub("$Q").as_deref(), Ok("\\a\\ \\\"\\b\\\"\\ \\$\\c"));
        assert_eq!(sub("\\$A").as_deref(), Ok("\\$A"));
        assert_eq!(sub("$AB ${B:-x}").as_deref(), Ok("$AB ${B:-x}"));
        assert_eq!(sub("${A:-x}"), Err("A".to_owned()));
        assert_eq!(sub("${B:-$A}"), Err("A".to_owned()));
        assert_eq!(sub("${B:-x}$A").as_deref(), Ok("${B:-x}\\1"));
        let tick = substitute_locals("$A`$A", &locals, '`');
        assert_eq!(tick.as_deref(), Ok("`1`$A"));
    }
}
