//! The build: parse the Dockerfile, hand each instruction to the plugin
//! that claims its keyword, execute the effects it returns, snapshot each
//! filesystem step into a layer, and write the image to its outputs.

mod caching;
pub mod container_root;
mod early_push;
pub(crate) mod fs;
mod mounts;
mod output;
mod plan;
mod scope;
mod stage;

use crate::cache::base::BaseCache;
use crate::cache::file_digests::FileDigests;
use crate::cache::store::{CachePusher, CacheRepo, LayerCache};
use crate::context::{self, ContextTree};
use crate::digest::Digest;
use crate::dockerfile::{self, Instruction};
use crate::image::config::Platform;
use crate::layer::Compression;
use crate::plugin::{self, Kind, Limits, Plugin, Runtime, wit};
use crate::registry::{Registry, RegistryOptions};
use crate::store::Store;
use container_root::{ContainerRoot, ContainerRootOptions};
use early_push::{EarlyPush, LayerStream, PushCheck};
use stage::{Stage, StageCtx};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use fs::FsError;
pub use output::Outcome;

/// Where a build secret's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// A file on the host.
    File(PathBuf),
    /// An environment variable of kiln's.
    Env(String),
}

/// The layer and base-image cache settings of a build.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// `--cache-repo`, or the first destination's repository plus `/cache`.
    pub repo: CacheRepo,
    /// `--cache-dir`: the base-image cache.
    pub dir: PathBuf,
    /// `--cache-ttl`.
    pub ttl: std::time::Duration,
    /// `--cache-run-layers`.
    pub run_layers: bool,
    /// `--cache-copy-layers`.
    pub copy_layers: bool,
    /// False with `--no-push-cache`.
    pub push: bool,
}

/// Everything `kiln build` needs to know.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--dockerfile`; relative paths are tried against the working
    /// directory, then the context, as kaniko does.
    pub dockerfile: PathBuf,
    pub context: String,
    /// `--context-sub-path` and `--git`.
    pub context_options: context::ContextOptions,
    pub destinations: Vec<String>,
    pub no_push: bool,
    pub oci_layout_path: Option<PathBuf>,
    /// `--tar-path`: a docker-save tarball.
    pub tar_path: Option<PathBuf>,
    pub digest_file: Option<PathBuf>,
    /// `--image-name-with-digest-file`: `REPO@DIGEST` per destination.
    pub image_name_with_digest_file: Option<PathBuf>,
    /// `--image-name-tag-with-digest-file`: `REPO:TAG@DIGEST` per destination.
    pub image_name_tag_with_digest_file: Option<PathBuf>,
    pub push_ignore_immutable_tag_errors: bool,
    /// Check that every destination accepts a push before building.
    pub push_permission_check: bool,
    /// `--reproducible`: timestamps clamped to this `SOURCE_DATE_EPOCH`.
    pub reproducible: Option<u64>,
    /// `--cache` and its settings; none without `--cache`.
    pub cache: Option<CacheOptions>,
    /// `--build-arg` values, already resolved.
    pub build_args: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub target: Option<String>,
    pub platform: Platform,
    /// Registry transport, credentials, mirrors and retries.
    pub registry: RegistryOptions,
    pub plugins: Vec<PathBuf>,
    pub kiln_dir: PathBuf,
    /// `--store-max-size`: the store's size after the build's gc; none for
    /// the automatic limit.
    pub store_max_size: Option<u64>,
    /// The kiln executable, re-run as the RUN sandbox's helper.
    pub init_exe: PathBuf,
    /// Whether kiln got a private mount namespace, where steps can mount
    /// their overlays; the reason when it did not.
    pub isolation: Result<crate::sandbox::Isolation, String>,
    /// Container-root mode, when there is no isolation but kiln may build
    /// on its own root (inside a container, or with `--force`).
    pub container_root: Option<ContainerRootOptions>,
    /// `--single-snapshot`: one layer per stage, taken at its end.
    pub single_snapshot: bool,
    /// `--cleanup`: wipe the container root after the build.
    pub cleanup: bool,
    /// `--secret` ids and where their values come from.
    pub secrets: Vec<(String, SecretSource)>,
    /// `--ssh` ids and their agent sockets.
    pub ssh: Vec<(String, PathBuf)>,
    /// `--compression` and `--compression-level` of the layers kiln writes.
    pub compression: Compression,
    /// `--oci-media-types`: an OCI manifest even when every layer is gzip.
    pub oci_media_types: bool,
}

/// Build failures.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Plugin(#[from] plugin::PluginError),
    #[error("cannot read plugin {path}: {source}")]
    PluginFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin {plugin} claims keyword {keyword}, which plugin {other} already handles")]
    KeywordClash {
        plugin: String,
        keyword: String,
        other: String,
    },
    #[error(transparent)]
    Context(#[from] context::ContextError),
    #[error(
        "please provide a valid path to a Dockerfile within the build context with --dockerfile: {path} does not exist"
    )]
    DockerfileMissing { path: PathBuf },
    #[error("cannot read Dockerfile {path}: {source}")]
    DockerfileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: u32,
        column: u32,
        message: String,
    },
    #[error(
        "{file}:{line}:{column}: unknown instruction: {keyword} (no built-in handler or --plugin claims it)"
    )]
    UnknownInstruction {
        file: String,
        line: u32,
        column: u32,
        keyword: String,
    },
    #[error("{file}:{line}:{column}: {keyword}: {source}")]
    Instruction {
        file: String,
        line: u32,
        column: u32,
        keyword: String,
        source: Box<BuildError>,
    },
    #[error("{0}")]
    Plan(plan::PlanError),
    #[error("ONBUILD trigger {trigger:?} of the base image is invalid: {message}")]
    Trigger { trigger: String, message: String },
    #[error("no build stage in current context: the Dockerfile needs a FROM before {keyword}")]
    NoStage { keyword: String },
    #[error("the Dockerfile has no FROM instruction")]
    NoFrom,
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("invalid image reference {reference:?}: {message}")]
    Reference { reference: String, message: String },
    #[error("base image config is invalid: {0}")]
    Config(#[from] crate::image::config::ConfigError),
    #[error("{0}")]
    Layer(#[from] crate::layer::LayerError),
    #[error("{0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("{0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(
        "{keyword} needs a root filesystem, but kiln cannot create mount namespaces here ({reason}); run as root or with CAP_SYS_ADMIN, or inside a container, where kiln builds on its own root (container-root mode); outside a container, --force lets kiln unpack the image onto / of this machine, replacing its files"
    )]
    NoIsolation { keyword: String, reason: String },
    #[error("cache: {0}")]
    Cache(String),
    #[error("RUN --mount: {0}")]
    Mount(String),
    #[error("{0} is not supported yet by kiln")]
    NotSupported(String),
    #[error("failed to execute command {command:?}: exit status {code}")]
    RunFailed { command: Vec<String>, code: i32 },
    #[error("base image {reference} lists {layers} layers but {diff_ids} diff_ids in its config")]
    LayerCountMismatch {
        reference: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Layout(#[from] crate::image::layout::LayoutError),
    #[error("{0}")]
    Tarball(#[from] crate::image::tarball::TarballError),
}

impl BuildError {
    /// The process exit code for this failure: a failing RUN's own code,
    /// 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            BuildError::RunFailed { code, .. } => *code,
            BuildError::Instruction { source, .. } => source.exit_code(),
            _ => 1,
        }
    }
}

/// The built-in plugins, compiled to components by the build script.
const BUILTIN_PLUGINS: [(&str, &[u8]); 5] = [
    (
        "dockerfile",
        include_bytes!(concat!(env!("KILN_PLUGINS_DIR"), "/dockerfile.wasm")),
    ),
    (
        "context-dir",
        include_bytes!(concat!(env!("KILN_PLUGINS_DIR"), "/context_dir.wasm")),
    ),
    (
        "context-tar",
        include_bytes!(concat!(env!("KILN_PLUGINS_DIR"), "/context_tar.wasm")),
    ),
    (
        "context-remote",
        include_bytes!(concat!(env!("KILN_PLUGINS_DIR"), "/context_remote.wasm")),
    ),
    (
        "context-git",
        include_bytes!(concat!(env!("KILN_PLUGINS_DIR"), "/context_git.wasm")),
    ),
];

/// The limits of a built-in plugin. Network sources wait on servers, and
/// the git source fetches and unpacks a whole pack in one call, so they get
/// minutes where the others get seconds; memory stays capped.
fn builtin_limits(name: &str) -> Limits {
    let minutes = |m: u64| std::time::Duration::from_secs(60 * m);
    match name {
        "context-remote" => Limits {
            timeout: minutes(10),
            ..Limits::default()
        },
        "context-git" => Limits {
            timeout: minutes(30),
            fuel: u64::MAX / 4,
            ..Limits::default()
        },
        _ => Limits::default(),
    }
}

/// Loads the built-in plugins, then the user's.
pub fn load_plugins(rt: &Runtime, user: &[PathBuf]) -> Result<Vec<Plugin>, BuildError> {
    let mut plugins = Vec::new();
    for (name, wasm) in BUILTIN_PLUGINS {
        plugins.push(rt.load(name, wasm, builtin_limits(name))?);
    }
    for path in user {
        let wasm = std::fs::read(path).map_err(|source| BuildError::PluginFile {
            path: path.clone(),
            source,
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let p = rt.load(&name, &wasm, Limits::default())?;
        log::info!("Loaded plugin {name} from {}", path.display());
        plugins.push(p);
    }
    Ok(plugins)
}

/// Maps each keyword to its handler; a user plugin may add keywords but
/// not take one over.
fn keyword_table(plugins: &[Plugin]) -> Result<HashMap<String, &Plugin>, BuildError> {
    let mut table: HashMap<String, &Plugin> = HashMap::new();
    for p in plugins {
        if let Kind::Instructions(words) = p.kind() {
            for w in words {
                if let Some(other) = table.get(w) {
                    return Err(BuildError::KeywordClash {
                        plugin: p.name().into(),
                        keyword: w.clone(),
                        other: other.name().into(),
                    });
                }
                table.insert(w.clone(), p);
            }
        }
    }
    Ok(table)
}

fn locate_dockerfile(opts: &Options, ctx: &ContextTree) -> Result<PathBuf, BuildError> {
    if opts.dockerfile.is_file() {
        return Ok(opts.dockerfile.clone());
    }
    if opts.dockerfile.is_relative() {
        let in_ctx = ctx.root().join(&opts.dockerfile);
        if in_ctx.is_file() {
            return Ok(in_ctx);
        }
    }
    Err(BuildError::DockerfileMissing {
        path: opts.dockerfile.clone(),
    })
}

fn wit_instruction(i: &Instruction) -> wit::Instruction {
    wit::Instruction {
        keyword: i.keyword.clone(),
        flags: i
            .flags
            .iter()
            .map(|f| wit::Flag {
                name: f.name.clone(),
                value: f.value.clone(),
            })
            .collect(),
        text: i.text.clone(),
        json: i.json.clone(),
        heredocs: i
            .heredocs
            .iter()
            .map(|h| wit::Heredoc {
                name: h.name.clone(),
                content: h.content.clone(),
                expand: h.expand,
            })
            .collect(),
        original: i.original.clone(),
        position: wit::Position {
            line: i.line,
            column: i.column,
        },
    }
}

/// Asks the handler of each instruction what it means.
struct Frontend<'a> {
    rt: &'a Runtime,
    handlers: &'a HashMap<String, &'a Plugin>,
    /// The built-in Dockerfile plugin, loaded first.
    builtin: &'a Plugin,
    file: &'a str,
    escape: char,
    context: Arc<ContextTree>,
    opts: &'a Options,
}

impl Frontend<'_> {
    /// Whether kiln's own Dockerfile plugin handles `instr`.
    fn is_builtin(&self, instr: &Instruction) -> bool {
        self.handlers
            .get(&instr.keyword)
            .is_some_and(|p| std::ptr::eq(*p, self.builtin))
    }

    /// Wraps an error with the instruction's file, line and column.
    fn at(&self, instr: &Instruction, source: BuildError) -> BuildError {
        BuildError::Instruction {
            file: self.file.to_owned(),
            line: instr.line,
            column: instr.column,
            keyword: instr.keyword.clone(),
            source: Box::new(source),
        }
    }

    /// Runs `instr` through its handler with the state of `stage`.
    fn handle(
        &self,
        instr: &Instruction,
        stage: Option<&Stage>,
        global_args: &[wit::Arg],
        names: &[Option<String>],
    ) -> Result<wit::Outcome, BuildError> {
        let handler =
            self.handlers
                .get(&instr.keyword)
                .ok_or_else(|| BuildError::UnknownInstruction {
                    file: self.file.to_owned(),
                    line: instr.line,
                    column: instr.column,
                    keyword: instr.keyword.clone(),
                })?;
        let state = stage::handler_state(stage, global_args, names, self.opts, self.escape);
        let host = scope::Host {
            vars: stage::scope_vars(stage, global_args, instr),
            escape: self.escape,
            context: self.context.clone(),
        };
        handler
            .handle(self.rt, &wit_instruction(instr), &state, Box::new(host))
            .map_err(|e| self.at(instr, e.into()))
    }
}

/// The platform ARGs BuildKit predefines in the global scope.
fn predefined_args(target: &Platform) -> Vec<wit::Arg> {
    let build = Platform::linux_amd64();
    let arg = |name: &str, value: String| wit::Arg {
        name: name.into(),
        value: Some(value),
    };
    vec![
        arg("TARGETPLATFORM", target.to_string()),
        arg("TARGETOS", target.os.clone()),
        arg("TARGETARCH", target.architecture.clone()),
        arg("TARGETVARIANT", target.variant.clone().unwrap_or_default()),
        arg("BUILDPLATFORM", build.to_string()),
        arg("BUILDOS", build.os.clone()),
        arg("BUILDARCH", build.architecture.clone()),
        arg("BUILDVARIANT", build.variant.clone().unwrap_or_default()),
    ]
}

/// Build args that never need an ARG: the proxy variables.
const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The table of large context files' digests, in the kiln directory.
const FILE_DIGESTS: &str = "file-digests";

/// Runs a whole build and writes its outputs.
pub fn run(opts: &Options) -> Result<Outcome, BuildError> {
    let store = Store::open(&opts.kiln_dir)?;
    let rt = Runtime::new(&opts.kiln_dir.join("plugins"))?;
    let plugins = load_plugins(&rt, &opts.plugins)?;
    let handlers = keyword_table(&plugins)?;

    let mut ctx = context::open(&opts.context, &opts.context_options, &plugins, &rt, &store)?;
    let dockerfile_path = locate_dockerfile(opts, &ctx)?;
    ctx.use_dockerfile_ignore(&dockerfile_path)?;
    let ctx = Arc::new(ctx);
    let file = dockerfile_path.display().to_string();
    let text =
        std::fs::read_to_string(&dockerfile_path).map_err(|source| BuildError::DockerfileRead {
            path: dockerfile_path.clone(),
            source,
        })?;
    let parsed = dockerfile::parse(&text).map_err(|e| BuildError::Parse {
        file: file.clone(),
        line: e.line,
        column: e.column,
        message: e.message.clone(),
    })?;
    if let Some(syntax) = &parsed.syntax {
        log::info!("Ignoring syntax directive {syntax}: kiln has its own Dockerfile frontend");
    }

    let registry = Registry::new(opts.registry.clone())?;
    let destinations = output::parse_destinations(&opts.destinations)?;
    // As kaniko does: fail before a long build rather than at its end;
    // the check runs while the build starts, and steps wait for it.
    let push_check = (opts.push_permission_check && !opts.no_push)
        .then(|| PushCheck::start(registry.clone(), destinations.clone()));
    let caching = match &opts.cache {
        Some(c) => {
            let layers = LayerCache::new(c.repo.clone(), registry.clone(), store.clone(), c.ttl);
            let base = BaseCache::open(&c.dir).map_err(|e| BuildError::Cache(e.to_string()))?;
            log::info!(
                "Using layer cache {} and base-image cache {}",
                c.repo,
                c.dir.display()
            );
            Some(caching::Caching {
                pusher: c.push.then(|| CachePusher::start(layers.clone())),
                layers,
                base,
                ttl: c.ttl,
                run_layers: c.run_layers,
                copy_layers: c.copy_layers,
                file_digests: FileDigests::open(&opts.kiln_dir.join(FILE_DIGESTS)),
                prefetched: Default::default(),
                context_digests: Default::default(),
            })
        }
        None => None,
    };
    let http = ureq::Agent::new_with_defaults();
    let container_root = match (&opts.isolation, &opts.container_root) {
        (Err(_), Some(cr)) => {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let own = container_root::own_paths(opts, Some(ctx.root()));
            let exclude = container_root::exclusions(cr, &mountinfo, &own);
            log::info!(
                "Building in container-root mode ({}): steps run on / itself",
                cr.reason
            );
            if let Err(why) = &opts.isolation {
                log::info!("Isolated mode is unavailable: {why}");
            }
            Some(ContainerRoot::new(PathBuf::from("/"), exclude, cr))
        }
        (Ok(crate::sandbox::Isolation::Privileged), _) => {
            log::info!(
                "Building in isolated mode: each step runs in its own namespaces on an overlay"
            );
            None
        }
        (Ok(crate::sandbox::Isolation::UserNamespace), _) => {
            log::info!(
                "Building in isolated mode in a user namespace (kiln lacks CAP_SYS_ADMIN; every uid and gid maps to itself): each step runs in its own namespaces on an overlay"
            );
            None
        }
        (Err(_), None) => None,
    };
    let frontend = Frontend {
        rt: &rt,
        handlers: &handlers,
        builtin: &plugins[0],
        file: &file,
        escape: parsed.escape,
        context: ctx.clone(),
        opts,
    };

    let (globals, stage_slices) = plan::split(&parsed.instructions);
    let mut global_args = predefined_args(&opts.platform);
    let mut declared: Vec<String> = Vec::new();
    for instr in globals {
        for effect in frontend.handle(instr, None, &global_args, &[])?.effects {
            match effect {
                wit::Effect::DeclareArg(a) => {
                    declared.push(a.name.clone());
                    upsert_arg(&mut global_args, a);
                }
                _ => {
                    return Err(frontend.at(
                        instr,
                        BuildError::NoStage {
                            keyword: instr.keyword.clone(),
                        },
                    ));
                }
            }
        }
    }
    if stage_slices.is_empty() {
        return Err(BuildError::NoFrom);
    }

    let mut plans = Vec::new();
    let mut starts = Vec::new();
    let mut names: Vec<Option<String>> = Vec::new();
    for (index, slice) in stage_slices.into_iter().enumerate() {
        let from = slice[0];
        let outcome = frontend.handle(from, None, &global_args, &names)?;
        let start = match <[wit::Effect; 1]>::try_from(outcome.effects) {
            Ok([wit::Effect::Stage(start)]) => start,
            _ => {
                return Err(frontend.at(
                    from,
                    BuildError::NoStage {
                        keyword: from.keyword.clone(),
                    },
                ));
            }
        };
        let name = start.name.as_ref().map(|n| n.to_ascii_lowercase());
        names.push(name.clone());
        plans.push(plan::StagePlan {
            index,
            name,
            base: start.image.clone(),
            from,
            body: slice[1..].to_vec(),
            deps: Default::default(),
        });
        starts.push(start);
    }
    let global_values: HashMap<String, String> = global_args
        .iter()
        .filter_map(|a| a.value.clone().map(|v| (a.name.clone(), v)))
        .collect();
    let expand_global = |v: &str| {
        dockerfile::expand_word(v, &|n| global_values.get(n).cloned(), parsed.escape)
            .unwrap_or_else(|_| v.to_owned())
    };
    plan::link(&mut plans, &expand_global)
        .map_err(|(e, instr)| frontend.at(instr, BuildError::Plan(e)))?;
    let (target, need) = plan::needed(&plans, opts.target.as_deref()).map_err(BuildError::Plan)?;
    for p in plans.iter().filter(|p| !need[p.index]) {
        log::info!("Skipping unused stage {}", plan::stage_label(p));
    }
    let waves = plan::waves(&plans, &need).map_err(BuildError::Plan)?;
    // With a registry layer cache, the cache pushers already upload every
    // new layer during the build, and the image's push mounts them from
    // there: uploading them to the destination too would send them twice.
    let cache_uploads = caching
        .as_ref()
        .is_some_and(|c| c.pusher.is_some() && c.layers.layer_source().is_some());
    let pushes = !opts.no_push && !destinations.is_empty();
    let base_of: Vec<Option<usize>> = plans
        .iter()
        .map(
            |p| match plan::resolve_from(&p.base, &names[..p.index], p.index) {
                Ok(plan::FromRef::Stage(i)) => Some(i),
                _ => None,
            },
        )
        .collect();
    let in_image = early_push::image_chain(target, &base_of);
    let early_push = (pushes && !cache_uploads).then(|| {
        EarlyPush::start(
            registry.clone(),
            destinations.clone(),
            store.clone(),
            in_image.clone(),
        )
    });
    // Where the image's layers are first uploaded: the layer cache, which
    // the push mounts them from, or the first destination.
    let stream_to = match caching.as_ref().and_then(|c| c.layers.layer_source()) {
        Some(cache) if cache_uploads => Some(cache),
        _ => destinations.first().cloned(),
    };
    let layer_stream = stream_to
        .filter(|_| pushes)
        .map(|to| LayerStream::new(registry.clone(), to, in_image));
    let sctx = StageCtx {
        container_root: container_root.as_ref(),
        early_push: early_push.as_ref(),
        layer_stream: layer_stream.as_ref(),
        push_check: push_check.as_ref(),
        cache: caching.as_ref(),
        http: &http,
        plugins: &plugins,
        rt: &rt,
        store: &store,
        registry: &registry,
        opts,
        context: ctx.clone(),
    };

    let mut finished: Vec<Option<Stage>> = (0..plans.len()).map(|_| None).collect();
    let mut stage_declared: Vec<String> = Vec::new();
    for wave in waves {
        let others = stage::Others {
            stages: &finished,
            names: &names,
        };
        // Container-root mode has one root: its stages take turns.
        let built: Vec<Result<Stage, BuildError>> = if container_root.is_some() {
            wave.iter()
                .map(|&i| {
                    build_stage(
                        &frontend,
                        &sctx,
                        &plans[i],
                        &starts[i],
                        &others,
                        &global_args,
                    )
                })
                .collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = wave
                    .iter()
                    .map(|&i| {
                        let (frontend, sctx, others, global_args) =
                            (&frontend, &sctx, &others, &global_args);
                        let (plan, start) = (&plans[i], &starts[i]);
                        scope.spawn(move || {
                            build_stage(frontend, sctx, plan, start, others, global_args)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        for (&i, result) in wave.iter().zip(built) {
            let stage = result?;
            stage_declared.extend(stage.declared_args());
            finished[i] = Some(stage);
        }
    }
    declared.extend(stage_declared);
    let unused: Vec<&str> = opts
        .build_args
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !declared.iter().any(|d| d == k) && !PROXY_ARGS.contains(k))
        .collect();
    if !unused.is_empty() {
        log::warn!(
            "[Warning] One or more build-args [{}] were not consumed",
            unused.join(" ")
        );
    }
    let mut final_stage = finished[target].take().expect("the target stage was built");
    final_stage.finish(opts);
    if let Some(check) = &push_check {
        check.wait()?;
    }
    if let Some(uploads) = &early_push {
        uploads.finish();
    }
    // Cache pushes ran alongside the build; they finish before the image's
    // push, which mounts their layers, and a failed one is only a warning.
    if let Some(c) = &caching {
        if let Some(pusher) = &c.pusher {
            pusher.finish();
        }
        // Only a cache: a later build reads the files again.
        if let Err(e) = c.file_digests.save() {
            log::debug!("cannot save the file digest table: {e}");
        }
    }
    let outcome = output::write(&sctx, &final_stage);
    if opts.cleanup {
        match &container_root {
            Some(root) => {
                log::info!("Cleaning the filesystem: --cleanup");
                root.clean()?;
            }
            None => log::info!("--cleanup: nothing to clean, isolated mode leaves / untouched"),
        }
    }
    // While `store` is open, this build's registration keeps what it used.
    crate::store::gc::after_build(&opts.kiln_dir, opts.store_max_size);
    outcome
}

/// Builds one stage: its base, the base image's ONBUILD triggers, then its
/// own instructions.
fn build_stage(
    frontend: &Frontend<'_>,
    sctx: &StageCtx<'_>,
    plan: &plan::StagePlan<'_>,
    start: &wit::StageStart,
    others: &stage::Others<'_>,
    global_args: &[wit::Arg],
) -> Result<Stage, BuildError> {
    let at = |instr: &Instruction, e| frontend.at(instr, e);
    log::info!("{}", plan.from.original);
    let base = match plan::resolve_from(&start.image, &others.names[..plan.index], plan.index) {
        Ok(plan::FromRef::Stage(i)) => others.stages[i].as_ref(),
        _ => None,
    };
    let mut stage = Stage::start(sctx, plan.index, start, base).map_err(|e| at(plan.from, e))?;
    let triggers = stage.config.onbuild();
    stage.config.clear_onbuild();
    if !triggers.is_empty() {
        log::info!("Executing {} build triggers", triggers.len());
    }
    for trigger in &triggers {
        let parsed = dockerfile::parse(trigger).map_err(|e| {
            at(
                plan.from,
                BuildError::Trigger {
                    trigger: trigger.clone(),
                    message: e.to_string(),
                },
            )
        })?;
        for instr in &parsed.instructions {
            let outcome = frontend.handle(instr, Some(&stage), global_args, others.names)?;
            log::info!("{}", instr.original);
            stage
                .execute(sctx, instr, outcome, others)
                .map_err(|e| at(plan.from, e))?;
        }
    }
    if let Some(cache) = sctx.cache {
        cache.prefetch(lookahead_keys(
            frontend,
            sctx,
            plan,
            &stage,
            others,
            global_args,
            cache,
        ));
    }
    for instr in &plan.body {
        let outcome = frontend.handle(
            instr,
            Some(&stage),
            global_args,
            &others.names[..=plan.index],
        )?;
        log::info!("{}", instr.original);
        stage
            .execute(sctx, instr, outcome, others)
            .map_err(|e| at(instr, e))?;
    }
    stage.close(sctx).map_err(|e| at(plan.from, e))?;
    Ok(stage)
}

/// The cache keys of a stage's steps if each one hits, worked out on a
/// shadow of the stage; it stops where a key cannot be known ahead (a miss
/// changes every key after it anyway, so nothing past it is worth asking).
fn lookahead_keys(
    frontend: &Frontend<'_>,
    sctx: &StageCtx<'_>,
    plan: &plan::StagePlan<'_>,
    stage: &Stage,
    others: &stage::Others<'_>,
    global_args: &[wit::Arg],
    cache: &caching::Caching,
) -> Vec<Digest> {
    let mut shadow = stage.shadow();
    let mut keys = Vec::new();
    for instr in &plan.body {
        // A user's handler may count or log its calls: only built-in
        // instructions are handled twice.
        if !frontend.is_builtin(instr) {
            break;
        }
        let Ok(outcome) = frontend.handle(
            instr,
            Some(&shadow),
            global_args,
            &others.names[..=plan.index],
        ) else {
            break;
        };
        let mut key = None;
        if outcome.effects.iter().any(caching::is_fs) {
            if !cache.allows(&outcome.effects) {
                break;
            }
            match caching::step_key(&shadow, sctx, others, &outcome.effects) {
                Ok(Some(k)) => {
                    keys.push(k.clone());
                    key = Some(k);
                }
                _ => break,
            }
        }
        shadow.advance_shadow(key, outcome.effects);
    }
    keys
}

fn upsert_arg(args: &mut Vec<wit::Arg>, a: wit::Arg) {
    match args.iter_mut().find(|x| x.name == a.name) {
        Some(slot) => *slot = a,
        None => args.push(a),
    }
}

/// Resolves `--build-arg` values: a bare `K` takes `K` from the environment
/// (and is dropped when the environment has none, as Docker does).
pub fn resolve_build_args(
    raw: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    raw.iter()
        .filter_map(|a| match a.split_once('=') {
            Some((k, v)) => Some((k.to_owned(), v.to_owned())),
            None => env(a).map(|v| (a.clone(), v)),
        })
        .collect()
}

/// Kaniko's default kiln directory, or the user's cache directory.
pub fn default_kiln_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Path::new(&xdg).join("kiln");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Path::new(&home).join(".cache/kiln"),
        None => PathBuf::from("/kaniko"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_build_args_come_from_the_environment() {
        let env = |k: &str| (k == "FROM_ENV").then(|| "v".to_owned());
        let got = resolve_build_args(
            &[
                "A=1".into(),
                "FROM_ENV".into(),
                "MISSING".into(),
                "B=x=y".into(),
            ],
            env,
        );
        assert_eq!(
            got,
            vec![
                ("A".into(), "1".into()),
                ("FROM_ENV".into(), "v".into()),
                ("B".into(), "x=y".into())
            ]
        );
    }
}
