//! Parses arbitrary UTF-8 as a Dockerfile and checks what any parse must satisfy.

#![no_main]

use kiln_fuzz::dockerfile::{Dockerfile, Instruction, ParseError, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|source: &str| {
    match parse(source) {
        Ok(dockerfile) => check_dockerfile(source, &dockerfile),
        Err(error) => check_error(source, &error),
    }
});

/// Lines as BuildKit counts them: every `\n` ends one, and text after the last counts too.
fn line_count(source: &str) -> usize {
    source.split_inclusive('\n').count()
}

fn check_dockerfile(source: &str, dockerfile: &Dockerfile) {
    assert!(matches!(dockerfile.escape, '\\' | '`'));
    let lines = line_count(source);
    let mut previous_end = 0;
    for instruction in &dockerfile.instructions {
        let at = format!("{instruction:?}");
        assert!(!instruction.keyword.is_empty(), "{at}");
        // BuildKit splits the keyword off at ASCII blanks only (`[\t\v\f\r ]`):
        // other Unicode spaces stay in it, as they do in BuildKit.
        let blanks = [' ', '\t', '\n', '\r', '\x0b', '\x0c'];
        assert!(!instruction.keyword.contains(blanks), "{at}");
        assert!(instruction.line as usize > previous_end, "{at}");
        assert!(instruction.column >= 1, "{at}");
        assert!(instruction.end_line >= instruction.line, "{at}");
        assert!(instruction.end_line as usize <= lines, "{at}");
        previous_end = instruction.end_line as usize;
        if !instruction.heredocs.is_empty() {
            assert!(
                matches!(
                    instruction.keyword.as_str(),
                    "RUN" | "COPY" | "ADD" | "ONBUILD"
                ),
                "{at}"
            );
            assert!(instruction.json.is_none(), "{at}");
        }
        if instruction.json.is_some() {
            assert!(instruction.text.contains('['), "{at}");
        }
        // A joined line that ends in the escape character would continue when read
        // again; one with heredocs needs their bodies.
        let continues = instruction
            .original
            .trim_end_matches(['\r', '\n'])
            .trim_end_matches([' ', '\t'])
            .ends_with(dockerfile.escape);
        if instruction.heredocs.is_empty() && !continues {
            check_reparse(dockerfile.escape, instruction);
        }
    }
}

/// The joined line alone parses to the same instruction: joining continuation
/// lines loses nothing the parse depends on.
fn check_reparse(escape: char, instruction: &Instruction) {
    // The directive line keeps the escape character and keeps the instruction off
    // the first line, where a byte-order mark would be dropped.
    let source = format!("# escape={escape}\n{}\n", instruction.original);
    let Ok(again) = parse(&source) else {
        panic!("{instruction:?} does not parse again from {source:?}");
    };
    let [single] = again.instructions.as_slice() else {
        panic!("{instruction:?} parses again to {again:?}");
    };
    let parts = |i: &Instruction| {
        (
            i.keyword.clone(),
            i.flags.clone(),
            i.text.clone(),
            i.json.clone(),
        )
    };
    assert_eq!(parts(single), parts(instruction), "from {source:?}");
}

fn check_error(source: &str, error: &ParseError) {
    assert!(error.line >= 1 && error.column >= 1, "{error:?}");
    // A line past the end is only reported for a too-long line, which stops reading.
    assert!((error.line as usize) <= line_count(source) + 1, "{error:?}");
    let prefix = format!("line {}, column {}: ", error.line, error.column);
    assert!(error.to_string().starts_with(&prefix), "{error}");
    assert!(!error.message.is_empty());
}
