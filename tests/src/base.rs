//! Base images made from the host's static busybox, or from Debian by
//! debootstrap, packaged by umoci (which keeps owners and modes) and pushed
//! by skopeo: no Docker Hub needed.

use crate::command;
use crate::registry::Registry;
use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};
use tempfile::TempDir;

/// The `PATH` of Docker Hub's busybox image.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The uid and gid of the unprivileged user `app` in the busybox rootfs.
pub const APP_ID: u32 = 1000;

/// The Debian release of [`BaseImage::debian`].
const DEBIAN_SUITE: &str = "bookworm";

/// The name prefix of everything [`BaseImage::debian`] keeps in its cache.
const DEBIAN_PREFIX: &str = "debian-";

/// The apt sources files that name the host's Debian mirror.
const APT_SOURCES: &str = "/etc/apt/sources.list";

/// An image as an OCI layout on disk (tag `latest`), ready to push.
pub struct BaseImage {
    /// The OCI layout directory.
    oci: PathBuf,
    /// Deletes a layout made for this image alone when the image is
    /// dropped; cached layouts have none.
    _owned: Option<TempDir>,
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

    /// Debian bookworm, `--variant=minbase`, made by debootstrap from the
    /// host's apt mirror without the files that hold inode numbers or apt's
    /// caches; `Cmd ["bash"]`. Making it takes about a minute, so the layout
    /// is kept under `cache_dir` for the day (older days' are removed) and
    /// reused by every test process that day.
    pub fn debian(cache_dir: &Path) -> Result<BaseImage> {
        let today = utc_date(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs());
        let cached = cache_dir.join(format!("{DEBIAN_PREFIX}{DEBIAN_SUITE}-{today}"));
        fs::create_dir_all(cache_dir)
            .with_context(|| format!("cannot create {}", cache_dir.display()))?;
        // Concurrent test processes wait for the one that makes the image.
        let lock = fs::File::create(cache_dir.join("debian.lock"))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .context("cannot lock the Debian base image cache")?;
        if !cached.join("index.json").is_file() {
            remove_stale(cache_dir)?;
            let scratch = cache_dir.join(format!("{DEBIAN_PREFIX}scratch"));
            fs::create_dir(&scratch)?;
            debian_rootfs(&scratch.join("rootfs"))?;
            package(&scratch.join("rootfs"), &scratch.join("oci"), "bash")?;
            fs::rename(scratch.join("oci"), &cached)
                .with_context(|| format!("cannot keep {}", cached.display()))?;
            fs::remove_dir_all(&scratch)?;
        }
        Ok(BaseImage {
            oci: cached,
            _owned: None,
        })
    }

    /// Packages `rootfs` as a one-layer image keeping owners and modes.
    pub fn from_rootfs(rootfs: &Path) -> Result<BaseImage> {
        let layout = TempDir::new()?;
        let oci = layout.path().join("oci");
        package(rootfs, &oci, "sh")?;
        Ok(BaseImage {
            oci,
            _owned: Some(layout),
        })
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
        copy.arg(format!("oci:{}:latest", self.oci.display()))
            .arg(format!("docker://{reference}"));
        command::run(&mut copy)
            .with_context(|| format!("cannot push the base image to {reference}"))?;
        Ok(reference)
    }
}

/// Packages `rootfs` as a one-layer image in the new OCI layout `oci`,
/// keeping owners and modes, with Docker Hub's `PATH` and `Cmd [cmd]`.
fn package(rootfs: &Path, oci: &Path, cmd: &str) -> Result<()> {
    let image = format!("{}:latest", oci.display());
    command::run(Command::new("umoci").arg("init").arg("--layout").arg(oci))?;
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
        cmd,
    ]))?;
    Ok(())
}

/// Writes a Debian bookworm minbase root filesystem into `root` (created
/// if missing) with debootstrap (as root), from the mirror the host's
/// apt uses, then removes what differs from run to run for the same
/// packages: ldconfig's inode cache, apt's package lists and caches.
fn debian_rootfs(root: &Path) -> Result<()> {
    let mirror = host_debian_mirror()?;
    command::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", DEBIAN_SUITE])
            .arg(root)
            .arg(&mirror),
    )
    .with_context(|| {
        format!(
            "cannot debootstrap {DEBIAN_SUITE} from {mirror}: install the Debian package \
             `debootstrap` and check that the mirror is reachable"
        )
    })?;
    let aux_cache = root.join("var/cache/ldconfig/aux-cache");
    fs::remove_file(&aux_cache)
        .with_context(|| format!("cannot remove {}", aux_cache.display()))?;
    for dir in ["var/lib/apt/lists", "var/cache/apt"] {
        empty_dir(&root.join(dir))?;
    }
    Ok(())
}

/// The host's Debian mirror for [`DEBIAN_SUITE`], from its apt sources.
fn host_debian_mirror() -> Result<String> {
    let mut sources = Vec::new();
    let single = Path::new(APT_SOURCES);
    if single.is_file() {
        sources.push(fs::read_to_string(single)?);
    }
    let dir = PathBuf::from(format!("{APT_SOURCES}.d"));
    if dir.is_dir() {
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        files.sort();
        for file in files {
            if file
                .extension()
                .is_some_and(|ext| ext == "list" || ext == "sources")
            {
                sources.push(fs::read_to_string(&file)?);
            }
        }
    }
    sources
        .iter()
        .find_map(|text| debian_mirror(text, DEBIAN_SUITE))
        .with_context(|| {
            format!(
                "no apt source in {APT_SOURCES} or {APT_SOURCES}.d names a mirror for \
                 {DEBIAN_SUITE}: add one to make the Debian base image"
            )
        })
}

/// The first `deb` mirror URI for `suite` in an apt sources file, in
/// either the one-line or the deb822 format.
fn debian_mirror(text: &str, suite: &str) -> Option<String> {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut uri = words.next();
        if uri.is_some_and(|word| word.starts_with('[')) {
            // Options: `[key=value ...]`, possibly several words.
            let mut word = uri;
            while word.is_some_and(|w| !w.ends_with(']')) {
                word = words.next();
            }
            uri = words.next();
        }
        if let (Some(uri), Some(line_suite)) = (uri, words.next())
            && line_suite == suite
        {
            return Some(uri.to_owned());
        }
    }
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| {
                    value
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
            })
        };
        let (Some(types), Some(uris), Some(suites)) =
            (field("Types"), field("URIs"), field("Suites"))
        else {
            continue;
        };
        if types.iter().any(|t| t == "deb") && suites.iter().any(|s| s == suite) {
            return uris.into_iter().next();
        }
    }
    None
}

/// Removes the regular files below `dir`, keeping its directories (apt
/// expects `partial/` and `archives/` to exist).
fn empty_dir(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            empty_dir(&entry.path())?;
        } else {
            fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Removes earlier days' layouts and an interrupted run's scratch
/// directory from `cache_dir` (called with its lock held).
fn remove_stale(cache_dir: &Path) -> Result<()> {
    for entry in fs::read_dir(cache_dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir()
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with(DEBIAN_PREFIX)
        {
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The UTC date (`YYYY-MM-DD`) of `seconds` since the epoch.
fn utc_date(seconds: u64) -> String {
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let days = seconds / 86_400 + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_is_read_from_one_line_and_deb822_sources() {
        let one_line = "# comment\n\
            deb-src http://src.example/debian bookworm main\n\
            deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n";
        assert_eq!(
            debian_mirror(one_line, "bookworm").as_deref(),
            Some("http://one.example/debian")
        );
        let deb822 = "Types: deb\nURIs: http://sec.example/debian-security\n\
            Suites: bookworm-security\nComponents: main\n\n\
            Types: deb deb-src\nURIs: http://a.example/debian http://b.example/debian\n\
            Suites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            debian_mirror(deb822, "bookworm").as_deref(),
            Some("http://a.example/debian")
        );
        assert_eq!(debian_mirror(deb822, "trixie"), None);
        assert_eq!(
            debian_mirror("deb http://x/debian sid main\n", "bookworm"),
            None
        );
    }

    #[test]
    fn utc_dates_cross_months_years_and_leap_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(86_399), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_709_251_199), "2024-02-29");
        assert_eq!(utc_date(1_735_689_600), "2025-01-01");
    }
}
