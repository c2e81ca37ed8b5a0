//! One build stage: its base, config, layers and ARG scope, and the
//! execution of the effects its instructions produce.

use super::fs::{self as imagefs, Copy, Owner};
use super::scope::Vars;
use super::{BuildError, Options};
use crate::context::ContextTree;
use crate::digest::Digest;
use crate::dockerfile::Instruction;
use crate::image::config::{ConfigChange, Healthcheck, History, ImageConfig, Platform, rfc3339};
use crate::image::manifest::{DOCKER_LAYER_GZIP, Descriptor};
use crate::layer::apply::{UnpackOptions, Whiteouts, unpack};
use crate::layer::write::WriteOptions;
use crate::plugin::wit;
use crate::registry::{Reference, Registry};
use crate::sandbox::{self, Network, RunSpec, overlay::OverlayMount};
use crate::snapshot::{prune_unchanged_dirs, snapshot_upper};
use crate::store::Store;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What every stage shares.
pub struct StageCtx<'a> {
    pub store: &'a Store,
    pub registry: &'a Registry,
    pub opts: &'a Options,
    pub context: Arc<ContextTree>,
}

/// A layer of the image being built.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The compressed blob, as listed in the manifest.
    pub desc: Descriptor,
    /// The uncompressed tar's digest, as listed in the config.
    pub diff_id: Digest,
    /// Where to fetch the blob if it is not in the store yet.
    pub source: Option<Reference>,
}

/// A stage being built, or finished.
pub struct Stage {
    pub name: Option<String>,
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
    args: Vec<wit::Arg>,
    /// CMD was set in this stage, so ENTRYPOINT must not clear it.
    cmd_set: bool,
    /// The base layers have been extracted for a step that needed them.
    unpacked: bool,
}

fn now() -> String {
    rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

fn kv(pairs: Vec<(String, String)>) -> Vec<wit::KeyValue> {
    pairs
        .into_iter()
        .map(|(key, value)| wit::KeyValue { key, value })
        .collect()
}

fn pairs(kvs: Vec<wit::KeyValue>) -> Vec<(String, String)> {
    kvs.into_iter().map(|p| (p.key, p.value)).collect()
}

fn wit_config(c: &ImageConfig) -> wit::ImageConfig {
    wit::ImageConfig {
        user: c.user(),
        env: kv(c.env()),
        workdir: c.workdir(),
        entrypoint: c.entrypoint(),
        cmd: c.cmd(),
        shell: c.shell(),
        labels: kv(c.labels()),
        exposed_ports: c.exposed_ports(),
        volumes: c.volumes(),
        stop_signal: c.stop_signal(),
    }
}

/// The `state` handed to a handler.
pub fn handler_state(
    current: Option<&Stage>,
    global_args: &[wit::Arg],
    done: &[Stage],
    opts: &Options,
    escape: char,
) -> wit::State {
    let mut stage_names: Vec<Option<String>> = done.iter().map(|s| s.name.clone()).collect();
    if let Some(c) = current {
        stage_names.push(c.name.clone());
    }
    wit::State {
        config: wit_config(
            &current
                .map(|s| s.config.clone())
                .unwrap_or_else(|| ImageConfig::scratch(&opts.platform)),
        ),
        args: current
            .map(|s| s.args.clone())
            .unwrap_or_else(|| global_args.to_vec()),
        global_args: global_args.to_vec(),
        build_args: kv(opts.build_args.clone()),
        stage_names,
        target_platform: opts.platform.to_string(),
        before_first_from: current.is_none(),
        escape: escape.to_string(),
    }
}

/// The variables an instruction's words expand with: FROM lines see only
/// global ARGs; everything else sees the stage's ARGs and ENV.
pub fn scope_vars(current: Option<&Stage>, global_args: &[wit::Arg], instr: &Instruction) -> Vars {
    let arg_pairs = |args: &[wit::Arg]| -> Vec<(String, String)> {
        args.iter()
            .filter_map(|a| a.value.clone().map(|v| (a.name.clone(), v)))
            .collect()
    };
    match current {
        Some(stage) if instr.keyword != "FROM" => {
            let args = arg_pairs(&stage.args);
            let env = stage.config.env();
            Vars::new(
                args.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )
        }
        _ => {
            let args = arg_pairs(global_args);
            Vars::new(args.iter().map(|(k, v)| (k.as_str(), v.as_str())), [])
        }
    }
}

/// The upper, work and merged directories of one filesystem step.
struct Step {
    upper: tempfile::TempDir,
    _work: tempfile::TempDir,
    merged: tempfile::TempDir,
    mount: OverlayMount,
}

impl Stage {
    /// Starts a stage from `FROM`: a previous stage, `scratch`, or an image.
    pub fn start(
        sctx: &StageCtx<'_>,
        s: &wit::StageStart,
        done: &[Stage],
        _index: usize,
    ) -> Result<Stage, BuildError> {
        let name = s.name.clone().map(|n| n.to_ascii_lowercase());
        let platform = match &s.platform {
            Some(p) => Platform::parse(p).ok_or_else(|| BuildError::Reference {
                reference: p.clone(),
                message: "FROM --platform must be os/arch[/variant]".into(),
            })?,
            None => sctx.opts.platform.clone(),
        };
        let blank = |config, layers| Stage {
            name: name.clone(),
            config,
            layers,
            args: Vec::new(),
            cmd_set: false,
            unpacked: false,
        };
        if let Some(prev) = done.iter().rev().find(|d| {
            d.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(&s.image))
        }) {
            return Ok(blank(prev.config.clone(), prev.layers.clone()));
        }
        if s.image.eq_ignore_ascii_case("scratch") {
            log::info!("No base image, nothing to extract");
            return Ok(blank(ImageConfig::scratch(&platform), Vec::new()));
        }
        let reference = Reference::parse(&s.image).map_err(|e| BuildError::Reference {
            reference: s.image.clone(),
            message: e.to_string(),
        })?;
        log::info!("Retrieving image manifest {}", s.image);
        let pulled = sctx
            .registry
            .pull_manifest(&reference, &platform.to_string())?;
        log::info!(
            "Retrieving image {reference} from registry {}",
            reference.registry
        );
        let config = ImageConfig::parse(&pulled.config)?;
        let diff_ids = config.diff_ids()?;
        if diff_ids.len() != pulled.manifest.layers.len() {
            return Err(BuildError::LayerCountMismatch {
                reference: reference.to_string(),
                layers: pulled.manifest.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let layers = pulled
            .manifest
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(desc, diff_id)| Layer {
                desc: desc.clone(),
                diff_id,
                source: Some(reference.clone()),
            })
            .collect();
        Ok(blank(config, layers))
    }

    /// Executes one instruction's effects and records its history entry.
    pub fn execute(
        &mut self,
        sctx: &StageCtx<'_>,
        instr: &Instruction,
        outcome: wit::Outcome,
    ) -> Result<(), BuildError> {
        let mut step: Option<Step> = None;
        for effect in outcome.effects {
            match effect {
                wit::Effect::Config(change) => self.apply_config(change),
                wit::Effect::DeclareArg(a) => super::upsert_arg(&mut self.args, a),
                wit::Effect::Stage(_) => {
                    return Err(BuildError::NoStage {
                        keyword: instr.keyword.clone(),
                    });
                }
                wit::Effect::Run(run) => {
                    let root = self.step_root(sctx, &mut step, &instr.keyword)?;
                    self.run(sctx, root, run)?;
                }
                wit::Effect::Copy(c) => {
                    let unsupported = [
                        ("--from", c.from.is_some()),
                        ("--link", c.link),
                        ("--parents", c.parents),
                        ("--exclude", !c.excludes.is_empty()),
                    ];
                    if let Some((flag, _)) = unsupported.iter().find(|(_, given)| *given) {
                        return Err(BuildError::NotSupported(format!("COPY {flag}")));
                    }
                    let root = self.step_root(sctx, &mut step, &instr.keyword)?;
                    let owner = self.owner(&root, c.chown.as_deref())?;
                    let chmod = c.chmod.as_deref().map(imagefs::parse_chmod).transpose()?;
                    Copy {
                        context: &sctx.context,
                        sources: &c.sources,
                        dest: &c.dest,
                        owner,
                        chmod,
                    }
                    .run(&root)?;
                }
                wit::Effect::Add(_) => return Err(BuildError::NotSupported("ADD".into())),
                wit::Effect::WriteFile(w) => {
                    let root = self.step_root(sctx, &mut step, &instr.keyword)?;
                    let owner = self
                        .owner(&root, w.chown.as_deref())?
                        .unwrap_or(Owner::ROOT);
                    imagefs::write_file(&root, &w.path, &w.content, w.mode, owner)?;
                }
                wit::Effect::MakeDir(m) => {
                    let root = self.step_root(sctx, &mut step, &instr.keyword)?;
                    let owner = self
                        .owner(&root, m.chown.as_deref())?
                        .unwrap_or(Owner::ROOT);
                    imagefs::make_dirs(&root, &m.path, owner)?;
                }
            }
        }
        let history = History {
            created: now(),
            created_by: outcome.created_by.unwrap_or_else(|| instr.original.clone()),
            comment: None,
            empty_layer: true,
        };
        match step {
            None => self.config.add_history(history),
            Some(step) => match self.snapshot(sctx.store, step)? {
                Some(layer) => {
                    self.config.add_layer(&layer.diff_id, history);
                    self.layers.push(layer);
                }
                None => {
                    log::info!(
                        "No files were changed, appending empty layer to config. No layer added to image."
                    );
                    self.config.add_history(history);
                }
            },
        }
        Ok(())
    }

    fn apply_config(&mut self, change: wit::ConfigChange) {
        let change = match change {
            wit::ConfigChange::Env(p) => ConfigChange::Env(pairs(p)),
            wit::ConfigChange::Label(p) => ConfigChange::Label(pairs(p)),
            wit::ConfigChange::User(u) => ConfigChange::User(u),
            wit::ConfigChange::Workdir(w) => ConfigChange::Workdir(w),
            wit::ConfigChange::Entrypoint(e) => {
                // BuildKit drops an inherited CMD when ENTRYPOINT changes,
                // but keeps one that this stage set.
                if !self.cmd_set {
                    self.config.apply(&ConfigChange::Cmd(None));
                }
                ConfigChange::Entrypoint(e)
            }
            wit::ConfigChange::Cmd(c) => {
                self.cmd_set = true;
                ConfigChange::Cmd(c)
            }
            wit::ConfigChange::Expose(p) => ConfigChange::Expose(p),
            wit::ConfigChange::Volume(v) => ConfigChange::Volume(v),
            wit::ConfigChange::StopSignal(s) => ConfigChange::StopSignal(s),
            wit::ConfigChange::Shell(s) => ConfigChange::Shell(s),
            wit::ConfigChange::Author(a) => ConfigChange::Author(a),
            wit::ConfigChange::Healthcheck(h) => ConfigChange::Healthcheck(Healthcheck {
                test: h.test,
                interval: h.interval,
                timeout: h.timeout,
                start_period: h.start_period,
                start_interval: h.start_interval,
                retries: h.retries,
            }),
            wit::ConfigChange::Onbuild(t) => ConfigChange::OnBuild(t),
        };
        self.config.apply(&change);
    }

    fn owner(
        &self,
        root: &std::path::Path,
        chown: Option<&str>,
    ) -> Result<Option<Owner>, BuildError> {
        let Some(spec) = chown else { return Ok(None) };
        let (passwd, group) = if imagefs::chown_needs_names(spec) {
            (
                imagefs::read_image_file(root, "/etc/passwd")?,
                imagefs::read_image_file(root, "/etc/group")?,
            )
        } else {
            (String::new(), String::new())
        };
        Ok(Some(imagefs::resolve_chown(spec, &passwd, &group)?))
    }

    /// The merged root of the current step, opening the step first.
    fn step_root(
        &mut self,
        sctx: &StageCtx<'_>,
        step: &mut Option<Step>,
        keyword: &str,
    ) -> Result<PathBuf, BuildError> {
        if step.is_none() {
            if let Err(reason) = &sctx.opts.isolation {
                return Err(BuildError::NoIsolation {
                    keyword: keyword.into(),
                    reason: reason.clone(),
                });
            }
            self.extract_layers(sctx, keyword)?;
            *step = Some(open_step(sctx.store, &self.layers)?);
        }
        Ok(step
            .as_ref()
            .expect("opened above")
            .merged
            .path()
            .to_owned())
    }

    /// Makes sure every layer has an extracted directory in the store.
    fn extract_layers(&mut self, sctx: &StageCtx<'_>, keyword: &str) -> Result<(), BuildError> {
        if !self.unpacked && self.layers.iter().any(|l| l.source.is_some()) {
            log::info!("Unpacking rootfs as cmd {keyword} requires it.");
            self.unpacked = true;
        }
        for layer in &self.layers {
            if sctx.store.layer_dir(&layer.diff_id).is_dir() {
                continue;
            }
            if !sctx.store.has_blob(&layer.desc.digest) {
                let src = layer
                    .source
                    .as_ref()
                    .expect("layers built here are always in the store");
                sctx.registry
                    .fetch_blob(src, &layer.desc.digest, sctx.store)?;
            }
            let blob = sctx.store.open_blob(&layer.desc.digest)?;
            let tmp = sctx.store.temp_dir("unpack-")?;
            unpack(
                std::io::BufReader::with_capacity(1 << 20, blob),
                tmp.path(),
                &UnpackOptions {
                    whiteouts: Whiteouts::Overlay,
                    preserve_owners: true,
                },
            )?;
            sctx.store.commit_layer_dir(tmp, &layer.diff_id)?;
        }
        Ok(())
    }

    fn run(&self, sctx: &StageCtx<'_>, root: PathBuf, run: wit::Run) -> Result<(), BuildError> {
        if !run.mounts.is_empty() {
            return Err(BuildError::NotSupported("RUN --mount".into()));
        }
        if run.insecure {
            return Err(BuildError::NotSupported("RUN --security=insecure".into()));
        }
        let mut env: Vec<(String, String)> = pairs(run.env);
        // ENV wins over ARG for the command's environment, as in Docker.
        for (k, v) in self.config.env() {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        }
        log::info!("Running: {:?}", run.argv);
        let spec = RunSpec {
            init_exe: sctx.opts.init_exe.clone(),
            rootfs: root,
            argv: run.argv.clone(),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: self.config.workdir().unwrap_or_else(|| "/".into()),
            user: self.config.user(),
            hostname: "kiln".into(),
            network: match run.network {
                // kaniko's RUN shares the host's network; so does kiln's default.
                wit::NetworkMode::Default | wit::NetworkMode::Host => Network::Host,
                wit::NetworkMode::None => Network::None,
            },
        };
        let code = sandbox::run(&spec)?;
        if code != 0 {
            return Err(BuildError::RunFailed {
                command: run.argv,
                code,
            });
        }
        Ok(())
    }

    fn snapshot(&self, store: &Store, step: Step) -> Result<Option<Layer>, BuildError> {
        step.mount.unmount()?;
        let lower_dirs: Vec<PathBuf> = self
            .layers
            .iter()
            .rev()
            .map(|l| store.layer_dir(&l.diff_id))
            .collect();
        let lowers: Vec<&std::path::Path> = lower_dirs.iter().map(PathBuf::as_path).collect();
        prune_unchanged_dirs(step.upper.path(), &lowers)?;
        let Some(blob) = snapshot_upper(step.upper.path(), store, &WriteOptions::default())? else {
            return Ok(None);
        };
        store.commit_layer_dir(step.upper, &blob.diff_id)?;
        Ok(Some(Layer {
            desc: Descriptor {
                media_type: DOCKER_LAYER_GZIP.into(),
                digest: blob.digest,
                size: blob.size,
                urls: None,
                annotations: None,
                platform: None,
            },
            diff_id: blob.diff_id,
            source: None,
        }))
    }

    /// Final touches on the stage that becomes the image.
    pub fn finish(&mut self, opts: &Options) {
        if !self.unpacked {
            log::info!("Skipping unpacking as no commands require it.");
        }
        if !opts.labels.is_empty() {
            self.config.apply(&ConfigChange::Label(opts.labels.clone()));
        }
        self.config.set_created(&now());
    }
}

/// Mounts an overlay of `layers` (bottom first) with a fresh upper dir.
fn open_step(store: &Store, layers: &[Layer]) -> Result<Step, BuildError> {
    let upper = store.temp_dir("upper-")?;
    let work = store.temp_dir("work-")?;
    let merged = store.temp_dir("merged-")?;
    // The upper dir's own mode becomes the mode of `/` in the merged view.
    std::fs::set_permissions(upper.path(), std::fs::Permissions::from_mode(0o755)).map_err(
        |source| BuildError::Output {
            path: upper.path().to_owned(),
            source,
        },
    )?;
    let lower_dirs: Vec<PathBuf> = layers
        .iter()
        .rev()
        .map(|l| store.layer_dir(&l.diff_id))
        .collect();
    let lowers: Vec<&std::path::Path> = lower_dirs.iter().map(PathBuf::as_path).collect();
    let mount = sandbox::overlay::mount_overlay(&lowers, upper.path(), work.path(), merged.path())?;
    Ok(Step {
        upper,
        _work: work,
        merged,
        mount,
    })
}
