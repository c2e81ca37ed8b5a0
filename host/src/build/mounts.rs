//! `RUN --mount`: turns the mounts a handler asked for into host sources
//! for the sandbox (cache directories, stage or context binds, secrets,
//! SSH agents), holding whatever must live until the command ends.

use super::fs::resolve_in_root;
use super::stage::{Others, Stage, StageCtx, Step};
use super::{BuildError, SecretSource};
use crate::plugin::wit;
use crate::sandbox::{MountSource, MountSpec};
use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};

/// The mounts of one RUN and what keeps their sources alive.
pub struct Prepared {
    pub specs: Vec<MountSpec>,
    /// Variables the mounts add to the command's environment (secrets as
    /// env, `SSH_AUTH_SOCK`); never logged.
    pub env: Vec<(String, String)>,
    _roots: Vec<Step>,
    _locks: Vec<File>,
    /// Private cache instances and secret files, removed after the step.
    _scratch: Vec<tempfile::TempDir>,
}

fn mount_err(message: String) -> BuildError {
    BuildError::Mount(message)
}

/// A mount target relative to the working directory becomes absolute, as
/// in BuildKit.
fn absolute_target(target: &str, workdir: &str) -> String {
    if target.starts_with('/') {
        target.to_owned()
    } else {
        format!("{}/{target}", workdir.trim_end_matches('/'))
    }
}

/// Prepares every mount of a RUN in `stage`.
pub fn prepare(
    stage: &Stage,
    sctx: &StageCtx<'_>,
    others: &Others<'_>,
    mounts: Vec<wit::RunMount>,
    workdir: &str,
) -> Result<Prepared, BuildError> {
    let mut p = Prepared {
        specs: Vec::new(),
        env: Vec::new(),
        _roots: Vec::new(),
        _locks: Vec::new(),
        _scratch: Vec::new(),
    };
    let mut ssh_count = 0;
    for m in mounts {
        match m.kind {
            wit::MountKind::Bind => {
                let target = m
                    .target
                    .as_deref()
                    .ok_or_else(|| mount_err("a bind mount needs target=".into()))?;
                let source = m.source.as_deref().unwrap_or("/");
                let host = match m.from.as_deref() {
                    Some(from) => {
                        let root = stage.other_root(sctx, others, from)?;
                        let path = resolve_in_root(root.merged_path(), source, true)?;
                        p._roots.push(root);
                        path
                    }
                    None => sctx.context.host_path(source)?,
                };
                if !host.exists() {
                    return Err(mount_err(format!(
                        "bind mount source {source:?} does not exist"
                    )));
                }
                p.specs.push(MountSpec {
                    target: absolute_target(target, workdir),
                    source: MountSource::Bind {
                        source: host,
                        writable: m.read_write.unwrap_or(false),
                    },
                });
            }
            wit::MountKind::Cache => {
                let target = m
                    .target
                    .as_deref()
                    .ok_or_else(|| mount_err("a cache mount needs target=".into()))?;
                if m.from.is_some() {
                    return Err(BuildError::NotSupported(
                        "RUN --mount=type=cache,from=".into(),
                    ));
                }
                let target = absolute_target(target, workdir);
                let id = m.id.clone().unwrap_or_else(|| target.clone());
                let dir = cache_dir(
                    &sctx.opts.kiln_dir,
                    &id,
                    m.uid.unwrap_or(0),
                    m.gid.unwrap_or(0),
                    m.mode.unwrap_or(0o755),
                )?;
                let dir = match m.sharing {
                    wit::CacheSharing::Shared => dir,
                    wit::CacheSharing::Locked => {
                        p._locks
                            .push(lock(&dir, true)?.expect("a blocking lock is always taken"));
                        dir
                    }
                    wit::CacheSharing::Private => match lock(&dir, false)? {
                        Some(l) => {
                            p._locks.push(l);
                            dir
                        }
                        // In use by a concurrent build: BuildKit gives this step a fresh cache.
                        None => {
                            let fresh = sctx.store.temp_dir("cache-")?;
                            let path = fresh.path().to_owned();
                            p._scratch.push(fresh);
                            path
                        }
                    },
                };
                let read_only = m.read_write == Some(false);
                p.specs.push(MountSpec {
                    target,
                    source: MountSource::Cache { dir, read_only },
                });
            }
            wit::MountKind::Tmpfs => {
                let target = m
                    .target
                    .as_deref()
                    .ok_or_else(|| mount_err("a tmpfs mount needs target=".into()))?;
                p.specs.push(MountSpec {
                    target: absolute_target(target, workdir),
                    source: MountSource::Tmpfs { size: m.size },
                });
            }
            wit::MountKind::Secret => {
                let id = match (&m.id, &m.target) {
                    (Some(id), _) => id.clone(),
                    (None, Some(t)) => Path::new(t)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    (None, None) => {
                        return Err(mount_err("a secret mount needs id= or target=".into()));
                    }
                };
                let Some((_, source)) = sctx.opts.secrets.iter().find(|(sid, _)| *sid == id) else {
                    if m.required {
                        return Err(mount_err(format!(
                            "secret {id} not found: pass it with --secret id={id},src=FILE"
                        )));
                    }
                    log::debug!("secret {id} was not given; skipping its mount");
                    continue;
                };
                let value_file = match source {
                    SecretSource::File(path) => {
                        if !path.is_file() {
                            return Err(mount_err(format!(
                                "secret {id}: {} is not a file",
                                path.display()
                            )));
                        }
                        path.clone()
                    }
                    SecretSource::Env(var) => {
                        let value = std::env::var(var).map_err(|_| {
                            mount_err(format!(
                                "secret {id}: environment variable {var} is not set"
                            ))
                        })?;
                        let dir = sctx.store.temp_dir("secret-")?;
                        let path = dir.path().join(&id);
                        let written = fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o400)
                            .open(&path)
                            .and_then(|mut f| f.write_all(value.as_bytes()));
                        written.map_err(|e| mount_err(format!("secret {id}: {e}")))?;
                        p._scratch.push(dir);
                        path
                    }
                };
                if let Some(var) = &m.env {
                    let value = fs::read_to_string(&value_file)
                        .map_err(|e| mount_err(format!("secret {id}: {e}")))?;
                    p.env.push((var.clone(), value));
                    if m.target.is_none() {
                        continue;
                    }
                }
                let target = absolute_target(
                    m.target.as_deref().unwrap_or(&format!("/run/secrets/{id}")),
                    workdir,
                );
                p.specs.push(MountSpec {
                    target,
                    source: MountSource::Secret {
                        file: value_file,
                        mode: m.mode.unwrap_or(0o400),
                        uid: m.uid.unwrap_or(0),
                        gid: m.gid.unwrap_or(0),
                    },
                });
            }
            wit::MountKind::Ssh => {
                let id = m.id.clone().unwrap_or_else(|| "default".into());
                let Some((_, socket)) = sctx.opts.ssh.iter().find(|(sid, _)| *sid == id) else {
                    if m.required {
                        return Err(mount_err(format!(
                            "no SSH agent {id}: pass one with --ssh {id}=SOCKET"
                        )));
                    }
                    continue;
                };
                ssh_count += 1;
                let target = m
                    .target
                    .clone()
                    .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{}", ssh_count - 1));
                let target = absolute_target(&target, workdir);
                if ssh_count == 1 {
                    p.env.push(("SSH_AUTH_SOCK".into(), target.clone()));
                }
                p.specs.push(MountSpec {
                    target,
                    source: MountSource::Ssh {
                        socket: socket.clone(),
                        mode: m.mode.unwrap_or(0o600),
                        uid: m.uid.unwrap_or(0),
                        gid: m.gid.unwrap_or(0),
                    },
                });
            }
        }
    }
    Ok(p)
}

/// The persistent directory of cache mount `id`, created with its owner
/// and mode the first time.
fn cache_dir(
    kiln_dir: &Path,
    id: &str,
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<PathBuf, BuildError> {
    let dir = kiln_dir
        .join("cache")
        .join(hex::encode(Sha256::digest(id.as_bytes())));
    if !dir.is_dir() {
        let err = |e: std::io::Error| {
            mount_err(format!("cache {id}: cannot create {}: {e}", dir.display()))
        };
        fs::create_dir_all(dir.parent().expect("has a parent")).map_err(err)?;
        let tmp = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(dir.parent().expect("has a parent"))
            .map_err(err)?;
        chown(tmp.path(), Some(uid), Some(gid)).map_err(err)?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode)).map_err(err)?;
        // A concurrent build may win the race; its directory is as good.
        if fs::rename(tmp.path(), &dir).is_ok() {
            let _ = tmp.keep();
        }
    }
    Ok(dir)
}

/// Takes the cache's lock file; `None` when `wait` is false and another
/// build holds it.
fn lock(dir: &Path, wait: bool) -> Result<Option<File>, BuildError> {
    let path = dir.with_extension("lock");
    let file = File::create(&path)
        .map_err(|e| mount_err(format!("cannot create {}: {e}", path.display())))?;
    let mode = if wait {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::NonBlockingLockExclusive
    };
    match rustix::fs::flock(&file, mode) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) if !wait => Ok(None),
        Err(e) => Err(mount_err(format!("cannot lock {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn relative_targets_follow_the_workdir() {
        assert_eq!(absolute_target("cache", "/src/"), "/src/cache");
        assert_eq!(absolute_target("/abs", "/src"), "/abs");
    }

    #[test]
    fn cache_dirs_are_per_id_with_owner_and_mode_and_lock() {
        let kiln = tempfile::tempdir().unwrap();
        let a = cache_dir(kiln.path(), "go-build", 1000, 1000, 0o700).unwrap();
        let b = cache_dir(kiln.path(), "other", 0, 0, 0o755).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, cache_dir(kiln.path(), "go-build", 0, 0, 0o755).unwrap());
        let md = fs::metadata(&a).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (1000, 1000, 0o700)
        );
        let held = lock(&a, false).unwrap().expect("free lock");
        assert!(
            lock(&a, false).unwrap().is_none(),
            "a second holder must be refused"
        );
        drop(held);
        assert!(lock(&a, false).unwrap().is_some());
    }
}
