use kiln::dockerfile::*;
use std::collections::HashMap;

#[test]
fn oracle_dump() {
    let Ok(text) = std::fs::read_to_string("/tmp/oracle/cases.json") else { return };
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for c in cases {
        let kind = c["kind"].as_str().unwrap();
        let input = c["input"].as_str().unwrap();
        match kind {
            "ignore" => {
                let ig = Ignore::parse(input);
                if !ig.errors().is_empty() { out.push(serde_json::json!("error")); continue; }
                let paths: Vec<String> = serde_json::from_value(c["paths"].clone()).unwrap();
                out.push(serde_json::json!(paths.iter().map(|p| ig.is_ignored(p)).collect::<Vec<_>>()));
            }
            "parse" => out.push(match parse(input) {
                Ok(df) => serde_json::to_value(&df).unwrap(),
                Err(e) => serde_json::json!({"error": e.message, "err_line": e.line}),
            }),
            _ => {
                let env: HashMap<String, String> = serde_json::from_value(c["env"].clone()).unwrap_or_default();
                let esc = if c["escape"].as_str() == Some("`") { '`' } else { '\\' };
                let lookup = |k: &str| env.get(k).cloned();
                out.push(if kind == "word" {
                    match expand_word(input, &lookup, esc) { Ok(w) => serde_json::json!({"ok": w}), Err(e) => serde_json::json!({"error": e.to_string()}) }
                } else {
                    match expand_words(input, &lookup, esc) { Ok(w) => serde_json::json!({"ok": w}), Err(e) => serde_json::json!({"error": e.to_string()}) }
                });
            }
        }
    }
    std::fs::write("/tmp/oracle/rust.json", serde_json::to_string(&out).unwrap()).unwrap();
}
