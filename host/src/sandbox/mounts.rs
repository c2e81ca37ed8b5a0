//! `RUN --mount` and `--security`: what the caller asks for, checked and put
//! in mount order (pure), then turned into what the helper mounts, with the
//! scratch space and agent proxies that needs on the host side.

use super::SandboxError;
use super::ssh::SshProxy;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Docker's default capability set (BuildKit's sandbox mode): CHOWN,
/// DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP,
/// NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP.
pub const DEFAULT_CAPABILITIES: u64 = 0xa804_25fb;

/// Where a `RUN --mount` takes its content from, resolved to the host by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountSource {
    /// A host directory or file, read-only unless `writable`; writes to a writable bind are discarded after the step (BuildKit semantics: mount an overlay with a throwaway upper over the source).
    Bind {
        /// Host path of the directory or file.
        source: PathBuf,
        /// Whether the command may write (to a throwaway copy).
        writable: bool,
    },
    /// A persistent cache directory (created by the caller with the right owner/mode), read-write unless `read_only`.
    Cache {
        /// Host path of the cache directory.
        dir: PathBuf,
        /// Whether the command sees it read-only.
        read_only: bool,
    },
    /// A fresh tmpfs; `size` in bytes.
    Tmpfs {
        /// Size limit in bytes; `None` (or 0) is the kernel's default.
        size: Option<u64>,
    },
    /// A secret file (host path, read-only, shown with `mode`, `uid`, `gid` inside).
    Secret {
        /// Host path of the secret's content.
        file: PathBuf,
        /// Permission bits inside the sandbox.
        mode: u32,
        /// Owner inside the sandbox.
        uid: u32,
        /// Group inside the sandbox.
        gid: u32,
    },
    /// An SSH agent socket (host path), shown at the target with `mode`, `uid`, `gid`.
    Ssh {
        /// Host path of the agent's socket.
        socket: PathBuf,
        /// Permission bits of the socket inside the sandbox.
        mode: u32,
        /// Owner of the socket inside the sandbox.
        uid: u32,
        /// Group of the socket inside the sandbox.
        gid: u32,
    },
}

/// One `RUN --mount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    /// Mount point, absolute in the image.
    pub target: String,
    /// What is mounted there.
    pub source: MountSource,
}

/// The capabilities a RUN command gets (`--security`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capabilities {
    /// Docker's default set (BuildKit's sandbox): CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE
    #[default]
    Default,
    /// Every capability (`--security=insecure`).
    All,
}

/// A mount as the helper performs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct InitMount {
    /// Clean absolute target in the image.
    pub(super) target: String,
    pub(super) kind: InitMountKind,
}

/// How the helper mounts one [`InitMount`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum InitMountKind {
    /// A bind of a host directory or file (cache dirs, read-only binds,
    /// agent proxy sockets, throwaway copies of files).
    Bind {
        source: PathBuf,
        file: bool,
        read_only: bool,
    },
    /// A writable view of a directory whose writes land in `upper`, which is thrown away.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
    Tmpfs {
        size: Option<u64>,
    },
    /// Copied into the sandbox's `/dev` tmpfs (memory, never a disk) with
    /// its mode and owner, then bound read-only.
    Secret {
        source: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

impl InitMountKind {
    /// Whether the mount point is a file rather than a directory.
    pub(super) fn is_file(&self) -> bool {
        match self {
            InitMountKind::Bind { file, .. } => *file,
            InitMountKind::Secret { .. } => true,
            InitMountKind::Overlay { .. } | InitMountKind::Tmpfs { .. } => false,
        }
    }
}

/// `target` made canonical the way Docker does (`path.Clean`): one `/`
/// between components, no `.`, and `..` taken lexically, never above `/`.
pub(super) fn clean_target(target: &str) -> Result<String, SandboxError> {
    let invalid = |why: &str| {
        Err(SandboxError::InvalidSpec(format!(
            "mount target {target:?} {why}"
        )))
    };
    if !target.starts_with('/') {
        return invalid("is not absolute");
    }
    if target.contains('\0') {
        return invalid("contains a NUL byte");
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return invalid("is the root; mount below it");
    }
    Ok(format!("/{}", parts.join("/")))
}

/// The mounts with clean targets, parents before children (by depth; equal
/// depths keep the caller's order). Refuses two mounts on one target.
pub(super) fn mount_order(
    mounts: &[MountSpec],
) -> Result<Vec<(String, &MountSource)>, SandboxError> {
    let mut ordered = mounts
        .iter()
        .map(|m| Ok((clean_target(&m.target)?, &m.source)))
        .collect::<Result<Vec<_>, SandboxError>>()?;
    ordered.sort_by_key(|(t, _)| t.matches('/').count());
    for (i, (t, _)) in ordered.iter().enumerate() {
        if ordered[..i].iter().any(|(earlier, _)| earlier == t) {
            return Err(SandboxError::InvalidSpec(format!(
                "two mounts have the target {t}; give each its own"
            )));
        }
    }
    Ok(ordered)
}

/// Host-side state of the mounts while the RUN lasts: throwaway copies and
/// upper dirs (removed when dropped) and running agent proxies (stopped).
pub(super) struct PreparedMounts {
    pub(super) mounts: Vec<InitMount>,
    // Dropped in declaration order: proxies stop before their sockets' directory goes.
    _proxies: Vec<SshProxy>,
    _scratch: Option<tempfile::TempDir>,
}

impl PreparedMounts {
    /// Checks each source and sets up what it needs on the host. Scratch
    /// space goes next to `rootfs`, on the same disk as the step's layer.
    pub(super) fn new(
        rootfs: &Path,
        ordered: &[(String, &MountSource)],
    ) -> Result<PreparedMounts, SandboxError> {
        let mut scratch: Option<tempfile::TempDir> = None;
        let mut scratch_dir = |name: String| -> Result<PathBuf, SandboxError> {
            if scratch.is_none() {
                let parent = rootfs.parent().unwrap_or(Path::new("/"));
                let dir = tempfile::Builder::new()
                    .prefix(".kiln-run-")
                    .tempdir_in(parent)
                    .map_err(io_at("create RUN scratch directory in", parent))?;
                scratch = Some(dir);
            }
            Ok(scratch.as_ref().expect("created above").path().join(name))
        };
        let mut mounts = Vec::with_capacity(ordered.len());
        let mut proxies = Vec::new();
        for (i, (target, source)) in ordered.iter().enumerate() {
            let kind = match source {
                MountSource::Bind { source, writable } => {
                    let meta = fs::metadata(source).map_err(source_err(target, source))?;
                    match (*writable, meta.is_dir()) {
                        (false, is_dir) => InitMountKind::Bind {
                            source: source.clone(),
                            file: !is_dir,
                            read_only: true,
                        },
                        (true, true) => {
                            let base = scratch_dir(format!("bind-{i}"))?;
                            let (upper, work) = (base.join("upper"), base.join("work"));
                            for d in [&base, &upper, &work] {
                                fs::create_dir(d).map_err(io_at("create", d))?;
                            }
                            // The upper dir's root gives the view's root its mode and owner.
                            fs::set_permissions(&upper, meta.permissions())
                                .map_err(io_at("set mode of", &upper))?;
                            std::os::unix::fs::lchown(&upper, Some(meta.uid()), Some(meta.gid()))
                                .map_err(io_at("set owner of", &upper))?;
                            InitMountKind::Overlay {
                                lower: source.clone(),
                                upper,
                                work,
                            }
                        }
                        (true, false) => {
                            let copy = scratch_dir(format!("bind-{i}"))?;
                            fs::copy(source, &copy).map_err(source_err(target, source))?;
                            std::os::unix::fs::lchown(&copy, Some(meta.uid()), Some(meta.gid()))
                                .map_err(io_at("set owner of", &copy))?;
                            InitMountKind::Bind {
                                source: copy,
                                file: true,
                                read_only: false,
                            }
                        }
                    }
                }
                MountSource::Cache { dir, read_only } => {
                    let meta = fs::metadata(dir).map_err(source_err(target, dir))?;
                    if !meta.is_dir() {
                        return Err(SandboxError::InvalidSpec(format!(
                            "cache for mount {target}: {} is not a directory",
                            dir.display()
                        )));
                    }
                    InitMountKind::Bind {
                        source: dir.clone(),
                        file: false,
                        read_only: *read_only,
                    }
                }
                MountSource::Tmpfs { size } => InitMountKind::Tmpfs {
                    size: size.filter(|&s| s > 0),
                },
                MountSource::Secret {
                    file,
                    mode,
                    uid,
                    gid,
                } => {
                    let meta = fs::metadata(file).map_err(source_err(target, file))?;
                    if !meta.is_file() {
                        return Err(SandboxError::InvalidSpec(format!(
                            "secret for mount {target}: {} is not a regular file",
                            file.display()
                        )));
                    }
                    InitMountKind::Secret {
                        source: file.clone(),
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                    }
                }
                MountSource::Ssh {
                    socket,
                    mode,
                    uid,
                    gid,
                } => {
                    let listen = scratch_dir(format!("ssh-{i}"))?;
                    let proxy =
                        SshProxy::start(&listen, socket, *mode, *uid, *gid).map_err(|e| {
                            SandboxError::Io {
                                op: "forward ssh agent socket",
                                path: socket.clone(),
                                source: e,
                            }
                        })?;
                    proxies.push(proxy);
                    InitMountKind::Bind {
                        source: listen,
                        file: true,
                        read_only: false,
                    }
                }
            };
            mounts.push(InitMount {
                target: target.clone(),
                kind,
            });
        }
        Ok(PreparedMounts {
            mounts,
            _proxies: proxies,
            _scratch: scratch,
        })
    }

    /// Each mount's target and whether its mount point is a file.
    pub(super) fn mount_points(&self) -> Vec<(&str, bool)> {
        self.mounts
            .iter()
            .map(|m| (m.target.as_str(), m.kind.is_file()))
            .collect()
    }
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn source_err<'a>(
    target: &'a str,
    source: &'a Path,
) -> impl FnOnce(io::Error) -> SandboxError + 'a {
    move |e| {
        SandboxError::InvalidSpec(format!(
            "source {} of mount {target}: {e}",
            source.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn targets_are_cleaned_like_docker_and_bad_ones_refused() {
        for (raw, clean) in [
            ("/run/secrets/x", "/run/secrets/x"),
            ("//a/./b/", "/a/b"),
            ("/a/../../b", "/b"),
            ("/a/b/..", "/a"),
        ] {
            assert_eq!(clean_target(raw).unwrap(), clean, "{raw}");
        }
        for (raw, needle) in [
            ("rel/x", "not absolute"),
            ("/", "the root"),
            ("/a/..", "the root"),
            ("/a\0", "NUL"),
        ] {
            let e = clean_target(raw).unwrap_err().to_string();
            assert!(e.contains(needle), "{raw}: {e}");
        }
    }

    fn tmpfs(target: &str) -> MountSpec {
        MountSpec {
            target: target.into(),
            source: MountSource::Tmpfs { size: None },
        }
    }

    #[test]
    fn parents_come_before_children_and_equal_depths_keep_their_order() {
        let mounts = [tmpfs("/a/b/c"), tmpfs("/z/y"), tmpfs("/a"), tmpfs("/b/")];
        let order: Vec<String> = mount_order(&mounts)
            .unwrap()
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(order, ["/a", "/b", "/z/y", "/a/b/c"]);
    }

    #[test]
    fn two_mounts_on_one_target_are_refused() {
        let e = mount_order(&[tmpfs("/a/b"), tmpfs("/a/./b/")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("two mounts have the target /a/b"), "{e}");
    }

    #[test]
    fn default_capabilities_are_dockers_set() {
        use rustix::thread::CapabilitySet as C;
        let docker = C::CHOWN
            | C::DAC_OVERRIDE
            | C::FSETID
            | C::FOWNER
            | C::MKNOD
            | C::NET_RAW
            | C::SETGID
            | C::SETUID
            | C::SETFCAP
            | C::SETPCAP
            | C::NET_BIND_SERVICE
            | C::SYS_CHROOT
            | C::KILL
            | C::AUDIT_WRITE;
        assert_eq!(docker.bits(), DEFAULT_CAPABILITIES);
    }

    #[test]
    fn sources_become_helper_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        fs::create_dir(p("root")).unwrap();
        fs::create_dir(p("src")).unwrap();
        fs::set_permissions(p("src"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(p("file"), "data").unwrap();
        fs::write(p("secret"), "s3cr3t").unwrap();
        let specs = [
            MountSpec {
                target: "/ro".into(),
                source: MountSource::Bind {
                    source: p("file"),
                    writable: false,
                },
            },
            MountSpec {
                target: "/rw".into(),
                source: MountSource::Bind {
                    source: p("src"),
                    writable: true,
                },
            },
            MountSpec {
                target: "/rwfile".into(),
                source: MountSource::Bind {
                    source: p("file"),
                    writable: true,
                },
            },
            MountSpec {
                target: "/cache".into(),
                source: MountSource::Cache {
                    dir: p("src"),
                    read_only: true,
                },
            },
            MountSpec {
                target: "/t".into(),
                source: MountSource::Tmpfs { size: Some(0) },
            },
            MountSpec {
                target: "/run/secrets/s".into(),
                source: MountSource::Secret {
                    file: p("secret"),
                    mode: 0o400,
                    uid: 1,
                    gid: 2,
                },
            },
        ];
        let ordered = mount_order(&specs).unwrap();
        let prepared = PreparedMounts::new(&p("root"), &ordered).unwrap();
        let m = &prepared.mounts;
        assert_eq!(
            m[0].kind,
            InitMountKind::Bind {
                source: p("file"),
                file: true,
                read_only: true
            }
        );
        let InitMountKind::Overlay { lower, upper, work } = &m[1].kind else {
            panic!("{:?}", m[1]);
        };
        assert_eq!(lower, &p("src"));
        assert!(upper.starts_with(dir.path()) && work.is_dir());
        assert_eq!(mode_of(upper), 0o750);
        let InitMountKind::Bind {
            source,
            file: true,
            read_only: false,
        } = &m[2].kind
        else {
            panic!("{:?}", m[2]);
        };
        assert_ne!(source, &p("file"));
        assert_eq!(fs::read(source).unwrap(), b"data");
        assert_eq!(
            m[3].kind,
            InitMountKind::Bind {
                source: p("src"),
                file: false,
                read_only: true
            }
        );
        assert_eq!(m[4].kind, InitMountKind::Tmpfs { size: None });
        assert_eq!(
            m[5].kind,
            InitMountKind::Secret {
                source: p("secret"),
                mode: 0o400,
                uid: 1,
                gid: 2
            }
        );
        assert_eq!(
            prepared.mount_points(),
            [
                ("/ro", true),
                ("/rw", false),
                ("/rwfile", true),
                ("/cache", false),
                ("/t", false),
                ("/run/secrets/s", true)
            ]
        );
        let scratch = upper.parent().unwrap().parent().unwrap().to_owned();
        drop(prepared);
        assert!(!scratch.exists(), "scratch space outlived the RUN");
    }

    #[test]
    fn missing_or_wrong_sources_are_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), "").unwrap();
        for (source, needle) in [
            (
                MountSource::Bind {
                    source: dir.path().join("none"),
                    writable: false,
                },
                "none of mount /m",
            ),
            (
                MountSource::Cache {
                    dir: dir.path().join("f"),
                    read_only: false,
                },
                "is not a directory",
            ),
            (
                MountSource::Secret {
                    file: dir.path().into(),
                    mode: 0o400,
                    uid: 0,
                    gid: 0,
                },
                "is not a regular file",
            ),
        ] {
            let ordered = [("/m".to_string(), &source)];
            let e = PreparedMounts::new(&dir.path().join("root"), &ordered)
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
