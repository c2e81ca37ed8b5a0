//! Base images made from the host's static busybox, packaged by umoci (which
//! keeps owners and modes) and pushed by skopeo: no Docker Hub needed.

use crate::command;
use crate::registry::Registry;
use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::Path;
use std::process::Command;
use tempfile::TempDir;

/// The `PATH` of Docker Hub's busybox image.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The uid and gid of the unprivileged user `app` in the busybox rootfs.
pub const APP_ID: u32 = 1000;

/// An image as an OCI layout on disk (tag `latest`), ready to push.
pub struct BaseImage {
    layout: TempDir,
}

impl BaseImage {
    /// Busybox: applets as absolute symlinks, `root` and `app` (1000:1000)
    /// users, `/tmp` (1777), `/root`, `/home/app`; `Cmd ["sh"]`.
    pub fn busybox() -> Result<BaseImage> {
        let rootfs = TempDir::new()?;
        busybox_rootfs(rootfs.path())?;
        BaseImage::from_rootfs(rootfs.path())
    }

    /// Busybox plus `n` small files `/data/f<i>` holding `<i>\n`.
    pub fn busybox_with_files(n: usize) -> Result<BaseImage> {
        let rootfs = TempDir::new()?;
        busybox_rootfs(rootfs.path())?;
        add_data_files(rootfs.path(), n)?;
        BaseImage::from_rootfs(rootfs.path())
    }

    /// Packages `rootfs` as a one-layer image keeping owners and modes.
    pub fn from_rootfs(rootfs: &Path) -> Result<BaseImage> {
        let layout = TempDir::new()?;
        let dir = layout.path().join("oci");
        let image = format!("{}:latest", dir.display());
        command::run(Command::new("umoci").arg("init").arg("--layout").arg(&dir))?;
        command::run(Command::new("umoci").args(["new", "--image", &image]))?;
        let mut insert = Command::new("umoci");
        insert.arg("insert");
        if !rustix::process::geteuid().is_root() {
            insert.arg("--rootless");
        }
        command::run(insert.args(["--image", &image]).arg(rootfs).arg("/"))
            .with_context(|| format!("cannot package {} as an image", rootfs.display()))?;
        command::run(Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--config.env",
            PATH_ENV,
            "--config.cmd",
            "sh",
        ]))?;
        Ok(BaseImage { layout })
    }

    /// Pushes the image to `registry` as `repo_tag` and returns its full
    /// reference (`127.0.0.1:PORT/repo:tag`).
    pub fn push(&self, registry: &Registry, repo_tag: &str) -> Result<String> {
        let reference = registry.reference(repo_tag);
        let mut copy = Command::new("skopeo");
        copy.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some((user, password)) = registry.credentials() {
            copy.arg("--dest-creds").arg(format!("{user}:{password}"));
        }
        copy.arg(format!(
            "oci:{}:latest",
            self.layout.path().join("oci").display()
        ))
        .arg(format!("docker://{reference}"));
        command::run(&mut copy)
            .with_context(|| format!("cannot push the base image to {reference}"))?;
        Ok(reference)
    }
}

/// Writes a busybox root filesystem into the empty directory `root`.
pub fn busybox_rootfs(root: &Path) -> Result<()> {
    for dir in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "home", "var"] {
        make_dir(root, dir, 0o755)?;
    }
    make_dir(root, "root", 0o700)?;
    make_dir(root, "tmp", 0o1777)?;
    make_dir(root, "home/app", 0o755)?;
    chown(root.join("home/app"), Some(APP_ID), Some(APP_ID))
        .context("cannot chown home/app in the busybox rootfs (tests run as root)")?;

    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("cannot copy /bin/busybox: install the Debian package `busybox-static`")?;
    // Installing the applets by symlinking the listed paths ourselves avoids
    // chroot, which needs privileges. The listing comes from the original:
    // executing the fresh copy races with other test threads' forks, which
    // can briefly hold its write descriptor (ETXTBSY).
    let listing = command::run(Command::new("/bin/busybox").arg("--list-full"))?;
    for applet in String::from_utf8(listing)?.lines() {
        let link = root.join(applet);
        if link.symlink_metadata().is_err() {
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent)?;
            }
            symlink("/bin/busybox", &link)
                .with_context(|| format!("cannot create {}", link.display()))?;
        }
    }

    write_file(
        root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )?;
    write_file(root, "etc/group", "root:x:0:\napp:x:1000:\n")?;
    Ok(())
}

/// Adds `n` files `/data/f<i>` holding `<i>\n` under `root`.
pub fn add_data_files(root: &Path, n: usize) -> Result<()> {
    make_dir(root, "data", 0o755)?;
    for i in 0..n {
        write_file(root, &format!("data/f{i}"), &format!("{i}\n"))?;
    }
    Ok(())
}

fn make_dir(root: &Path, relative: &str, mode: u32) -> Result<()> {
    let path = root.join(relative);
    fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    // Set explicitly: the process umask would otherwise leak into the image.
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write_file(root: &Path, relative: &str, contents: &str) -> Result<()> {
    let path = root.join(relative);
    fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}
