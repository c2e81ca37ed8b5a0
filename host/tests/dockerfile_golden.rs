//! Golden tests for the Dockerfile parser: each `golden/dockerfile/NAME.Dockerfile`
//! parses to the JSON in `NAME.json` (the `Dockerfile` or the `ParseError`).
//! The expectations were checked against BuildKit's parser; `UPDATE_GOLDEN=1`
//! rewrites them, after which every change must be reviewed the same way.

use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/dockerfile")
}

fn golden_inputs() -> Vec<PathBuf> {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("golden directory is readable")
        .map(|entry| entry.expect("golden directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "Dockerfile"))
        .collect();
    inputs.sort();
    inputs
}

fn render(source: &str) -> String {
    let json = match kiln::dockerfile::parse(source) {
        Ok(dockerfile) => serde_json::to_string_pretty(&dockerfile),
        Err(error) => serde_json::to_string_pretty(&error),
    };
    json.expect("parse results serialize") + "\n"
}

#[test]
fn dockerfiles_parse_to_their_golden_json() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let inputs = golden_inputs();
    assert!(
        inputs.len() >= 80,
        "expected at least 80 golden Dockerfiles, found {}",
        inputs.len()
    );

    let mut failures = Vec::new();
    for input in &inputs {
        let source = std::fs::read_to_string(input).expect("golden Dockerfile is UTF-8");
        let actual = render(&source);
        let expected_path = input.with_extension("json");
        if update {
            std::fs::write(&expected_path, &actual).expect("golden JSON is writable");
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{}: parse result differs from {}\n--- expected\n{expected}--- actual\n{actual}",
                input.display(),
                expected_path.display()
            )),
            Err(e) => failures.push(format!(
                "{}: cannot read {} ({e}); run with UPDATE_GOLDEN=1 to create it",
                input.display(),
                expected_path.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Cases named `error_*` are exactly the ones that fail, and their errors print
/// with both line and column, which the build prefixes with the file name.
#[test]
fn errors_carry_line_and_column() {
    let mut errors = 0;
    for input in golden_inputs() {
        let source = std::fs::read_to_string(&input).expect("golden Dockerfile is UTF-8");
        let name = input.file_stem().unwrap().to_string_lossy().into_owned();
        match kiln::dockerfile::parse(&source) {
            Ok(_) => assert!(!name.starts_with("error_"), "{name} parses"),
            Err(e) => {
                assert!(name.starts_with("error_"), "{name} fails: {e}");
                assert!(e.line >= 1 && e.column >= 1, "{name}: {e:?}");
                assert_eq!(
                    e.to_string(),
                    format!("line {}, column {}: {}", e.line, e.column, e.message)
                );
                errors += 1;
            }
        }
    }
    assert!(errors >= 20, "only {errors} error cases");
}
