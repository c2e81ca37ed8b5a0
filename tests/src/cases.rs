//! Dockerfile cases kept as directories (`tests/cases/NAME/`): a
//! `Dockerfile`, its context files, and optionally
//!
//! - `case.json`: `build_args` (object), `target`, `needs` (cases whose
//!   images this one builds on, named `@CASE:NAME@` in the Dockerfile),
//!   `oracle` (false: buildah cannot build it, `expected.json` says what kiln
//!   must produce), `oracle_divergences` (`{"/path" or "config Field":
//!   "why buildah is not BuildKit here"}`: left out of the comparison with
//!   buildah and required in `expected.json` instead), and how to shape the context where git cannot:
//!   `modes` (`{"path": "0755"}`), `empty_dirs`, `tarballs`
//!   (`{"archive.tar.gz": "dir"}`: a gzip tar of the case's `dir`, entries
//!   owned by [`TAR_OWNER`]);
//! - `expected.json`: exact expectations (see [`crate::check_expected`]).
//!
//! Placeholders such as `@BASE@` (busybox) and `@DEBIAN@` (Debian bookworm)
//! in the Dockerfile are replaced when the context is written, because
//! registry ports change from run to run.

use crate::base::BaseImage;
use crate::buildah::{BuildSpec, Buildah, mounts_under};
use crate::compare::ImageView;
use crate::context::BuildContext;
use crate::expected::check_expected;
use crate::http::FileServer;
use crate::image::Image;
use crate::registry::Registry;
use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;
use tempfile::TempDir;

/// The uid and gid of every entry in a case's generated tarballs.
pub const TAR_OWNER: (u64, u64) = (1234, 5678);

/// A fixed mtime for generated tarball entries.
const TAR_MTIME: u64 = 1_000_000_000;

/// The starts of the placeholders a Dockerfile may use: a value must be
/// given for each one that it does.
const PLACEHOLDERS: &[&str] = &["@CASE:", "@BASE@", "@DEBIAN@"];

/// Files of a case directory that describe the case and are not context.
const CASE_FILES: &[&str] = &["case.json", "expected.json"];

/// Where [`CaseServices`] pushes busybox, the `@BASE@` of the cases.
const BUSYBOX_REPO_TAG: &str = "library/busybox:latest";

/// Concurrent cases: buildah and kiln mostly wait on processes and I/O, so
/// a little more than the machine's two cores keeps them busy.
const WORKERS: usize = 3;

/// One Dockerfile case.
#[derive(Clone, Debug)]
pub struct Case {
    /// The directory name.
    pub name: String,
    /// The case directory.
    pub dir: PathBuf,
    /// `--build-arg`s.
    pub build_args: Vec<(String, String)>,
    /// `--target`.
    pub target: Option<String>,
    /// Cases that must be built first (their images are `@CASE:NAME@`).
    pub needs: Vec<String>,
    /// Whether buildah can build it and serves as the oracle.
    pub oracle: bool,
    /// The exact expectations, if any.
    pub expected: Option<Value>,
    /// Paths and `config Field`s where buildah differs from BuildKit, with
    /// the reason; `expected` pins them down instead.
    pub oracle_divergences: BTreeMap<String, String>,
    modes: BTreeMap<String, u32>,
    empty_dirs: Vec<String>,
    tarballs: BTreeMap<String, String>,
}

impl Case {
    /// Every case under `dir`, sorted by name.
    pub fn load_all(dir: &Path) -> Result<Vec<Case>> {
        let mut cases = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                cases.push(
                    Case::load(&entry.path())
                        .with_context(|| format!("bad case {}", entry.path().display()))?,
                );
            }
        }
        cases.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(cases)
    }

    /// The case in `dir`.
    pub fn load(dir: &Path) -> Result<Case> {
        let name = dir
            .file_name()
            .context("a case directory has a name")?
            .to_string_lossy()
            .into_owned();
        if !dir.join("Dockerfile").is_file() {
            bail!("{} has no Dockerfile", dir.display());
        }
        let options = read_json(&dir.join("case.json"))?.unwrap_or(Value::Null);
        let expected = read_json(&dir.join("expected.json"))?;
        let empty = serde_json::Map::new();
        let options = match &options {
            Value::Null => &empty,
            Value::Object(map) => map,
            _ => bail!("case.json must hold an object"),
        };
        let mut case = Case {
            name,
            dir: dir.to_owned(),
            build_args: Vec::new(),
            target: None,
            needs: Vec::new(),
            oracle: true,
            expected,
            oracle_divergences: BTreeMap::new(),
            modes: BTreeMap::new(),
            empty_dirs: Vec::new(),
            tarballs: BTreeMap::new(),
        };
        for (key, value) in options {
            match key.as_str() {
                "build_args" => case.build_args = string_map(value, key)?.into_iter().collect(),
                "target" => case.target = Some(string(value, key)?),
                "needs" => case.needs = string_list(value, key)?,
                "oracle" => case.oracle = value.as_bool().context("`oracle` must be a bool")?,
                "oracle_divergences" => case.oracle_divergences = string_map(value, key)?,
                "modes" => {
                    for (path, mode) in string_map(value, key)? {
                        let parsed = u32::from_str_radix(&mode, 8)
                            .with_context(|| format!("mode {mode:?} of {path} is not octal"))?;
                        case.modes.insert(path, parsed);
                    }
                }
                "empty_dirs" => case.empty_dirs = string_list(value, key)?,
                "tarballs" => case.tarballs = string_map(value, key)?,
                other => bail!("unknown key {other:?} in case.json"),
            }
        }
        if !case.oracle && case.expected.is_none() {
            bail!("a case that buildah cannot check needs an expected.json");
        }
        for subject in case.oracle_divergences.keys() {
            if !case.expects(subject) {
                bail!(
                    "oracle divergence {subject:?} must be pinned down in expected.json \
                     (under `paths`, or `config` for \"config Field\")"
                );
            }
        }
        Ok(case)
    }

    /// Whether `expected.json` covers `subject`: a path under `paths` or a
    /// `config Field` under `config`.
    fn expects(&self, subject: &str) -> bool {
        let Some(expected) = &self.expected else {
            return false;
        };
        match subject.strip_prefix("config ") {
            Some(field) => expected["config"].get(field).is_some(),
            None => expected["paths"].get(subject).is_some(),
        }
    }

    /// Whether the Dockerfile uses `placeholder` (such as `@DEBIAN@`), so
    /// that costly values are made only for the cases that need them.
    pub fn mentions(&self, placeholder: &str) -> Result<bool> {
        let path = self.dir.join("Dockerfile");
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(text.contains(placeholder))
    }

    /// Writes the case's context into a fresh directory: its files with
    /// modes 0644/0755 (or those in `modes`), the generated empty
    /// directories and tarballs, and the Dockerfile with each
    /// `(placeholder, value)` substituted.
    pub fn context(&self, substitutions: &[(String, String)]) -> Result<BuildContext> {
        let context = BuildContext::new()?;
        // A temporary directory is 0700; `COPY . /dst` must not see that.
        fs::set_permissions(context.path(), fs::Permissions::from_mode(0o755))?;
        copy_tree(&self.dir, context.path(), true)?;
        let dockerfile = context.path().join("Dockerfile");
        let mut text = fs::read_to_string(&dockerfile)?;
        for (placeholder, value) in substitutions {
            text = text.replace(placeholder, value);
        }
        if let Some(start) = PLACEHOLDERS.iter().filter_map(|p| text.find(p)).min() {
            let rest = &text[start..];
            bail!(
                "{}: placeholder {} has no value",
                self.name,
                rest.split_whitespace().next().unwrap_or(rest)
            );
        }
        fs::write(&dockerfile, text)?;
        for dir in &self.empty_dirs {
            let path = context.path().join(dir);
            fs::create_dir_all(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
        for (path, mode) in &self.modes {
            let path = context.path().join(path);
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                .with_context(|| format!("cannot chmod {}", path.display()))?;
        }
        for (archive, source) in &self.tarballs {
            write_tarball(&context.path().join(source), &context.path().join(archive))
                .with_context(|| format!("cannot make {archive} from {source}"))?;
        }
        Ok(context)
    }

    /// What to build from `context`.
    pub fn spec(&self, context: &BuildContext) -> BuildSpec {
        BuildSpec {
            build_args: self.build_args.clone(),
            target: self.target.clone(),
            ..BuildSpec::new(context.path())
        }
    }
}

/// The cases named in `filter` (comma-separated) and those they need; all
/// cases without a filter.
pub fn select_cases(all: &[Case], filter: Option<&str>) -> Result<Vec<Case>> {
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

/// Cases grouped so that each runs after the cases it needs, with those on
/// the Debian base first in each phase.
pub struct CasePlan {
    /// The phases, in order.
    pub phases: Vec<Vec<Case>>,
    /// Whether a case uses `@DEBIAN@`, so that the Debian base is needed.
    pub uses_debian: bool,
}

impl CasePlan {
    /// Plans `cases`, failing on missing or circular `needs`.
    pub fn new(cases: &[Case]) -> Result<CasePlan> {
        let mut uses_debian = BTreeSet::new();
        for case in cases {
            if case.mentions("@DEBIAN@")? {
                uses_debian.insert(case.name.clone());
            }
        }
        let mut phases = phases(cases)?;
        for phase in &mut phases {
            // They are the slowest (apt-get from the mirror): starting them
            // first keeps them from being the last ones running.
            phase.sort_by_key(|case| !uses_debian.contains(&case.name));
        }
        Ok(CasePlan {
            phases,
            uses_debian: !uses_debian.is_empty(),
        })
    }
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

/// What every case needs: the registry, the base images and the file server.
pub struct CaseServices {
    /// The registry every image is pulled from and pushed to.
    pub registry: Registry,
    base: String,
    /// The Debian base image, made only when a selected case uses it.
    debian: Option<String>,
    server: FileServer,
}

impl CaseServices {
    /// Starts a registry holding busybox (and Debian, kept in `cache_dir`
    /// for the day, when the plan uses it) and a file server for
    /// `cases_dir`.
    pub fn start(plan: &CasePlan, cases_dir: &Path, cache_dir: &Path) -> Result<CaseServices> {
        let registry = Registry::start()?;
        let base = BaseImage::busybox()?.push(&registry, BUSYBOX_REPO_TAG)?;
        let debian = if plan.uses_debian {
            Some(BaseImage::debian(cache_dir)?.push(&registry, "library/debian:bookworm")?)
        } else {
            None
        };
        let server = FileServer::start(cases_dir)?;
        Ok(CaseServices {
            registry,
            base,
            debian,
            server,
        })
    }

    /// The busybox base image, `@BASE@`.
    pub fn base_image(&self) -> Image {
        self.registry.image(BUSYBOX_REPO_TAG)
    }

    /// Placeholder values for the Dockerfile built by `side` (`kiln`,
    /// `buildah`, ...): each side builds on its own images of the needed
    /// cases, `cases/NAME:SIDE`.
    pub fn substitutions(&self, case: &Case, side: &str) -> Vec<(String, String)> {
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

    /// Builds `case` with buildah, pushes it as `cases/NAME:buildah` and
    /// reads it back.
    pub fn oracle(&self, case: &Case, buildah: &Buildah) -> Result<ImageView> {
        let context = case.context(&self.substitutions(case, "buildah"))?;
        let repo_tag = format!("cases/{}:buildah", case.name);
        buildah.build_and_push(&case.spec(&context), &self.registry.reference(&repo_tag))?;
        ImageView::read(&self.registry.image(&repo_tag)).context("cannot read buildah's image")
    }
}

/// One worker's own tools, so that workers share nothing but the registry.
pub struct CaseWorker {
    /// The oracle, with storage of its own.
    pub buildah: Buildah,
    /// A kiln directory for the worker's builds, one after the other.
    pub kaniko_dir: TempDir,
}

/// What a run of cases produced.
pub struct CaseRun<T> {
    /// What `run` returned for each case, in no particular order.
    pub results: Vec<T>,
    /// Mount points that buildah left behind: empty unless it leaked.
    pub leaks: Vec<PathBuf>,
}

/// Runs `run` on every case, phase after phase, on a few workers in
/// parallel.
pub fn run_cases<T: Send>(
    phases: Vec<Vec<Case>>,
    run: impl Fn(&Case, &CaseWorker) -> T + Sync,
) -> Result<CaseRun<T>> {
    let mut all = Vec::new();
    let mut leaks = Vec::new();
    for phase in phases {
        let queue = Mutex::new(VecDeque::from(phase));
        let results = Mutex::new(Vec::new());
        thread::scope(|scope| -> Result<()> {
            let mut handles = Vec::new();
            for _ in 0..WORKERS {
                handles.push(scope.spawn(|| -> Result<Vec<PathBuf>> {
                    let worker = CaseWorker {
                        buildah: Buildah::new()?,
                        kaniko_dir: tempfile::Builder::new().prefix("kiln-cases-").tempdir()?,
                    };
                    loop {
                        let next = queue.lock().expect("queue lock").pop_front();
                        let Some(case) = next else { break };
                        let result = run(&case, &worker);
                        results.lock().expect("results lock").push(result);
                    }
                    let buildah_dir = worker.buildah.dir().to_owned();
                    drop(worker);
                    // Drop must leave nothing mounted under buildah's storage.
                    mounts_under(Path::new("/")).map(|mounts| {
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
        all.extend(results.into_inner().expect("results lock"));
    }
    Ok(CaseRun {
        results: all,
        leaks,
    })
}

/// What happened to one case.
pub struct CaseOutcome {
    /// The case's name.
    pub name: String,
    /// Everything that went wrong, one message each.
    pub problems: Vec<String>,
    /// How long the case took.
    pub seconds: f64,
}

impl CaseOutcome {
    /// One line: the name, the time and `ok` or the first problem.
    pub fn summary(&self) -> String {
        let verdict = match self.problems.first() {
            None => "ok".to_owned(),
            Some(first) => format!("FAIL: {}", first.lines().next().unwrap_or_default()),
        };
        format!("case {} ({:.1} s): {verdict}", self.name, self.seconds)
    }
}

/// Prints a count of `outcomes` (sorted by name here), called `what`, and
/// the problems of each failed one; returns the names of those.
pub fn report_outcomes(outcomes: &mut [CaseOutcome], what: &str, elapsed: Duration) -> Vec<String> {
    outcomes.sort_by(|a, b| a.name.cmp(&b.name));
    let failed: Vec<&CaseOutcome> = outcomes.iter().filter(|o| !o.problems.is_empty()).collect();
    println!(
        "\n{} {what} in {:.0?}: {} match, {} fail",
        outcomes.len(),
        elapsed,
        outcomes.len() - failed.len(),
        failed.len()
    );
    for outcome in &failed {
        println!("\n=== {} ===", outcome.name);
        for problem in &outcome.problems {
            println!("{problem}");
        }
    }
    failed.iter().map(|o| o.name.clone()).collect()
}

/// What is wrong with kiln's image of `case`: differences from the
/// oracle's (when the case has one and both builds worked) and from
/// `expected.json`, and either build's failure.
pub fn case_problems(
    case: &Case,
    kiln: &Result<ImageView>,
    oracle: Option<&Result<ImageView>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    match (kiln, oracle) {
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
    if let Some(Err(e)) = oracle {
        problems.push(format!("buildah (the oracle) failed: {e:#}"));
    }
    if let (Ok(kiln), Some(expected)) = (kiln, &case.expected) {
        match check_expected(kiln, expected) {
            Ok(found) if found.is_empty() => {}
            Ok(found) => problems.push(format!(
                "differs from expected.json:\n  {}",
                found.join("\n  ")
            )),
            Err(e) => problems.push(format!("expected.json is invalid: {e:#}")),
        }
    }
    problems
}

/// kiln's error lines, or the end of its log when it printed none.
pub fn kiln_error_lines(stderr: &str) -> String {
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

fn read_json(path: &Path) -> Result<Option<Value>> {
    match fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not valid JSON", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn string(value: &Value, key: &str) -> Result<String> {
    value
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("`{key}` must be a string"))
}

fn string_list(value: &Value, key: &str) -> Result<Vec<String>> {
    value
        .as_array()
        .with_context(|| format!("`{key}` must be an array"))?
        .iter()
        .map(|item| string(item, key))
        .collect()
}

fn string_map(value: &Value, key: &str) -> Result<BTreeMap<String, String>> {
    value
        .as_object()
        .with_context(|| format!("`{key}` must be an object"))?
        .iter()
        .map(|(name, item)| Ok((name.clone(), string(item, key)?)))
        .collect()
}

/// Copies regular files and directories with normalised modes, so that the
/// checkout's umask never reaches an image.
fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if top && CASE_FILES.iter().any(|file| name == *file) {
            continue;
        }
        let target = to.join(&name);
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            fs::create_dir(&target)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
            copy_tree(&entry.path(), &target, false)?;
        } else if file_type.is_file() {
            fs::copy(entry.path(), &target)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o644))?;
        } else {
            bail!(
                "{}: cases hold only files and directories; describe the rest in case.json",
                entry.path().display()
            );
        }
    }
    Ok(())
}

/// A gzip tar of the tree at `source` (its contents, not itself), sorted,
/// with the modes on disk and [`TAR_OWNER`] as owner.
fn write_tarball(source: &Path, archive: &Path) -> Result<()> {
    let mut builder = tar::Builder::new(GzEncoder::new(
        File::create(archive)?,
        Compression::default(),
    ));
    append_dir(&mut builder, source, Path::new(""))?;
    builder.into_inner()?.finish()?;
    Ok(())
}

fn append_dir<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    relative: &Path,
) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = relative.join(entry.file_name());
        let metadata = entry.metadata()?;
        let mut header = tar::Header::new_gnu();
        header.set_mode(metadata.permissions().mode() & 0o7777);
        header.set_uid(TAR_OWNER.0);
        header.set_gid(TAR_OWNER.1);
        header.set_mtime(TAR_MTIME);
        if metadata.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder.append_data(&mut header, &path, std::io::empty())?;
            append_dir(builder, &entry.path(), &path)?;
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(metadata.len());
            builder.append_data(&mut header, &path, File::open(entry.path())?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_normalised_substituted_and_shaped() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let case_dir = dir.path().join("demo");
        fs::create_dir_all(case_dir.join("src/sub"))?;
        fs::write(case_dir.join("Dockerfile"), "FROM @BASE@\nCOPY . /x\n")?;
        fs::write(case_dir.join("src/sub/f"), "f\n")?;
        fs::write(case_dir.join("tool.sh"), "#!/bin/sh\n")?;
        fs::write(
            case_dir.join("case.json"),
            r#"{"build_args": {"A": "1"}, "target": "t", "modes": {"tool.sh": "0750"},
                "empty_dirs": ["e/f"], "tarballs": {"a.tar.gz": "src"}}"#,
        )?;
        let case = Case::load(&case_dir)?;
        assert_eq!(case.build_args, [("A".to_owned(), "1".to_owned())]);
        assert!(case.mentions("@BASE@")?);
        assert!(!case.mentions("@DEBIAN@")?);
        assert!(case.oracle);

        let context = case.context(&[("@BASE@".into(), "reg/base:1".into())])?;
        let root = context.path();
        assert_eq!(
            fs::read_to_string(root.join("Dockerfile"))?,
            "FROM reg/base:1\nCOPY . /x\n"
        );
        assert!(!root.join("case.json").exists());
        let mode = |p: &str| -> Result<u32> {
            Ok(fs::metadata(root.join(p))?.permissions().mode() & 0o7777)
        };
        assert_eq!(mode("tool.sh")?, 0o750);
        assert_eq!(mode("src/sub/f")?, 0o644);
        assert_eq!(mode("src/sub")?, 0o755);
        assert!(root.join("e/f").is_dir());

        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(File::open(
            root.join("a.tar.gz"),
        )?));
        let mut seen = Vec::new();
        for entry in archive.entries()? {
            let entry = entry?;
            let header = entry.header();
            assert_eq!((header.uid()?, header.gid()?), TAR_OWNER);
            seen.push(entry.path()?.display().to_string());
        }
        assert_eq!(seen, ["sub", "sub/f"]);
        let spec = case.spec(&context);
        assert_eq!(spec.target.as_deref(), Some("t"));
        assert_eq!(spec.dockerfile, root.join("Dockerfile"));
        Ok(())
    }

    #[test]
    fn missing_placeholder_values_and_bad_options_fail() -> Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("Dockerfile"), "FROM @DEBIAN@\n")?;
        let err = Case::load(dir.path())?
            .context(&[("@BASE@".into(), "reg/base:1".into())])
            .err()
            .context("an unset @DEBIAN@ must fail")?;
        assert!(format!("{err:#}").contains("@DEBIAN@"), "{err:#}");
        fs::write(dir.path().join("Dockerfile"), "FROM @CASE:parent@\n")?;
        let case = Case::load(dir.path())?;
        let err = case
            .context(&[])
            .err()
            .context("an unset placeholder must fail")?;
        assert!(format!("{err:#}").contains("@CASE:parent@"), "{err:#}");

        fs::write(dir.path().join("case.json"), r#"{"oracle": false}"#)?;
        assert!(
            Case::load(dir.path()).is_err(),
            "oracle false needs expected.json"
        );
        fs::write(dir.path().join("case.json"), r#"{"colour": "red"}"#)?;
        assert!(Case::load(dir.path()).is_err());

        fs::write(
            dir.path().join("case.json"),
            r#"{"oracle_divergences": {"/x": "why", "config Cmd": "why"}}"#,
        )?;
        fs::write(dir.path().join("expected.json"), r#"{"paths": {"/x": {}}}"#)?;
        let err = Case::load(dir.path())
            .err()
            .context("config Cmd is not pinned down")?;
        assert!(format!("{err:#}").contains("config Cmd"), "{err:#}");
        fs::write(
            dir.path().join("expected.json"),
            r#"{"paths": {"/x": {}}, "config": {"Cmd": ["a"]}}"#,
        )?;
        assert_eq!(Case::load(dir.path())?.oracle_divergences.len(), 2);
        Ok(())
    }
}
