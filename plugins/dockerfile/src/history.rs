//! The `created_by` texts BuildKit writes into image history, byte for byte.

use std::fmt::Write;

/// Go's `strconv.Quote`: double quotes, Go escapes for what is not
/// printable. Printability of non-ASCII characters is approximated by
/// "neither a control character nor whitespace".
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            ' ' => out.push(' '),
            c if c.is_control() || c.is_whitespace() => {
                let code = u32::from(c);
                let _ = match code {
                    0..0x80 => write!(out, "\\x{code:02x}"),
                    0x80..0x10000 => write!(out, "\\u{code:04x}"),
                    _ => write!(out, "\\U{code:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| go_quote(item)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%v` of a `[]string`: `[a b]`.
pub fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// The text after `RUN ` in history: `|N K=V ...` for the N build args in
/// scope (so that the cache key changes with them), then the command line.
pub fn run_command(argv: &[String], build_args: &[(String, String)]) -> String {
    let mut parts = Vec::with_capacity(build_args.len() + 1 + argv.len());
    if !build_args.is_empty() {
        parts.push(format!("|{}", build_args.len()));
        parts.extend(build_args.iter().map(|(k, v)| format!("{k}={v}")));
    }
    parts.extend(argv.iter().cloned());
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(
            go_quote("echo \"hi\" \\ there"),
            r#""echo \"hi\" \\ there""#
        );
        assert_eq!(go_quote("a\tb\nc\u{0}\u{7f}"), r#""a\tb\nc\x00\x7f""#);
        assert_eq!(go_quote("é\u{a0}"), "\"é\\u00a0\"");
    }

    #[test]
    fn lists_like_go() {
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), "echo hi".to_owned()];
        assert_eq!(go_quoted_list(&argv), r#"["/bin/sh" "-c" "echo hi"]"#);
        assert_eq!(go_quoted_list(&[]), "[]");
        assert_eq!(go_list(&argv), "[/bin/sh -c echo hi]");
    }

    #[test]
    fn run_command_lists_build_args_first() {
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), "make".to_owned()];
        assert_eq!(run_command(&argv, &[]), "/bin/sh -c make");
        let args = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), String::new()),
        ];
        assert_eq!(run_command(&argv, &args), "|2 A=1 B= /bin/sh -c make");
    }
}
