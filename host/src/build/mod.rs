//! The build: parse the Dockerfile, hand each instruction to the plugin
//! that claims its keyword, execute the effects it returns, snapshot each
//! filesystem step into a layer, and write the image to its outputs.

mod fs;
mod output;
mod scope;
mod stage;

use crate::context::{self, ContextTree};
use crate::dockerfile::{self, Instruction};
use crate::image::config::Platform;
use crate::plugin::{self, Kind, Limits, Plugin, Runtime, wit};
use crate::registry::{Registry, RegistryOptions};
use crate::store::Store;
use stage::{Stage, StageCtx};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use fs::FsError;
pub use output::Outcome;

/// Everything `kiln build` needs to know.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--dockerfile`; relative paths are tried against the working
    /// directory, then the context, as kaniko does.
    pub dockerfile: PathBuf,
    pub context: String,
    pub destinations: Vec<String>,
    pub no_push: bool,
    pub oci_layout_path: Option<PathBuf>,
    pub digest_file: Option<PathBuf>,
    /// `--build-arg` values, already resolved.
    pub build_args: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub target: Option<String>,
    pub platform: Platform,
    pub insecure_registries: Vec<String>,
    pub plugins: Vec<PathBuf>,
    pub kiln_dir: PathBuf,
    /// The kiln executable, re-run as the RUN sandbox's helper.
    pub init_exe: PathBuf,
    /// Whether kiln got a private mount namespace, where steps can mount
    /// their overlays; the reason when it did not.
    pub isolation: Result<(), String>,
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
    #[error("{file}:{line}: {message}")]
    Parse {
        file: String,
        line: u32,
        message: String,
    },
    #[error(
        "{file}:{line}: unknown instruction: {keyword} (no built-in handler or --plugin claims it)"
    )]
    UnknownInstruction {
        file: String,
        line: u32,
        keyword: String,
    },
    #[error("{file}:{line}: {keyword}: {source}")]
    Instruction {
        file: String,
        line: u32,
        keyword: String,
        source: Box<BuildError>,
    },
    #[error("no build stage in current context: the Dockerfile needs a FROM before {keyword}")]
    NoStage { keyword: String },
    #[error("the Dockerfile has no FROM instruction")]
    NoFrom,
    #[error("target stage {0:?} could not be found")]
    NoTarget(String),
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
        "{keyword} needs an isolated root, but kiln cannot create mount namespaces here ({reason}); run as root or with CAP_SYS_ADMIN (container-root mode is not supported yet)"
    )]
    NoIsolation { keyword: String, reason: String },
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
const BUILTIN_PLUGINS: [(&str, &[u8]); 3] = [
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
];

/// Loads the built-in plugins, then the user's.
pub fn load_plugins(rt: &Runtime, user: &[PathBuf]) -> Result<Vec<Plugin>, BuildError> {
    let mut plugins = Vec::new();
    for (name, wasm) in BUILTIN_PLUGINS {
        plugins.push(rt.load(name, wasm, Limits::default())?);
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

/// Runs a whole build and writes its outputs.
pub fn run(opts: &Options) -> Result<Outcome, BuildError> {
    let store = Store::open(&opts.kiln_dir)?;
    let rt = Runtime::new(&opts.kiln_dir.join("plugins"))?;
    let plugins = load_plugins(&rt, &opts.plugins)?;
    let handlers = keyword_table(&plugins)?;

    let ctx = Arc::new(context::open(&opts.context, &plugins, &rt, &store)?);
    let dockerfile_path = locate_dockerfile(opts, &ctx)?;
    let file = dockerfile_path.display().to_string();
    let text =
        std::fs::read_to_string(&dockerfile_path).map_err(|source| BuildError::DockerfileRead {
            path: dockerfile_path.clone(),
            source,
        })?;
    let parsed = dockerfile::parse(&text).map_err(|e| BuildError::Parse {
        file: file.clone(),
        line: e.line,
        message: e.message.clone(),
    })?;
    if let Some(syntax) = &parsed.syntax {
        log::info!("Ignoring syntax directive {syntax}: kiln has its own Dockerfile frontend");
    }

    let registry = Registry::new(RegistryOptions {
        insecure_registries: opts.insecure_registries.clone(),
        docker_config_dir: None,
        user_agent: format!("kiln/{}", env!("CARGO_PKG_VERSION")),
    })?;
    let sctx = StageCtx {
        store: &store,
        registry: &registry,
        opts,
        context: ctx.clone(),
    };

    let mut global_args: Vec<wit::Arg> = Vec::new();
    let mut done: Vec<Stage> = Vec::new();
    let mut current: Option<Stage> = None;
    'instructions: for instr in &parsed.instructions {
        let at = |source: BuildError| BuildError::Instruction {
            file: file.clone(),
            line: instr.line,
            keyword: instr.keyword.clone(),
            source: Box::new(source),
        };
        let handler =
            handlers
                .get(&instr.keyword)
                .ok_or_else(|| BuildError::UnknownInstruction {
                    file: file.clone(),
                    line: instr.line,
                    keyword: instr.keyword.clone(),
                })?;
        let state =
            stage::handler_state(current.as_ref(), &global_args, &done, opts, parsed.escape);
        let host = scope::Host {
            vars: stage::scope_vars(current.as_ref(), &global_args, instr),
            escape: parsed.escape,
            context: ctx.clone(),
        };
        let outcome = handler
            .handle(&rt, &wit_instruction(instr), &state, Box::new(host))
            .map_err(|e| at(e.into()))?;
        if instr.keyword == "FROM" || current.is_none() {
            for effect in outcome.effects {
                match effect {
                    wit::Effect::DeclareArg(a) if current.is_none() => {
                        upsert_arg(&mut global_args, a)
                    }
                    wit::Effect::Stage(s) => {
                        if let Some(prev) = current.take() {
                            let reached_target = opts.target.is_some() && prev.name == opts.target;
                            done.push(prev);
                            if reached_target {
                                // Nothing after the target stage can be part of the image.
                                break 'instructions;
                            }
                        }
                        log::info!("{}", instr.original);
                        current = Some(Stage::start(&sctx, &s, &done, done.len()).map_err(at)?);
                    }
                    _ => {
                        return Err(BuildError::NoStage {
                            keyword: instr.keyword.clone(),
                        });
                    }
                }
            }
            continue;
        }
        let stage = current.as_mut().expect("checked above");
        log::info!("{}", instr.original);
        stage.execute(&sctx, instr, outcome).map_err(at)?;
    }
    if let Some(last) = current {
        done.push(last);
    }
    if done.is_empty() {
        return Err(BuildError::NoFrom);
    }
    let mut final_stage = match &opts.target {
        Some(t) => {
            let idx = done
                .iter()
                .position(|s| s.name.as_deref() == Some(t.as_str()))
                .ok_or_else(|| BuildError::NoTarget(t.clone()))?;
            done.swap_remove(idx)
        }
        None => done.pop().expect("at least one stage was pushed"),
    };
    final_stage.finish(opts);
    output::write(&sctx, &final_stage)
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
