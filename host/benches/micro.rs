//! Micro-benchmarks of kiln's data paths, each against the standard tool
//! that does the same job: layer compression (pigz, zstd), digests
//! (sha256sum), the snapshot of a one-file change (tar | gzip, and the stat
//! walk a full-filesystem snapshotter pays), plugin load and call, and blob
//! push (skopeo).
//!
//! `cargo bench -p kiln --bench micro -- [--quick] [NAME...]` prints one JSON
//! object per benchmark on stdout:
//! `{"bench","unit","kiln":[..],"peer","peer_runs":[..],"note"}`, with kiln
//! and the peer measured alternately in the same run (`peer_runs` is empty
//! when there is no peer). Progress goes to stderr. `--quick` is one run on
//! small inputs, the CI smoke test; NAMEs keep only the benchmarks whose name
//! contains one of them. Inputs are generated once and cached under
//! `<target dir>/bench-data`.

mod micro {
    pub mod compress;
    pub mod data;
    pub mod plugin;
    pub mod push;
    pub mod snapshot;
}

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How much to measure, and where inputs live.
pub struct Config {
    /// Runs of kiln and of the peer, each.
    pub runs: usize,
    /// One small run for CI.
    pub quick: bool,
    /// Generated inputs, kept between invocations.
    pub data_dir: PathBuf,
    /// Substrings of the benchmarks to run; all when empty.
    filters: Vec<String>,
}

impl Config {
    fn from_args() -> Result<Config> {
        let mut quick = false;
        let mut filters = Vec::new();
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--quick" => quick = true,
                // cargo bench passes this to every bench binary.
                "--bench" => {}
                flag if flag.starts_with('-') => {
                    bail!("unknown flag {flag}: the flags are --quick and benchmark names")
                }
                _ => filters.push(arg),
            }
        }
        Ok(Config {
            runs: if quick { 1 } else { 3 },
            quick,
            data_dir: data_dir()?,
            filters,
        })
    }

    /// Whether the benchmark `name` is wanted.
    pub fn wants(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
    }

    /// A fresh scratch directory beside the cached data (same filesystem),
    /// removed on drop.
    pub fn scratch(&self, prefix: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.data_dir)
            .with_context(|| format!("creating a scratch dir in {}", self.data_dir.display()))
    }
}

/// `<target dir>/bench-data`: the bench binary runs from
/// `<target dir>/<profile>/deps/`.
fn data_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let target = exe
        .ancestors()
        .nth(3)
        .with_context(|| format!("{} is not inside a cargo target dir", exe.display()))?;
    let dir = target.join("bench-data");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// One benchmark's result: one JSON line on stdout, fields in this order.
#[derive(serde::Serialize)]
pub struct Report {
    /// Name, with its input size.
    pub bench: String,
    /// Unit of the measurements (`s` or `us`).
    pub unit: &'static str,
    /// kiln's measurements, one per run.
    pub kiln: Vec<f64>,
    /// The peer's command line, if there is a peer.
    pub peer: Option<String>,
    /// The peer's measurements, one per run.
    pub peer_runs: Vec<f64>,
    /// Sizes, throughputs and anything else worth a reader's eye.
    pub note: String,
}

impl Report {
    /// Prints the JSON line, measurements rounded.
    pub fn print(mut self) {
        for v in [&mut self.kiln, &mut self.peer_runs] {
            v.iter_mut().for_each(|x| *x = signif(*x));
        }
        match serde_json::to_string(&self) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("micro: cannot encode the result of {}: {e}", self.bench),
        }
    }
}

/// Four significant digits: more would be noise.
fn signif(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Runs `kiln` and `peer` `runs` times each, alternating which goes first
/// so that neither always gets the warmer caches.
pub fn alternate(
    name: &str,
    runs: usize,
    mut kiln: impl FnMut() -> Result<f64>,
    mut peer: impl FnMut() -> Result<f64>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut ks, mut ps) = (Vec::new(), Vec::new());
    let mut kiln = || {
        settle();
        kiln()
    };
    let mut peer = || {
        settle();
        peer()
    };
    for run in 0..runs {
        let (k, p) = if run % 2 == 0 {
            let k = kiln()?;
            (k, peer()?)
        } else {
            let p = peer()?;
            (kiln()?, p)
        };
        eprintln!(
            "micro: {name} run {}/{runs}: kiln {k:.3}, peer {p:.3}",
            run + 1
        );
        ks.push(k);
        ps.push(p);
    }
    Ok((ks, ps))
}

/// Writes back dirty pages (of generated inputs, of the previous
/// measurement's output) so that a measurement does not pay for them: an
/// overlay unmount, for one, syncs the whole upper filesystem.
pub fn settle() {
    rustix::fs::sync();
}

/// Seconds that `f` takes.
pub fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let start = Instant::now();
    let out = f()?;
    Ok((start.elapsed().as_secs_f64(), out))
}

/// Seconds that `cmd` takes to run to success.
pub fn time_command(cmd: &mut Command) -> Result<f64> {
    Ok(time_output(cmd)?.0)
}

/// Seconds that `cmd` takes to run to success, and its stdout (empty when
/// the caller redirected it).
pub fn time_output(cmd: &mut Command) -> Result<(f64, Vec<u8>)> {
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {cmd:?} (is it installed?)"))?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((took.as_secs_f64(), out.stdout))
}

/// A rate in MiB/s for `bytes` moved in `secs`.
pub fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

/// Microseconds per iteration of `iters` that took `elapsed`.
pub fn us_per(elapsed: Duration, iters: usize) -> f64 {
    elapsed.as_secs_f64() * 1e6 / iters as f64
}

fn run(cfg: &Config) -> Result<()> {
    // The snapshot benchmark mounts overlays; like kiln itself, keep them
    // out of the host's mount table. First, before any thread starts.
    kiln::sandbox::enter_private_mount_namespace()
        .context("entering a private mount namespace (the benchmarks run as root)")?;
    micro::compress::run(cfg).context("compression benchmarks")?;
    micro::compress::run_digest(cfg).context("digest benchmark")?;
    micro::snapshot::run(cfg).context("snapshot benchmarks")?;
    micro::plugin::run(cfg).context("plugin benchmarks")?;
    micro::push::run(cfg).context("push benchmark")?;
    Ok(())
}

fn main() -> ExitCode {
    let result = Config::from_args().and_then(|cfg| run(&cfg));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("micro: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
