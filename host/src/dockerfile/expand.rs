//! Word expansion with BuildKit's shell lexer rules (`frontend/dockerfile/shell/lex.go`).
//!
//! One lexer serves every caller: plain expansion (`expand_word`), word splitting
//! (`expand_words`) and the parser's heredoc detection, which keeps quotes, escapes
//! and unset variables verbatim.

use icu_properties::CodePointMapData;
use icu_properties::props::{GeneralCategory, GeneralCategoryGroup};

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("failed to process {word:?}: {reason}")]
pub struct ExpandError {
    /// The word as written.
    pub word: String,
    /// What went wrong, in BuildKit's words.
    pub reason: String,
}

/// Expands `$V`, `${V...}`, quotes and escapes in `word`, keeping whitespace.
pub fn expand_word(
    word: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, ExpandError> {
    Lexer::new(word, lookup, escape, Mode::default())
        .run(word)
        .map(|(result, _)| result)
}

/// Expands `text` and splits it on unquoted whitespace (BuildKit's `ProcessWords`).
pub fn expand_words(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<Vec<String>, ExpandError> {
    Lexer::new(text, lookup, escape, Mode::default())
        .run(text)
        .map(|(_, words)| words)
}

/// Lexer switches BuildKit's parser flips for heredoc detection.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mode {
    /// Keep quote characters in the output.
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset: bool,
}

/// Splits `text` into words with `mode`, expanding nothing (every variable is unset).
pub(crate) fn words_verbatim(text: &str, mode: Mode) -> Result<Vec<String>, ExpandError> {
    Lexer::new(text, &|_| None, '\\', mode)
        .run(text)
        .map(|(_, words)| words)
}

/// Go's `unicode.IsLetter`: general category L.
pub(crate) fn is_go_letter(ch: char) -> bool {
    if ch.is_ascii() {
        return ch.is_ascii_alphabetic();
    }
    GeneralCategoryGroup::Letter.contains(CodePointMapData::<GeneralCategory>::new().get(ch))
}

/// Go's `unicode.IsDigit`: general category Nd.
pub(crate) fn is_go_digit(ch: char) -> bool {
    if ch.is_ascii() {
        return ch.is_ascii_digit();
    }
    CodePointMapData::<GeneralCategory>::new().get(ch) == GeneralCategory::DecimalNumber
}

/// How much longer than its input an expansion may get. Nested `${V//a/b}` grow
/// multiplicatively, so a few bytes of Dockerfile could otherwise exhaust memory
/// (BuildKit has no bound). Linux caps one argument or environment string at
/// 128 KiB, so no usable value comes near this.
const MAX_GROWTH: usize = 1 << 20;

/// Bound on the bytes all substitutions of one word produce together, so that many
/// large substitutions cannot take minutes either.
const MAX_PRODUCED: usize = 16 << 20;

/// Bound on the matching work of one word: `#`, `%` and `/` cost pattern length
/// times value length each. A 256-character pattern still matches against the
/// longest value Linux passes (128 KiB), and the worst word the fuzzer found
/// costs a tenth of a second in a release build (a second at `1 << 28`).
const MAX_MATCH_WORK: usize = 1 << 25;

/// Go's `string(rune)` for a character that may be the end of input.
fn rune_str(ch: Option<char>) -> char {
    ch.unwrap_or('\u{FFFD}')
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    mode: Mode,
    raw_escapes: bool,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    /// The longest result an expansion may produce (input length plus `MAX_GROWTH`).
    limit: usize,
    /// Bytes substitutions may still produce (`MAX_PRODUCED` at the start).
    produce_left: usize,
    /// Matching steps left (`MAX_MATCH_WORK` at the start).
    match_left: usize,
    /// Shared by nested `stop_on` calls: BuildKit resets one buffer for every
    /// nesting level, which decides how `${V:-a b}` splits into words.
    words_buf: String,
}

/// Accumulates words while scanning one nesting level.
#[derive(Default)]
struct Words {
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, buf: &mut String, ch: char) {
        if ch.is_whitespace() && self.in_word {
            if !buf.is_empty() {
                self.words.push(std::mem::take(buf));
                self.in_word = false;
            }
        } else if !ch.is_whitespace() {
            self.add_raw_char(buf, ch);
        }
    }

    fn add_raw_char(&mut self, buf: &mut String, ch: char) {
        buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, buf: &mut String, s: &str) {
        for ch in s.chars() {
            self.add_char(buf, ch);
        }
    }

    fn add_raw_string(&mut self, buf: &mut String, s: &str) {
        buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self, buf: &mut String) -> Vec<String> {
        if !buf.is_empty() {
            self.words.push(std::mem::take(buf));
        }
        self.words
    }
}

impl<'a> Lexer<'a> {
    fn new(
        text: &str,
        lookup: &'a dyn Fn(&str) -> Option<String>,
        escape: char,
        mode: Mode,
    ) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        // Go's text/scanner drops a byte-order mark at the very start.
        if chars.first() == Some(&'\u{FEFF}') {
            chars.remove(0);
        }
        Lexer {
            chars,
            pos: 0,
            escape,
            mode,
            raw_escapes: mode.raw_escapes,
            lookup,
            limit: text.len().saturating_add(MAX_GROWTH),
            produce_left: MAX_PRODUCED,
            match_left: MAX_MATCH_WORK,
            words_buf: String::new(),
        }
    }

    fn run(mut self, source: &str) -> Result<(String, Vec<String>), ExpandError> {
        let raw = self.raw_escapes;
        self.stop_on(None, raw).map_err(|reason| ExpandError {
            word: source.to_owned(),
            reason,
        })
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), String> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let out = self.stop_on_inner(stop);
        self.raw_escapes = saved;
        out
    }

    fn stop_on_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        self.words_buf.clear();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                return Ok((result, words.finish(&mut self.words_buf)));
            }
            match ch {
                '$' => {
                    let tmp = self.dollar()?;
                    result.push_str(&tmp);
                    self.check_len(&result)?;
                    words.add_string(&mut self.words_buf, &tmp);
                }
                '<' => {
                    let tmp = self.possible_heredoc();
                    result.push_str(&tmp);
                    words.add_raw_string(&mut self.words_buf, &tmp);
                }
                '\'' => {
                    let tmp = self.single_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&mut self.words_buf, &tmp);
                }
                '"' => {
                    let tmp = self.double_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&mut self.words_buf, &tmp);
                }
                _ => {
                    self.next();
                    if ch == self.escape {
                        if self.raw_escapes {
                            words.add_raw_char(&mut self.words_buf, ch);
                            result.push(ch);
                        }
                        // An escape at the very end is dropped.
                        let Some(escaped) = self.next() else { break };
                        words.add_raw_char(&mut self.words_buf, escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(&mut self.words_buf, ch);
                        result.push(ch);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok((result, words.finish(&mut self.words_buf)))
    }

    fn single_quote(&mut self) -> Result<String, String> {
        let mut result = String::new();
        let open = self.next();
        if self.mode.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    );
                }
                Some('\'') => {
                    if self.mode.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, String> {
        let mut result = String::new();
        let open = self.next();
        if self.mode.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    );
                }
                Some('"') => {
                    self.next();
                    if self.mode.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    result.push_str(&self.dollar()?);
                    self.check_len(&result)?;
                }
                Some(_) => {
                    let mut ch = self.next().unwrap_or_default();
                    if ch == self.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            // The loop reports the missing closing quote.
                            None => continue,
                            Some(next) if next == '"' || next == '$' || next == self.escape => {
                                ch = next;
                                self.next();
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn check_len(&self, result: &str) -> Result<(), String> {
        if result.len() > self.limit {
            return Err(too_long(self.limit));
        }
        Ok(())
    }

    fn lookup(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    /// Expands the `$` reference at the cursor, charging its length to the budget.
    fn dollar(&mut self) -> Result<String, String> {
        let value = self.substitution()?;
        self.produce_left = self.produce_left.checked_sub(value.len()).ok_or_else(|| {
            format!(
                "substitutions produce more than {MAX_PRODUCED} bytes in total: \
                 expand in smaller steps"
            )
        })?;
        Ok(value)
    }

    fn substitution(&mut self) -> Result<String, String> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.mode.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.name();
        let first = self.next();
        let mut modifier = String::from(rune_str(first));
        match first {
            Some('}') => Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.mode.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':' | '+' | '-' | '?' | '#' | '%') => {
                let null_is_unset = first == Some(':');
                let op = if null_is_unset {
                    let op = self.next();
                    modifier.push(rune_str(op));
                    op
                } else {
                    first
                };
                let trims = matches!(op, Some('#' | '%'));
                if null_is_unset && trims {
                    return Err(format!("unsupported modifier ({modifier}) in substitution"));
                }
                let word = self.nested(Some('}'), trims, "syntax error: missing '}'")?;
                let value = self.lookup(&name);
                if self.mode.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}{modifier}{word}}}"));
                }
                let unset_or_null = match &value {
                    None => true,
                    Some(v) => null_is_unset && v.is_empty(),
                };
                match op {
                    Some('-') => Ok(if unset_or_null {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    Some('+') => Ok(if unset_or_null { String::new() } else { word }),
                    Some('?') => match value {
                        Some(v) if !unset_or_null => Ok(v),
                        _ => {
                            let default = if value.is_none() {
                                "is not allowed to be unset"
                            } else {
                                "is not allowed to be empty"
                            };
                            let message = if word.is_empty() { default } else { &word };
                            Err(format!("{name}: {message}"))
                        }
                    },
                    Some(op @ ('#' | '%')) => {
                        let value = value.unwrap_or_default();
                        let (pattern, greedy) = match word.strip_prefix(op) {
                            Some(rest) => (rest, true),
                            None => (word.as_str(), false),
                        };
                        if op == '%' {
                            trim_suffix(pattern, &value, greedy, &mut self.match_left)
                        } else {
                            trim_prefix(pattern, &value, greedy, &mut self.match_left)
                        }
                    }
                    _ => Err(format!("unsupported modifier ({modifier}) in substitution")),
                }
            }
            Some('/') => {
                let all = self.peek() == Some('/');
                if all {
                    self.next();
                }
                let pattern = self.nested(Some('/'), true, "syntax error: missing '/' in ${}")?;
                let replacement = self.nested(Some('}'), true, "syntax error: missing '}'")?;
                let value = self.lookup(&name);
                if self.mode.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                }
                let value = value.unwrap_or_default();
                let pat = Pattern::compile(&pattern, true)
                    .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
                pat.replace(&value, &replacement, all, self.limit, &mut self.match_left)
            }
            _ => Err(format!("unsupported modifier ({modifier}) in substitution")),
        }
    }

    /// Scans a nested word up to `stop`; running out of input is reported as `at_end`.
    fn nested(&mut self, stop: Option<char>, raw: bool, at_end: &str) -> Result<String, String> {
        match self.stop_on(stop, raw) {
            Ok((word, _)) => Ok(word),
            Err(_) if self.peek().is_none() => Err(at_end.into()),
            Err(e) => Err(e),
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_go_digit(ch) {
                while let Some(d) = self.peek().filter(|&c| is_go_digit(c)) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !is_go_letter(ch) && !is_go_digit(ch) && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.next();
        let mut result = String::from("<<");
        while let Some(ch) = self.peek().filter(|c| matches!(c, '\t' | '\r' | ' ')) {
            result.push(ch);
            self.next();
        }
        result
    }
}

/// One element of a `${V#p}`-style pattern once converted (BuildKit turns these into
/// a regular expression where `.` does not match a newline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Any,
    Star,
}

/// A compiled shell pattern with leftmost-first (Perl/RE2) match semantics.
struct Pattern {
    toks: Vec<Tok>,
    greedy: bool,
}

impl Pattern {
    fn compile(pattern: &str, greedy: bool) -> Result<Pattern, String> {
        let mut chars: Vec<char> = pattern.chars().collect();
        if chars.first() == Some(&'\u{FEFF}') {
            chars.remove(0);
        }
        let mut toks = Vec::with_capacity(chars.len());
        let mut i = 0;
        while i < chars.len() {
            let ch = chars[i];
            i += 1;
            match ch {
                '*' => toks.push(Tok::Star),
                '?' => toks.push(Tok::Any),
                '\\' => {
                    // `\}` and `\/` only protect the delimiters of `${...}`.
                    if matches!(chars.get(i), Some('}' | '/')) {
                        continue;
                    }
                    let escaped = chars.get(i).copied();
                    i += 1;
                    match escaped {
                        Some(c @ ('*' | '?' | '\\')) => toks.push(Tok::Lit(c)),
                        other => return Err(format!("invalid escape '\\{}'", rune_str(other))),
                    }
                }
                c => toks.push(Tok::Lit(c)),
            }
        }
        Ok(Pattern { toks, greedy })
    }

    /// For every start position in `s`, the end of the match a leftmost-first
    /// regular expression engine prefers there, if any. Computed token by token
    /// from the end, so time is linear in pattern length times text length.
    /// Fails when `work` (steps left) cannot pay for this match.
    fn first_ends(&self, s: &[char], work: &mut usize) -> Result<Vec<Option<usize>>, String> {
        let n = s.len();
        let cost = (self.toks.len() + 1).saturating_mul(n + 1);
        *work = work.checked_sub(cost).ok_or_else(|| {
            format!(
                "matching a pattern of {} characters against {n} characters exceeds the \
                 matching budget of {MAX_MATCH_WORK} steps: shorten the pattern or the value",
                self.toks.len()
            )
        })?;
        let mut next: Vec<Option<usize>> = (0..=n).map(Some).collect();
        for tok in self.toks.iter().rev() {
            let mut cur = vec![None; n + 1];
            match *tok {
                Tok::Lit(c) => {
                    for pos in 0..n {
                        if s[pos] == c {
                            cur[pos] = next[pos + 1];
                        }
                    }
                }
                Tok::Any => {
                    for pos in 0..n {
                        if s[pos] != '\n' {
                            cur[pos] = next[pos + 1];
                        }
                    }
                }
                Tok::Star => {
                    // The star can stop anywhere from `pos` up to the next newline;
                    // greedy prefers the farthest stop that lets the rest match,
                    // lazy the nearest.
                    let mut stop: Option<usize> = None;
                    for pos in (0..=n).rev() {
                        let here = next[pos].map(|_| pos);
                        let line_end = pos == n || s[pos] == '\n';
                        stop = match (line_end, self.greedy) {
                            (true, _) => here,
                            (false, true) => stop.or(here),
                            (false, false) => here.or(stop),
                        };
                        cur[pos] = stop.and_then(|q| next[q]);
                    }
                }
            }
            next = cur;
        }
        Ok(next)
    }

    /// The leftmost match at or after `from`, as (start, end).
    fn find(ends: &[Option<usize>], from: usize) -> Option<(usize, usize)> {
        (from..ends.len()).find_map(|start| ends[start].map(|end| (start, end)))
    }

    /// Go's `ReplaceAllString` (all) or a single literal splice of the first match;
    /// fails once the result would pass `limit` bytes.
    fn replace(
        &self,
        value: &str,
        replacement: &str,
        all: bool,
        limit: usize,
        work: &mut usize,
    ) -> Result<String, String> {
        let s: Vec<char> = value.chars().collect();
        let ends = self.first_ends(&s, work)?;
        let text = |a: usize, b: usize| s[a..b].iter().collect::<String>();
        if !all {
            let out = match Self::find(&ends, 0) {
                Some((a, b)) => format!("{}{replacement}{}", text(0, a), text(b, s.len())),
                None => value.to_owned(),
            };
            return if out.len() > limit {
                Err(too_long(limit))
            } else {
                Ok(out)
            };
        }
        let mut out = String::new();
        let mut last_end = 0;
        let mut search = 0;
        while search <= s.len() {
            let Some((a, b)) = Self::find(&ends, search) else {
                break;
            };
            out.push_str(&text(last_end, a));
            // An empty match right after a previous match is not replaced again.
            if b > last_end || a == 0 {
                expand_template(&mut out, replacement, &text(a, b), limit)?;
            }
            if out.len() > limit {
                return Err(too_long(limit));
            }
            last_end = b;
            let width = usize::from(search < s.len());
            if search + width > b {
                search += width;
            } else if search + 1 > b {
                search += 1;
            } else {
                search = b;
            }
        }
        out.push_str(&text(last_end, s.len()));
        if out.len() > limit {
            return Err(too_long(limit));
        }
        Ok(out)
    }
}

fn too_long(limit: usize) -> String {
    format!(
        "expansion result is longer than {limit} bytes: a nested or repeated substitution \
         multiplies the text; expand in smaller steps"
    )
}

/// Go's regexp template expansion for a pattern without groups: `$0` and `${0}`
/// are the match, `$$` is `$`, other references are empty, malformed ones literal.
/// Appends to `out`, failing once it passes `limit` bytes.
fn expand_template(
    out: &mut String,
    template: &str,
    matched: &str,
    limit: usize,
) -> Result<(), String> {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (braced, body) = match rest.strip_prefix('{') {
            Some(b) => (true, b),
            None => (false, rest),
        };
        let len: usize = body
            .chars()
            .take_while(|&c| is_go_letter(c) || is_go_digit(c) || c == '_')
            .map(char::len_utf8)
            .sum();
        let name = &body[..len];
        let closed = !braced || body[len..].starts_with('}');
        if name.is_empty() || !closed {
            out.push('$');
            continue;
        }
        rest = &body[len + usize::from(braced)..];
        if name == "0" {
            out.push_str(matched);
            if out.len() > limit {
                return Err(too_long(limit));
            }
        }
    }
    out.push_str(rest);
    Ok(())
}

fn trim_prefix(
    pattern: &str,
    value: &str,
    greedy: bool,
    work: &mut usize,
) -> Result<String, String> {
    let pat = Pattern::compile(pattern, greedy)
        .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
    let s: Vec<char> = value.chars().collect();
    Ok(match pat.first_ends(&s, work)?[0] {
        Some(end) => s[end..].iter().collect(),
        None => value.to_owned(),
    })
}

fn trim_suffix(
    pattern: &str,
    value: &str,
    greedy: bool,
    work: &mut usize,
) -> Result<String, String> {
    // Matching the reversed pattern against the reversed value turns the
    // shortest or longest rightmost match into a leftmost one.
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy, work)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverses a pattern while keeping each `\x` escape pair in order.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; chars.len()];
    let last = chars.len().saturating_sub(1);
    let mut i = 0;
    while i < chars.len() {
        let at = last - i;
        if chars[i] == '\\' && i != last {
            out[at - 1] = '\\';
            out[at] = chars[i + 1];
            i += 2;
        } else {
            out[at] = chars[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// The environment BuildKit's own lexer tests use.
    fn bk_env() -> impl Fn(&str) -> Option<String> {
        env(&[
            ("PWD", "/home"),
            ("SHELL", "bash"),
            ("KOREAN", "한국어"),
            ("NULL", ""),
        ])
    }

    fn word(w: &str) -> Result<String, ExpandError> {
        expand_word(w, &bk_env(), '\\')
    }

    fn ok(w: &str, expected: &str) {
        assert_eq!(word(w).as_deref(), Ok(expected), "input {w:?}");
    }

    fn err(w: &str) {
        assert!(word(w).is_err(), "input {w:?} gave {:?}", word(w));
    }

    #[test]
    fn plain_and_simple_variables() {
        ok("hello", "hello");
        ok("he$PWD", "he/home");
        ok("he${PWD}", "he/home");
        ok("he$pwd.", "he.");
        ok("he${hi}xx", "hexx");
        ok("$.", "$.");
        ok("he$.x", "he$.x");
        ok("he$1x", "hex");
        ok("$999aaa", "aaa");
        ok("$@@@", "@@");
        ok("${aaa}}", "}");
        ok("$KOREAN", "한국어");
        ok("안녕$KOREAN", "안녕한국어");
        ok("$", "$");
    }

    #[test]
    fn quotes_and_escapes() {
        ok("he'll'o", "hello");
        ok("he\\'llo", "he'llo");
        ok("abc\\tdef", "abctdef");
        ok("\"abc\\tdef\"", "abc\\tdef");
        ok("\"abc\\\\tdef\"", "abc\\tdef");
        ok("'abc\\tdef'", "abc\\tdef");
        ok("hello\\", "hello");
        ok("hello\\\\", "hello\\");
        ok("\"hel'lo\"", "hel'lo");
        ok("'hello\\'", "hello\\");
        ok("\"''\"", "''");
        ok("he\\$PWD", "he$PWD");
        ok("he\\\\$PWD", "he\\/home");
        ok("\"he\\$PWD\"", "he$PWD");
        ok("\"he\\\\$PWD\"", "he\\/home");
        ok("'$PWD'", "$PWD");
        ok("\"he'$PWD'\"", "he'/home'");
        ok("\\${}aaa", "${}aaa");
        err("he'llo");
        err("he\\\\'llo");
        err("\"hello");
        err("\"hello\\\"");
        err("'hello");
    }

    #[test]
    fn escape_token_is_configurable() {
        let e = env(&[("A", "x")]);
        assert_eq!(expand_word("`$A$A", &e, '`').unwrap(), "$Ax");
        assert_eq!(expand_word("\\$A", &e, '`').unwrap(), "\\x");
        assert_eq!(expand_word("\"`\"\"", &e, '`').unwrap(), "\"");
    }

    #[test]
    fn default_and_alternative_values() {
        ok("he${XXX:-000}xx", "he000xx");
        ok("he${PWD:-000}xx", "he/homexx");
        ok("he${XXX:-$PWD}xx", "he/homexx");
        ok("he${XXX:-${PWD:-yyy}}xx", "he/homexx");
        ok("he${XXX:-${YYY:-yyy}}xx", "heyyyxx");
        ok("he${XXX:+${PWD}}xx", "hexx");
        ok("he${PWD:+${SHELL}}xx", "hebashxx");
        ok("he${PWD:+${PWD}:}xx", "he/home:xx");
        ok("he${XXX:-\\$PWD:}xx", "he$PWD:xx");
        ok("he${XXX:-\\${PWD}z}xx", "he${PWDz}xx");
        ok("${aaa:-bbb {foo}", "bbb {foo");
        ok("${NULL-x}", "");
        ok("${NULL:-x}", "x");
        ok("${NULL+x}", "x");
        ok("${NULL:+x}", "");
        ok("${XXX+x}", "");
        ok("${1:-bbb}", "bbb");
        ok("${@:-bbb}aaa", "bbbaaa");
    }

    #[test]
    fn mandatory_values() {
        ok("he${PWD?}", "he/home");
        ok("he${PWD:?}", "he/home");
        ok("he${NULL?}", "he");
        let e = word("${NULL:?}").unwrap_err();
        assert_eq!(e.reason, "NULL: is not allowed to be empty");
        let e = word("${XXX?}").unwrap_err();
        assert_eq!(e.reason, "XXX: is not allowed to be unset");
        let e = word("${XXX:?message here$SHELL}").unwrap_err();
        assert_eq!(e.reason, "XXX: message herebash");
        assert_eq!(
            e.to_string(),
            "failed to process \"${XXX:?message here$SHELL}\": XXX: message herebash"
        );
    }

    #[test]
    fn syntax_errors() {
        for w in [
            "${}",
            "he${}xx",
            "he${.}",
            "he${XXX:YYY}",
            "he${PWD",
            "he${PWD:=000}xx",
            "${{aaa}",
            "${aaa:-bbb",
            "${aaa:-bbb ${foo}",
            "${:}",
            "${:-bbb}",
            "${FOO:#}",
            "${FOO:%%}",
            "${FOO//ww}",
            "${FOO//}",
        ] {
            err(w);
        }
        assert_eq!(word("${").unwrap_err().reason, "syntax error: missing '}'");
        assert_eq!(
            word("${:}").unwrap_err().reason,
            "syntax error: bad substitution"
        );
        assert_eq!(
            word("${A:#x}").unwrap_err().reason,
            "unsupported modifier (:#) in substitution"
        );
        assert_eq!(
            word("${A/x").unwrap_err().reason,
            "syntax error: missing '/' in ${}"
        );
    }

    fn with(pairs: &[(&str, &str)], w: &str) -> String {
        expand_word(w, &env(pairs), '\\').unwrap()
    }

    #[test]
    fn prefix_and_suffix_removal() {
        let f = [("FOO", "xxyy")];
        assert_eq!(with(&f, "${FOO#*x*y}"), "y");
        assert_eq!(with(&f, "${FOO#*}"), "xxyy");
        assert_eq!(with(&f, "${FOO#}"), "xxyy");
        assert_eq!(with(&f, "${FOO##*x}"), "yy");
        assert_eq!(with(&f, "${FOO##}"), "xxyy");
        assert_eq!(with(&f, "${FOO%y*}"), "xxy");
        assert_eq!(with(&f, "${FOO%%y*}"), "xx");
        assert_eq!(with(&f, "${FOO%x}"), "xxyy");
        assert_eq!(with(&f, "${FOO%}"), "xxyy");
        assert_eq!(with(&f, "${ABC:-.}${FOO%x}${ABC:-.}"), ".xxyy.");
        assert_eq!(with(&[("FOO", "xxyy"), ("BAR", "x")], "${FOO#$BAR}"), "xyy");
        assert_eq!(with(&[("FOO", "???y")], "${FOO#?\\?}"), "?y");
        assert_eq!(with(&[("FOO", "xx**")], "${FOO%%\\**}"), "xx");
        assert_eq!(with(&[("FOO", "a***yy*")], "${FOO%%\\**\\*}"), "a");
        assert_eq!(
            with(
                &[("FOO", "()[]{}^$.*?|\\x")],
                "${FOO#()[]{\\}^$.\\*\\?|\\\\}"
            ),
            "x"
        );
        assert_eq!(with(&[("F", "a/b/c.tar.gz")], "${F##*/}"), "c.tar.gz");
        assert_eq!(with(&[("F", "a/b/c.tar.gz")], "${F%.*}"), "a/b/c.tar");
        assert_eq!(with(&[("F", "a/b/c.tar.gz")], "${F%%.*}"), "a/b/c");
        // Brackets are literal characters in BuildKit's patterns.
        assert_eq!(with(&[("F", "[ab]c")], "${F#[ab]}"), "c");
        assert_eq!(with(&[("F", "ac")], "${F#[ab]}"), "ac");
        // `?` and `*` do not cross a newline (Go's `.`).
        assert_eq!(with(&[("F", "a\nb")], "${F#a?}"), "a\nb");
        assert_eq!(with(&[("F", "ab\ncd")], "${F#*}"), "ab\ncd");
        assert_eq!(with(&[("F", "ab\ncd")], "${F##*}"), "\ncd");
        let e = expand_word("${F#\\x}", &env(&[("F", "a")]), '\\').unwrap_err();
        assert_eq!(
            e.reason,
            "invalid pattern (\\x) in substitution: invalid escape '\\x'"
        );
    }

    #[test]
    fn replacement() {
        let needle = [("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")];
        assert_eq!(
            with(&needle, "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}"),
            "/foo.*/*.txt - /foo..*.txt"
        );
        let tmp = [("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")];
        assert_eq!(
            with(&tmp, "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}"),
            "/tmp/bar.txt - /bar.txt"
        );
        let q = [("FOO", "/a/foo/b/c.txt"), ("NEEDLE", "/?/"), ("R", "/")];
        assert_eq!(
            with(&q, "${FOO/$NEEDLE/$R} - ${FOO//$NEEDLE/$R}"),
            "/foo/b/c.txt - /foo/c.txt"
        );
        assert_eq!(
            with(&[("FOO", "/tmp/foo.txt")], "${FOO//\\//\\/}"),
            "\\/tmp\\/foo.txt"
        );
        assert_eq!(
            with(&[("FOO", "xxyy"), ("BAR", "")], "${FOO/$BAR/ww}"),
            "wwxxyy"
        );
        assert_eq!(with(&[("FOO", "xxyy")], "${FOO///}"), "xxyy");
        assert_eq!(with(&[], "${FOO///}"), "");
        // Empty matches: Go replaces at every position but not right after a match.
        assert_eq!(with(&[("F", "ab"), ("E", "")], "${F//$E/-}"), "-a-b-");
        assert_eq!(with(&[("F", "abc")], "${F//b*/X}"), "aX");
        // The replace-all path uses Go's template syntax, where $0 is the match.
        assert_eq!(with(&[("F", "ab"), ("R", "<$0>")], "${F//b/$R}"), "a<b>");
        assert_eq!(with(&[("F", "ab"), ("R", "<$0>")], "${F/b/$R}"), "a<$0>");
        assert_eq!(with(&[("F", "ab"), ("R", "$1x$$")], "${F//b/$R}"), "a$");
        assert_eq!(with(&[("F", "ab"), ("R", "${0}|$")], "${F//b/$R}"), "ab|$");
    }

    #[test]
    fn long_values_and_patterns_do_not_recurse() {
        let v = "ab".repeat(5_000);
        let p = "a".repeat(3_000);
        let e = env(&[("V", &v), ("P", &p)]);
        assert_eq!(
            expand_word("${V//a/x}", &e, '\\').unwrap(),
            "xb".repeat(5_000)
        );
        assert_eq!(expand_word("${V#$P}", &e, '\\').unwrap(), v);
        assert_eq!(expand_word("${V%%b*}", &e, '\\').unwrap(), "a");
    }

    #[test]
    fn multiplying_substitutions_are_bounded() {
        // Found by fuzzing: nested replace-all with an empty pattern inserts the
        // replacement at every position, so each level multiplies the length.
        let a = "o/".repeat(200);
        let e = env(&[("A", &a)]);
        let one = expand_word("${A///${A}}", &e, '\\').unwrap();
        assert_eq!(one.len(), 401 * 400 + 400);
        let err = expand_word("${A///${A///${A}}}", &e, '\\').unwrap_err();
        assert!(
            err.reason.starts_with("expansion result is longer than"),
            "{err}"
        );
        // `$0` in a replace-all replacement repeats the match.
        let zeros = "$0".repeat(3_000);
        let e = env(&[("A", &a), ("R", &zeros)]);
        assert!(expand_word("${A//?/$R}", &e, '\\').is_err());
        // A single replacement splices the replacement literally.
        assert_eq!(
            expand_word("${A/?/$R}", &e, '\\').unwrap().len(),
            6_000 + 399
        );
        // Plain repetition is bounded too, in and out of double quotes.
        let big = "x".repeat(300_000);
        let e = env(&[("B", &big)]);
        assert_eq!(expand_word("$B$B$B", &e, '\\').unwrap().len(), 900_000);
        assert!(expand_word("$B$B$B$B", &e, '\\').is_err());
        assert!(expand_word("\"$B$B$B$B\"", &e, '\\').is_err());
        assert!(expand_words("${U:-$B$B$B$B}", &e, '\\').is_err());
    }

    #[test]
    fn long_text_without_growth_is_not_limited() {
        let body = "line of a large heredoc\n".repeat(100_000);
        let e = env(&[("A", "a")]);
        let word = format!("{body}$A");
        assert_eq!(expand_word(&word, &e, '\\').unwrap(), format!("{body}a"));
    }

    #[test]
    fn work_over_a_whole_word_is_bounded() {
        // Each substitution is small, but together they would take minutes.
        let big = "x".repeat(600_000);
        let e = env(&[("B", &big)]);
        assert_eq!(expand_word("${U:+$B}", &e, '\\').unwrap(), "");
        let err = expand_word(&"${U:+$B}".repeat(30), &e, '\\').unwrap_err();
        assert!(err.reason.contains("in total"), "{err}");
        let v = "a".repeat(8_000);
        let p = "a".repeat(100);
        let e = env(&[("V", &v), ("P", &p)]);
        assert_eq!(expand_word("${V#$P}", &e, '\\').unwrap().len(), 7_900);
        let err = expand_word(&"${U:+${V#$P}}".repeat(400), &e, '\\').unwrap_err();
        assert!(err.reason.contains("matching budget"), "{err}");
    }

    #[test]
    fn matching_work_is_bounded() {
        let v = "a".repeat(20_000);
        let e = env(&[("V", &v), ("P", &v)]);
        let err = expand_word("${V#$P}", &e, '\\').unwrap_err();
        assert!(err.reason.contains("exceeds the matching budget"), "{err}");
        assert!(expand_word("${V//$P/x}", &e, '\\').is_err());
        assert_eq!(
            expand_word("${V%%$P}", &env(&[("V", &v), ("P", "a*")]), '\\').unwrap(),
            ""
        );
    }

    #[test]
    fn word_splitting() {
        let e = env(&[
            ("space", "abc  def"),
            ("leading", "  ab c"),
            ("trailing", "ab c   "),
        ]);
        let words = |t: &str| expand_words(t, &e, '\\');
        assert_eq!(words("hello there     ").unwrap(), ["hello", "there"]);
        assert_eq!(words("hello${space}bye").unwrap(), ["helloabc", "defbye"]);
        assert_eq!(words("hello\"${space}\"bye").unwrap(), ["helloabc  defbye"]);
        assert_eq!(
            words("hello${leading}def").unwrap(),
            ["hello", "ab", "cdef"]
        );
        assert_eq!(
            words("hello\"${leading}\" def").unwrap(),
            ["hello  ab c", "def"]
        );
        assert_eq!(words("hello${trailing}d").unwrap(), ["helloab", "c", "d"]);
        assert_eq!(words("hel\"lo${trailing}\"").unwrap(), ["helloab c   "]);
        assert_eq!(words("hello\\ there").unwrap(), ["hello there"]);
        assert_eq!(words("hello\\\" there").unwrap(), ["hello\"", "there"]);
        assert_eq!(words("hello'\\\\there'").unwrap(), ["hello\\\\there"]);
        assert_eq!(words("a << b").unwrap(), ["a", "<< b"]);
        assert!(words("hello\" there").is_err());
    }

    #[test]
    fn word_splitting_with_modifiers_shares_the_buffer() {
        // BuildKit's nested scan resets the word buffer, dropping the text
        // before a `${V:-...}` from the word.
        let e = env(&[("V", "x y")]);
        assert_eq!(expand_words("ab${U:-c d}e", &e, '\\').unwrap(), ["c", "de"]);
        assert_eq!(expand_words("80 ab${V:+z}", &e, '\\').unwrap(), ["80", "z"]);
    }

    #[test]
    fn verbatim_mode_keeps_everything() {
        let mode = Mode {
            raw_quotes: true,
            raw_escapes: true,
            skip_unset: true,
        };
        assert_eq!(
            words_verbatim("RUN \"a b\" 'c' \\d $X ${Y:-z} ${Z/a/b}", mode).unwrap(),
            ["RUN", "\"a b\"", "'c'", "\\d", "$X", "${Y:-z}", "${Z/a/b}"]
        );
    }

    #[test]
    fn leading_byte_order_mark_is_dropped() {
        ok("\u{FEFF}abc", "abc");
        ok("a\u{FEFF}bc", "a\u{FEFF}bc");
    }

    #[test]
    fn names_use_go_unicode_categories() {
        let e = env(&[("é", "1"), ("a", "2")]);
        assert_eq!(expand_word("$é.", &e, '\\').unwrap(), "1.");
        // U+0301 (a combining mark) is not a letter, so it ends the name.
        assert_eq!(expand_word("$a\u{301}", &e, '\\').unwrap(), "2\u{301}");
        // U+00B2 (superscript two) is not a decimal digit.
        assert_eq!(expand_word("$\u{B2}", &e, '\\').unwrap(), "$\u{B2}");
        // U+0663 (Arabic-Indic three) is one.
        assert_eq!(expand_word("$\u{663}x", &e, '\\').unwrap(), "x");
    }

    #[test]
    fn reverse_pattern_keeps_escape_pairs() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
        assert_eq!(reverse_pattern("\\\\b"), "b\\\\");
        assert_eq!(reverse_pattern(""), "");
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*", esc in prop::sample::select(vec!['\\', '`'])) {
            let e = env(&[("A", "a b"), ("B", "")]);
            let _ = expand_word(&s, &e, esc);
            let _ = expand_words(&s, &e, esc);
        }

        #[test]
        fn never_panics_on_expansion_syntax(s in "[$a-c{}:#%/?+*\\\\\"' \n-]{0,24}") {
            let e = env(&[("a", "ab\nc"), ("b", "")]);
            let _ = expand_word(&s, &e, '\\');
            let _ = expand_words(&s, &e, '`');
        }

        #[test]
        fn plain_word_expands_to_itself(s in "[A-Za-z0-9_.,:/@=+-]{0,40}") {
            let e = env(&[("A", "x")]);
            prop_assert_eq!(expand_word(&s, &e, '\\').unwrap(), s);
        }

        #[test]
        fn plain_words_split_back(ws in prop::collection::vec("[A-Za-z0-9_./=+-]{1,12}", 0..8)) {
            let e = env(&[]);
            prop_assert_eq!(expand_words(&ws.join(" "), &e, '\\').unwrap(), ws);
        }
    }
}
