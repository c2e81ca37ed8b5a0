//! Source text to instructions with BuildKit's parser rules (`frontend/dockerfile/parser`):
//! directives, continuations, comments, flags, JSON or shell form, heredocs.

use super::expand::{self, Mode};

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Dockerfile {
    /// The escape character (`\` unless `# escape=` says otherwise).
    pub escape: char,
    /// The value of the `# syntax=` directive, if any.
    pub syntax: Option<String>,
    /// The instructions in source order.
    pub instructions: Vec<Instruction>,
}

/// One instruction, before any expansion.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instruction {
    /// The keyword, upper-case.
    pub keyword: String,
    /// Leading `--name[=value]` flags, in order.
    pub flags: Vec<Flag>,
    /// The arguments after the flags, continuation lines joined.
    pub text: String,
    /// The arguments as a JSON array of strings (exec form), when they are one.
    pub json: Option<Vec<String>>,
    /// Heredocs opened on the instruction line, in order.
    pub heredocs: Vec<Heredoc>,
    /// The instruction as written, continuation lines joined.
    pub original: String,
    /// 1-based line of the keyword.
    pub line: u32,
    /// 1-based column (in characters) of the keyword.
    pub column: u32,
    /// 1-based last line, heredoc bodies included.
    pub end_line: u32,
}

/// A `--name[=value]` flag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Flag {
    /// The name without the leading `--`.
    pub name: String,
    /// The value after the first `=`; `None` for a bare `--name`.
    pub value: Option<String>,
}

/// A heredoc body attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The body, line endings kept, leading tabs removed for `<<-`.
    pub content: String,
    /// False when the delimiter was quoted, so the body is not expanded.
    pub expand: bool,
}

/// Why a Dockerfile could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters).
    pub column: u32,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// BuildKit reads lines with Go's `bufio.Scanner`, whose default token limit is 64 KiB.
const MAX_LINE: usize = 64 * 1024;

const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

/// Parses a Dockerfile. Unknown keywords are kept: plugins may handle them.
pub fn parse(source: &str) -> Result<Dockerfile, ParseError> {
    let (lines, too_long) = split_lines(source);
    let mut p = Parser {
        lines,
        next: 0,
        escape: '\\',
        syntax: None,
        directives_done: false,
        seen: Vec::new(),
    };
    let mut instructions = Vec::new();
    while let Some(instruction) = p.instruction()? {
        instructions.push(instruction);
    }
    if too_long {
        return Err(ParseError {
            line: count(p.lines.len() + 1),
            column: 1,
            message: format!(
                "dockerfile line greater than max allowed size of {}: split it with line continuations",
                MAX_LINE - 1
            ),
        });
    }
    Ok(Dockerfile {
        escape: p.escape,
        syntax: p.syntax,
        instructions,
    })
}

/// Lines with their endings, stopping before the first line BuildKit cannot read.
fn split_lines(source: &str) -> (Vec<&str>, bool) {
    let mut lines = Vec::new();
    let mut rest = source;
    while !rest.is_empty() {
        let (line, tail) = match rest.find('\n') {
            Some(i) => rest.split_at(i + 1),
            None => (rest, ""),
        };
        let limit = if tail.is_empty() && !line.ends_with('\n') {
            MAX_LINE - 1
        } else {
            MAX_LINE
        };
        if line.len() > limit {
            return (lines, true);
        }
        lines.push(line);
        rest = tail;
    }
    (lines, false)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

struct Parser<'a> {
    lines: Vec<&'a str>,
    next: usize,
    escape: char,
    syntax: Option<String>,
    directives_done: bool,
    seen: Vec<String>,
}

impl Parser<'_> {
    fn instruction(&mut self) -> Result<Option<Instruction>, ParseError> {
        while self.next < self.lines.len() {
            let index = self.next;
            self.next += 1;
            let line = count(index + 1);
            let mut raw = self.lines[index];
            if index == 0 {
                raw = raw.strip_prefix('\u{FEFF}').unwrap_or(raw);
            }
            let token = trim_newline(raw);
            let stripped = token.trim_start();
            let column = count(token.chars().count() - stripped.chars().count() + 1);
            let at = |message: String| ParseError {
                line,
                column,
                message,
            };
            self.directive(stripped).map_err(at)?;
            let content = if stripped.starts_with('#') {
                ""
            } else {
                stripped
            };
            let (first, mut done) = trim_continuation(content, self.escape);
            if done && first.is_empty() {
                continue;
            }
            let mut original = first.to_owned();
            while !done && self.next < self.lines.len() {
                let token = trim_newline(self.lines[self.next]);
                self.next += 1;
                let trimmed = token.trim_start();
                // Comment lines and empty lines inside a continuation are skipped.
                if trimmed.starts_with('#') || trimmed.is_empty() {
                    continue;
                }
                let (part, end) = trim_continuation(token, self.escape);
                original.push_str(part);
                done = end;
            }
            let node = Node::parse(&original, self.escape).map_err(at)?;
            if node.keyword.is_empty() {
                return Err(at(
                    "a line continuation is not followed by an instruction: remove the trailing escape character".into(),
                ));
            }
            let heredocs = if node.can_contain_heredoc() && original.contains("<<") {
                self.heredocs(&original).map_err(at)?
            } else {
                Vec::new()
            };
            return Ok(Some(Instruction {
                keyword: node.upper_keyword(),
                flags: node.flags.iter().map(|f| Flag::parse(f)).collect(),
                text: node.args,
                json: node.json,
                heredocs,
                original,
                line,
                column,
                end_line: count(self.next),
            }));
        }
        Ok(None)
    }

    /// Applies a `# key=value` parser directive; only lines before anything else count.
    fn directive(&mut self, token: &str) -> Result<(), String> {
        if self.directives_done {
            return Ok(());
        }
        let Some((key, value)) = token
            .strip_prefix('#')
            .and_then(|rest| split_directive(rest.trim_start()))
        else {
            self.directives_done = true;
            return Ok(());
        };
        let key = key.to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            self.directives_done = true;
            return Ok(());
        }
        if self.seen.contains(&key) {
            return Err(format!(
                "only one {key} parser directive can be used: remove the repeated one"
            ));
        }
        match key.as_str() {
            "escape" => {
                self.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(format!(
                            "invalid escape token '{value}' does not match ` or \\"
                        ));
                    }
                }
            }
            "syntax" => self.syntax = Some(value.to_owned()),
            _ => {}
        }
        self.seen.push(key);
        Ok(())
    }

    /// Reads the bodies of the heredocs opened on `line` from the following lines.
    fn heredocs(&mut self, line: &str) -> Result<Vec<Heredoc>, String> {
        let mut docs = Vec::new();
        for spec in heredoc_specs(line)? {
            let mut content = String::new();
            let mut terminated = false;
            while self.next < self.lines.len() {
                let raw = self.lines[self.next];
                self.next += 1;
                let mut candidate = trim_newline(raw);
                if spec.chomp {
                    candidate = candidate.trim_start_matches('\t');
                }
                if candidate == spec.name {
                    terminated = true;
                    break;
                }
                content.push_str(raw);
            }
            if !terminated {
                return Err(format!(
                    "unterminated heredoc: add a line containing only {:?}",
                    spec.name
                ));
            }
            if spec.chomp {
                content = content
                    .split_inclusive('\n')
                    .map(|l| l.trim_start_matches('\t'))
                    .collect();
            }
            docs.push(Heredoc {
                name: spec.name,
                content,
                expand: spec.expand,
            });
        }
        Ok(docs)
    }
}

/// Go's `bytes.TrimRight(line, "\r\n")`.
fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// The ASCII whitespace of BuildKit's `[\t\v\f\r ]+` splitting.
fn is_split_space(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// Go's `unicode.IsSpace` applied to an ASCII byte.
fn is_go_byte_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// Go regexp's `\s`.
fn is_regex_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ')
}

/// Removes a trailing line-continuation escape; returns the rest and whether the
/// instruction ends on this line. An escape preceded by another escape does not continue.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else {
        return (line, true);
    };
    if before.is_empty() {
        return ("", false);
    }
    if before.ends_with(escape) {
        return (line, true);
    }
    (before, false)
}

/// Matches `key\s*=\s*(.+?)\s*$` the way Go's regexp does.
fn split_directive(text: &str) -> Option<(&str, &str)> {
    let key_len = text
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(text.len(), |(i, _)| i);
    if key_len == 0 {
        return None;
    }
    let (key, rest) = text.split_at(key_len);
    let rest = rest.trim_start_matches(is_regex_space).strip_prefix('=')?;
    let value = rest.trim_start_matches(is_regex_space);
    if value.is_empty() {
        // Backtracking gives the lazy value group the last whitespace character.
        let last = rest.chars().next_back()?;
        return Some((key, &rest[rest.len() - last.len_utf8()..]));
    }
    Some((key, value.trim_end_matches(is_regex_space)))
}

impl Flag {
    fn parse(word: &str) -> Flag {
        let body = word.strip_prefix("--").unwrap_or(word);
        match body.split_once('=') {
            Some((name, value)) => Flag {
                name: name.to_owned(),
                value: Some(value.to_owned()),
            },
            None => Flag {
                name: body.to_owned(),
                value: None,
            },
        }
    }
}

/// One instruction line split the way BuildKit's dispatch table does.
struct Node {
    keyword: String,
    lower: String,
    flags: Vec<String>,
    args: String,
    json: Option<Vec<String>>,
    /// The trigger of an ONBUILD.
    sub: Option<Box<Node>>,
}

const KNOWN: [&str; 18] = [
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

impl Node {
    fn parse(line: &str, escape: char) -> Result<Node, String> {
        let line = line.trim();
        let (keyword, rest) = match line.find(is_split_space) {
            Some(i) => (&line[..i], line[i..].trim_start_matches(is_split_space)),
            None => (line, ""),
        };
        let (args, flags) = extract_flags(rest, escape);
        let args = args.trim().to_owned();
        let lower = keyword.to_lowercase();
        let mut node = Node {
            keyword: keyword.to_owned(),
            lower,
            flags,
            args,
            json: None,
            sub: None,
        };
        let args = node.args.as_str();
        match node.lower.as_str() {
            "add" | "copy" | "volume" | "cmd" | "entrypoint" | "run" | "shell" => {
                node.json = maybe_json(args)?;
            }
            "healthcheck" => {
                // BuildKit finds the end of the type byte by byte: besides ASCII
                // whitespace, the last byte of a no-break space or NEL ends it.
                let split = |c| is_go_byte_space(c) || matches!(c, '\u{85}' | '\u{A0}');
                let kind_len = args.find(split).unwrap_or(args.len());
                if kind_len > 0 {
                    node.json = maybe_json(&args[kind_len..])?;
                }
            }
            "env" => check_name_values(args, "ENV", escape)?,
            "label" => check_name_values(args, "LABEL", escape)?,
            "onbuild" if !args.is_empty() => {
                node.sub = Some(Box::new(Node::parse(args, escape)?));
            }
            "onbuild" | "arg" | "expose" | "from" | "maintainer" | "stopsignal" | "user"
            | "workdir" => {}
            // BuildKit ignores the arguments of keywords it does not know; a plugin
            // that handles one still gets the exec form when it is well formed.
            _ => node.json = json_string_array(args).ok(),
        }
        Ok(node)
    }

    fn upper_keyword(&self) -> String {
        if KNOWN.contains(&self.lower.as_str()) {
            self.lower.to_ascii_uppercase()
        } else {
            self.keyword.to_uppercase()
        }
    }

    fn can_contain_heredoc(&self) -> bool {
        let node = match (&self.lower[..], &self.sub) {
            ("onbuild", Some(sub)) => sub,
            _ => self,
        };
        matches!(node.lower.as_str(), "add" | "copy" | "run") && node.json.is_none()
    }
}

/// The exec form of `args`, BuildKit's shell-form fallback, or its non-string error.
fn maybe_json(args: &str) -> Result<Option<Vec<String>>, String> {
    match json_string_array(args) {
        Ok(v) => Ok(Some(v)),
        Err(JsonError::NotStrings) => Err(format!(
            "{NOT_STRING_ARRAY}: quote every element of {}",
            args.trim()
        )),
        Err(JsonError::Invalid) => Ok(None),
    }
}

/// Splits leading `--flag` words off `line` (BuildKit's `extractBuilderFlags`).
fn extract_flags(line: &str, escape: char) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut phase = Phase::Spaces;
    let mut k = 0;
    loop {
        let Some(&(pos, mut ch)) = chars.get(k) else {
            if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            return ("", words);
        };
        k += 1;
        match phase {
            Phase::Spaces => {
                // BuildKit scans bytes here: only ASCII whitespace separates flags.
                if is_go_byte_space(ch) {
                    continue;
                }
                if ch != '-' || chars.get(k).map(|c| c.1) != Some('-') {
                    return (&line[pos..], words);
                }
                phase = Phase::Word;
                word.push(ch);
            }
            Phase::Word => {
                if is_go_byte_space(ch) || matches!(ch, '\u{85}' | '\u{A0}') {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (&line[pos..], words);
                    }
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                    continue;
                }
                if ch == escape {
                    let Some(&(_, next)) = chars.get(k) else {
                        continue;
                    };
                    ch = next;
                    k += 1;
                }
                word.push(ch);
            }
            Phase::Quote(quote) => {
                if ch == quote {
                    phase = Phase::Word;
                    continue;
                }
                if ch == escape {
                    let Some(&(_, next)) = chars.get(k) else {
                        phase = Phase::Word;
                        continue;
                    };
                    ch = next;
                    k += 1;
                }
                word.push(ch);
            }
        }
    }
}

/// Splits on whitespace keeping quotes and escapes (BuildKit's `parseWords`).
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut k = 0;
    while k < chars.len() {
        let mut ch = chars[k];
        k += 1;
        if let Some(q) = quote {
            if ch == q {
                quote = None;
            }
            if ch == escape && q != '\'' {
                let Some(&next) = chars.get(k) else {
                    quote = None;
                    continue;
                };
                word.push(ch);
                ch = next;
                k += 1;
            }
            word.push(ch);
            continue;
        }
        if !in_word {
            if ch.is_whitespace() {
                continue;
            }
            in_word = true;
        }
        if ch.is_whitespace() {
            in_word = false;
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            blank_ok = false;
            continue;
        }
        if ch == '\'' || ch == '"' {
            quote = Some(ch);
            blank_ok = true;
        }
        if ch == escape {
            let Some(&next) = chars.get(k) else {
                continue;
            };
            word.push(ch);
            ch = next;
            k += 1;
        }
        word.push(ch);
    }
    if (in_word || quote.is_some()) && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// Rejects ENV/LABEL arguments BuildKit's parser rejects.
fn check_name_values(args: &str, key: &str, escape: char) -> Result<(), String> {
    let words = parse_words(args, escape);
    let Some(first) = words.first() else {
        return Ok(());
    };
    if !first.contains('=') {
        if !args.contains(is_split_space) {
            return Err(format!(
                "{key} must have two arguments: write {key} name=value"
            ));
        }
        return Ok(());
    }
    match words.iter().find(|w| !w.contains('=')) {
        Some(word) => Err(format!(
            "Syntax error - can't find = in {word:?}. Must be of the form: name=value"
        )),
        None => Ok(()),
    }
}

/// A heredoc opener found on an instruction line.
struct HeredocSpec {
    name: String,
    chomp: bool,
    expand: bool,
}

/// Finds `[n]<<[-]WORD` openers among the words of `line`.
fn heredoc_specs(line: &str) -> Result<Vec<HeredocSpec>, String> {
    let verbatim = Mode {
        raw_quotes: true,
        raw_escapes: true,
        skip_unset: true,
    };
    // BuildKit ignores a line it cannot split: such a line has no heredocs.
    let words = expand::words_verbatim(line, verbatim).unwrap_or_default();
    let mut specs = Vec::new();
    for word in words {
        if let Some(spec) = heredoc_spec(&word)? {
            specs.push(spec);
        }
    }
    Ok(specs)
}

/// Matches `^(\d*)<<(-?)\s*([^<]*)$` and reads the delimiter word.
fn heredoc_spec(word: &str) -> Result<Option<HeredocSpec>, String> {
    let Some(rest) = word
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")
    else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start_matches(is_regex_space);
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let lex = |raw_quotes| {
        let mode = Mode {
            raw_quotes,
            raw_escapes: false,
            skip_unset: true,
        };
        expand::words_verbatim(rest, mode).map_err(|e| e.to_string())
    };
    let words = lex(false)?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    let raw = lex(true)?;
    let [raw_name] = raw.as_slice() else {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    };
    let quotes = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    Ok(Some(HeredocSpec {
        name: name.clone(),
        chomp,
        expand: quotes(name) == quotes(raw_name),
    }))
}

/// Why text is not a JSON array of strings.
#[derive(Debug, PartialEq, Eq)]
enum JsonError {
    /// Not a JSON array at all (the shell form applies).
    Invalid,
    /// A valid JSON array with an element that is not a string.
    NotStrings,
}

/// Go's `encoding/json` nesting limit.
const MAX_JSON_DEPTH: usize = 10_000;

/// Decodes a JSON array of strings with Go's `encoding/json` rules: lone surrogate
/// escapes become U+FFFD, nesting is limited, and trailing text is invalid.
fn json_string_array(text: &str) -> Result<Vec<String>, JsonError> {
    let text = text.trim_start();
    let b = text.as_bytes();
    let mut i = 0;
    if b.first() != Some(&b'[') {
        return Err(JsonError::Invalid);
    }
    i += 1;
    // Open containers below the top-level array: true for an object.
    let mut stack: Vec<bool> = Vec::new();
    let mut out = Vec::new();
    let mut all_strings = true;
    let mut expect_value = true;
    i = skip_json_ws(b, i);
    if b.get(i) == Some(&b']') {
        return finish_json(b, i + 1, out, all_strings);
    }
    loop {
        i = skip_json_ws(b, i);
        if expect_value {
            let top = stack.is_empty();
            let c = b.get(i).copied();
            if top && c != Some(b'"') {
                all_strings = false;
            }
            match c {
                Some(b'"') => {
                    let (s, end) = json_string(text, i)?;
                    if top {
                        out.push(s);
                    }
                    i = end;
                }
                Some(open @ (b'[' | b'{')) => {
                    if stack.len() + 2 > MAX_JSON_DEPTH {
                        return Err(JsonError::Invalid);
                    }
                    let object = open == b'{';
                    i = skip_json_ws(b, i + 1);
                    let close = if object { b'}' } else { b']' };
                    if b.get(i) == Some(&close) {
                        i += 1;
                    } else {
                        stack.push(object);
                        if object {
                            i = json_key(text, i)?;
                        }
                        continue;
                    }
                }
                Some(b't') => i = json_literal(b, i, b"true")?,
                Some(b'f') => i = json_literal(b, i, b"false")?,
                Some(b'n') => i = json_literal(b, i, b"null")?,
                Some(b'-' | b'0'..=b'9') => i = json_number(b, i)?,
                _ => return Err(JsonError::Invalid),
            }
            expect_value = false;
            continue;
        }
        let object = stack.last().copied();
        match (b.get(i), object) {
            (Some(b','), Some(true)) => i = json_key(text, i + 1)?,
            (Some(b','), _) => i += 1,
            (Some(b'}'), Some(true)) | (Some(b']'), Some(false)) => {
                stack.pop();
                i += 1;
                continue;
            }
            (Some(b']'), None) => return finish_json(b, i + 1, out, all_strings),
            _ => return Err(JsonError::Invalid),
        }
        expect_value = true;
    }
}

fn finish_json(
    b: &[u8],
    i: usize,
    out: Vec<String>,
    all_strings: bool,
) -> Result<Vec<String>, JsonError> {
    if skip_json_ws(b, i) != b.len() {
        return Err(JsonError::Invalid);
    }
    if all_strings {
        Ok(out)
    } else {
        Err(JsonError::NotStrings)
    }
}

fn skip_json_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Reads `"key" :` at `i` (after whitespace); returns the index after the colon.
fn json_key(text: &str, i: usize) -> Result<usize, JsonError> {
    let b = text.as_bytes();
    let i = skip_json_ws(b, i);
    if b.get(i) != Some(&b'"') {
        return Err(JsonError::Invalid);
    }
    let (_, end) = json_string(text, i)?;
    let end = skip_json_ws(b, end);
    if b.get(end) != Some(&b':') {
        return Err(JsonError::Invalid);
    }
    Ok(end + 1)
}

fn json_literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, JsonError> {
    if b[i..].starts_with(word) {
        Ok(i + word.len())
    } else {
        Err(JsonError::Invalid)
    }
}

fn json_number(b: &[u8], mut i: usize) -> Result<usize, JsonError> {
    let digits = |b: &[u8], mut i: usize| {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i, i > start)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i).0,
        _ => return Err(JsonError::Invalid),
    }
    if b.get(i) == Some(&b'.') {
        let (end, any) = digits(b, i + 1);
        if !any {
            return Err(JsonError::Invalid);
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let (end, any) = digits(b, i);
        if !any {
            return Err(JsonError::Invalid);
        }
        i = end;
    }
    Ok(i)
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    let s = std::str::from_utf8(b.get(i..i + 4)?).ok()?;
    if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Decodes the JSON string starting at the quote at `start`; returns it and the
/// index after the closing quote.
fn json_string(text: &str, start: usize) -> Result<(String, usize), JsonError> {
    let b = text.as_bytes();
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        let run = b[i..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .ok_or(JsonError::Invalid)?;
        out.push_str(&text[i..i + run]);
        i += run;
        match b[i] {
            b'"' => return Ok((out, i + 1)),
            b'\\' => {
                let esc = *b.get(i + 1).ok_or(JsonError::Invalid)?;
                i += 2;
                match esc {
                    b'"' => out.push('"'),
                    b'\\' => out.push('\\'),
                    b'/' => out.push('/'),
                    b'b' => out.push('\u{8}'),
                    b'f' => out.push('\u{c}'),
                    b'n' => out.push('\n'),
                    b'r' => out.push('\r'),
                    b't' => out.push('\t'),
                    b'u' => {
                        let hi = hex4(b, i).ok_or(JsonError::Invalid)?;
                        i += 4;
                        let mut ch = char::from_u32(hi);
                        if (0xD800..0xDC00).contains(&hi)
                            && b.get(i..i + 2) == Some(b"\\u")
                            && let Some(lo) =
                                hex4(b, i + 2).filter(|lo| (0xDC00..0xE000).contains(lo))
                        {
                            ch = char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00));
                            i += 6;
                        }
                        out.push(ch.unwrap_or('\u{FFFD}'));
                    }
                    _ => return Err(JsonError::Invalid),
                }
            }
            _ => return Err(JsonError::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(src: &str) -> Instruction {
        let df = parse(src).unwrap();
        assert_eq!(df.instructions.len(), 1, "{df:#?}");
        df.instructions.into_iter().next().unwrap()
    }

    fn fail(src: &str) -> ParseError {
        parse(src).unwrap_err()
    }

    #[test]
    fn keywords_are_case_insensitive_and_located() {
        let df = parse("from alpine\n\n  run echo hi\n\tCoPy a b\n").unwrap();
        let kw: Vec<_> = df.instructions.iter().map(|i| i.keyword.as_str()).collect();
        assert_eq!(kw, ["FROM", "RUN", "COPY"]);
        let pos: Vec<_> = df
            .instructions
            .iter()
            .map(|i| (i.line, i.column, i.end_line))
            .collect();
        assert_eq!(pos, [(1, 1, 1), (3, 3, 3), (4, 2, 4)]);
        assert_eq!(df.instructions[1].original, "run echo hi");
        assert_eq!(df.escape, '\\');
    }

    #[test]
    fn empty_and_arg_only_files_parse() {
        assert_eq!(parse("").unwrap().instructions, []);
        assert_eq!(parse("# just a comment\n\n").unwrap().instructions, []);
        assert_eq!(parse("ARG A=1\n").unwrap().instructions.len(), 1);
    }

    #[test]
    fn unknown_keywords_are_kept() {
        let i = one("FROBNICATE --level=3 [\"a\", \"b\"]\n");
        assert_eq!(i.keyword, "FROBNICATE");
        assert_eq!(
            i.flags,
            [Flag {
                name: "level".into(),
                value: Some("3".into())
            }]
        );
        assert_eq!(i.json, Some(vec!["a".into(), "b".into()]));
        assert_eq!(one("frob [1]").json, None);
    }

    #[test]
    fn continuations_join_lines() {
        let i = one("RUN echo a \\\n    b \\\n  c\n");
        assert_eq!(i.text, "echo a     b   c");
        assert_eq!(i.original, "RUN echo a     b   c");
        assert_eq!((i.line, i.end_line), (1, 3));
        // Trailing blanks after the escape still continue the line.
        assert_eq!(one("RUN a\\  \t\nb").text, "ab");
        // An escaped escape at the end does not continue.
        let df = parse("RUN a\\\\\nRUN b").unwrap();
        assert_eq!(df.instructions[0].text, "a\\\\");
        assert_eq!(df.instructions.len(), 2);
    }

    #[test]
    fn comments_and_empty_lines_inside_continuations_are_dropped() {
        let i = one("RUN a \\\n# comment \\\n\n   \n  # indented\nb\n");
        assert_eq!(i.text, "a b");
        assert_eq!(i.end_line, 6);
    }

    #[test]
    fn a_lone_escape_line_continues() {
        let i = one("\\\nRUN x\n");
        assert_eq!((i.line, i.text.as_str()), (1, "x"));
        let e = fail("FROM a\n\\\n");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn crlf_and_bom() {
        let df = parse("\u{FEFF}# escape=`\r\nFROM a\r\nRUN x `\r\n  y\r\n").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.instructions[1].text, "x   y");
        assert_eq!(df.instructions[0].column, 1);
    }

    #[test]
    fn directives() {
        let df =
            parse("# Syntax = docker/dockerfile:1 \n#escape=`\n# check=skip=all\nFROM a").unwrap();
        assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(df.escape, '`');
        // After any other line, directives are plain comments.
        let df = parse("# hello\n# escape=`\nFROM a").unwrap();
        assert_eq!(df.escape, '\\');
        let df = parse("\n# escape=`\nFROM a").unwrap();
        assert_eq!(df.escape, '\\');
        let df = parse("FROM a\n# syntax=x").unwrap();
        assert_eq!(df.syntax, None);
        // An unknown directive ends the directive block.
        let df = parse("# foo=bar\n# escape=`\nFROM a").unwrap();
        assert_eq!(df.escape, '\\');
        let e = fail("# escape=\\\n# ESCAPE=`\n");
        assert!(
            e.to_string()
                .starts_with("line 2, column 1: only one escape parser directive"),
            "{e}"
        );
        let e = fail("# escape=x\n");
        assert!(e.message.starts_with("invalid escape token 'x'"), "{e}");
        // Go's lazy group takes one whitespace character when nothing else is left.
        let e = fail("# escape= \n");
        assert!(e.message.starts_with("invalid escape token ' '"), "{e}");
    }

    #[test]
    fn backtick_escape() {
        let df = parse("# escape=`\nRUN dir c:\\ `\n  && echo \\\nCOPY a\\ b c").unwrap();
        assert_eq!(df.instructions[0].text, "dir c:\\   && echo \\");
        assert_eq!(df.instructions[1].text, "a\\ b c");
    }

    #[test]
    fn json_and_shell_forms() {
        assert_eq!(
            one("CMD [\"a\", \"b c\"]").json,
            Some(vec!["a".into(), "b c".into()])
        );
        assert_eq!(one("CMD []").json, Some(vec![]));
        assert_eq!(one("CMD [\"a\",]").json, None);
        assert_eq!(one("CMD [\"a\"] extra").json, None);
        assert_eq!(one("CMD ['a']").json, None);
        assert_eq!(one("CMD echo [\"a\"]").json, None);
        assert_eq!(
            one("ENTRYPOINT [\"\\u00e9\\ud83d\\ude00\\ud800x\"]").json,
            Some(vec!["é😀\u{FFFD}x".into()])
        );
        assert!(
            fail("RUN [\"a\", [1, {\"k\": [true]}]]")
                .message
                .starts_with(NOT_STRING_ARRAY)
        );
        assert_eq!(one("RUN [\"a\", {\"k\" 1}]").json, None);
        assert!(fail("RUN [\"a\", 1]").message.starts_with(NOT_STRING_ARRAY));
        assert!(
            fail("COPY [\"a\", null]")
                .message
                .starts_with(NOT_STRING_ARRAY)
        );
        assert!(
            fail("HEALTHCHECK CMD [\"a\", false]")
                .message
                .starts_with(NOT_STRING_ARRAY)
        );
        assert_eq!(
            one("HEALTHCHECK --interval=5s CMD [\"curl\", \"x\"]").json,
            Some(vec!["curl".into(), "x".into()])
        );
        assert_eq!(one("HEALTHCHECK NONE").json, None);
        // Only the dispatch table's JSON instructions look at JSON.
        assert_eq!(one("FROM [\"a\"]").json, None);
        assert_eq!(one("LABEL a=[1]").json, None);
    }

    #[test]
    fn deep_json_nesting_is_limited_like_go() {
        let deep = |n: usize| format!("CMD [\"a\", {}{}]", "[".repeat(n), "]".repeat(n));
        assert!(fail(&deep(9_999)).message.starts_with(NOT_STRING_ARRAY));
        assert_eq!(one(&deep(10_000)).json, None);
    }

    #[test]
    fn flags() {
        let i = one("RUN --mount=type=cache,target=/root/.cache --network=none  echo --not-a-flag");
        assert_eq!(
            i.flags,
            [
                Flag {
                    name: "mount".into(),
                    value: Some("type=cache,target=/root/.cache".into())
                },
                Flag {
                    name: "network".into(),
                    value: Some("none".into())
                },
            ]
        );
        assert_eq!(i.text, "echo --not-a-flag");
        let i = one("COPY --link --chmod=\"0 644\" a b");
        assert_eq!(
            i.flags[0],
            Flag {
                name: "link".into(),
                value: None
            }
        );
        assert_eq!(i.flags[1].value.as_deref(), Some("0 644"));
        assert_eq!(i.text, "a b");
        let i = one("RUN --x=a\\ b -- --y");
        assert_eq!(
            i.flags,
            [Flag {
                name: "x".into(),
                value: Some("a b".into())
            }]
        );
        assert_eq!(i.text, "--y");
        let i = one("RUN --mount=x");
        assert_eq!((i.flags.len(), i.text.as_str()), (1, ""));
        assert_eq!(one("RUN --x=''").flags[0].value.as_deref(), Some(""));
        assert_eq!(one("RUN -x").flags, []);
        assert_eq!(one("CMD --help").flags[0].name, "help");
    }

    #[test]
    fn env_and_label_checks() {
        assert_eq!(one("ENV A B C").text, "A B C");
        assert_eq!(one("ENV A=1 B=\"x y\"").text, "A=1 B=\"x y\"");
        assert!(
            fail("ENV A")
                .message
                .starts_with("ENV must have two arguments")
        );
        assert!(
            fail("LABEL a")
                .message
                .starts_with("LABEL must have two arguments")
        );
        assert_eq!(
            fail("ENV A=1 B").message,
            "Syntax error - can't find = in \"B\". Must be of the form: name=value"
        );
        assert_eq!(one("ENV A=\"1 2\" B=3\\ 4").text, "A=\"1 2\" B=3\\ 4");
        assert_eq!(one("ENV").text, "");
        assert_eq!(fail("ONBUILD ENV A").line, 1);
    }

    #[test]
    fn heredocs() {
        let i = one("RUN <<EOF\necho $A\nEOF\n");
        assert_eq!(
            i.heredocs,
            [Heredoc {
                name: "EOF".into(),
                content: "echo $A\n".into(),
                expand: true
            }]
        );
        assert_eq!((i.line, i.end_line, i.text.as_str()), (1, 3, "<<EOF"));
        let i = one("RUN <<-'EOT' bash\n\t\tx\n\ty\n\tEOT\n");
        assert_eq!(
            i.heredocs,
            [Heredoc {
                name: "EOT".into(),
                content: "x\ny\n".into(),
                expand: false
            }]
        );
        let i = one("COPY <<a.txt <<\"b.txt\" /dst/\nA\na.txt\nB\nb.txt\n");
        let names: Vec<_> = i
            .heredocs
            .iter()
            .map(|h| (h.name.as_str(), h.content.as_str(), h.expand))
            .collect();
        assert_eq!(names, [("a.txt", "A\n", true), ("b.txt", "B\n", false)]);
        assert_eq!(i.end_line, 5);
        // Partly quoted delimiters turn expansion off too; CRLF bodies are kept as is.
        let i = one("RUN 3<<E\"O\"F cat\r\nx\r\nEOF\r\n");
        assert_eq!(
            (
                i.heredocs[0].name.as_str(),
                i.heredocs[0].content.as_str(),
                i.heredocs[0].expand
            ),
            ("EOF", "x\r\n", false)
        );
        // Only RUN, COPY and ADD (also under ONBUILD), and not in exec form.
        assert_eq!(one("ONBUILD RUN <<X\nx\nX\n").heredocs.len(), 1);
        assert_eq!(parse("CMD <<X\nx\nX\n").unwrap().instructions.len(), 3);
        assert_eq!(parse("RUN [\"<<X\"]\nX\n").unwrap().instructions.len(), 2);
        // Not heredocs: here-strings, bare `<<`, and `<<-` followed by a space.
        assert_eq!(one("RUN cat <<<X").heredocs, []);
        assert_eq!(parse("RUN a << \nEOF").unwrap().instructions.len(), 2);
        assert_eq!(one("RUN a << EOF\nx\nEOF").heredocs[0].name, "EOF");
        assert_eq!(parse("RUN a <<- EOF\nx").unwrap().instructions.len(), 2);
        let e = fail("FROM a\nRUN <<EOF\nno end\n");
        assert_eq!((e.line, e.column), (2, 1));
        assert!(e.message.starts_with("unterminated heredoc"));
    }

    #[test]
    fn heredoc_after_continuation() {
        let i = one("RUN --mount=type=cache,target=/c \\\n  <<EOF\nx\nEOF\n");
        assert_eq!((i.heredocs.len(), i.end_line), (1, 4));
    }

    #[test]
    fn long_lines_fail_like_buildkit() {
        let ok = format!("RUN {}\n", "a".repeat(MAX_LINE - 5));
        assert!(parse(&ok).is_ok());
        let long = format!("FROM a\nRUN {}\n", "a".repeat(MAX_LINE - 4));
        let e = fail(&long);
        assert_eq!(e.line, 2);
        let last = format!("RUN {}", "a".repeat(MAX_LINE - 4));
        assert!(parse(&last).is_err());
    }

    #[test]
    fn parse_words_matches_buildkit() {
        assert_eq!(
            parse_words("a=\"b c\" d='e f'", '\\'),
            ["a=\"b c\"", "d='e f'"]
        );
        assert_eq!(parse_words("a\\ b c", '\\'), ["a\\ b", "c"]);
        assert_eq!(parse_words("\"\"", '\\'), ["\"\""]);
        assert_eq!(parse_words("a\\", '\\'), ["a"]);
    }

    #[test]
    fn split_directive_like_go_regexp() {
        assert_eq!(split_directive("escape = `  "), Some(("escape", "`")));
        assert_eq!(split_directive("a1=b c"), Some(("a1", "b c")));
        assert_eq!(split_directive("1a=b"), None);
        assert_eq!(split_directive("a="), None);
        assert_eq!(split_directive("a=\t "), Some(("a", " ")));
        assert_eq!(split_directive("a b=c"), None);
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_dockerfile_syntax(s in "[A-Za-z\\[\\]\"'`\\\\<>=#$ {}:,\n\r\t-]{0,80}") {
            let _ = parse(&s);
            let _ = parse(&format!("# escape=`\n{s}"));
        }
    }
}
