//! How BuildKit's parser cuts an instruction's text into words, before any
//! expansion (which the host does).
//!
//! The WIT does not carry the `# escape=` directive, so `\` is assumed as the
//! escape character for the word splitting done here; the host's expansion
//! of each word uses the real one.

/// The escape character used for splitting.
const ESCAPE: char = '\\';

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
pub fn split_words(text: &str) -> Vec<String> {
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
                if c == ESCAPE {
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
                if c == ESCAPE && q != '\'' {
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
pub fn name_values(keyword: &str, text: &str) -> Result<Vec<RawPair>, String> {
    let words = split_words(text);
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
pub fn arg_declarations(text: &str) -> Result<Vec<RawArg>, String> {
    let words = split_words(text);
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
            (q, ESCAPE) if q != Some('\'') => name.push(chars.next()?),
            (_, c) => name.push(c),
        }
    }
    (quote.is_none() && !name.is_empty()).then_some(name)
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
            split_words(r#"a="x y" b=c\ d e='f"g' """#),
            [r#"a="x y""#, r"b=c\ d", r#"e='f"g'"#, r#""""#]
        );
        assert_eq!(split_words(r#"k="a\"b c""#), [r#"k="a\"b c""#]);
        assert_eq!(split_words("a\\"), ["a"]);
    }

    #[test]
    fn env_pairs_in_both_forms() {
        assert_eq!(
            name_values("ENV", r#"A=1 B="two words" C="#).unwrap(),
            [pair("A", "1"), pair("B", "\"two words\""), pair("C", "")]
        );
        assert_eq!(
            name_values("ENV", "PATH  /usr/bin:$PATH  with spaces").unwrap(),
            [pair("PATH", "/usr/bin:$PATH  with spaces")]
        );
        assert_eq!(name_values("LABEL", "a=b=c").unwrap(), [pair("a", "b=c")]);
    }

    #[test]
    fn env_pair_errors() {
        assert_eq!(
            name_values("ENV", "  ").unwrap_err(),
            "ENV requires at least one argument"
        );
        assert_eq!(
            name_values("ENV", "A").unwrap_err(),
            "ENV must have two arguments"
        );
        assert_eq!(
            name_values("LABEL", "=x").unwrap_err(),
            "LABEL names can not be blank"
        );
        assert!(
            name_values("ENV", "A=1 B")
                .unwrap_err()
                .contains("can't find = in \"B\"")
        );
    }

    #[test]
    fn arg_declarations_with_and_without_defaults() {
        assert_eq!(
            arg_declarations(r#"A B="x y" C="#).unwrap(),
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
            arg_declarations("=1").unwrap_err(),
            "ARG names can not be blank"
        );
        assert!(arg_declarations("").is_err());
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
}
