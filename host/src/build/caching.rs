//! The layer cache in the build: keys for each filesystem step, probing
//! before a step runs, and storing what it made afterwards.

use super::BuildError;
use super::fs::CopySource;
use super::plan::{self, FromRef};
use super::stage::{Others, Stage, StageCtx};
use crate::cache::base::BaseCache;
use crate::cache::file_digests::FileDigests;
use crate::cache::key::{self, CopyInput, StepInput};
use crate::cache::sources::digest_sources;
use crate::cache::store::{CacheError, CachePusher, CachedStep, LayerCache};
use crate::digest::Digest;
use crate::plugin::wit;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Lookups run at once when a stage's keys are known ahead; each is a
/// manifest and a config request to the cache repository.
const PREFETCH_THREADS: usize = 8;

/// Everything `--cache` turns on, shared by the stages of one build.
pub struct Caching {
    pub layers: LayerCache,
    /// Stores new steps in the background; none with `--no-push-cache`.
    pub pusher: Option<CachePusher>,
    pub base: BaseCache,
    pub ttl: Duration,
    /// `--cache-run-layers`.
    pub run_layers: bool,
    /// `--cache-copy-layers`.
    pub copy_layers: bool,
    /// Digests of context files, kept across builds.
    pub file_digests: FileDigests,
    /// Lookups started before their steps, by key.
    pub prefetched: Prefetched,
    /// Digests of context sources this build worked out, by what was
    /// asked: the lookahead and the step itself ask alike, and the context
    /// does not change during a build, so its files are walked once.
    pub context_digests: Mutex<HashMap<String, Digest>>,
}

/// The outcome of one cache lookup.
type Probed = Result<Option<CachedStep>, CacheError>;

/// Cache lookups running ahead of the steps that will need them.
#[derive(Default)]
pub struct Prefetched {
    slots: Mutex<HashMap<Digest, Arc<Slot>>>,
}

/// Where a lookup's outcome lands.
#[derive(Default)]
struct Slot {
    outcome: Mutex<Option<Probed>>,
    ready: Condvar,
}

impl Slot {
    fn fill(&self, probed: Probed) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(probed);
        self.ready.notify_all();
    }

    fn wait(&self) -> Probed {
        let mut outcome = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(probed) = outcome.take() {
                return probed;
            }
            outcome = self
                .ready
                .wait(outcome)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// True for the effects that change the filesystem and so make a step.
pub fn is_fs(e: &wit::Effect) -> bool {
    matches!(
        e,
        wit::Effect::Run(_)
            | wit::Effect::Copy(_)
            | wit::Effect::Add(_)
            | wit::Effect::WriteFile(_)
            | wit::Effect::MakeDir(_)
    )
}

impl Caching {
    /// Starts looking up `keys` in the background, a few at a time in
    /// order: in a warm rebuild every step hits, and its lookups overlap
    /// instead of following one another.
    pub fn prefetch(&self, keys: Vec<Digest>) {
        let mut queue = VecDeque::new();
        {
            let mut slots = self
                .prefetched
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for key in keys {
                if !slots.contains_key(&key) {
                    let slot = Arc::new(Slot::default());
                    slots.insert(key.clone(), slot.clone());
                    queue.push_back((key, slot));
                }
            }
        }
        let workers = queue.len().min(PREFETCH_THREADS);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..workers {
            let (queue, layers) = (queue.clone(), self.layers.clone());
            std::thread::spawn(move || {
                loop {
                    let next = queue
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pop_front();
                    let Some((key, slot)) = next else { break };
                    slot.fill(layers.probe(&key));
                }
            });
        }
    }

    /// Looks `key` up, through the prefetched lookup when there is one.
    pub fn probe(&self, key: &Digest) -> Probed {
        let slot = self
            .prefetched
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        match slot {
            Some(slot) => slot.wait(),
            None => self.layers.probe(key),
        }
    }

    /// Whether a step made of `effects` may come from, and go to, the cache.
    pub fn allows(&self, effects: &[wit::Effect]) -> bool {
        effects.iter().all(|e| match e {
            wit::Effect::Run(_) => self.run_layers,
            wit::Effect::Copy(_) | wit::Effect::Add(_) => self.copy_layers,
            _ => true,
        })
    }
}

/// The digest of what `sources` copy from the build context to `dest`,
/// worked out once per build.
fn context_digest(
    sctx: &StageCtx<'_>,
    sources: &[String],
    dest: &str,
    parents: bool,
    excludes: &[String],
) -> Result<Digest, BuildError> {
    let ctx = CopySource::Context(&sctx.context);
    let Some(cache) = sctx.cache else {
        return digest_sources(&ctx, sources, dest, parents, excludes, None).map_err(cache_err);
    };
    let asked = serde_json::json!([sources, dest, parents, excludes]).to_string();
    let known = |c: &Caching| {
        c.context_digests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&asked)
            .cloned()
    };
    if let Some(digest) = known(cache) {
        return Ok(digest);
    }
    let memo = Some(&cache.file_digests);
    let digest = digest_sources(&ctx, sources, dest, parents, excludes, memo).map_err(cache_err)?;
    cache
        .context_digests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(asked, digest.clone());
    Ok(digest)
}

/// The key of the step whose effects are `effects`, on top of the stage's
/// current key; `None` when its inputs cannot be known before it runs (an
/// ADD of a URL without `--checksum`).
pub fn step_key(
    stage: &Stage,
    sctx: &StageCtx<'_>,
    others: &Others<'_>,
    effects: &[wit::Effect],
) -> Result<Option<Digest>, BuildError> {
    let mut k = stage.key.clone();
    for effect in effects.iter().filter(|e| is_fs(e)) {
        let next = match effect {
            wit::Effect::Run(run) => {
                let args: Vec<(String, String)> = run
                    .env
                    .iter()
                    .map(|kv| (kv.key.clone(), kv.value.clone()))
                    .collect();
                let env = key::run_env(&args, &stage.config.env());
                let mut mounts = Vec::new();
                for m in &run.mounts {
                    let content = match (m.kind, m.from.as_deref()) {
                        (wit::MountKind::Bind, Some(from)) => {
                            Some(from_key(stage, sctx, others, from)?)
                        }
                        (wit::MountKind::Bind, None) => {
                            let source = m.source.clone().unwrap_or_else(|| "/".into());
                            Some(context_digest(sctx, &[source], "/", false, &[])?)
                        }
                        _ => None,
                    };
                    mounts.push(key::mount_text(m, content.as_ref()));
                }
                let workdir = stage.config.workdir().unwrap_or_else(|| "/".into());
                let user = stage.config.user();
                key::step_key(
                    &k,
                    &StepInput::Run {
                        argv: &run.argv,
                        env: &env,
                        user: user.as_deref(),
                        workdir: &workdir,
                        mounts: &mounts,
                        network: run.network,
                        insecure: run.insecure,
                    },
                )
            }
            wit::Effect::Copy(c) => {
                let (sources, from) = match c.from.as_deref() {
                    None => (
                        context_digest(sctx, &c.sources, &c.dest, c.parents, &c.excludes)?,
                        None,
                    ),
                    // Another stage or image is keyed by its own key; only
                    // the paths asked for add to it.
                    Some(from) => (
                        Digest::of(c.sources.join("\0").as_bytes()),
                        Some(from_key(stage, sctx, others, from)?),
                    ),
                };
                let input = CopyInput {
                    sources: &sources,
                    dest: &c.dest,
                    chown: c.chown.as_deref(),
                    chmod: c.chmod.as_deref(),
                    link: c.link,
                    parents: c.parents,
                    excludes: &c.excludes,
                    from: from.as_ref(),
                };
                key::step_key(&k, &StepInput::Copy(input))
            }
            wit::Effect::Add(a) => {
                // Downloads and git sources: keyed by URL only with a checksum.
                let is_url = |s: &String| super::fs::source_kind(s) != super::fs::SourceKind::Local;
                let urls: Vec<&String> = a.sources.iter().filter(|s| is_url(s)).collect();
                let checksum = match (&a.checksum, urls.is_empty()) {
                    (_, true) => None,
                    (Some(sum), false) => Some(sum.clone()),
                    (None, false) => return Ok(None),
                };
                let local: Vec<String> = a.sources.iter().filter(|s| !is_url(s)).cloned().collect();
                let sources = if local.is_empty() {
                    Digest::of(b"")
                } else {
                    context_digest(sctx, &local, &a.dest, false, &a.excludes)?
                };
                // `--keep-git-dir` changes what a git source adds.
                let url_keys: Vec<Digest> = urls
                    .iter()
                    .map(|u| match (super::fs::source_kind(u), a.keep_git_dir) {
                        (super::fs::SourceKind::Git, true) => {
                            Digest::of(format!("{u}\0keep-git-dir").as_bytes())
                        }
                        _ => Digest::of(u.as_bytes()),
                    })
                    .collect();
                let input = CopyInput {
                    sources: &sources,
                    dest: &a.dest,
                    chown: a.chown.as_deref(),
                    chmod: a.chmod.as_deref(),
                    link: a.link,
                    parents: false,
                    excludes: &a.excludes,
                    from: None,
                };
                key::step_key(
                    &k,
                    &StepInput::Add {
                        copy: input,
                        urls: &url_keys,
                        checksum: checksum.as_deref(),
                    },
                )
            }
            wit::Effect::WriteFile(w) => {
                let content = Digest::of(&w.content);
                key::step_key(
                    &k,
                    &StepInput::WriteFile {
                        path: &w.path,
                        content: &content,
                        mode: w.mode,
                        chown: w.chown.as_deref(),
                    },
                )
            }
            wit::Effect::MakeDir(m) => key::step_key(
                &k,
                &StepInput::MakeDir {
                    path: &m.path,
                    chown: m.chown.as_deref(),
                },
            ),
            _ => unreachable!("filtered to filesystem effects"),
        };
        k = next;
    }
    Ok(Some(k))
}

/// The key of a `--from` value: a stage's key, or an image's manifest digest.
fn from_key(
    stage: &Stage,
    sctx: &StageCtx<'_>,
    others: &Others<'_>,
    from: &str,
) -> Result<Digest, BuildError> {
    match plan::resolve_from(from, others.names, stage.index()).map_err(BuildError::Plan)? {
        FromRef::Stage(i) => others
            .stages
            .get(i)
            .and_then(Option::as_ref)
            .map(|s| s.key.clone())
            .ok_or_else(|| BuildError::Plan(plan::PlanError::UnknownStage(from.into()))),
        FromRef::Image(image) => {
            Ok(super::stage::resolve_image(sctx, &image, &sctx.opts.platform)?.2)
        }
    }
}

fn cache_err(e: crate::cache::sources::SourcesError) -> BuildError {
    BuildError::Cache(e.to_string())
}
