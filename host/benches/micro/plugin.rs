//! The built-in Dockerfile plugin: load from the precompiled cache (what
//! every kiln process pays at start) and the cost of one instruction call
//! (a fresh instance per call, as the sandbox requires).

use crate::{Config, Report, median, us_per};
use anyhow::{Context, Result, bail};
use kiln::plugin::{HandlerHost, HostFileStat, Kind, Limits, Runtime, wit};
use std::path::PathBuf;
use std::time::Instant;

/// Loads and calls per run.
fn iterations(cfg: &Config) -> (usize, usize) {
    if cfg.quick { (5, 20) } else { (50, 500) }
}

/// The plugin directory: `$KILN_PLUGINS_DIR` at run time, else where the
/// build script put them.
fn plugin_bytes(file: &str) -> Result<Vec<u8>> {
    let dir = std::env::var_os("KILN_PLUGINS_DIR")
        .map_or_else(|| PathBuf::from(env!("KILN_PLUGINS_DIR")), PathBuf::from);
    let path = dir.join(file);
    std::fs::read(&path).with_context(|| format!("reading plugin {}", path.display()))
}

/// Answers the plugin's queries without a context, as for a RUN.
struct NoContext;

impl HandlerHost for NoContext {
    fn expand(&self, word: &str) -> Result<String, String> {
        Ok(word.to_owned())
    }
    fn expand_words(&self, text: &str) -> Result<Vec<String>, String> {
        Ok(text.split_whitespace().map(str::to_owned).collect())
    }
    fn context_stat(&self, _: &str) -> Option<HostFileStat> {
        None
    }
    fn context_glob(&self, _: &str) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
    fn context_read(&self, path: &str) -> Result<Vec<u8>, String> {
        Err(format!("{path}: the benchmark has no context"))
    }
}

fn run_instruction() -> wit::Instruction {
    wit::Instruction {
        keyword: "RUN".into(),
        flags: Vec::new(),
        text: "apt-get update && apt-get install -y curl".into(),
        json: None,
        heredocs: Vec::new(),
        original: "RUN apt-get update && apt-get install -y curl".into(),
        position: wit::Position { line: 2, column: 1 },
    }
}

fn state() -> wit::State {
    wit::State {
        config: wit::ImageConfig {
            user: None,
            env: vec![wit::KeyValue {
                key: "PATH".into(),
                value: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            }],
            workdir: None,
            entrypoint: None,
            cmd: None,
            shell: vec!["/bin/sh".into(), "-c".into()],
            labels: Vec::new(),
            exposed_ports: Vec::new(),
            volumes: Vec::new(),
            stop_signal: None,
        },
        args: Vec::new(),
        global_args: Vec::new(),
        build_args: Vec::new(),
        stage_names: vec![None],
        target_platform: "linux/amd64".into(),
        before_first_from: false,
        escape: "\\".into(),
    }
}

/// Precompiled load and per-call cost, in µs.
pub fn run(cfg: &Config) -> Result<()> {
    let (load_bench, call_bench) = ("plugin-load-precompiled", "plugin-call-run");
    if !cfg.wants(load_bench) && !cfg.wants(call_bench) {
        return Ok(());
    }
    let wasm = plugin_bytes("dockerfile.wasm")?;
    let cache = cfg.scratch("plugin-")?;
    let start = Instant::now();
    Runtime::new(cache.path())?.load("dockerfile", &wasm, Limits::default())?;
    let compile = start.elapsed();
    // A second runtime finds only the cache on disk, as a new kiln would.
    let rt = Runtime::new(cache.path())?;
    let (loads, calls) = iterations(cfg);
    let (mut load_us, mut call_us) = (Vec::new(), Vec::new());
    for i in 0..cfg.runs {
        let start = Instant::now();
        for _ in 0..loads {
            let p = rt.load("dockerfile", &wasm, Limits::default())?;
            if !matches!(p.kind(), Kind::Instructions(k) if k.iter().any(|k| k == "RUN")) {
                bail!("the dockerfile plugin does not handle RUN");
            }
        }
        load_us.push(us_per(start.elapsed(), loads));
        let p = rt.load("dockerfile", &wasm, Limits::default())?;
        let (instruction, state) = (run_instruction(), state());
        let start = Instant::now();
        for _ in 0..calls {
            let out = p.handle(&rt, &instruction, &state, Box::new(NoContext))?;
            if !matches!(&out.effects[..], [wit::Effect::Run(_)]) {
                bail!("RUN gave effects {:?}", out.effects);
            }
        }
        call_us.push(us_per(start.elapsed(), calls));
        eprintln!(
            "micro: plugin run {}/{}: load {:.0} µs, call {:.0} µs",
            i + 1,
            cfg.runs,
            load_us[i],
            call_us[i]
        );
    }
    let size = wasm.len();
    if cfg.wants(load_bench) {
        Report {
            bench: load_bench.into(),
            unit: "us",
            note: format!(
                "mean of {loads} loads per run of dockerfile.wasm ({size} bytes) from the precompiled cache \
                 (deserialize + instantiate_pre + keyword query); first load with Cranelift compile took {:.2} s",
                compile.as_secs_f64()
            ),
            kiln: load_us,
            peer: None,
            peer_runs: Vec::new(),
        }
        .print();
    }
    if cfg.wants(call_bench) {
        Report {
            bench: call_bench.into(),
            unit: "us",
            note: format!(
                "mean of {calls} handle() calls per run of a RUN instruction, each in a fresh store and \
                 instance with fuel, epoch deadline and memory limit (median {:.0} µs)",
                median(&call_us)
            ),
            kiln: call_us,
            peer: None,
            peer_runs: Vec::new(),
        }
        .print();
    }
    Ok(())
}
