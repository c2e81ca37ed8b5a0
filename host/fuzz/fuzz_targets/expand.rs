//! Expands arbitrary words against a small variable map and checks the lexer's invariants.
//!
//! Input layout: the first byte picks the escape character (low bit: `\` or `` ` ``);
//! the rest is UTF-8 `WORD[\0A[\0B]]`, where A and B become the values of `$A` and
//! `$B`, so the fuzzer controls the text that patterns like `${A#...}` run against.

#![no_main]

use kiln_fuzz::dockerfile::{expand_word, expand_words};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let escape = if selector & 1 == 0 { '\\' } else { '`' };
    let mut parts = text.splitn(3, '\0');
    let word = parts.next().unwrap_or_default();
    let a = parts.next().unwrap_or("a b").to_owned();
    let b = parts.next().unwrap_or("").to_owned();
    let lookup = move |name: &str| match name {
        "A" => Some(a.clone()),
        "B" => Some(b.clone()),
        "E" => Some(String::new()),
        "S" => Some("*x?/\n".to_owned()),
        _ => None,
    };

    let single = expand_word(word, &lookup, escape);
    let split = expand_words(word, &lookup, escape);
    // Both run the same lexer: they fail for the same inputs, with the same error.
    match (&single, &split) {
        (Ok(_), Ok(_)) => {}
        (Err(e1), Err(e2)) => {
            assert_eq!(e1, e2);
            assert_eq!(e1.word, word);
            assert!(e1.to_string().starts_with("failed to process "), "{e1}");
        }
        _ => panic!("expand_word {single:?} but expand_words {split:?} for {word:?}"),
    }

    // Without `$`, quotes or the escape character there is nothing to expand.
    // (A leading byte-order mark is dropped, as Go's scanner does.)
    let plain = !word.contains(['$', '\'', '"', escape]) && !word.starts_with('\u{FEFF}');
    if plain {
        assert_eq!(
            single.as_deref(),
            Ok(word),
            "expand_word changed a plain word"
        );
        // `<<` keeps the blanks after it in its word (heredoc detection), so only
        // words without `<` split exactly on whitespace.
        if !word.contains('<') {
            let expected: Vec<&str> = word
                .split(char::is_whitespace)
                .filter(|w| !w.is_empty())
                .collect();
            let words = split.as_ref().expect("a plain word always splits");
            assert_eq!(*words, expected, "for {word:?}");
        }
    }

    // Empty words are dropped, even quoted ones (`""` yields no word).
    if let Ok(words) = &split {
        assert!(
            words.iter().all(|w| !w.is_empty()),
            "empty word from {word:?}"
        );
    }
});
