//! Table-driven tests for `expand_word` and `expand_words`, written from BuildKit's
//! documented shell-lexer behaviour (`frontend/dockerfile/shell`) and each row checked
//! against BuildKit's own lexer. A row is: input, variables, escape character, and the
//! expected result or a substring of the expected error.

use kiln::dockerfile::{expand_word, expand_words};

type Vars = &'static [(&'static str, &'static str)];

/// The variables most rows expand against: set, set-but-empty, and values with
/// spaces, quotes, `$`, `*`, a newline and non-ASCII text.
const V: Vars = &[
    ("A", "a"),
    ("AB", "a b"),
    ("E", ""),
    ("P", "/usr/local/bin"),
    ("F", "archive.tar.gz"),
    ("S", "  x  y  "),
    ("Q", "it's"),
    ("D", "$A"),
    ("STAR", "a*b"),
    ("NL", "one\ntwo"),
    ("U", "über"),
    ("X_1", "under"),
];

/// No variable is set.
const NONE: Vars = &[];

type WordRow = (&'static str, Vars, char, Result<&'static str, &'static str>);
type WordsRow = (
    &'static str,
    Vars,
    char,
    Result<&'static [&'static str], &'static str>,
);

/// `expand_word` rows.
const WORD_ROWS: &[WordRow] = &[
    // Plain text passes through.
    ("", V, '\\', Ok("")),
    ("plain", V, '\\', Ok("plain")),
    ("a b  c", V, '\\', Ok("a b  c")),
    ("/usr/bin:/bin", V, '\\', Ok("/usr/bin:/bin")),
    ("ünïcødé", V, '\\', Ok("ünïcødé")),
    ("tab\there", V, '\\', Ok("tab\there")),
    ("new\nline", V, '\\', Ok("new\nline")),
    ("{}[]()*?#%/:+-=", V, '\\', Ok("{}[]()*?#%/:+-=")),
    // $V and ${V}.
    ("$A", V, '\\', Ok("a")),
    ("${A}", V, '\\', Ok("a")),
    ("x$A", V, '\\', Ok("xa")),
    ("$Ax", V, '\\', Ok("")),
    ("${A}x", V, '\\', Ok("ax")),
    ("$A$A", V, '\\', Ok("aa")),
    ("$A-$A", V, '\\', Ok("a-a")),
    ("$A.txt", V, '\\', Ok("a.txt")),
    ("$E", V, '\\', Ok("")),
    ("[$E]", V, '\\', Ok("[]")),
    ("$UNSET", V, '\\', Ok("")),
    ("${UNSET}", V, '\\', Ok("")),
    ("$AB", V, '\\', Ok("a b")),
    ("$D", V, '\\', Ok("$A")),
    ("$U", V, '\\', Ok("über")),
    ("$X_1", V, '\\', Ok("under")),
    ("$X_", V, '\\', Ok("")),
    ("$_", V, '\\', Ok("")),
    ("$a", V, '\\', Ok("")),
    ("$1", V, '\\', Ok("")),
    ("$12x", V, '\\', Ok("x")),
    ("$", V, '\\', Ok("$")),
    ("a$", V, '\\', Ok("a$")),
    ("$ a", V, '\\', Ok("$ a")),
    ("$-x", V, '\\', Ok("x")),
    ("$@x", V, '\\', Ok("x")),
    ("$$", V, '\\', Ok("")),
    ("$/", V, '\\', Ok("$/")),
    ("$.x", V, '\\', Ok("$.x")),
    ("${A}${A}", V, '\\', Ok("aa")),
    ("$A}", V, '\\', Ok("a}")),
    ("${A}}", V, '\\', Ok("a}")),
    ("$P:$A", V, '\\', Ok("/usr/local/bin:a")),
    ("${X_1}_$X_1", V, '\\', Ok("under_under")),
    ("$A$", V, '\\', Ok("a$")),
    ("${#}", V, '\\', Ok("")),
    ("${-}", V, '\\', Ok("")),
    ("${1}", V, '\\', Ok("")),
    ("${A1}", V, '\\', Ok("")),
    // ${V:-w} and ${V-w}: only the colon forms treat set-but-empty as unset; the word is
    // expanded even when unused.
    ("${A:-d}", V, '\\', Ok("a")),
    ("${E:-d}", V, '\\', Ok("d")),
    ("${UNSET:-d}", V, '\\', Ok("d")),
    ("${A-d}", V, '\\', Ok("a")),
    ("${E-d}", V, '\\', Ok("")),
    ("${UNSET-d}", V, '\\', Ok("d")),
    ("${UNSET:-}", V, '\\', Ok("")),
    ("${UNSET-}", V, '\\', Ok("")),
    ("${UNSET:-a b}", V, '\\', Ok("a b")),
    ("${UNSET:-$A}", V, '\\', Ok("a")),
    ("${UNSET:-${E:-inner}}", V, '\\', Ok("inner")),
    ("${UNSET:-${UNSET2:-${A}}}", V, '\\', Ok("a")),
    ("${UNSET:-${E-inner}}", V, '\\', Ok("")),
    ("${UNSET:-'q'}", V, '\\', Ok("q")),
    ("${UNSET:-\"x y\"}", V, '\\', Ok("x y")),
    ("${UNSET:-\\}}", V, '\\', Ok("}")),
    ("${UNSET:-a}b}", V, '\\', Ok("ab}")),
    ("${UNSET:-$}", V, '\\', Ok("$")),
    ("${UNSET:--}", V, '\\', Ok("-")),
    ("${UNSET:-:}", V, '\\', Ok(":")),
    ("${UNSET:-{x}", V, '\\', Ok("{x")),
    ("pre${UNSET:-mid}post", V, '\\', Ok("premidpost")),
    ("${UNSET:-\\$A}", V, '\\', Ok("$A")),
    ("${E:-$E}", V, '\\', Ok("")),
    ("${UNSET:-'}'}", V, '\\', Ok("}")),
    (
        "${A:-${UNSET?always evaluated}}",
        V,
        '\\',
        Err("UNSET: always evaluated"),
    ),
    // ${V:+w} and ${V+w}.
    ("${A:+alt}", V, '\\', Ok("alt")),
    ("${E:+alt}", V, '\\', Ok("")),
    ("${UNSET:+alt}", V, '\\', Ok("")),
    ("${A+alt}", V, '\\', Ok("alt")),
    ("${E+alt}", V, '\\', Ok("alt")),
    ("${UNSET+alt}", V, '\\', Ok("")),
    ("${A:+$P}", V, '\\', Ok("/usr/local/bin")),
    ("${A:+${UNSET:-z}}", V, '\\', Ok("z")),
    ("${A:+}", V, '\\', Ok("")),
    ("x${A:+-}y", V, '\\', Ok("x-y")),
    ("${A+$A$A}", V, '\\', Ok("aa")),
    ("${E+${E:-empty}}", V, '\\', Ok("empty")),
    // ${V:?m} and ${V?m}.
    ("${A:?msg}", V, '\\', Ok("a")),
    ("${A?msg}", V, '\\', Ok("a")),
    ("${E?msg}", V, '\\', Ok("")),
    ("${E:?msg}", V, '\\', Err("E: msg")),
    ("${UNSET?msg}", V, '\\', Err("UNSET: msg")),
    ("${UNSET:?msg}", V, '\\', Err("UNSET: msg")),
    (
        "${UNSET?}",
        V,
        '\\',
        Err("UNSET: is not allowed to be unset"),
    ),
    ("${E:?}", V, '\\', Err("E: is not allowed to be empty")),
    (
        "${UNSET:?}",
        V,
        '\\',
        Err("UNSET: is not allowed to be unset"),
    ),
    ("${UNSET?need $A}", V, '\\', Err("UNSET: need a")),
    ("${A:?$UNSET}", V, '\\', Ok("a")),
    ("x${E?}y", V, '\\', Ok("xy")),
    ("${UNSET?two words}", V, '\\', Err("UNSET: two words")),
    // ${V#p} ${V##p} ${V%s} ${V%%s}: `*` and `?` do not match a newline (BuildKit matches with
    // Go regexps); `[` is literal.
    ("${F#*.}", V, '\\', Ok("tar.gz")),
    ("${F##*.}", V, '\\', Ok("gz")),
    ("${F%.*}", V, '\\', Ok("archive.tar")),
    ("${F%%.*}", V, '\\', Ok("archive")),
    ("${F#archive}", V, '\\', Ok(".tar.gz")),
    ("${F%.gz}", V, '\\', Ok("archive.tar")),
    ("${F#nomatch}", V, '\\', Ok("archive.tar.gz")),
    ("${F%nomatch}", V, '\\', Ok("archive.tar.gz")),
    ("${F#}", V, '\\', Ok("archive.tar.gz")),
    ("${F%%}", V, '\\', Ok("archive.tar.gz")),
    ("${F#*}", V, '\\', Ok("archive.tar.gz")),
    ("${F##*}", V, '\\', Ok("")),
    ("${F%*}", V, '\\', Ok("archive.tar.gz")),
    ("${F%%*}", V, '\\', Ok("")),
    ("${F#?}", V, '\\', Ok("rchive.tar.gz")),
    ("${F%???}", V, '\\', Ok("archive.tar")),
    ("${P##*/}", V, '\\', Ok("bin")),
    ("${P%/*}", V, '\\', Ok("/usr/local")),
    ("${P#/}", V, '\\', Ok("usr/local/bin")),
    ("${P%%/*}", V, '\\', Ok("")),
    ("${P#*/}", V, '\\', Ok("usr/local/bin")),
    ("${UNSET#x}", V, '\\', Ok("")),
    ("${E%x}", V, '\\', Ok("")),
    ("${F#$A}", V, '\\', Ok("rchive.tar.gz")),
    ("${STAR#a\\*}", V, '\\', Ok("b")),
    ("${STAR%\\*b}", V, '\\', Ok("a")),
    ("${STAR#a*}", V, '\\', Ok("*b")),
    ("${STAR##a*}", V, '\\', Ok("")),
    ("${F#[a]}", V, '\\', Ok("archive.tar.gz")),
    ("${F#a*c}", V, '\\', Ok("hive.tar.gz")),
    ("${F%.t*}", V, '\\', Ok("archive")),
    ("${F%%a*}", V, '\\', Ok("")),
    ("${F%a*}", V, '\\', Ok("archive.t")),
    ("${F#${A}r}", V, '\\', Ok("chive.tar.gz")),
    ("${NL#*}", V, '\\', Ok("one\ntwo")),
    ("${NL##*}", V, '\\', Ok("\ntwo")),
    ("${NL%o}", V, '\\', Ok("one\ntw")),
    (
        "${A:#x}",
        V,
        '\\',
        Err("unsupported modifier (:#) in substitution"),
    ),
    (
        "${A:%x}",
        V,
        '\\',
        Err("unsupported modifier (:%) in substitution"),
    ),
    ("${F#\\x}", V, '\\', Err("invalid escape")),
    ("${F#\\}", V, '\\', Err("missing '}'")),
    ("${F%\\}.gz}", V, '\\', Ok("archive.tar.gz")),
    // ${V/a/b} ${V//a/b}: `#` and `%` are not anchors here.
    ("${P/local/share}", V, '\\', Ok("/usr/share/bin")),
    ("${P//\\//:}", V, '\\', Ok(":usr:local:bin")),
    ("${P/\\//:}", V, '\\', Ok(":usr/local/bin")),
    ("${F/a/A}", V, '\\', Ok("Archive.tar.gz")),
    ("${F//a/A}", V, '\\', Ok("Archive.tAr.gz")),
    ("${F/nomatch/x}", V, '\\', Ok("archive.tar.gz")),
    ("${F//a}", V, '\\', Err("missing '/' in ${}")),
    ("${F/a/}", V, '\\', Ok("rchive.tar.gz")),
    ("${F//a/}", V, '\\', Ok("rchive.tr.gz")),
    ("${F/*./X}", V, '\\', Ok("Xgz")),
    ("${F/?/X}", V, '\\', Ok("Xrchive.tar.gz")),
    ("${UNSET/a/b}", V, '\\', Ok("")),
    ("${E/a/b}", V, '\\', Ok("")),
    ("${AB/ /_}", V, '\\', Ok("a_b")),
    ("${F/$A/$AB}", V, '\\', Ok("a brchive.tar.gz")),
    ("${STAR/\\*/+}", V, '\\', Ok("a+b")),
    ("${F//}", V, '\\', Err("missing '/' in ${}")),
    ("${F///}", V, '\\', Ok("archive.tar.gz")),
    ("${F/.*/}", V, '\\', Ok("archive")),
    ("${F//.?/_}", V, '\\', Ok("archive_ar_z")),
    ("${U/ü/ue}", V, '\\', Ok("ueber")),
    ("${A/a/${UNSET:-b}}", V, '\\', Ok("b")),
    ("${F/#a/X}", V, '\\', Ok("archive.tar.gz")),
    // Quoting: inside double quotes the escape character escapes only `"`, `$` and itself.
    ("'single'", V, '\\', Ok("single")),
    ("'$A'", V, '\\', Ok("$A")),
    ("'a b'", V, '\\', Ok("a b")),
    ("''", V, '\\', Ok("")),
    ("\"\"", V, '\\', Ok("")),
    ("\"$A\"", V, '\\', Ok("a")),
    ("\"${AB}\"", V, '\\', Ok("a b")),
    ("\"'$A'\"", V, '\\', Ok("'a'")),
    ("'\"$A\"'", V, '\\', Ok("\"$A\"")),
    ("a'b'c\"d\"e", V, '\\', Ok("abcde")),
    ("\"a\"'b'", V, '\\', Ok("ab")),
    ("'\\'", V, '\\', Ok("\\")),
    ("'it'\\''s'", V, '\\', Ok("it's")),
    ("\"it's\"", V, '\\', Ok("it's")),
    ("\"a\\\"b\"", V, '\\', Ok("a\"b")),
    ("\"a\\$A\"", V, '\\', Ok("a$A")),
    ("\"a\\\\b\"", V, '\\', Ok("a\\b")),
    ("\"a\\nb\"", V, '\\', Ok("a\\nb")),
    ("\"a\\'b\"", V, '\\', Ok("a\\'b")),
    ("\"$UNSET\"", V, '\\', Ok("")),
    ("\"${UNSET:-d e}\"", V, '\\', Ok("d e")),
    ("\"${A:+'q'}\"", V, '\\', Ok("q")),
    ("\"$\"", V, '\\', Ok("$")),
    ("'${A'", V, '\\', Ok("${A")),
    ("\"$Q\"", V, '\\', Ok("it's")),
    ("$Q", V, '\\', Ok("it's")),
    ("\"\"\"\"", V, '\\', Ok("")),
    ("''''", V, '\\', Ok("")),
    ("\"a b\"'c d'", V, '\\', Ok("a bc d")),
    ("\"#not a comment\"", V, '\\', Ok("#not a comment")),
    ("'unterminated", V, '\\', Err("matching single-quote")),
    ("\"unterminated", V, '\\', Err("matching double-quote")),
    ("\"a\\\"", V, '\\', Err("matching double-quote")),
    ("a\"b", V, '\\', Err("matching double-quote")),
    ("a'b", V, '\\', Err("matching single-quote")),
    ("\"${A\"", V, '\\', Err("unsupported modifier")),
    // Escapes with the default escape character; one at the very end is dropped.
    ("\\$A", V, '\\', Ok("$A")),
    ("\\${A}", V, '\\', Ok("${A}")),
    ("\\\\$A", V, '\\', Ok("\\a")),
    ("\\'", V, '\\', Ok("'")),
    ("\\\"", V, '\\', Ok("\"")),
    ("\\a", V, '\\', Ok("a")),
    ("a\\ b", V, '\\', Ok("a b")),
    ("a\\", V, '\\', Ok("a")),
    ("\\", V, '\\', Ok("")),
    ("\\\\", V, '\\', Ok("\\")),
    ("\\\\\\", V, '\\', Ok("\\")),
    ("$A\\$A", V, '\\', Ok("a$A")),
    ("\\`", V, '\\', Ok("`")),
    ("`", V, '\\', Ok("`")),
    ("C:\\\\dir", V, '\\', Ok("C:\\dir")),
    ("\\\\\\$A", V, '\\', Ok("\\$A")),
    ("\\\n", V, '\\', Ok("\n")),
    ("\"\\\\$A\"", V, '\\', Ok("\\a")),
    ("'\\$A'", V, '\\', Ok("\\$A")),
    ("\\${UNSET:?x}", V, '\\', Ok("${UNSET:?x}")),
    // The backtick escape character, which makes `\` an ordinary character.
    ("`$A", V, '`', Ok("$A")),
    ("``", V, '`', Ok("`")),
    ("\\$A", V, '`', Ok("\\a")),
    ("C:\\dir\\$A", V, '`', Ok("C:\\dir\\a")),
    ("a`", V, '`', Ok("a")),
    ("` ", V, '`', Ok(" ")),
    ("\"`\"\"", V, '`', Ok("\"")),
    ("\"`$A\"", V, '`', Ok("$A")),
    ("\"``\"", V, '`', Ok("`")),
    ("\"`x\"", V, '`', Ok("`x")),
    ("\"\\\"", V, '`', Ok("\\")),
    ("'`'", V, '`', Ok("`")),
    ("${UNSET:-`}}", V, '`', Ok("}")),
    ("${P##*/}", V, '`', Ok("bin")),
    ("`\\", V, '`', Ok("\\")),
    ("`'", V, '`', Ok("'")),
    ("\\\\", V, '`', Ok("\\\\")),
    ("$A`$A", V, '`', Ok("a$A")),
    ("\"`\"", V, '`', Err("matching double-quote")),
    // No variables at all.
    ("$A", NONE, '\\', Ok("")),
    ("${A:-d}", NONE, '\\', Ok("d")),
    ("${A-d}", NONE, '\\', Ok("d")),
    ("${A+x}", NONE, '\\', Ok("")),
    ("${A:+x}", NONE, '\\', Ok("")),
    ("${A?}", NONE, '\\', Err("A: is not allowed to be unset")),
    ("${F##*.}", NONE, '\\', Ok("")),
    ("${F//a/b}", NONE, '\\', Ok("")),
    ("\"$A\"x", NONE, '\\', Ok("x")),
    ("plain", NONE, '`', Ok("plain")),
    // Errors, with BuildKit's messages.
    ("${", V, '\\', Err("missing '}'")),
    (
        "${A",
        V,
        '\\',
        Err("unsupported modifier (\u{fffd}) in substitution"),
    ),
    ("${A:-x", V, '\\', Err("missing '}'")),
    ("${}", V, '\\', Err("bad substitution")),
    ("${:}", V, '\\', Err("bad substitution")),
    ("${{A}}", V, '\\', Err("bad substitution")),
    ("${:-x}", V, '\\', Err("bad substitution")),
    ("${A:x}", V, '\\', Err("unsupported modifier (:x)")),
    ("${A=x}", V, '\\', Err("unsupported modifier (=)")),
    ("${A:=x}", V, '\\', Err("unsupported modifier (:=)")),
    ("${A.b}", V, '\\', Err("unsupported modifier (.)")),
    ("${A/x", V, '\\', Err("missing '/' in ${}")),
    ("${A/x/y", V, '\\', Err("missing '}'")),
    ("${A:-${B}", V, '\\', Err("missing '}'")),
    ("x${A:-'y}", V, '\\', Err("missing '}'")),
    ("${A:", V, '\\', Err("missing '}'")),
    (
        "${A ",
        V,
        '\\',
        Err("unsupported modifier ( ) in substitution"),
    ),
    ("ok ${}", V, '\\', Err("failed to process \"ok ${}\"")),
];

/// `expand_words` rows.
const WORDS_ROWS: &[WordsRow] = &[
    ("a b c", V, '\\', Ok(&["a", "b", "c"])),
    ("  a   b  ", V, '\\', Ok(&["a", "b"])),
    ("", V, '\\', Ok(&[])),
    ("$AB", V, '\\', Ok(&["a", "b"])),
    ("\"$AB\"", V, '\\', Ok(&["a b"])),
    ("'a b' c", V, '\\', Ok(&["a b", "c"])),
    ("a\\ b", V, '\\', Ok(&["a b"])),
    ("x$AB", V, '\\', Ok(&["xa", "b"])),
    ("$E", V, '\\', Ok(&[])),
    ("\"$E\"", V, '\\', Ok(&[])),
    ("a \"\" b", V, '\\', Ok(&["a", "b"])),
    ("$S", V, '\\', Ok(&["x", "y"])),
    ("${UNSET:-d e}", V, '\\', Ok(&["d", "e"])),
    ("p${UNSET:-d e}q", V, '\\', Ok(&["d", "eq"])),
    ("a\tb\nc", V, '\\', Ok(&["a", "b", "c"])),
    ("'$A' $A", V, '\\', Ok(&["$A", "a"])),
    ("a'b c'd", V, '\\', Ok(&["ab cd"])),
    ("\"unterminated", V, '\\', Err("matching double-quote")),
    ("${A", V, '\\', Err("unsupported modifier")),
    ("$NL", V, '\\', Ok(&["one", "two"])),
    ("\"$NL\"", V, '\\', Ok(&["one\ntwo"])),
    ("\\$A b", V, '\\', Ok(&["$A", "b"])),
    ("a` b c", V, '`', Ok(&["a b", "c"])),
    ("--opt=\"x y\" z", V, '\\', Ok(&["--opt=x y", "z"])),
    ("a=1 b=\"2 3\"", V, '\\', Ok(&["a=1", "b=2 3"])),
    ("$A$AB", V, '\\', Ok(&["aa", "b"])),
    ("${AB:+z w}", V, '\\', Ok(&["z", "w"])),
    ("<<EOF cat", V, '\\', Ok(&["<<EOF", "cat"])),
    ("a << b", V, '\\', Ok(&["a", "<< b"])),
    ("${UNSET?gone}", V, '\\', Err("UNSET: gone")),
    ("\\\\ a", V, '\\', Ok(&["\\", "a"])),
    ("$A $B", NONE, '\\', Ok(&[])),
    ("${A:-x y} z", NONE, '\\', Ok(&["x", "y", "z"])),
    ("c:\\dir `\"a b`\"", V, '`', Ok(&["c:\\dir", "\"a", "b\""])),
];

fn lookup(vars: Vars) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// Compares one outcome with a row's expectation; `None` when they agree.
fn mismatch<T: PartialEq + std::fmt::Debug>(
    actual: Result<T, kiln::dockerfile::ExpandError>,
    expected: Result<T, &str>,
) -> Option<String> {
    match (actual, expected) {
        (Ok(a), Ok(e)) if a == e => None,
        (Err(a), Err(e)) if a.to_string().contains(e) => None,
        (a, e) => Some(format!("expected {e:?}, got {a:?}")),
    }
}

#[test]
fn tables_are_large_enough() {
    assert!(
        WORD_ROWS.len() + WORDS_ROWS.len() >= 200,
        "{} rows",
        WORD_ROWS.len() + WORDS_ROWS.len()
    );
}

#[test]
fn expand_word_table() {
    let failures: Vec<String> = WORD_ROWS
        .iter()
        .filter_map(|&(input, vars, escape, expected)| {
            let actual = expand_word(input, &lookup(vars), escape);
            mismatch(actual, expected.map(str::to_owned))
                .map(|m| format!("expand_word({input:?}, escape {escape:?}): {m}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn expand_words_table() {
    let failures: Vec<String> = WORDS_ROWS
        .iter()
        .filter_map(|&(input, vars, escape, expected)| {
            let actual = expand_words(input, &lookup(vars), escape);
            let expected = expected.map(|ws| ws.iter().map(|w| (*w).to_owned()).collect());
            mismatch(actual, expected)
                .map(|m| format!("expand_words({input:?}, escape {escape:?}): {m}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rows_without_special_characters_expand_to_themselves() {
    // The identity rows double as a check of the table itself: any input free of
    // `$`, quotes and the escape character must be expected back unchanged.
    let mut checked = 0;
    for &(input, vars, escape, expected) in WORD_ROWS {
        if input.contains(['$', '\'', '"', escape]) {
            continue;
        }
        checked += 1;
        assert_eq!(expected, Ok(input), "row {input:?}");
        assert_eq!(
            expand_word(input, &lookup(vars), escape).as_deref(),
            Ok(input)
        );
    }
    assert!(checked >= 10, "only {checked} identity rows");
}
