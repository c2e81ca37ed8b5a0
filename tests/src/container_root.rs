//! kiln where kaniko runs: in an unprivileged container whose root is
//! kiln's to build on. A throwaway directory stands in for the container's
//! root: the statically linked kiln runs chrooted into it, in mount, pid
//! and cgroup namespaces of its own, without CAP_SYS_ADMIN, so that it can
//! neither mount nor make namespaces, exactly as in a pod.
//!
//! The root holds `/kiln` (the kiln directory, with the binary), an empty
//! `/workspace` (the build context is bound there), and `/proc` and `/dev`
//! (mounted); whatever else is there came from the build.

use crate::buildah::BuildSpec;
use crate::command;
use crate::kiln::KilnOutput;
use crate::registry::Registry;
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tempfile::TempDir;

/// The kiln directory inside the root, which also holds the binary, as
/// `/kaniko` does in kaniko's image.
pub const KILN_DIR: &str = "/kiln";

/// The kiln binary inside the root: [`KILN_BIN_NAME`] in [`KILN_DIR`].
pub const KILN: &str = "/kiln/kiln";

/// The file name of the kiln binary in the kiln directory.
const KILN_BIN_NAME: &str = "kiln";

/// Where the build context is bound inside the root.
pub const WORKSPACE: &str = "/workspace";

/// What a fresh root holds at its top.
pub const ROOT_ENTRIES: [&str; 4] = ["dev", "kiln", "proc", "workspace"];

/// The value of `container` when the root plays a container, as podman
/// and systemd set it.
const CONTAINER_ENV: &str = "kiln-test";

/// The host files a container runtime binds into a container's `/etc`,
/// for name resolution.
const NETWORK_FILES: [&str; 2] = ["/etc/resolv.conf", "/etc/hosts"];

/// The environment variable naming the statically linked kiln.
const STATIC_BIN_ENV: &str = "KILN_STATIC_BIN";

/// Bit of CAP_SYS_ADMIN in `/proc/<pid>/status` capability masks.
pub const CAP_SYS_ADMIN_BIT: u32 = 21;

/// Sets up the root in the new namespaces and starts the program, dropping
/// CAP_SYS_ADMIN from the bounding and inheritable sets: as root, setpriv's
/// execve then leaves it out of the permitted and effective sets too.
/// Arguments: the root, then `host-path inside-path` pairs to bind, `--`,
/// then the program and its arguments.
const SETUP: &str = r#"set -e
root=$1
shift
while [ "$1" != -- ]; do
    mount --bind "$1" "$root$2"
    shift 2
done
shift
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
# Not exec: the shell stays PID 1, so kiln is not, and only what the test
# chooses (the `container` variable) tells kiln it is in a container.
setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin chroot "$root" "$@"
"#;

/// Whether kiln should find itself inside a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// `container=kiln-test` is set, as podman and systemd set it.
    AsContainer,
    /// Nothing says container: to kiln, this is a plain host.
    AsHost,
}

/// A throwaway container root; removed on drop (its mounts live only in
/// the namespace of each run and vanish with it).
pub struct ContainerRoot {
    dir: TempDir,
    network_files: bool,
    kiln_dir: Option<PathBuf>,
}

impl ContainerRoot {
    /// A fresh root with the statically linked kiln (`$KILN_STATIC_BIN`) at
    /// [`KILN`].
    pub fn new() -> Result<ContainerRoot> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-container-root-")
            .tempdir()?;
        // A container's root is 0755; a temporary directory is 0700.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        for name in ROOT_ENTRIES {
            fs::create_dir(dir.path().join(name))?;
        }
        let root = ContainerRoot {
            dir,
            network_files: false,
            kiln_dir: None,
        };
        root.install(&kiln_static_bin()?, KILN)?;
        Ok(root)
    }

    /// Binds the host's `/etc/resolv.conf` and `/etc/hosts` into the root on
    /// every run, as container runtimes do, so that RUN can resolve names.
    pub fn with_network_files(mut self) -> Result<ContainerRoot> {
        fs::create_dir(self.host_path("/etc"))?;
        fs::set_permissions(self.host_path("/etc"), fs::Permissions::from_mode(0o755))?;
        for file in NETWORK_FILES {
            fs::write(self.host_path(file), "")?;
        }
        self.network_files = true;
        Ok(self)
    }

    /// Binds the host directory `dir` at [`KILN_DIR`] on every run, with the
    /// kiln binary put in it, so that builds in several roots one after the
    /// other share precompiled plugins and pulled layers, as pods sharing a
    /// volume for `/kaniko` do. The kiln directory is then a mount point.
    pub fn with_kiln_dir(mut self, dir: &Path) -> Result<ContainerRoot> {
        let bin = dir.join(KILN_BIN_NAME);
        if !bin.exists() {
            link_or_copy(&kiln_static_bin()?, &bin)?;
        }
        self.kiln_dir = Some(dir.to_owned());
        Ok(self)
    }

    /// The root directory on the host.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The host path of `inside` (absolute inside the root).
    pub fn host_path(&self, inside: &str) -> PathBuf {
        self.dir.path().join(inside.trim_start_matches('/'))
    }

    /// Puts the host file `from` at `inside`, as a hard link where it can
    /// (no copy, and no descriptor open for writing that a concurrent fork
    /// could inherit and make the exec fail with ETXTBSY).
    pub fn install(&self, from: &Path, inside: &str) -> Result<()> {
        link_or_copy(from, &self.host_path(inside))
    }

    /// The names at the top of the root, sorted.
    pub fn top_entries(&self) -> Result<BTreeSet<String>> {
        fs::read_dir(self.dir.path())?
            .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    /// Every path in the root (`/var`, `/var/lib`, ...) except the runner's
    /// own top-level entries and what is below them, sorted.
    pub fn foreign_paths(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for name in self.top_entries()? {
            if !ROOT_ENTRIES.contains(&name.as_str()) {
                list_tree(
                    &self.dir.path().join(&name),
                    &format!("/{name}"),
                    &mut found,
                )?;
            }
        }
        Ok(found)
    }

    /// Runs `argv` (a program inside the root and its arguments) chrooted in
    /// the root without CAP_SYS_ADMIN, with `workspace` bound at
    /// [`WORKSPACE`] and an environment of `PATH` and `HOME` only (plus
    /// `container` when `seen` is [`Seen::AsContainer`]).
    pub fn run(&self, workspace: &Path, seen: Seen, argv: &[OsString]) -> Result<KilnOutput> {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--pid",
            "--fork",
            "--cgroup",
            "--propagation",
            "private",
            "sh",
            "-c",
            SETUP,
            "sh",
        ])
        .arg(self.dir.path())
        .arg(workspace)
        .arg(WORKSPACE);
        if let Some(dir) = &self.kiln_dir {
            cmd.arg(dir).arg(KILN_DIR);
        }
        if self.network_files {
            for file in NETWORK_FILES {
                cmd.args([file, file]);
            }
        }
        cmd.arg("--").args(argv);
        // The test process's environment must not leak into the build; the
        // cgroup namespace hides the host's cgroup paths, so that only
        // `container` tells kiln where it is.
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .stdin(Stdio::null());
        if seen == Seen::AsContainer {
            cmd.env("container", CONTAINER_ENV);
        }
        let output = command::output(&mut cmd)?;
        Ok(KilnOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Builds `spec` with the kiln in the root (kiln directory [`KILN_DIR`],
    /// context `dir:///workspace`), pushing to `registry` as `repo_tag` over
    /// plain HTTP, with the extra `flags`.
    pub fn build(
        &self,
        spec: &BuildSpec,
        registry: &Registry,
        repo_tag: &str,
        flags: &[&str],
        seen: Seen,
    ) -> Result<KilnOutput> {
        let dockerfile = spec
            .dockerfile
            .strip_prefix(&spec.context)
            .with_context(|| {
                format!(
                    "the Dockerfile {} must be inside the context {} to be seen in the root",
                    spec.dockerfile.display(),
                    spec.context.display()
                )
            })?;
        let mut argv: Vec<OsString> = vec![
            KILN.into(),
            "build".into(),
            "--kaniko-dir".into(),
            KILN_DIR.into(),
            "--context".into(),
            format!("dir://{WORKSPACE}").into(),
            "--dockerfile".into(),
            Path::new(WORKSPACE).join(dockerfile).into(),
            "--destination".into(),
            registry.reference(repo_tag).into(),
            "--insecure-registry".into(),
            registry.addr().into(),
        ];
        argv.extend(spec.shape_flags());
        argv.extend(flags.iter().map(OsString::from));
        self.run(&spec.context, seen, &argv)
    }
}

/// Hard-links `from` to `to`, or copies it across filesystems.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::CrossesDevices => fs::copy(from, to)
            .map(drop)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display())),
        Err(e) => {
            Err(e).with_context(|| format!("cannot link {} to {}", from.display(), to.display()))
        }
    }
}

/// Appends `path` (the name of `host` in the root) and, for a directory,
/// everything below it, to `found`.
fn list_tree(host: &Path, path: &str, found: &mut Vec<String>) -> Result<()> {
    found.push(path.to_owned());
    let metadata = host
        .symlink_metadata()
        .with_context(|| format!("cannot stat {}", host.display()))?;
    if metadata.is_dir() {
        let mut names: Vec<_> = fs::read_dir(host)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for name in names {
            let child = format!("{path}/{}", name.to_string_lossy());
            list_tree(&host.join(&name), &child, found)?;
        }
    }
    Ok(())
}

/// The statically linked kiln that runs inside container roots:
/// `$KILN_STATIC_BIN`, which `cargo xtask test` sets.
pub fn kiln_static_bin() -> Result<PathBuf> {
    let Some(bin) = env::var_os(STATIC_BIN_ENV) else {
        bail!(
            "{STATIC_BIN_ENV} is not set: the container-root tests run a statically linked kiln. \
             Build it with `cargo build -p kiln --bin kiln --target x86_64-unknown-linux-musl` \
             and set {STATIC_BIN_ENV}=target/x86_64-unknown-linux-musl/debug/kiln (absolute), \
             or run `cargo xtask test`"
        );
    };
    let bin = PathBuf::from(bin);
    if !bin.is_file() {
        bail!(
            "{STATIC_BIN_ENV}={} is not a file: build it with \
             `cargo build -p kiln --bin kiln --target x86_64-unknown-linux-musl`",
            bin.display()
        );
    }
    let mut head = Vec::new();
    fs::File::open(&bin)
        .and_then(|file| file.take(ELF_HEAD).read_to_end(&mut head))
        .with_context(|| format!("cannot read {}", bin.display()))?;
    if needs_interpreter(&head)? {
        bail!(
            "{STATIC_BIN_ENV}={} is dynamically linked, and the root has no libraries: \
             use the x86_64-unknown-linux-musl build",
            bin.display()
        );
    }
    Ok(bin)
}

/// How much of an ELF file [`needs_interpreter`] reads: the program headers
/// come right after the 64-byte file header.
const ELF_HEAD: u64 = 64 * 1024;

/// Whether the 64-bit little-endian ELF file starting with `head` names a
/// program interpreter (`PT_INTERP`), that is, is dynamically linked.
pub fn needs_interpreter(head: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    let field = |offset: usize, len: usize| -> Result<u64> {
        let bytes = head
            .get(offset..offset + len)
            .context("the ELF headers are truncated")?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0, |value, byte| value << 8 | u64::from(*byte)))
    };
    if !head.starts_with(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF file");
    }
    let table = usize::try_from(field(32, 8)?)?;
    let entry_size = usize::try_from(field(54, 2)?)?;
    let count = usize::try_from(field(56, 2)?)?;
    for index in 0..count {
        if field(table + index * entry_size, 4)? == u64::from(PT_INTERP) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The effective capability mask in a `/proc/<pid>/status` text.
pub fn effective_capabilities(status: &str) -> Result<u64> {
    let Some(mask) = status.lines().find_map(|line| line.strip_prefix("CapEff:")) else {
        bail!("no CapEff line in the process status:\n{status}");
    };
    u64::from_str_radix(mask.trim(), 16)
        .with_context(|| format!("CapEff {:?} is not a hex mask", mask.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_capabilities_are_read_from_status() -> Result<()> {
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapPrm:\t000001fffedfffff\n\
                      CapEff:\t000001fffedfffff\nCapBnd:\t000001fffedfffff\n";
        let mask = effective_capabilities(status)?;
        assert_eq!(mask, 0x1ff_fedf_ffff);
        assert_eq!(mask & (1 << CAP_SYS_ADMIN_BIT), 0);
        assert_ne!(
            effective_capabilities("CapEff:\t000001ffffffffff\n")? & (1 << CAP_SYS_ADMIN_BIT),
            0
        );
        assert!(effective_capabilities("CapPrm:\t0\n").is_err());
        assert!(effective_capabilities("CapEff:\tzz\n").is_err());
        Ok(())
    }

    #[test]
    fn dynamic_executables_are_told_from_static_ones() -> Result<()> {
        // The test executable itself is linked against glibc.
        let mut head = Vec::new();
        fs::File::open(env::current_exe()?)?
            .take(ELF_HEAD)
            .read_to_end(&mut head)?;
        assert!(needs_interpreter(&head)?);
        // busybox-static, which the base images are made of, is static.
        head.clear();
        fs::File::open("/bin/busybox")?
            .take(ELF_HEAD)
            .read_to_end(&mut head)?;
        assert!(!needs_interpreter(&head)?);
        assert!(needs_interpreter(b"#!/bin/sh\n").is_err());
        assert!(needs_interpreter(&head[..40]).is_err());
        Ok(())
    }
}
