//! The plugin runtime's sandbox against real components: precompiled load
//! time, and the time, memory and crash limits.

use kiln::plugin::{HandlerHost, HostFileStat, Limits, Runtime, wit};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn plugin_bytes(file: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("KILN_PLUGINS_DIR")).join(file);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (the build script builds it)", path.display()))
}

struct NoHost;

impl HandlerHost for NoHost {
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
        Err(format!("{path}: no context in this test"))
    }
}

fn instruction(keyword: &str, text: &str) -> wit::Instruction {
    wit::Instruction {
        keyword: keyword.into(),
        flags: Vec::new(),
        text: text.into(),
        json: None,
        heredocs: Vec::new(),
        original: format!("{keyword} {text}"),
        position: wit::Position { line: 1, column: 1 },
    }
}

fn state() -> wit::State {
    wit::State {
        config: wit::ImageConfig {
            user: None,
            env: Vec::new(),
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

#[test]
fn precompiled_builtin_loads_fast_and_handles_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(dir.path()).unwrap();
    let wasm = plugin_bytes("dockerfile.wasm");
    let first = Instant::now();
    rt.load("dockerfile", &wasm, Limits::default()).unwrap();
    let compile = first.elapsed();
    // A second runtime sees only the cache on disk, as a new kiln process would.
    let rt = Runtime::new(dir.path()).unwrap();
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let p = rt.load("dockerfile", &wasm, Limits::default()).unwrap();
        best = best.min(t.elapsed());
        assert!(
            matches!(p.kind(), kiln::plugin::Kind::Instructions(k) if k.iter().any(|k| k == "RUN"))
        );
    }
    println!("dockerfile plugin: first load (compile) {compile:?}, precompiled load {best:?}");
    assert!(
        best < Duration::from_millis(5),
        "precompiled load took {best:?}"
    );

    let p = rt.load("dockerfile", &wasm, Limits::default()).unwrap();
    let out = p
        .handle(
            &rt,
            &instruction("RUN", "echo hi"),
            &state(),
            Box::new(NoHost),
        )
        .unwrap();
    match &out.effects[..] {
        [wit::Effect::Run(run)] => assert_eq!(run.argv, vec!["/bin/sh", "-c", "echo hi"]),
        other => panic!("unexpected effects {other:?}"),
    }
}

#[test]
fn a_looping_plugin_is_stopped_within_a_second_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(dir.path()).unwrap();
    let limits = Limits {
        timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let p = rt.load("spin", &plugin_bytes("spin.wasm"), limits).unwrap();
    let t = Instant::now();
    let err = p
        .handle(&rt, &instruction("SPIN", ""), &state(), Box::new(NoHost))
        .unwrap_err();
    let took = t.elapsed();
    println!("spin stopped after {took:?}: {err}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("plugin spin") && msg.contains("time limit"),
        "{msg}"
    );
}

#[test]
fn a_plugin_past_its_memory_cap_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(dir.path()).unwrap();
    let limits = Limits {
        memory: 64 << 20,
        ..Limits::default()
    };
    let p = rt.load("hog", &plugin_bytes("hog.wasm"), limits).unwrap();
    let err = p
        .handle(&rt, &instruction("HOG", ""), &state(), Box::new(NoHost))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("plugin hog") && msg.contains("memory limit of 64 MiB"),
        "{msg}"
    );
    // The runtime is still usable after the failure.
    let ok = rt
        .load(
            "dockerfile",
            &plugin_bytes("dockerfile.wasm"),
            Limits::default(),
        )
        .unwrap();
    ok.handle(&rt, &instruction("RUN", "true"), &state(), Box::new(NoHost))
        .unwrap();
}
