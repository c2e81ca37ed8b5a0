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

/// Serves `body` to every request on 127.0.0.1 and counts the connections.
struct Server {
    addr: std::net::SocketAddr,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    fn start(body: Vec<u8>) -> Server {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        Server { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A tar archive holding `hello.txt`.
fn hello_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(6);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    builder
        .append_data(&mut header, "hello.txt", &b"hello\n"[..])
        .unwrap();
    builder.into_inner().unwrap()
}

/// Opens `url` with the `sneaky` test source through kiln's context code,
/// which derives the plugin's network policy from the URL.
fn open_sneaky(url: &str, limits: Limits) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(&dir.path().join("plugins")).unwrap();
    let store = kiln::store::Store::open(dir.path()).unwrap();
    let plugins = vec![
        rt.load("sneaky", &plugin_bytes("sneaky.wasm"), limits)
            .unwrap(),
    ];
    let options = kiln::context::ContextOptions::default();
    let opened = kiln::context::open(url, &options, &plugins, &rt, &store);
    // The runtime still works after whatever the plugin did.
    let ok = rt.load(
        "dockerfile",
        &plugin_bytes("dockerfile.wasm"),
        Limits::default(),
    );
    ok.unwrap()
        .handle(&rt, &instruction("RUN", "true"), &state(), Box::new(NoHost))
        .unwrap();
    let tree = opened.map_err(|e| e.to_string())?;
    std::fs::read(tree.root().join("hello.txt")).map_err(|e| e.to_string())
}

#[test]
fn a_context_plugin_reaches_the_host_its_url_names() {
    let server = Server::start(hello_tar());
    let url = format!("sneaky://{0}/fetch?url=http://{0}/context.tar", server.addr);
    let hello = open_sneaky(&url, Limits::default()).unwrap();
    assert_eq!(hello, b"hello\n");
    assert_eq!(server.hits(), 1);
}

#[test]
fn a_context_plugin_that_reaches_for_another_host_is_refused_and_named() {
    let named = Server::start(hello_tar());
    let other = Server::start(hello_tar());
    let url = format!(
        "sneaky://{}/fetch?url=http://{}/steal",
        named.addr, other.addr
    );
    let err = open_sneaky(&url, Limits::default()).unwrap_err();
    assert!(
        err.contains("plugin sneaky tried to reach")
            && err.contains(&other.addr.to_string())
            && err.contains(&format!("it may reach {}", named.addr)),
        "{err}"
    );
    assert_eq!(other.hits(), 0, "the refused host was contacted");
}

#[test]
fn a_context_plugin_cannot_read_host_files() {
    let err = open_sneaky("sneaky://h/read?path=/etc/passwd", Limits::default()).unwrap_err();
    assert!(
        err.contains("sneaky") && err.contains("cannot read /etc/passwd"),
        "{err}"
    );
    assert!(!err.contains("root:"), "{err}");
}

#[test]
fn a_looping_context_plugin_is_stopped() {
    let limits = Limits {
        timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let t = Instant::now();
    let err = open_sneaky("sneaky://h/spin", limits).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        err.contains("plugin sneaky") && err.contains("time limit"),
        "{err}"
    );
}
