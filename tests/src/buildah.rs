//! buildah 1.28 as an oracle: it builds the same Dockerfile as kiln, in a
//! storage of its own, and pushes the result to the test registry.

use crate::command;
use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use tempfile::TempDir;

/// What to build: the same inputs are handed to kiln and to buildah.
#[derive(Clone, Debug)]
pub struct BuildSpec {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile (usually `<context>/Dockerfile`).
    pub dockerfile: PathBuf,
    /// `--build-arg K=V` pairs, in order.
    pub build_args: Vec<(String, String)>,
    /// `--target`, if any.
    pub target: Option<String>,
}

impl BuildSpec {
    /// `<context>/Dockerfile` with no build args and no target.
    pub fn new(context: &Path) -> BuildSpec {
        BuildSpec {
            context: context.to_owned(),
            dockerfile: context.join("Dockerfile"),
            build_args: Vec::new(),
            target: None,
        }
    }

    /// The `--build-arg` and `--target` flags, spelled the same for both tools.
    pub fn shape_flags(&self) -> Vec<OsString> {
        let mut flags = Vec::new();
        for (name, value) in &self.build_args {
            flags.push("--build-arg".into());
            flags.push(format!("{name}={value}").into());
        }
        if let Some(target) = &self.target {
            flags.push("--target".into());
            flags.push(target.into());
        }
        flags
    }
}

/// A buildah with private storage (`--root`, `--runroot`) in a temporary
/// directory. On drop it removes its containers and images, unmounts
/// whatever is still mounted under that directory, and deletes it, so
/// nothing leaks into the machine's `/var/lib/containers` or mount table.
pub struct Buildah {
    dir: TempDir,
    built: AtomicUsize,
}

impl Buildah {
    /// A buildah with empty private storage.
    pub fn new() -> Result<Buildah> {
        let dir = tempfile::Builder::new().prefix("kiln-buildah-").tempdir()?;
        fs::create_dir(dir.path().join("root"))?;
        fs::create_dir(dir.path().join("runroot"))?;
        // The machine's storage.conf must not change what the oracle does;
        // an empty one makes buildah complain that no driver is set.
        fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.path().join("root").display(),
                dir.path().join("runroot").display()
            ),
        )?;
        Ok(Buildah {
            dir,
            built: AtomicUsize::new(0),
        })
    }

    /// The directory holding the storage root and run root.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Builds `spec` into the local image `name`, as one layer on top of the
    /// base image's, and returns buildah's output.
    pub fn build(&self, spec: &BuildSpec, name: &str) -> Result<String> {
        let mut bud = self.command();
        bud.args([
            "bud",
            "--format",
            "docker",
            "--isolation",
            "chroot",
            "--tls-verify=false",
            "--quiet",
        ])
        .args(spec.shape_flags())
        .arg("-t")
        .arg(name)
        .arg("-f")
        .arg(&spec.dockerfile)
        .arg(&spec.context);
        let out = command::run(&mut bud).with_context(|| {
            format!(
                "buildah could not build {}: if kiln is expected to accept this Dockerfile, \
                 the case needs an expected-tree file instead of the oracle",
                spec.dockerfile.display()
            )
        })?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Pushes the local image `name` to `reference` (`127.0.0.1:PORT/repo:tag`)
    /// over plain HTTP, in Docker format (which keeps ONBUILD and HEALTHCHECK).
    pub fn push(&self, name: &str, reference: &str) -> Result<()> {
        let mut push = self.command();
        push.args([
            "push",
            "--quiet",
            "--tls-verify=false",
            "--format",
            "v2s2",
            name,
        ])
        .arg(format!("docker://{reference}"));
        command::run(&mut push)
            .with_context(|| format!("buildah could not push to {reference}"))?;
        Ok(())
    }

    /// Builds `spec` and pushes it to `reference`.
    pub fn build_and_push(&self, spec: &BuildSpec, reference: &str) -> Result<()> {
        let name = format!(
            "localhost/kiln-oracle-{}",
            self.built.fetch_add(1, Ordering::Relaxed)
        );
        self.build(spec, &name)?;
        self.push(&name, reference)
    }

    /// The mount points under this buildah's directory, from
    /// `/proc/self/mountinfo`: empty unless a mount leaked.
    pub fn mounts(&self) -> Result<Vec<PathBuf>> {
        mounts_under(self.dir.path())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .arg("--storage-driver")
            .arg("overlay")
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            )
            .env("BUILDAH_ISOLATION", "chroot");
        cmd
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        // Best effort: each step may fail because there is nothing to do, and
        // whatever is left mounted is detached below before the directory goes.
        for args in [
            &["rm", "--all"][..],
            &["rmi", "--all", "--force"][..],
            &["umount", "--all"][..],
        ] {
            let _ = command::output(self.command().args(args));
        }
        if let Ok(mut mounts) = mounts_under(self.dir.path()) {
            // Deepest first, so that no mount hides another.
            mounts.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
            for mount in mounts {
                let _ = rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

/// The mount points at or below `dir` in this process's mount namespace.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let table =
        fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let mut found = Vec::new();
    for line in table.lines() {
        // Field 5 is the mount point, with spaces and the like octal-escaped.
        let Some(point) = line.split(' ').nth(4) else {
            bail!("malformed /proc/self/mountinfo line: {line:?}");
        };
        let point = PathBuf::from(unescape_mountinfo(point));
        if point.starts_with(&dir) {
            found.push(point);
        }
    }
    Ok(found)
}

/// Undoes the kernel's `\ooo` escaping of mountinfo fields.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
        });
        match (bytes[i], code) {
            (b'\\', Some(code)) => {
                out.push(code);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/x\\011y\\134z"), "/x\ty\\z");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/odd\\9"), "/odd\\9");
    }
}
