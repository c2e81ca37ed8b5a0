//! One build stage: its base, config, layers and ARG scope, and the
//! execution of the effects its instructions produce.

use super::caching::{self, Caching};
use super::container_root::ContainerRoot;
use super::early_push::{EarlyPush, LayerStream, PushCheck};
use super::fs::{self as imagefs, Copy, Owner};
use super::mounts;
use super::plan::{self, FromRef};
use super::scope::Vars;
use super::{BuildError, Options};
use crate::cache::key::{self, Base, StepInput};
use crate::cache::store::CachedStep;
use crate::context::ContextTree;
use crate::digest::Digest;
use crate::dockerfile::Instruction;
use crate::image::config::{ConfigChange, Healthcheck, History, ImageConfig, Platform, rfc3339};
use crate::image::manifest::Descriptor;
use crate::layer::Exclusions;
use crate::layer::apply::{UnpackOptions, Whiteouts, unpack};
use crate::layer::write::{LayerBlob, WriteOptions};
use crate::plugin::wit;
use crate::registry::{Reference, Registry};
use crate::sandbox::{self, Capabilities, DirectSpec, Network, RunSpec, overlay::OverlayMount};
use crate::snapshot::scan::Stamp;
use crate::snapshot::{prune_unchanged_dirs, snapshot_upper};
use crate::store::Store;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What every stage shares.
pub struct StageCtx<'a> {
    pub store: &'a Store,
    /// Layer and base-image caching, with `--cache`.
    pub cache: Option<&'a Caching>,
    /// HTTP client for `ADD <url>`.
    pub http: &'a ureq::Agent,
    /// The plugins and runtime that fetch `ADD <git url>`.
    pub plugins: &'a [crate::plugin::Plugin],
    pub rt: &'a crate::plugin::Runtime,
    pub registry: &'a Registry,
    pub opts: &'a Options,
    pub context: Arc<ContextTree>,
    /// The live root of container-root mode; `None` in isolated mode.
    pub container_root: Option<&'a ContainerRoot>,
    /// Uploads the image's new layers while the build goes on.
    pub early_push: Option<&'a EarlyPush>,
    /// Streams the image's layers to the registry while they are written.
    pub layer_stream: Option<&'a LayerStream>,
    /// The push-permission check, awaited before a step does real work.
    pub push_check: Option<&'a PushCheck>,
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
    /// Position in the Dockerfile.
    index: usize,
    /// The cache key of everything so far: the base, then each step.
    pub key: Digest,
    /// When the newest content of the stage was made: the base image's
    /// `created`, then each step that ran (or its cached original).
    clock: String,
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
    args: Vec<wit::Arg>,
    /// CMD was set in this stage, so ENTRYPOINT must not clear it.
    cmd_set: bool,
    /// The base layers have been extracted for a step that needed them.
    unpacked: bool,
    /// With `--single-snapshot`, the step every filesystem instruction
    /// writes into, snapshotted once when the stage ends.
    pending: Option<Step>,
}

/// The time stamped on history entries and the image: now, or with
/// `--reproducible` the fixed `SOURCE_DATE_EPOCH`.
fn created(opts: &Options) -> String {
    let secs = opts.reproducible.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    rfc3339(secs)
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
    names: &[Option<String>],
    opts: &Options,
    escape: char,
) -> wit::State {
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
        stage_names: names.to_vec(),
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

/// The finished stages a stage may read from, by index, and every stage's
/// name.
pub struct Others<'a> {
    pub stages: &'a [Option<Stage>],
    pub names: &'a [Option<String>],
}

/// Where one filesystem step writes.
pub enum Step {
    /// An overlay of the stage's layers with a fresh upper dir, which
    /// becomes the layer.
    /// Fields drop in order: the mount goes before its directories.
    Overlay {
        mount: OverlayMount,
        merged: tempfile::TempDir,
        _work: tempfile::TempDir,
        upper: tempfile::TempDir,
    },
    /// A plain directory: a `COPY --link` step's layer, or in
    /// container-root mode the flattened view of another stage.
    Dir(tempfile::TempDir),
    /// The live root of container-root mode; `since` is the start of a
    /// `--use-new-run` RUN when the step ran nothing else.
    InPlace { root: PathBuf, since: Option<Stamp> },
}

impl Step {
    /// The root the step sees and writes into.
    pub fn merged_path(&self) -> &std::path::Path {
        match self {
            Step::Overlay { merged, .. } => merged.path(),
            Step::Dir(dir) => dir.path(),
            Step::InPlace { root, .. } => root,
        }
    }

    /// A step whose layer is built from nothing, for `COPY --link`.
    fn linked(store: &Store) -> Result<Step, BuildError> {
        let upper = store.temp_dir("link-")?;
        std::fs::set_permissions(upper.path(), std::fs::Permissions::from_mode(0o755)).map_err(
            |source| BuildError::Output {
                path: upper.path().to_owned(),
                source,
            },
        )?;
        Ok(Step::Dir(upper))
    }
}

impl Stage {
    /// Starts stage `index` from `FROM`: a previous stage, `scratch`, or an image.
    pub fn start(
        sctx: &StageCtx<'_>,
        index: usize,
        s: &wit::StageStart,
        base: Option<&Stage>,
    ) -> Result<Stage, BuildError> {
        let platform = match &s.platform {
            Some(p) => Platform::parse(p).ok_or_else(|| BuildError::Reference {
                reference: p.clone(),
                message: "FROM --platform must be os/arch[/variant]".into(),
            })?,
            None => sctx.opts.platform.clone(),
        };
        let blank = |config: ImageConfig, layers, key| Stage {
            index,
            key,
            clock: sctx
                .opts
                .reproducible
                .map_or_else(|| config.created().unwrap_or_else(|| rfc3339(0)), rfc3339),
            config,
            layers,
            args: Vec::new(),
            cmd_set: false,
            unpacked: false,
            pending: None,
        };
        let platform_text = platform.to_string();
        if let Some(prev) = base {
            let mut stage = blank(prev.config.clone(), prev.layers.clone(), prev.key.clone());
            stage.clock = prev.clock.clone();
            return Ok(stage);
        }
        if s.image.eq_ignore_ascii_case("scratch") {
            log::info!("No base image, nothing to extract");
            let key = key::base_key(Base::Scratch {
                platform: &platform_text,
            });
            return Ok(blank(ImageConfig::scratch(&platform), Vec::new(), key));
        }
        let (config, layers, manifest) = resolve_image(sctx, &s.image, &platform)?;
        let key = key::base_key(Base::Image {
            manifest: &manifest,
            platform: &platform_text,
        });
        Ok(blank(config, layers, key))
    }

    /// Position of the stage in the Dockerfile.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Executes one instruction's effects and records its history entry.
    pub fn execute(
        &mut self,
        sctx: &StageCtx<'_>,
        instr: &Instruction,
        outcome: wit::Outcome,
        others: &Others<'_>,
    ) -> Result<(), BuildError> {
        // With --cache, a filesystem step is keyed by its inputs before it
        // runs; a hit replaces running it, a miss is stored after it ran.
        let caching = sctx
            .cache
            .filter(|_| outcome.effects.iter().any(caching::is_fs));
        let mut store_key: Option<(Digest, bool)> = None;
        if let Some(cache) = caching
            && let Some(key) = caching::step_key(self, sctx, others, &outcome.effects)?
        {
            let allowed = cache.allows(&outcome.effects);
            if allowed
                && let Some(hit) = cache
                    .probe(&key)
                    .map_err(|e| BuildError::Cache(e.to_string()))?
            {
                log::info!("Using caching version of cmd: {}", instr.original);
                self.apply_cached(cache, instr, outcome, hit);
                self.key = key;
                return Ok(());
            }
            if allowed {
                log::info!("No cached layer found for cmd {}", instr.original);
            }
            store_key = Some((key, allowed));
        }
        if let Some(check) = sctx.push_check
            && outcome.effects.iter().any(caching::is_fs)
        {
            check.wait()?;
        }
        let mut step: Option<Step> = self.pending.take();
        // --use-new-run narrows the snapshot to what a RUN touched, which
        // holds only if the step ran nothing but RUNs.
        let mut since: Option<Option<Stamp>> = None;
        for effect in outcome.effects {
            if caching::is_fs(&effect) && !matches!(effect, wit::Effect::Run(_)) {
                since = Some(None);
            }
            match effect {
                wit::Effect::Config(change) => self.apply_config(change),
                wit::Effect::DeclareArg(a) => super::upsert_arg(&mut self.args, a),
                wit::Effect::Stage(_) => {
                    return Err(BuildError::NoStage {
                        keyword: instr.keyword.clone(),
                    });
                }
                wit::Effect::Run(run) => {
                    let root = self.step_root(sctx, &mut step, &instr.keyword, false)?;
                    match sctx.container_root {
                        Some(cr) => {
                            let started = cr.run_started();
                            since.get_or_insert(started);
                            self.run_in_place(root, run)?;
                        }
                        None => self.run(sctx, others, root, run)?,
                    }
                }
                wit::Effect::Copy(c) => {
                    let root = self.step_root(sctx, &mut step, &instr.keyword, c.link)?;
                    let owner = self.owner(sctx, &root, c.chown.as_deref(), c.link)?;
                    let chmod = c.chmod.as_deref().map(imagefs::parse_chmod).transpose()?;
                    // Held until the copy is done: the mounted root of --from.
                    let from_root = c
                        .from
                        .as_deref()
                        .map(|f| self.other_root(sctx, others, f))
                        .transpose()?;
                    let source = match &from_root {
                        Some(r) => imagefs::CopySource::Root(r.merged_path()),
                        None => imagefs::CopySource::Context(&sctx.context),
                    };
                    Copy {
                        source,
                        sources: &c.sources,
                        dest: &c.dest,
                        owner,
                        chmod: chmod.as_ref(),
                        parents: c.parents,
                        excludes: &c.excludes,
                    }
                    .run(&root)?;
                }
                wit::Effect::Add(a) => {
                    let root = self.step_root(sctx, &mut step, &instr.keyword, a.link)?;
                    let owner = self.owner(sctx, &root, a.chown.as_deref(), a.link)?;
                    let chmod = a.chmod.as_deref().map(imagefs::parse_chmod).transpose()?;
                    let scratch = sctx.store.temp_dir("add-")?;
                    imagefs::Add {
                        context: &sctx.context,
                        sources: &a.sources,
                        dest: &a.dest,
                        owner,
                        chmod: chmod.as_ref(),
                        excludes: &a.excludes,
                        checksum: a.checksum.as_deref(),
                        agent: sctx.http,
                        scratch: scratch.path(),
                        keep_git_dir: a.keep_git_dir,
                        git: Some(crate::context::git::GitFetcher {
                            plugins: sctx.plugins,
                            rt: sctx.rt,
                            store: sctx.store,
                        }),
                    }
                    .run(&root)?;
                }
                wit::Effect::WriteFile(w) => {
                    let root = self.step_root(sctx, &mut step, &instr.keyword, false)?;
                    let owner = self
                        .owner(sctx, &root, w.chown.as_deref(), false)?
                        .unwrap_or(Owner::ROOT);
                    imagefs::write_file(&root, &w.path, &w.content, w.mode, owner)?;
                }
                wit::Effect::MakeDir(m) => {
                    let root = self.step_root(sctx, &mut step, &instr.keyword, false)?;
                    let owner = self
                        .owner(sctx, &root, m.chown.as_deref(), false)?
                        .unwrap_or(Owner::ROOT);
                    imagefs::make_dirs(&root, &m.path, owner)?;
                }
            }
        }
        // A step that only changes the config is as old as the content it
        // describes, so an identical rebuild gets an identical config.
        let when = if step.is_some() {
            created(sctx.opts)
        } else {
            self.clock.clone()
        };
        self.clock = when.clone();
        let history = History {
            created: when,
            created_by: outcome.created_by.unwrap_or_else(|| instr.original.clone()),
            comment: None,
            empty_layer: true,
        };
        let Some(mut step) = step else {
            self.config.add_history(history);
            return Ok(());
        };
        if let Step::InPlace { since: s, .. } = &mut step {
            *s = since.flatten();
        }
        if sctx.opts.single_snapshot {
            self.pending = Some(step);
            self.config.add_history(history);
            return Ok(());
        }
        let layer = self.snapshot(sctx, step)?;
        if let Some(cache) = caching {
            match store_key {
                Some((key, store)) => {
                    if let (true, Some(pusher)) = (store, &cache.pusher) {
                        pusher.push(
                            key.clone(),
                            CachedStep {
                                layer: layer.as_ref().map(|l| (l.desc.clone(), l.diff_id.clone())),
                                created_by: history.created_by.clone(),
                                created: history.created.clone(),
                            },
                        );
                    }
                    self.key = key;
                }
                None => {
                    let made = layer.as_ref().map(|l| &l.diff_id);
                    self.key = key::step_key(&self.key, &StepInput::Executed { layer: made });
                }
            }
        }
        match layer {
            Some(layer) => {
                if let Some(uploads) = sctx.early_push {
                    uploads.layer(self.index, &layer.desc);
                }
                self.config.add_layer(&layer.diff_id, history);
                self.layers.push(layer);
            }
            None => {
                log::info!(
                    "No files were changed, appending empty layer to config. No layer added to image."
                );
                self.config.add_history(history);
            }
        }
        Ok(())
    }

    /// Takes a step from the cache: its config changes apply as usual,
    /// its filesystem effects are replaced by the cached layer.
    fn apply_cached(
        &mut self,
        cache: &Caching,
        instr: &Instruction,
        outcome: wit::Outcome,
        hit: CachedStep,
    ) {
        self.apply_non_fs(outcome.effects);
        let created_by = if hit.created_by.is_empty() {
            instr.original.clone()
        } else {
            hit.created_by
        };
        self.clock = hit.created.clone();
        let history = History {
            created: hit.created,
            created_by,
            comment: None,
            empty_layer: true,
        };
        match hit.layer {
            Some((desc, diff_id)) => {
                self.config.add_layer(&diff_id, history);
                self.layers.push(Layer {
                    desc,
                    diff_id,
                    source: cache.layers.layer_source(),
                });
            }
            None => self.config.add_history(history),
        }
    }

    /// Applies what a step changes besides the filesystem: the config and
    /// the arguments in scope.
    fn apply_non_fs(&mut self, effects: Vec<wit::Effect>) {
        for effect in effects {
            match effect {
                wit::Effect::Config(change) => self.apply_config(change),
                wit::Effect::DeclareArg(a) => super::upsert_arg(&mut self.args, a),
                _ => {}
            }
        }
    }

    /// A copy of the stage's key, config and arguments that runs nothing,
    /// to work out the keys of the steps ahead.
    pub fn shadow(&self) -> Stage {
        Stage {
            index: self.index,
            key: self.key.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            layers: self.layers.clone(),
            args: self.args.clone(),
            cmd_set: self.cmd_set,
            unpacked: true,
            pending: None,
        }
    }

    /// Moves a shadow past a step as a cache hit under `key` would move the
    /// stage (`None` for a step without filesystem effects).
    pub fn advance_shadow(&mut self, key: Option<Digest>, effects: Vec<wit::Effect>) {
        self.apply_non_fs(effects);
        if let Some(key) = key {
            self.key = key;
        }
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

    /// Resolves `--chown`. Names are looked up in the stage's own
    /// passwd and group files, which a `--link` step has to mount to see.
    fn owner(
        &mut self,
        sctx: &StageCtx<'_>,
        root: &std::path::Path,
        chown: Option<&str>,
        link: bool,
    ) -> Result<Option<Owner>, BuildError> {
        let Some(spec) = chown else { return Ok(None) };
        if !imagefs::chown_needs_names(spec) {
            return Ok(Some(imagefs::resolve_chown(spec, "", "")?));
        }
        let probe = if link {
            self.extract_layers(sctx, "COPY --link --chown")?;
            Some(view(sctx, &self.layers)?)
        } else {
            None
        };
        let image_root = probe.as_ref().map_or(root, Step::merged_path);
        let passwd = imagefs::read_image_file(image_root, "/etc/passwd")?;
        let group = imagefs::read_image_file(image_root, "/etc/group")?;
        Ok(Some(imagefs::resolve_chown(spec, &passwd, &group)?))
    }

    /// The root the current step writes into, opening the step first: the
    /// merged overlay of the stage, or for `--link` an empty directory
    /// whose layer does not depend on the ones below.
    fn step_root(
        &mut self,
        sctx: &StageCtx<'_>,
        step: &mut Option<Step>,
        keyword: &str,
        link: bool,
    ) -> Result<PathBuf, BuildError> {
        if step.is_none() {
            if link {
                *step = Some(Step::linked(sctx.store)?);
            } else if let Some(cr) = sctx.container_root {
                self.extract_layers(sctx, keyword)?;
                cr.prepare(sctx, &self.layers)?;
                *step = Some(Step::InPlace {
                    root: cr.path().to_owned(),
                    since: None,
                });
            } else {
                if let Err(reason) = &sctx.opts.isolation {
                    return Err(BuildError::NoIsolation {
                        keyword: keyword.into(),
                        reason: reason.clone(),
                    });
                }
                self.extract_layers(sctx, keyword)?;
                *step = Some(open_step(sctx.store, &self.layers)?);
            }
        }
        Ok(step
            .as_ref()
            .expect("opened above")
            .merged_path()
            .to_owned())
    }

    /// Makes sure every layer has an extracted directory in the store;
    /// in container-root mode the root itself is prepared instead.
    fn extract_layers(&mut self, sctx: &StageCtx<'_>, keyword: &str) -> Result<(), BuildError> {
        if !self.unpacked && self.layers.iter().any(|l| l.source.is_some()) {
            log::info!("Unpacking rootfs as cmd {keyword} requires it.");
            self.unpacked = true;
        }
        match sctx.container_root {
            Some(_) => Ok(()),
            None => ensure_extracted(sctx, &self.layers),
        }
    }

    /// Mounts the root filesystem of a `--from` value (a stage or an
    /// image) for reading.
    pub fn other_root(
        &self,
        sctx: &StageCtx<'_>,
        others: &Others<'_>,
        from: &str,
    ) -> Result<Step, BuildError> {
        let layers = match plan::resolve_from(from, others.names, self.index)
            .map_err(BuildError::Plan)?
        {
            FromRef::Stage(i) => match others.stages.get(i).and_then(Option::as_ref) {
                Some(stage) => stage.layers.clone(),
                None => return Err(BuildError::Plan(plan::PlanError::UnknownStage(from.into()))),
            },
            FromRef::Image(image) => resolve_image(sctx, &image, &sctx.opts.platform)?.1,
        };
        view(sctx, &layers)
    }

    /// RUN on the live root of container-root mode, where nothing can be
    /// mounted: `--mount` and `--network=none` are refused.
    fn run_in_place(&self, root: PathBuf, run: wit::Run) -> Result<(), BuildError> {
        debug_assert_eq!(root, std::path::Path::new("/"));
        if !run.mounts.is_empty() {
            return Err(BuildError::NotSupported(
                "RUN --mount in container-root mode (it needs mounts, which this container refuses; give kiln CAP_SYS_ADMIN to build in isolated mode)".into(),
            ));
        }
        if run.network == wit::NetworkMode::None {
            return Err(BuildError::NotSupported(
                "RUN --network=none in container-root mode (it needs a network namespace, which this container refuses)".into(),
            ));
        }
        let mut env: Vec<(String, String)> = pairs(run.env);
        for (k, v) in self.config.env() {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        }
        log::info!("Running: {:?}", run.argv);
        let spec = DirectSpec {
            argv: run.argv.clone(),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: self.config.workdir().unwrap_or_else(|| "/".into()),
            user: self.config.user(),
        };
        match sandbox::run_direct(&spec)? {
            0 => Ok(()),
            code => Err(BuildError::RunFailed {
                command: run.argv,
                code,
            }),
        }
    }

    fn run(
        &self,
        sctx: &StageCtx<'_>,
        others: &Others<'_>,
        root: PathBuf,
        run: wit::Run,
    ) -> Result<(), BuildError> {
        let cwd = self.config.workdir().unwrap_or_else(|| "/".into());
        let mut mounts = mounts::prepare(self, sctx, others, run.mounts, &cwd)?;
        let mut env: Vec<(String, String)> = pairs(run.env);
        // ENV wins over ARG for the command's environment, as in Docker;
        // what the mounts add (secrets, the SSH agent) wins over both.
        for (k, v) in self
            .config
            .env()
            .into_iter()
            .chain(mounts.env.iter().cloned())
        {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        }
        log::info!("Running: {:?}", run.argv);
        let spec = RunSpec {
            init_exe: sctx.opts.init_exe.clone(),
            rootfs: root,
            argv: run.argv.clone(),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd,
            user: self.config.user(),
            hostname: "kiln".into(),
            network: match run.network {
                // kaniko's RUN shares the host's network; so does kiln's default.
                wit::NetworkMode::Default | wit::NetworkMode::Host => Network::Host,
                wit::NetworkMode::None => Network::None,
            },
            mounts: std::mem::take(&mut mounts.specs),
            capabilities: if run.insecure {
                Capabilities::All
            } else {
                Capabilities::Default
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

    fn snapshot(&self, sctx: &StageCtx<'_>, step: Step) -> Result<Option<Layer>, BuildError> {
        let store = sctx.store;
        let (upper, mount) = match step {
            Step::Dir(dir) => return self.layer_from(sctx, dir),
            Step::InPlace { since, .. } => {
                let cr = sctx
                    .container_root
                    .expect("in-place steps exist only in container-root mode");
                let watcher = sctx.layer_stream.and_then(|s| s.watcher(self.index));
                return Ok(cr.snapshot(sctx, since, watcher)?.map(layer_of));
            }
            Step::Overlay { upper, mount, .. } => (upper, mount),
        };
        mount.unmount()?;
        let lower_dirs = lower_dirs(store, &self.layers);
        let lowers: Vec<&std::path::Path> = lower_dirs.iter().map(PathBuf::as_path).collect();
        prune_unchanged_dirs(upper.path(), &lowers)?;
        self.layer_from(sctx, upper)
    }

    /// With `--single-snapshot`, turns the stage's one pending step into
    /// its one new layer.
    pub fn close(&mut self, sctx: &StageCtx<'_>) -> Result<(), BuildError> {
        let Some(step) = self.pending.take() else {
            return Ok(());
        };
        let history = History {
            created: self.clock.clone(),
            created_by: "kiln --single-snapshot: the stage's filesystem changes".into(),
            comment: None,
            empty_layer: true,
        };
        match self.snapshot(sctx, step)? {
            Some(layer) => {
                if let Some(uploads) = sctx.early_push {
                    uploads.layer(self.index, &layer.desc);
                }
                self.config.add_layer(&layer.diff_id, history);
                self.layers.push(layer);
            }
            None => log::info!("No files were changed in the stage; no layer added to image."),
        }
        Ok(())
    }

    /// Writes a step's upper dir as a layer and keeps the dir as that
    /// layer's extracted form; `None` when it holds nothing.
    fn layer_from(
        &self,
        sctx: &StageCtx<'_>,
        upper: tempfile::TempDir,
    ) -> Result<Option<Layer>, BuildError> {
        let opts = WriteOptions {
            compression: sctx.opts.compression,
            mtime_clamp: sctx.opts.reproducible,
            watcher: sctx.layer_stream.and_then(|s| s.watcher(self.index)),
        };
        let Some(blob) = snapshot_upper(upper.path(), sctx.store, &opts)? else {
            return Ok(None);
        };
        sctx.store.commit_layer_dir(upper, &blob.diff_id)?;
        Ok(Some(layer_of(blob)))
    }

    /// Names of the ARGs this stage declared.
    pub fn declared_args(&self) -> Vec<String> {
        self.args.iter().map(|a| a.name.clone()).collect()
    }

    /// Final touches on the stage that becomes the image.
    pub fn finish(&mut self, opts: &Options) {
        if !self.unpacked {
            log::info!("Skipping unpacking as no commands require it.");
        }
        if !opts.labels.is_empty() {
            self.config.apply(&ConfigChange::Label(opts.labels.clone()));
        }
        self.config.set_created(&self.clock);
    }
}

/// An image's config, layers and manifest digest: from the base-image
/// cache when `--cache` finds it fresh there, else from its registry (and
/// then saved in that cache). Layer blobs are fetched lazily.
pub(super) fn resolve_image(
    sctx: &StageCtx<'_>,
    image: &str,
    platform: &Platform,
) -> Result<(ImageConfig, Vec<Layer>, Digest), BuildError> {
    let reference = Reference::parse(image).map_err(|e| BuildError::Reference {
        reference: image.to_owned(),
        message: e.to_string(),
    })?;
    let platform_text = platform.to_string();
    let cached = sctx
        .cache
        .and_then(|c| c.base.lookup(&reference, &platform_text, c.ttl));
    let (manifest_digest, manifest, config_bytes) = match cached {
        Some(hit) => {
            log::info!("Found {image} in the base-image cache");
            (hit.manifest_digest, hit.manifest, hit.config)
        }
        None => {
            log::info!("Retrieving image manifest {image}");
            let pulled = sctx.registry.pull_manifest(&reference, &platform_text)?;
            log::info!(
                "Retrieving image {reference} from registry {}",
                reference.registry
            );
            if let Some(cache) = sctx.cache {
                // Builds fill the base-image cache themselves, layers included.
                for l in &pulled.manifest.layers {
                    sctx.registry
                        .fetch_blob(&reference, &l.digest, sctx.store)?;
                }
                if let Err(e) = cache
                    .base
                    .save(&reference, &platform_text, &pulled, sctx.store)
                {
                    log::warn!("Could not save {image} in the base-image cache: {e}");
                }
            }
            (pulled.manifest_digest, pulled.manifest, pulled.config)
        }
    };
    let config = ImageConfig::parse(&config_bytes)?;
    let diff_ids = config.diff_ids()?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(BuildError::LayerCountMismatch {
            reference: reference.to_string(),
            layers: manifest.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    let layers = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(desc, diff_id)| Layer {
            desc: desc.clone(),
            diff_id,
            source: Some(reference.clone()),
        })
        .collect();
    Ok((config, layers, manifest_digest))
}

/// A layer this build wrote into the store.
fn layer_of(blob: LayerBlob) -> Layer {
    Layer {
        desc: Descriptor {
            media_type: blob.media_type.into(),
            digest: blob.digest,
            size: blob.size,
            urls: None,
            annotations: None,
            platform: None,
        },
        diff_id: blob.diff_id,
        source: None,
    }
}

/// A read-only view of `layers` (bottom first): an overlay mount in
/// isolated mode; in container-root mode, which cannot mount, a scratch
/// directory with the layers applied in order.
fn view(sctx: &StageCtx<'_>, layers: &[Layer]) -> Result<Step, BuildError> {
    if sctx.container_root.is_none() {
        ensure_extracted(sctx, layers)?;
        return open_step(sctx.store, layers);
    }
    let dir = sctx.store.temp_dir("flat-")?;
    for layer in layers {
        apply_layer(sctx, layer, dir.path(), &Exclusions::default())?;
    }
    Ok(Step::Dir(dir))
}

/// Fetches `layer` if needed and applies it onto `root` as a container
/// runtime does (whiteouts delete what they name), leaving `exclude` alone.
pub(super) fn apply_layer(
    sctx: &StageCtx<'_>,
    layer: &Layer,
    root: &Path,
    exclude: &Exclusions,
) -> Result<(), BuildError> {
    fetch_layer_blob(sctx, layer)?;
    let opts = UnpackOptions {
        whiteouts: Whiteouts::Apply,
        preserve_owners: rustix::process::geteuid().is_root(),
        lowers: Vec::new(),
        exclude: exclude.clone(),
    };
    let blob = sctx.store.open_blob(&layer.desc.digest)?;
    unpack(
        std::io::BufReader::with_capacity(1 << 20, blob),
        root,
        &opts,
    )?;
    Ok(())
}

/// Brings a layer's blob into the store: from the base-image cache if it
/// has it, else from the layer's registry.
pub(super) fn fetch_layer_blob(sctx: &StageCtx<'_>, layer: &Layer) -> Result<(), BuildError> {
    if sctx.store.has_blob(&layer.desc.digest) {
        return Ok(());
    }
    if let Some(cache) = sctx.cache
        && cache
            .base
            .import_blob(&layer.desc.digest, sctx.store)
            .map_err(|e| BuildError::Cache(e.to_string()))?
    {
        return Ok(());
    }
    let src = layer
        .source
        .as_ref()
        .expect("layers built here are always in the store");
    sctx.registry
        .fetch_blob(src, &layer.desc.digest, sctx.store)?;
    Ok(())
}

/// Makes sure every layer has an extracted directory in the store,
/// fetching blobs that are not there yet.
fn ensure_extracted(sctx: &StageCtx<'_>, layers: &[Layer]) -> Result<(), BuildError> {
    for (i, layer) in layers.iter().enumerate() {
        if sctx.store.layer_dir(&layer.diff_id).is_dir() {
            continue;
        }
        fetch_layer_blob(sctx, layer)?;
        let blob = sctx.store.open_blob(&layer.desc.digest)?;
        let tmp = sctx.store.temp_dir("unpack-")?;
        let opts = UnpackOptions {
            whiteouts: Whiteouts::Overlay,
            preserve_owners: true,
            lowers: lower_dirs(sctx.store, &layers[..i]),
            exclude: Default::default(),
        };
        unpack(
            std::io::BufReader::with_capacity(1 << 20, blob),
            tmp.path(),
            &opts,
        )?;
        sctx.store.commit_layer_dir(tmp, &layer.diff_id)?;
    }
    Ok(())
}

/// The extracted directories of `layers` (bottom first), topmost first as
/// overlayfs stacks lower dirs.
fn lower_dirs(store: &Store, layers: &[Layer]) -> Vec<PathBuf> {
    layers
        .iter()
        .rev()
        .map(|l| store.layer_dir(&l.diff_id))
        .collect()
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
    let lower_dirs = lower_dirs(store, layers);
    let lowers: Vec<&std::path::Path> = lower_dirs.iter().map(PathBuf::as_path).collect();
    let mount = sandbox::overlay::mount_overlay(&lowers, upper.path(), work.path(), merged.path())?;
    Ok(Step::Overlay {
        upper,
        mount,
        _work: work,
        merged,
    })
}
