//! The report: tables of wall time, CPU time and peak RSS per case, mode
//! and builder, the ratio of kiln to the faster peer against its target,
//! the micro-benchmarks, the machine and the exact commands, as Markdown.

use super::builders::{Builder, Mode};
use super::context;
use super::measure::Usage;
use super::micro::MicroResult;
use super::stats::{Summary, ratio_to_fastest};
use std::fmt::Write;

/// The ratio every case aims at.
pub const TARGET_RATIO: f64 = 0.5;

/// How far above a physical floor a case may stay when 0.5 is below it.
pub const FLOOR_SLACK: f64 = 1.1;

/// One measured build (cold or warm) of one case by one builder.
#[derive(Debug)]
pub struct Record {
    /// The case's name.
    pub case: &'static str,
    /// Who built it.
    pub builder: Builder,
    /// Cold or warm.
    pub mode: Mode,
    /// Which run (from 1).
    pub run: usize,
    /// What it used, or why it failed.
    pub outcome: Result<Usage, String>,
}

/// A lower bound no builder can beat on a case, measured in the same run
/// (for big-file: gzip -6 of the file by pigz on every core).
#[derive(Debug)]
pub struct Floor {
    /// The case it bounds (cold builds only: warm ones compress nothing).
    pub case: &'static str,
    /// What was run.
    pub command: String,
    /// Its wall times, in seconds.
    pub runs: Vec<f64>,
}

/// What the micro-benchmark step produced.
#[derive(Debug)]
pub enum Micro {
    /// The results, one per benchmark.
    Ran(Vec<MicroResult>),
    /// Why there are none.
    Skipped(String),
}

/// Everything the report shows.
pub struct Report<'a> {
    /// The heading.
    pub title: &'a str,
    /// The cases, in order.
    pub cases: &'a [&'static str],
    /// What each case is, as (name, description, Dockerfile).
    pub corpus: &'a [(&'static str, &'static str, String)],
    /// The builders, in order; kiln first when present.
    pub builders: &'a [Builder],
    /// Runs per case, builder and mode.
    pub runs: usize,
    /// Every measurement.
    pub records: &'a [Record],
    /// Physical floors measured alongside.
    pub floors: &'a [Floor],
    /// The micro-benchmarks.
    pub micro: &'a Micro,
    /// The machine, one item per line.
    pub machine: &'a [String],
    /// Tool versions, as (tool, version).
    pub versions: &'a [(String, String)],
    /// Each builder's command lines with placeholders.
    pub commands: &'a [(Builder, Vec<String>)],
    /// The chart's path relative to the report, if one was drawn.
    pub chart: Option<&'a str>,
    /// The context group's results, when it ran.
    pub contexts: Option<&'a context::Results>,
    /// kiln's command as the report shows it, e.g. `target/release/kiln`.
    pub kiln_program: &'a str,
    /// How the run was started, e.g. `cargo xtask bench`.
    pub invocation: &'a str,
    /// How long the whole run took, in seconds.
    pub elapsed: f64,
}

/// kiln against the faster peer on one case and mode.
#[derive(Clone, Debug, PartialEq)]
pub struct RatioRow {
    /// The case.
    pub case: &'static str,
    /// Cold or warm.
    pub mode: Mode,
    /// kiln's median wall time over the faster peer's, and that peer.
    pub ratio: Option<(f64, Builder)>,
    /// The ratio to reach: 0.5, or 1.1 × the floor where 0.5 is below it.
    pub target: f64,
}

/// The wall-time summary of a case, mode and builder over its successful
/// runs, with how many runs there were.
fn wall(
    records: &[Record],
    case: &str,
    mode: Mode,
    builder: Builder,
) -> (Option<Summary>, usize, usize) {
    summary_of(records, case, mode, builder, |u| u.wall)
}

fn summary_of(
    records: &[Record],
    case: &str,
    mode: Mode,
    builder: Builder,
    value: impl Fn(&Usage) -> f64,
) -> (Option<Summary>, usize, usize) {
    let matching: Vec<&Record> = records
        .iter()
        .filter(|r| r.case == case && r.mode == mode && r.builder == builder)
        .collect();
    let values: Vec<f64> = matching
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok().map(&value))
        .collect();
    (Summary::of(&values), values.len(), matching.len())
}

/// The ratio rows of every case and mode, in order.
pub fn ratio_rows(
    records: &[Record],
    cases: &[&'static str],
    builders: &[Builder],
    floors: &[Floor],
) -> Vec<RatioRow> {
    let peers: Vec<Builder> = builders
        .iter()
        .copied()
        .filter(|b| *b != Builder::Kiln)
        .collect();
    let mut rows = Vec::new();
    for &case in cases {
        for mode in Mode::ALL {
            let kiln = wall(records, case, mode, Builder::Kiln).0;
            let peer_walls: Vec<Option<Summary>> = peers
                .iter()
                .map(|peer| wall(records, case, mode, *peer).0)
                .collect();
            let ratio = ratio_to_fastest(kiln, &peer_walls).map(|(r, i)| (r, peers[i]));
            let fastest_peer = peer_walls
                .iter()
                .flatten()
                .map(|s| s.median)
                .filter(|m| *m > 0.0)
                .min_by(f64::total_cmp);
            let floor = floors
                .iter()
                .find(|f| f.case == case && mode == Mode::Cold)
                .and_then(|f| Summary::of(&f.runs));
            rows.push(RatioRow {
                case,
                mode,
                ratio,
                target: target_ratio(floor.map(|f| f.median), fastest_peer),
            });
        }
    }
    rows
}

/// 0.5, unless a floor makes it unreachable: then 1.1 × floor ÷ the faster
/// peer's time.
pub fn target_ratio(floor: Option<f64>, fastest_peer: Option<f64>) -> f64 {
    match (floor, fastest_peer) {
        (Some(floor), Some(peer)) if peer > 0.0 => TARGET_RATIO.max(FLOOR_SLACK * floor / peer),
        _ => TARGET_RATIO,
    }
}

/// `min / median` with a precision that suits the magnitude, and the
/// count of successful runs when some failed.
pub fn cell(summary: Option<Summary>, ok: usize, total: usize, scale: f64) -> String {
    match summary {
        None if total == 0 => "-".to_owned(),
        None => "failed".to_owned(),
        Some(s) => {
            let mut text = format!("{} / {}", number(s.min * scale), number(s.median * scale));
            if ok < total {
                let _ = write!(text, " ({ok}/{total} ok)");
            }
            text
        }
    }
}

/// A number with about 3 significant digits (2 decimals at least from
/// 0.1 to 10, so that columns line up).
fn number(value: f64) -> String {
    let decimals = match value.abs() {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        v if v >= 0.1 || v == 0.0 => 2,
        v if v >= 0.01 => 3,
        _ => 4,
    };
    format!("{value:.decimals$}")
}

/// The report as Markdown.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", report.title);
    if report.cases.is_empty() {
        let _ = writeln!(
            out,
            "Generated by `{}` in {:.0} s (after building kiln).\n",
            report.invocation, report.elapsed
        );
    } else {
        render_builds(&mut out, report);
    }
    if let Some(contexts) = report.contexts {
        context::render(&mut out, contexts, report.kiln_program);
    }
    render_micro(&mut out, report.micro);
    if !report.cases.is_empty() {
        render_corpus(&mut out, report);
    }
    render_method(&mut out, report);
    out
}

/// The builds of the corpus: ratios, usage, floors and failures.
fn render_builds(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "Generated by `{}` in {:.0} s (after building kiln): {} run(s) of each case, cold and warm, by {}, \
         alternating between the builders within each run. Every build pushes to the same \
         local registry.\n",
        report.invocation,
        report.elapsed,
        report.runs,
        report
            .builders
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(chart) = report.chart {
        let _ = writeln!(out, "![kiln's wall time over the faster peer's]({chart})\n");
    }
    let rows = ratio_rows(report.records, report.cases, report.builders, report.floors);
    render_wall_table(out, report, &rows);
    render_usage_table(out, report);
    render_floors(out, report);
    render_failures(out, report);
}

fn render_wall_table(out: &mut String, report: &Report, rows: &[RatioRow]) {
    let _ = writeln!(out, "## Wall time of build + push (s, min / median)\n");
    let mut header = "| case | mode |".to_owned();
    let mut rule = "|---|---|".to_owned();
    for builder in report.builders {
        let _ = write!(header, " {} |", builder.name());
        rule.push_str("---:|");
    }
    header.push_str(" kiln ÷ faster peer | target | met |");
    rule.push_str("---:|---:|:---:|");
    let _ = writeln!(out, "{header}\n{rule}");
    for row in rows {
        let mut line = format!("| {} | {} |", row.case, row.mode.name());
        for builder in report.builders {
            let (summary, ok, total) = wall(report.records, row.case, row.mode, *builder);
            let _ = write!(line, " {} |", cell(summary, ok, total, 1.0));
        }
        match row.ratio {
            Some((ratio, peer)) => {
                let met = if ratio <= row.target { "yes" } else { "no" };
                let _ = write!(
                    line,
                    " {ratio:.2} (vs {}) | ≤ {:.2} | {met} |",
                    peer.name(),
                    row.target
                );
            }
            None => line.push_str(" - | - | - |"),
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out);
}

fn render_usage_table(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "## CPU time (s, user + system) and peak RSS (MiB), min / median\n"
    );
    let mut header = "| case | mode |".to_owned();
    let mut rule = "|---|---|".to_owned();
    for builder in report.builders {
        let _ = write!(header, " {} CPU |", builder.name());
        rule.push_str("---:|");
    }
    for builder in report.builders {
        let _ = write!(header, " {} RSS |", builder.name());
        rule.push_str("---:|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for &case in report.cases {
        for mode in Mode::ALL {
            let mut line = format!("| {case} | {} |", mode.name());
            for builder in report.builders {
                let (s, ok, total) = summary_of(report.records, case, mode, *builder, |u| u.cpu);
                let _ = write!(line, " {} |", cell(s, ok, total, 1.0));
            }
            for builder in report.builders {
                let (s, ok, total) = summary_of(report.records, case, mode, *builder, |u| {
                    u.max_rss_kib as f64
                });
                let _ = write!(line, " {} |", cell(s, ok, total, 1.0 / 1024.0));
            }
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(out);
}

fn render_floors(out: &mut String, report: &Report) {
    if report.floors.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Physical floors (s, min / median)\n");
    let _ = writeln!(out, "| case | command | wall |\n|---|---|---:|");
    for floor in report.floors {
        let summary = Summary::of(&floor.runs);
        let _ = writeln!(
            out,
            "| {} | `{}` | {} |",
            floor.case,
            floor.command,
            cell(summary, floor.runs.len(), floor.runs.len(), 1.0)
        );
    }
    let _ = writeln!(out);
}

fn render_failures(out: &mut String, report: &Report) {
    let failures: Vec<&Record> = report
        .records
        .iter()
        .filter(|r| r.outcome.is_err())
        .collect();
    if failures.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Failures\n");
    for record in failures {
        let Err(error) = &record.outcome else {
            continue;
        };
        let _ = writeln!(
            out,
            "- {} {} by {}, run {}:\n\n```text\n{}\n```\n",
            record.case,
            record.mode.name(),
            record.builder.name(),
            record.run,
            last_lines(error, 25)
        );
    }
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn render_micro(out: &mut String, micro: &Micro) {
    let _ = writeln!(out, "## Micro-benchmarks\n");
    match micro {
        Micro::Skipped(reason) => {
            let _ = writeln!(out, "Not run: {reason}\n");
        }
        Micro::Ran(results) => {
            let _ = writeln!(
                out,
                "From `cargo bench -p kiln --bench micro`. Ratio: kiln's median over the peer's, \
                 in time (inverted for throughputs), so below 1 means kiln is better.\n"
            );
            let _ = writeln!(
                out,
                "| benchmark | unit | kiln (min / median) | peer | peer (min / median) | ratio | note |\n\
                 |---|---|---:|---|---:|---:|---|"
            );
            for result in results {
                // For a throughput the best run is the largest.
                let summary = |runs: &[f64]| {
                    if result.unit.ends_with("/s") {
                        let negated: Vec<f64> = runs.iter().map(|v| -v).collect();
                        Summary::of(&negated).map(|s| Summary {
                            min: -s.min,
                            median: -s.median,
                        })
                    } else {
                        Summary::of(runs)
                    }
                };
                let peer_cell = if result.peer_runs.is_empty() {
                    "-".to_owned()
                } else {
                    cell(
                        summary(&result.peer_runs),
                        result.peer_runs.len(),
                        result.peer_runs.len(),
                        1.0,
                    )
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    result.bench,
                    result.unit,
                    cell(
                        summary(&result.kiln),
                        result.kiln.len(),
                        result.kiln.len(),
                        1.0
                    ),
                    result
                        .peer
                        .as_deref()
                        .map_or("-".to_owned(), |p| format!("`{p}`")),
                    peer_cell,
                    result.ratio().map_or("-".to_owned(), |r| format!("{r:.2}")),
                    result.note.as_deref().unwrap_or("").replace('|', "/")
                );
            }
            let _ = writeln!(out);
        }
    }
}

fn render_corpus(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## Corpus\n");
    for (name, about, dockerfile) in report.corpus {
        let _ = writeln!(out, "- **{name}**: {about}.\n\n  ```dockerfile");
        for line in dockerfile.lines() {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "  ```\n");
    }
}

fn render_method(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## How it was measured\n");
    if !report.cases.is_empty() {
        render_build_method(out);
    }
    let _ = writeln!(out, "### Machine\n");
    for line in report.machine {
        let _ = writeln!(out, "- {line}");
    }
    let _ = writeln!(out, "\n### Versions\n");
    for (tool, version) in report.versions {
        let _ = writeln!(out, "- {tool}: {version}");
    }
    let _ = writeln!(out);
    if !report.cases.is_empty() {
        render_commands(out, report);
    }
}

fn render_build_method(out: &mut String) {
    let _ = writeln!(
        out,
        "- **Cold**: empty caches. Before each cold build the registry is restarted with only \
         the base images in its storage; kiln gets a new kiln directory and `--cache-dir` \
         (precompiled plugins are copied in: they are part of the installation, like a \
         compiled binary), buildah a new storage root, BuildKit a daemon after \
         `docker system prune -af` and `docker builder prune -af`.\n\
         - **Warm**: the identical command right after the cold build, with everything it left \
         (layer cache, base images, pushed blobs).\n\
         - **Wall time** covers build and push (buildah and BuildKit: `bud`/`build` then `push`).\n\
         - **CPU time** is user + system of the builder's process tree, from `wait4` (which adds \
         every reaped descendant). For BuildKit it also includes dockerd and its containerd \
         (utime + stime + cutime + cstime deltas from `/proc/<pid>/stat`).\n\
         - **Peak RSS** is `ru_maxrss` from `wait4`: the largest resident set of any process of \
         the tree. For BuildKit it is the larger of the client's and the daemon's (dockerd + \
         containerd) resident set sampled from `/proc/<pid>/status` every 50 ms over the build, \
         since the daemon's high-water mark cannot be reset between cases.\n\
         - **Ratio**: kiln's median wall time over the faster peer's median. Target: \
         ≤ {TARGET_RATIO}, or ≤ {FLOOR_SLACK} × the physical floor where {TARGET_RATIO} is below \
         it.\n"
    );
}

fn render_commands(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "### Commands\n\n`$CTX` is the case's context directory (`Dockerfile` in it), \
         `$REGISTRY` the local registry (`127.0.0.1:PORT`), `$STATE` the builder's state \
         directory for the case, `$CASE` the case's name.\n"
    );
    for (builder, lines) in report.commands {
        let _ = writeln!(out, "{}:\n\n```sh", builder.name());
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "```\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(case: &'static str, builder: Builder, mode: Mode, run: usize, wall: f64) -> Record {
        Record {
            case,
            builder,
            mode,
            run,
            outcome: Ok(Usage {
                wall,
                cpu: wall / 2.0,
                max_rss_kib: 2048,
            }),
        }
    }

    fn records() -> Vec<Record> {
        let mut records = Vec::new();
        for run in 1..=3 {
            let r = run as f64;
            records.push(record("a", Builder::Kiln, Mode::Cold, run, 1.0 + r));
            records.push(record("a", Builder::Buildah, Mode::Cold, run, 4.0 + r));
            records.push(record("a", Builder::Buildkit, Mode::Cold, run, 6.0 + r));
            records.push(record("a", Builder::Kiln, Mode::Warm, run, 0.1 * r));
            records.push(record("a", Builder::Buildkit, Mode::Warm, run, 0.4 * r));
        }
        records.push(Record {
            case: "a",
            builder: Builder::Buildah,
            mode: Mode::Warm,
            run: 1,
            outcome: Err("buildah: boom".into()),
        });
        records
    }

    #[test]
    fn ratios_pick_the_faster_peer_per_mode() {
        let rows = ratio_rows(&records(), &["a"], &Builder::ALL, &[]);
        assert_eq!(rows.len(), 2);
        // Cold: kiln median 3, buildah 6, buildkit 8.
        assert_eq!(rows[0].ratio, Some((0.5, Builder::Buildah)));
        // Warm: buildah failed, buildkit median 0.8, kiln 0.2.
        let (ratio, peer) = rows[1].ratio.unwrap();
        assert!((ratio - 0.25).abs() < 1e-12);
        assert_eq!(peer, Builder::Buildkit);
        assert_eq!(rows[0].target, TARGET_RATIO);
    }

    #[test]
    fn a_floor_above_half_the_peer_raises_the_target() {
        assert_eq!(target_ratio(None, Some(10.0)), 0.5);
        assert_eq!(target_ratio(Some(2.0), Some(10.0)), 0.5);
        assert!((target_ratio(Some(9.0), Some(12.0)) - 1.1 * 0.75).abs() < 1e-12);
        let floors = [Floor {
            case: "a",
            command: "pigz".into(),
            runs: vec![5.0, 5.0, 5.0],
        }];
        let rows = ratio_rows(&records(), &["a"], &Builder::ALL, &floors);
        assert!((rows[0].target - 1.1 * 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(rows[1].target, TARGET_RATIO, "warm builds compress nothing");
    }

    #[test]
    fn the_table_shows_summaries_ratios_and_failures() {
        let records = records();
        let micro = Micro::Skipped("no bench target".into());
        let report = Report {
            title: "Benchmarks",
            cases: &["a"],
            corpus: &[("a", "the first case", "FROM $BASE\nRUN true\n".into())],
            builders: &Builder::ALL,
            runs: 3,
            records: &records,
            floors: &[],
            micro: &micro,
            machine: &["2 cores".into()],
            versions: &[("kiln".into(), "0.1.0".into())],
            commands: &[(Builder::Kiln, vec!["kiln build".into()])],
            chart: Some("docs/bench-ratios.png"),
            contexts: None,
            kiln_program: "kiln",
            invocation: "cargo xtask bench",
            elapsed: 12.0,
        };
        let text = render(&report);
        assert!(
            text.contains(
                "| a | cold | 2.00 / 3.00 | 5.00 / 6.00 | 7.00 / 8.00 | 0.50 (vs buildah) | ≤ 0.50 | yes |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| a | warm | 0.10 / 0.20 | failed | 0.40 / 0.80 | 0.25 (vs buildkit) |"),
            "{text}"
        );
        assert!(text.contains("| a | cold | 1.00 / 1.50 |"), "{text}");
        assert!(text.contains("2.00 / 2.00 |"), "RSS in MiB: {text}");
        assert!(text.contains("- a warm by buildah, run 1:\n\n```text\nbuildah: boom\n```"));
        assert!(text.contains("Not run: no bench target"));
        assert!(text.contains(
            "- **a**: the first case.\n\n  ```dockerfile\n  FROM $BASE\n  RUN true\n  ```"
        ));
        assert!(text.contains("![kiln's wall time over the faster peer's](docs/bench-ratios.png)"));
    }

    #[test]
    fn micro_results_get_a_row_each() {
        let micro = Micro::Ran(vec![
            MicroResult {
                bench: "gzip-500MiB".into(),
                unit: "s".into(),
                kiln: vec![10.0, 9.0, 11.0],
                peer: Some("pigz -6 -p 2".into()),
                peer_runs: vec![9.0, 9.0, 9.0],
                note: Some("level 6".into()),
            },
            MicroResult {
                bench: "push".into(),
                unit: "MiB/s".into(),
                kiln: vec![100.0, 300.0, 200.0],
                peer: None,
                peer_runs: vec![],
                note: None,
            },
        ]);
        let mut out = String::new();
        render_micro(&mut out, &micro);
        assert!(
            out.contains(
                "| gzip-500MiB | s | 9.00 / 10.0 | `pigz -6 -p 2` | 9.00 / 9.00 | 1.11 | level 6 |"
            ),
            "{out}"
        );
        assert!(
            out.contains("| push | MiB/s | 300 / 200 | - | - | - |  |"),
            "{out}"
        );
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(number(0.123_4), "0.12");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(123.4), "123");
        assert_eq!(number(0.0123), "0.012");
        assert_eq!(number(0.000_52), "0.0005");
    }
}
