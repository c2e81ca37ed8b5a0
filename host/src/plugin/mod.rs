//! The plugin runtime: loads WebAssembly components (built-in and user
//! supplied), precompiles them once, and calls them in a sandbox.
//!
//! Every call gets a fresh store with a memory cap, an epoch deadline, fuel
//! and a WASI context that grants nothing but what the call's policy names.
//! A plugin that traps, loops or over-allocates fails with an error naming
//! it; the host carries on.

pub mod bindings;
mod cache;
mod net;
mod send;

use bindings::instruction::kiln::plugin::{host, logging, types};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, ResourceAny, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub use bindings::instruction::kiln::plugin::instruction_types as wit;
pub use cache::shipped_dir as shipped_plugins_dir;
pub use host::{FileKind as HostFileKind, FileStat as HostFileStat};
pub use net::{NetPolicy, Signer, authority};
pub use types::{KeyValue, PluginError as WitError};

/// Plugin failures, each naming the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {plugin} cannot be loaded: {message}")]
    Load { plugin: String, message: String },
    #[error(
        "plugin {plugin} exports neither {} nor {}: it is not a kiln plugin (or was built for another version of the kiln:plugin WIT)",
        bindings::INSTRUCTION_HANDLER_EXPORT,
        bindings::CONTEXT_SOURCE_EXPORT
    )]
    NotAPlugin { plugin: String },
    #[error("plugin {plugin} exceeded its time limit of {limit:?} and was stopped")]
    Timeout { plugin: String, limit: Duration },
    #[error("plugin {plugin} ran out of fuel (its CPU budget) and was stopped")]
    OutOfFuel { plugin: String },
    #[error("plugin {plugin} exceeded its memory limit of {limit_mib} MiB and was stopped")]
    OutOfMemory { plugin: String, limit_mib: usize },
    #[error(
        "plugin {plugin} tried to reach {tried}, which its sandbox does not allow (it may reach {})",
        if allowed.is_empty() { "no host".to_owned() } else { allowed.join(", ") }
    )]
    NetworkRefused {
        plugin: String,
        tried: String,
        allowed: Vec<String>,
    },
    #[error(
        "plugin {plugin} reached {server}, whose TLS certificate kiln does not trust ({detail}): \
         add the CA that signed it to SSL_CERT_FILE or SSL_CERT_DIR (a git context also takes \
         --git=insecure-skip-tls=true)"
    )]
    UntrustedServer {
        plugin: String,
        server: String,
        detail: String,
    },
    #[error("plugin {plugin} crashed: {message}")]
    Trap { plugin: String, message: String },
    #[error("{plugin}: {message}{}", hint.as_ref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
    Reported {
        plugin: String,
        message: String,
        hint: Option<String>,
    },
    #[error("cannot use the plugin cache at {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Resource limits for one plugin call.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Linear memory, in bytes, across all of the component's memories.
    pub memory: usize,
    /// Wall-clock time for one call.
    pub timeout: Duration,
    /// Fuel (roughly, wasm instructions) for one call.
    pub fuel: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 256 << 20,
            timeout: Duration::from_secs(10),
            fuel: 20_000_000_000,
        }
    }
}

/// A directory the policy lets a call read.
#[derive(Clone, Debug)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
}

/// What one call may reach besides computation.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Read-only directories.
    pub read_dirs: Vec<Preopen>,
    /// kiln's own standard input (`tar://stdin`); no other call reads it.
    pub stdin: bool,
    /// The hosts the call may reach over `wasi:http`, and who signs.
    pub net: NetPolicy,
    /// A writable, empty directory, seen by the plugin at [`SCRATCH_GUEST`].
    pub scratch: Option<PathBuf>,
}

/// Where a plugin finds its scratch directory (also in `KILN_SCRATCH`).
pub const SCRATCH_GUEST: &str = "/scratch";

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Ends the epoch ticker thread when the runtime is dropped.
struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The wasmtime engine, its linkers and the precompiled-component cache.
pub struct Runtime {
    engine: Engine,
    cache_dir: PathBuf,
    shipped_dir: Option<PathBuf>,
    instruction_linker: Linker<CallState>,
    context_linker: Linker<CallState>,
    _ticker: Ticker,
}

/// What a loaded component provides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Dockerfile instructions, by upper-case keyword.
    Instructions(Vec<String>),
    /// Context URL schemes.
    Contexts(Vec<String>),
}

/// A loaded, precompiled plugin.
pub struct Plugin {
    name: String,
    kind: Kind,
    instruction: Option<bindings::instruction::InstructionPluginPre<CallState>>,
    context: Option<bindings::context::ContextPluginPre<CallState>>,
    limits: Limits,
}

/// Answers a handler's `host` queries for the instruction being handled.
pub trait HandlerHost: Send {
    /// Expands one word over the variables in scope.
    fn expand(&self, word: &str) -> Result<String, String>;
    /// Splits and expands shell words.
    fn expand_words(&self, text: &str) -> Result<Vec<String>, String>;
    /// Stats a context path.
    fn context_stat(&self, path: &str) -> Option<host::FileStat>;
    /// Matches a glob against the context.
    fn context_glob(&self, pattern: &str) -> Result<Vec<String>, String>;
    /// Reads a small context file.
    fn context_read(&self, path: &str) -> Result<Vec<u8>, String>;
}

/// Per-call store data.
struct CallState {
    plugin: String,
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
    host: Option<Box<dyn HandlerHost>>,
    http: WasiHttpCtx,
    net: net::NetHooks,
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.net,
        }
    }
}

struct MemoryCap {
    limit: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            wasmtime::bail!("memory limit reached");
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl logging::Host for CallState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        let level = match level {
            types::LogLevel::Trace => log::Level::Trace,
            types::LogLevel::Debug => log::Level::Debug,
            types::LogLevel::Info => log::Level::Info,
            types::LogLevel::Warn => log::Level::Warn,
            types::LogLevel::Error => log::Level::Error,
        };
        log::log!(level, "[{}] {message}", self.plugin);
    }
}

impl types::Host for CallState {}
impl wit::Host for CallState {}

fn wit_err(message: String) -> types::PluginError {
    types::PluginError {
        message,
        hint: None,
    }
}

impl host::Host for CallState {
    fn expand(&mut self, word: String) -> Result<String, types::PluginError> {
        self.handler_host()?.expand(&word).map_err(wit_err)
    }
    fn expand_words(&mut self, text: String) -> Result<Vec<String>, types::PluginError> {
        self.handler_host()?.expand_words(&text).map_err(wit_err)
    }
    fn context_stat(&mut self, path: String) -> Option<host::FileStat> {
        self.host.as_ref()?.context_stat(&path)
    }
    fn context_glob(&mut self, pattern: String) -> Result<Vec<String>, types::PluginError> {
        self.handler_host()?.context_glob(&pattern).map_err(wit_err)
    }
    fn context_read(&mut self, path: String) -> Result<Vec<u8>, types::PluginError> {
        self.handler_host()?.context_read(&path).map_err(wit_err)
    }
}

impl CallState {
    fn handler_host(&self) -> Result<&dyn HandlerHost, types::PluginError> {
        self.host
            .as_deref()
            .ok_or_else(|| wit_err("no build state is available in this call".into()))
    }
}

/// Bytes a plugin may write to stderr per call; shown when it crashes.
const STDERR_CAPTURE: usize = 64 << 10;

impl Runtime {
    /// Creates the engine; precompiled components are cached in `cache_dir`
    /// (and read from the ones shipped beside kiln, see [`shipped_plugins_dir`]).
    pub fn new(cache_dir: &Path) -> Result<Runtime, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(true);
        let engine = Engine::new(&config).map_err(|e| PluginError::Load {
            plugin: "(engine)".into(),
            message: e.to_string(),
        })?;

        let stop = Arc::new(AtomicBool::new(false));
        let (ticking_engine, ticking_stop) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kiln-epoch".into())
            .spawn(move || {
                while !ticking_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking_engine.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Load {
                plugin: "(engine)".into(),
                message: format!("cannot start the epoch thread: {e}"),
            })?;

        let link_err = |e: wasmtime::Error| PluginError::Load {
            plugin: "(linker)".into(),
            message: e.to_string(),
        };
        let mut instruction_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut instruction_linker).map_err(link_err)?;
        bindings::instruction::InstructionPlugin::add_to_linker::<_, HasSelf<_>>(
            &mut instruction_linker,
            |s| s,
        )
        .map_err(link_err)?;
        let mut context_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut context_linker).map_err(link_err)?;
        bindings::context::ContextPlugin::add_to_linker::<_, HasSelf<_>>(
            &mut context_linker,
            |s| s,
        )
        .map_err(link_err)?;
        // Only context sources may use the network; the policy of each call
        // says where to.
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut context_linker)
            .map_err(link_err)?;

        Ok(Runtime {
            engine,
            cache_dir: cache_dir.to_owned(),
            shipped_dir: cache::shipped_dir(),
            instruction_linker,
            context_linker,
            _ticker: Ticker(stop),
        })
    }

    /// Loads a component from its bytes (precompiling it on first use) and
    /// asks it what it handles.
    pub fn load(&self, name: &str, wasm: &[u8], limits: Limits) -> Result<Plugin, PluginError> {
        let component = cache::load(
            &self.cache_dir,
            self.shipped_dir.as_deref(),
            &self.engine,
            name,
            wasm,
        )?;
        self.prepare(name, &component, limits)
    }

    fn prepare(
        &self,
        name: &str,
        component: &Component,
        limits: Limits,
    ) -> Result<Plugin, PluginError> {
        let load_err = |e: wasmtime::Error| PluginError::Load {
            plugin: name.into(),
            message: format!("{e:#}"),
        };
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let mut plugin = Plugin {
            name: name.into(),
            kind: Kind::Instructions(Vec::new()),
            instruction: None,
            context: None,
            limits,
        };
        if exports
            .iter()
            .any(|e| e == bindings::INSTRUCTION_HANDLER_EXPORT)
        {
            let pre = self
                .instruction_linker
                .instantiate_pre(component)
                .map_err(load_err)?;
            plugin.instruction =
                Some(bindings::instruction::InstructionPluginPre::new(pre).map_err(load_err)?);
            let keywords = plugin.call_instruction(self, None, |b, store| {
                b.kiln_plugin_instruction_handler().call_keywords(store)
            })?;
            plugin.kind = Kind::Instructions(
                keywords
                    .into_iter()
                    .map(|k| k.to_ascii_uppercase())
                    .collect(),
            );
        } else if exports.iter().any(|e| e == bindings::CONTEXT_SOURCE_EXPORT) {
            let pre = self
                .context_linker
                .instantiate_pre(component)
                .map_err(load_err)?;
            plugin.context = Some(bindings::context::ContextPluginPre::new(pre).map_err(load_err)?);
            let mut session = plugin.context_session(self, &Policy::default())?;
            let schemes =
                session.call(|b, store| b.kiln_plugin_context_source().call_schemes(store))?;
            plugin.kind = Kind::Contexts(
                schemes
                    .into_iter()
                    .map(|s| s.to_ascii_lowercase())
                    .collect(),
            );
        } else {
            return Err(PluginError::NotAPlugin {
                plugin: name.into(),
            });
        }
        Ok(plugin)
    }

    fn new_store(
        &self,
        plugin: &Plugin,
        policy: &Policy,
        host: Option<Box<dyn HandlerHost>>,
    ) -> Result<(Store<CallState>, MemoryOutputPipe), PluginError> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone());
        if policy.stdin {
            wasi.inherit_stdin();
        }
        for dir in &policy.read_dirs {
            wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadOnly)
                .map_err(|e| PluginError::Load {
                    plugin: plugin.name.clone(),
                    message: format!("cannot grant read access to {}: {e}", dir.host.display()),
                })?;
        }
        if let Some(scratch) = &policy.scratch {
            wasi.preopened_dir(scratch, SCRATCH_GUEST, FsPerms::ReadWrite)
                .map_err(|e| PluginError::Load {
                    plugin: plugin.name.clone(),
                    message: format!(
                        "cannot grant the scratch directory {}: {e}",
                        scratch.display()
                    ),
                })?;
            wasi.env("KILN_SCRATCH", SCRATCH_GUEST);
        }
        let state = CallState {
            plugin: plugin.name.clone(),
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryCap {
                limit: plugin.limits.memory,
                hit: false,
            },
            host,
            http: WasiHttpCtx::new(),
            net: net::NetHooks {
                policy: policy.net.clone(),
                faults: Default::default(),
            },
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(ticks(plugin.limits.timeout));
        store.epoch_deadline_trap();
        store
            .set_fuel(plugin.limits.fuel)
            .map_err(|e| PluginError::Load {
                plugin: plugin.name.clone(),
                message: e.to_string(),
            })?;
        Ok((store, stderr))
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
}

/// Turns a wasmtime error from a call into an error that names the plugin
/// and says which limit, if any, stopped it.
fn classify(
    plugin: &Plugin,
    store: &Store<CallState>,
    stderr: &MemoryOutputPipe,
    err: wasmtime::Error,
) -> PluginError {
    let name = plugin.name.clone();
    if store.data().limiter.hit {
        return PluginError::OutOfMemory {
            plugin: name,
            limit_mib: plugin.limits.memory >> 20,
        };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Timeout {
            plugin: name,
            limit: plugin.limits.timeout,
        },
        Some(Trap::OutOfFuel) => PluginError::OutOfFuel { plugin: name },
        _ => {
            let captured = String::from_utf8_lossy(&stderr.contents())
                .trim()
                .to_owned();
            let message = if captured.is_empty() {
                format!("{err:#}")
            } else {
                format!("{err:#}; its stderr said: {captured}")
            };
            PluginError::Trap {
                plugin: name,
                message,
            }
        }
    }
}

impl Plugin {
    /// The plugin's name, used in every message about it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the plugin handles.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    fn call_instruction<R>(
        &self,
        rt: &Runtime,
        host: Option<Box<dyn HandlerHost>>,
        f: impl FnOnce(
            &bindings::instruction::InstructionPlugin,
            &mut Store<CallState>,
        ) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let pre = self.instruction.as_ref().ok_or_else(|| PluginError::Load {
            plugin: self.name.clone(),
            message: "not an instruction handler".into(),
        })?;
        let (mut store, stderr) = rt.new_store(self, &Policy::default(), host)?;
        let result = pre.instantiate(&mut store).and_then(|b| f(&b, &mut store));
        result.map_err(|e| classify(self, &store, &stderr, e))
    }

    /// Handles one instruction. `host` answers the plugin's queries.
    pub fn handle(
        &self,
        rt: &Runtime,
        instruction: &wit::Instruction,
        state: &wit::State,
        host: Box<dyn HandlerHost>,
    ) -> Result<wit::Outcome, PluginError> {
        let out = self.call_instruction(rt, Some(host), |b, store| {
            b.kiln_plugin_instruction_handler()
                .call_handle(store, instruction, state)
        })?;
        out.map_err(|e| self.reported(e))
    }

    fn reported(&self, e: types::PluginError) -> PluginError {
        PluginError::Reported {
            plugin: self.name.clone(),
            message: e.message,
            hint: e.hint,
        }
    }

    fn context_session(
        &self,
        rt: &Runtime,
        policy: &Policy,
    ) -> Result<ContextSession<'_>, PluginError> {
        let pre = self.context.as_ref().ok_or_else(|| PluginError::Load {
            plugin: self.name.clone(),
            message: "not a context source".into(),
        })?;
        let (mut store, stderr) = rt.new_store(self, policy, None)?;
        let bindings = pre
            .instantiate(&mut store)
            .map_err(|e| classify(self, &store, &stderr, e))?;
        Ok(ContextSession {
            plugin: self,
            store,
            stderr,
            bindings,
            timeout: if policy.stdin {
                STDIN_WAIT
            } else {
                self.limits.timeout
            },
        })
    }

    /// Opens a context URL. The returned source owns the plugin instance
    /// for as long as its archive is being read.
    pub fn open_context(
        &self,
        rt: &Runtime,
        url: &str,
        options: &[KeyValue],
        policy: &Policy,
    ) -> Result<Opened<'_>, PluginError> {
        let mut session = self.context_session(rt, policy)?;
        let opened = session.call(|b, store| {
            b.kiln_plugin_context_source()
                .call_open(store, url, options)
        })?;
        match opened.map_err(|e| session.reported(e))? {
            bindings::context::exports::kiln::plugin::context_source::Opened::Directory(d) => {
                Ok(Opened::Directory(PathBuf::from(d)))
            }
            bindings::context::exports::kiln::plugin::context_source::Opened::Tar(stream) => {
                Ok(Opened::Tar(TarStream {
                    session,
                    stream,
                    pending: Vec::new(),
                    pos: 0,
                    done: false,
                }))
            }
        }
    }
}

/// One instance of a context plugin and its store.
struct ContextSession<'p> {
    plugin: &'p Plugin,
    store: Store<CallState>,
    stderr: MemoryOutputPipe,
    bindings: bindings::context::ContextPlugin,
    /// Each call's wall-clock limit: the plugin's, or [`STDIN_WAIT`] when
    /// it reads kiln's standard input.
    timeout: Duration,
}

/// How long a call that reads kiln's standard input may wait for it: the
/// producer (`kubectl run -i` attaching, a slow upload) sets the pace, not
/// the plugin, whose CPU use fuel still bounds.
const STDIN_WAIT: Duration = Duration::from_secs(24 * 3600);

impl ContextSession<'_> {
    fn call<R>(
        &mut self,
        f: impl FnOnce(&bindings::context::ContextPlugin, &mut Store<CallState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        // Each call gets the full time and fuel budget.
        self.store.set_epoch_deadline(ticks(self.timeout));
        self.store
            .set_fuel(self.plugin.limits.fuel)
            .map_err(|e| PluginError::Load {
                plugin: self.plugin.name.clone(),
                message: e.to_string(),
            })?;
        f(&self.bindings, &mut self.store).map_err(|e| {
            self.refusal()
                .unwrap_or_else(|| classify(self.plugin, &self.store, &self.stderr, e))
        })
    }

    /// The plugin's own error, unless the sandbox refused it something:
    /// then that is the cause, whatever the plugin made of it.
    fn reported(&self, e: types::PluginError) -> PluginError {
        self.refusal().unwrap_or_else(|| self.plugin.reported(e))
    }

    fn refusal(&self) -> Option<PluginError> {
        let net = &self.store.data().net;
        let faults = net.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.first().map(|fault| match fault {
            net::NetFault::Refused(tried) => PluginError::NetworkRefused {
                plugin: self.plugin.name.clone(),
                tried: tried.clone(),
                allowed: net.policy.allowed.clone(),
            },
            net::NetFault::Untrusted(failure) => PluginError::UntrustedServer {
                plugin: self.plugin.name.clone(),
                server: failure.server.clone(),
                detail: failure.detail.clone(),
            },
        })
    }
}

/// Where an opened context lives.
pub enum Opened<'p> {
    /// A host directory, read natively.
    Directory(PathBuf),
    /// An archive streamed from the plugin.
    Tar(TarStream<'p>),
}

/// The archive bytes of an opened context, read from the plugin on demand.
pub struct TarStream<'p> {
    session: ContextSession<'p>,
    stream: ResourceAny,
    pending: Vec<u8>,
    pos: usize,
    done: bool,
}

/// How much to ask a plugin for per read.
const READ_CHUNK: u32 = 256 << 10;

impl std::io::Read for TarStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.pending.len() && !self.done {
            let stream = self.stream;
            let chunk = self
                .session
                .call(|b, store| {
                    b.kiln_plugin_context_source()
                        .tar_stream()
                        .call_read(store, stream, READ_CHUNK)
                })
                .map_err(std::io::Error::other)?
                .map_err(|e| std::io::Error::other(self.session.reported(e)))?;
            self.done = chunk.is_empty();
            self.pending = chunk;
            self.pos = 0;
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for TarStream<'_> {
    fn drop(&mut self) {
        // Lets the guest run its destructor; a failure here cannot matter
        // because the whole store is dropped right after.
        let _ = self.stream.resource_drop(&mut self.session.store);
    }
}
