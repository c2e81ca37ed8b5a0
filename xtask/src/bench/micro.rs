//! The micro-benchmarks of the kiln crate (`cargo bench -p kiln --bench
//! micro`), which print one JSON object per line:
//! `{"bench":"gzip-500MiB","unit":"s","kiln":[...],"peer":"pigz -6 -p 2","peer_runs":[...]}`,
//! optionally with a `"note"`.

use super::stats::Summary;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

/// The bench target's name in the kiln crate.
pub const BENCH_TARGET: &str = "micro";

/// One micro-benchmark's results.
#[derive(Clone, Debug, PartialEq)]
pub struct MicroResult {
    /// What was measured, e.g. `gzip-500MiB`.
    pub bench: String,
    /// The unit of the runs, e.g. `s` or `MiB/s`.
    pub unit: String,
    /// kiln's runs.
    pub kiln: Vec<f64>,
    /// The peer tool, when the benchmark has one.
    pub peer: Option<String>,
    /// The peer's runs.
    pub peer_runs: Vec<f64>,
    /// What the benchmark wants a reader to know, if anything.
    pub note: Option<String>,
}

impl MicroResult {
    /// kiln's median over the peer's, when both have runs; for a
    /// throughput unit (`.../s`) the ratio is inverted so that below 1
    /// always means kiln is better.
    pub fn ratio(&self) -> Option<f64> {
        let kiln = Summary::of(&self.kiln)?.median;
        let peer = Summary::of(&self.peer_runs)?.median;
        if self.unit.ends_with("/s") {
            (kiln > 0.0).then(|| peer / kiln)
        } else {
            (peer > 0.0).then(|| kiln / peer)
        }
    }
}

/// The results in the bench's standard output; other lines (cargo's and
/// the harness's chatter) are skipped, malformed JSON objects are errors.
pub fn parse_lines(stdout: &str) -> Result<Vec<MicroResult>> {
    let mut results = Vec::new();
    for (number, line) in stdout.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let value: Value = serde_json::from_str(line).with_context(|| {
            format!(
                "line {} of the micro-benchmarks is not JSON: {line}",
                number + 1
            )
        })?;
        results.push(
            parse_result(&value)
                .with_context(|| format!("line {} of the micro-benchmarks: {line}", number + 1))?,
        );
    }
    Ok(results)
}

fn parse_result(value: &Value) -> Result<MicroResult> {
    let text = |key: &str| -> Result<String> {
        match value.get(key).and_then(Value::as_str) {
            Some(text) => Ok(text.to_owned()),
            None => bail!("`{key}` is missing or not a string"),
        }
    };
    let runs = |key: &str| -> Result<Vec<f64>> {
        match value.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_f64()
                        .with_context(|| format!("`{key}` holds {item}, not a number"))
                })
                .collect(),
            Some(other) => bail!("`{key}` is {other}, not an array of numbers"),
        }
    };
    let kiln = runs("kiln")?;
    if kiln.is_empty() {
        bail!("`kiln` has no runs");
    }
    Ok(MicroResult {
        bench: text("bench")?,
        unit: text("unit")?,
        kiln,
        peer: value.get("peer").and_then(Value::as_str).map(str::to_owned),
        peer_runs: runs("peer_runs")?,
        note: value.get("note").and_then(Value::as_str).map(str::to_owned),
    })
}

/// Whether the kiln crate (per `cargo metadata`) has the bench target.
pub fn target_exists(metadata: &Value) -> bool {
    metadata["packages"].as_array().is_some_and(|packages| {
        packages.iter().any(|package| {
            package["name"] == "kiln"
                && package["targets"].as_array().is_some_and(|targets| {
                    targets.iter().any(|target| {
                        target["name"] == BENCH_TARGET
                            && target["kind"]
                                .as_array()
                                .is_some_and(|kinds| kinds.iter().any(|k| k == "bench"))
                    })
                })
        })
    })
}

/// Runs the micro-benchmarks (`quick` passes `--quick`) with `cargo` in
/// `root`, streaming their stderr, and returns their results.
pub fn run(cargo: &mut Command, root: &Path, quick: bool) -> Result<Vec<MicroResult>> {
    cargo
        .current_dir(root)
        .args(["bench", "-p", "kiln", "--bench", BENCH_TARGET, "--"])
        .args(quick.then_some("--quick"))
        .stderr(Stdio::inherit());
    let out = cargo
        .output()
        .context("cannot run `cargo bench -p kiln --bench micro`")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "`cargo bench -p kiln --bench micro` failed ({}):\n{stdout}",
            out.status
        );
    }
    parse_lines(&stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_read_and_chatter_is_skipped() {
        let stdout = "running 1 benchmark\n\
            {\"bench\":\"gzip-500MiB\",\"unit\":\"s\",\"kiln\":[9.5,9.1,9.3],\"peer\":\"pigz -6 -p 2\",\"peer_runs\":[9.0,9.2,8.9],\"note\":\"2 cores\"}\n\
            \n\
            {\"bench\":\"plugin-call\",\"unit\":\"us\",\"kiln\":[12,14]}\n\
            {\"bench\":\"push\",\"unit\":\"MiB/s\",\"kiln\":[200],\"peer\":\"skopeo copy\",\"peer_runs\":[100]}\n";
        let results = parse_lines(stdout).unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(
            results[0],
            MicroResult {
                bench: "gzip-500MiB".into(),
                unit: "s".into(),
                kiln: vec![9.5, 9.1, 9.3],
                peer: Some("pigz -6 -p 2".into()),
                peer_runs: vec![9.0, 9.2, 8.9],
                note: Some("2 cores".into()),
            }
        );
        assert!((results[0].ratio().unwrap() - 9.3 / 9.0).abs() < 1e-12);
        assert_eq!(results[1].peer, None);
        assert_eq!(results[1].ratio(), None);
        // Twice the peer's throughput is half its time.
        assert_eq!(results[2].ratio(), Some(0.5));
    }

    #[test]
    fn malformed_objects_are_errors() {
        assert!(parse_lines("{\"bench\":\"x\",\"unit\":\"s\",\"kiln\":[]}").is_err());
        assert!(parse_lines("{\"bench\":\"x\",\"unit\":\"s\",\"kiln\":[\"1\"]}").is_err());
        assert!(parse_lines("{\"unit\":\"s\",\"kiln\":[1]}").is_err());
        assert!(parse_lines("{not json").is_err());
    }

    #[test]
    fn the_bench_target_is_found_in_metadata() {
        let with = serde_json::json!({"packages": [{"name": "kiln", "targets": [
            {"name": "kiln", "kind": ["lib"]},
            {"name": "micro", "kind": ["bench"]}]}]});
        let without = serde_json::json!({"packages": [{"name": "kiln", "targets": [
            {"name": "micro", "kind": ["test"]}]}]});
        assert!(target_exists(&with));
        assert!(!target_exists(&without));
    }
}
