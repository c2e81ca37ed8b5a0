//! Issue 3's end-to-end acceptance: every case under `tests/cases` is built
//! by kiln and, where it can, by buildah as an oracle; the flattened file
//! trees and configs must match, and cases with an `expected.json` must
//! match it exactly. All cases run, and every mismatch is reported at the
//! end. `KILN_CASES=a,b` runs only those cases (and what they need).

use anyhow::{Context, Result, bail};
use kiln_e2e::{
    BaseImage, Buildah, Case, FileServer, ImageView, Registry, check_expected, kiln_build,
};
use std::collections::{BTreeSet, VecDeque};
use std::env;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::Instant;

/// Concurrent cases: buildah and kiln mostly wait on processes and I/O, so
/// a little more than the machine's two cores keeps them busy.
const WORKERS: usize = 3;

/// The minimum number of cases issue 3 asks for.
const MIN_CASES: usize = 30;

/// What every case needs: the registry, the base images and the file server.
struct Services {
    registry: Registry,
    base: String,
    /// The Debian base image, made only when a selected case uses it.
    debian: Option<String>,
    server: FileServer,
}

impl Services {
    /// Placeholder values for the Dockerfile built by `side` (`kiln` or
    /// `buildah`): each side builds on its own images of the needed cases.
    fn substitutions(&self, case: &Case, side: &str) -> Vec<(String, String)> {
        let mut subs = vec![
            ("@BASE@".to_owned(), self.base.clone()),
            ("@HTTP@".to_owned(), self.server.url()),
            ("@REGISTRY@".to_owned(), self.registry.addr()),
        ];
        if let Some(debian) = &self.debian {
            subs.push(("@DEBIAN@".to_owned(), debian.clone()));
        }
        for need in &case.needs {
            subs.push((
                format!("@CASE:{need}@"),
                self.registry.reference(&format!("cases/{need}:{side}")),
            ));
        }
        subs
    }
}

/// One worker's own tools, so that workers share nothing but the registry.
struct Worker {
    buildah: Buildah,
    kaniko_dir: tempfile::TempDir,
}

#[test]
fn dockerfile_cases() -> Result<()> {
    let cases_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
    let all = Case::load_all(&cases_dir)?;
    assert!(
        all.len() >= MIN_CASES,
        "only {} cases in {}",
        all.len(),
        cases_dir.display()
    );
    let selected = select(&all, env::var("KILN_CASES").ok().as_deref())?;
    let mut uses_debian = BTreeSet::new();
    for case in &selected {
        if case.mentions("@DEBIAN@")? {
            uses_debian.insert(case.name.clone());
        }
    }
    let mut phases = phases(&selected)?;
    for phase in &mut phases {
        // They are the slowest (apt-get from the mirror): starting them
        // first keeps them from being the last ones running.
        phase.sort_by_key(|case| !uses_debian.contains(&case.name));
    }

    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let debian = if uses_debian.is_empty() {
        None
    } else {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR"));
        Some(BaseImage::debian(cache)?.push(&registry, "library/debian:bookworm")?)
    };
    let server = FileServer::start(&cases_dir)?;
    let services = Services {
        registry,
        base,
        debian,
        server,
    };

    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut leaks = Vec::new();
    for phase in phases {
        let queue = Mutex::new(VecDeque::from(phase));
        let results = Mutex::new(Vec::new());
        thread::scope(|scope| -> Result<()> {
            let mut handles = Vec::new();
            for _ in 0..WORKERS {
                handles.push(scope.spawn(|| -> Result<Vec<PathBuf>> {
                    let worker = Worker {
                        buildah: Buildah::new()?,
                        kaniko_dir: tempfile::Builder::new().prefix("kiln-cases-").tempdir()?,
                    };
                    loop {
                        let next = queue.lock().expect("queue lock").pop_front();
                        let Some(case) = next else { break };
                        let outcome = run_case(&case, &services, &worker);
                        println!("{}", outcome.summary());
                        results.lock().expect("results lock").push(outcome);
                    }
                    let buildah_dir = worker.buildah.dir().to_owned();
                    drop(worker);
                    // Drop must leave nothing mounted under buildah's storage.
                    kiln_e2e::mounts_under(Path::new("/")).map(|mounts| {
                        mounts
                            .into_iter()
                            .filter(|mount| mount.starts_with(&buildah_dir))
                            .collect()
                    })
                }));
            }
            for handle in handles {
                match handle.join() {
                    Ok(found) => leaks.extend(found?),
                    Err(_) => bail!("a case worker panicked"),
                }
            }
            Ok(())
        })?;
        outcomes.extend(results.into_inner().expect("results lock"));
    }
    outcomes.sort_by(|a, b| a.name.cmp(&b.name));

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.problems.is_empty()).collect();
    println!(
        "\n{} cases in {:.0?}: {} match, {} fail",
        outcomes.len(),
        started.elapsed(),
        outcomes.len() - failed.len(),
        failed.len()
    );
    for outcome in &failed {
        println!("\n=== {} ===", outcome.name);
        for problem in &outcome.problems {
            println!("{problem}");
        }
    }
    assert!(leaks.is_empty(), "buildah left mounts behind: {leaks:?}");
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|o| o.name.as_str()).collect();
        bail!(
            "{} of {} cases fail (details above): {}",
            failed.len(),
            outcomes.len(),
            names.join(", ")
        );
    }
    Ok(())
}

/// The cases named in `filter` (comma-separated) and those they need; all
/// cases without a filter.
fn select(all: &[Case], filter: Option<&str>) -> Result<Vec<Case>> {
    let Some(filter) = filter.filter(|f| !f.trim().is_empty()) else {
        return Ok(all.to_vec());
    };
    let mut wanted: BTreeSet<String> = filter.split(',').map(|s| s.trim().to_owned()).collect();
    loop {
        let needed: Vec<String> = all
            .iter()
            .filter(|c| wanted.contains(&c.name))
            .flat_map(|c| c.needs.iter().cloned())
            .collect();
        let before = wanted.len();
        wanted.extend(needed);
        if wanted.len() == before {
            break;
        }
    }
    for name in &wanted {
        if !all.iter().any(|c| &c.name == name) {
            bail!("KILN_CASES names {name:?}, which is not a case");
        }
    }
    Ok(all
        .iter()
        .filter(|c| wanted.contains(&c.name))
        .cloned()
        .collect())
}

/// Groups cases so that each runs after the cases it needs.
fn phases(cases: &[Case]) -> Result<Vec<Vec<Case>>> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut left: Vec<&Case> = cases.iter().collect();
    let mut phases = Vec::new();
    while !left.is_empty() {
        let (ready, waiting): (Vec<&Case>, Vec<&Case>) = left
            .into_iter()
            .partition(|c| c.needs.iter().all(|n| done.contains(n.as_str())));
        if ready.is_empty() {
            let names: Vec<&str> = waiting.iter().map(|c| c.name.as_str()).collect();
            bail!("cases with missing or circular `needs`: {names:?}");
        }
        done.extend(ready.iter().map(|c| c.name.as_str()));
        phases.push(ready.into_iter().cloned().collect());
        left = waiting;
    }
    Ok(phases)
}

/// What happened to one case.
struct Outcome {
    name: String,
    problems: Vec<String>,
    seconds: f64,
}

impl Outcome {
    fn summary(&self) -> String {
        let verdict = match self.problems.first() {
            None => "ok".to_owned(),
            Some(first) => format!("FAIL: {}", first.lines().next().unwrap_or_default()),
        };
        format!("case {} ({:.1} s): {verdict}", self.name, self.seconds)
    }
}

fn run_case(case: &Case, services: &Services, worker: &Worker) -> Outcome {
    let started = Instant::now();
    let mut problems = Vec::new();

    let kiln = build_with_kiln(case, services, worker);
    let oracle = case
        .oracle
        .then(|| build_with_buildah(case, services, worker));
    match (&kiln, &oracle) {
        (Err(e), _) => problems.push(format!("kiln failed: {e:#}")),
        (Ok(kiln), Some(Ok(oracle))) => {
            let comparison = oracle
                .compare(kiln, ("buildah", "kiln"))
                .excluding(case.oracle_divergences.keys());
            if !comparison.is_match() {
                problems.push(format!("differs from buildah:\n{comparison}"));
            }
        }
        _ => {}
    }
    if let Some(Err(e)) = &oracle {
        problems.push(format!("buildah (the oracle) failed: {e:#}"));
    }
    if let (Ok(kiln), Some(expected)) = (&kiln, &case.expected) {
        match check_expected(kiln, expected) {
            Ok(found) if found.is_empty() => {}
            Ok(found) => problems.push(format!(
                "differs from expected.json:\n  {}",
                found.join("\n  ")
            )),
            Err(e) => problems.push(format!("expected.json is invalid: {e:#}")),
        }
    }
    Outcome {
        name: case.name.clone(),
        problems,
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn build_with_kiln(case: &Case, services: &Services, worker: &Worker) -> Result<ImageView> {
    let context = case.context(&services.substitutions(case, "kiln"))?;
    let repo_tag = format!("cases/{}:kiln", case.name);
    let out = kiln_build(
        &case.spec(&context),
        &services.registry,
        &repo_tag,
        Some(worker.kaniko_dir.path()),
    )?;
    if !out.status.success() {
        bail!("{}\n{}", out.status, error_lines(&out.stderr));
    }
    ImageView::read(&services.registry.image(&repo_tag)).context("cannot read kiln's image")
}

fn build_with_buildah(case: &Case, services: &Services, worker: &Worker) -> Result<ImageView> {
    let context = case.context(&services.substitutions(case, "buildah"))?;
    let repo_tag = format!("cases/{}:buildah", case.name);
    worker.buildah.build_and_push(
        &case.spec(&context),
        &services.registry.reference(&repo_tag),
    )?;
    ImageView::read(&services.registry.image(&repo_tag)).context("cannot read buildah's image")
}

/// kiln's error lines, or the end of its log when it printed none.
fn error_lines(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("ERRO") || line.starts_with("FATA"))
        .collect();
    if errors.is_empty() {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    } else {
        errors.join("\n")
    }
}
