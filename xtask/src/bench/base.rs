//! The base images, made offline as the end-to-end harness (`tests/src/base.rs`)
//! makes them: busybox from the host's `busybox-static`, Debian bookworm by
//! debootstrap from the host's apt mirror, packaged by umoci, pushed by skopeo.
//! The Debian layout shares the harness's day-long cache (same directory
//! names and lock), so a machine that ran the tests today does not
//! debootstrap again.

use anyhow::{Context, Result, bail};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Docker Hub's `PATH` for both images.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The Debian release of the Debian base image.
const DEBIAN_SUITE: &str = "bookworm";

/// The name prefix of the Debian layouts in the cache.
const DEBIAN_PREFIX: &str = "debian-";

/// Makes the busybox image as an OCI layout at the new path `oci`, using
/// `scratch` (new) for its root filesystem.
pub fn busybox(scratch: &Path, oci: &Path) -> Result<()> {
    let root = scratch.join("busybox-rootfs");
    for (dir, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
    ] {
        let path = root.join(dir);
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("cannot copy /bin/busybox: install the Debian package `busybox-static`")?;
    let listing = output(Command::new("/bin/busybox").arg("--list-full"))?;
    for applet in listing.lines() {
        let link = root.join(applet);
        if link.symlink_metadata().is_err() {
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent)?;
            }
            symlink("/bin/busybox", &link)
                .with_context(|| format!("cannot create {}", link.display()))?;
        }
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    package(&root, oci, "sh")?;
    fs::remove_dir_all(&root).with_context(|| format!("cannot remove {}", root.display()))
}

/// The Debian image's OCI layout in `cache_dir`, made today by debootstrap
/// unless it is already there.
pub fn debian(cache_dir: &Path) -> Result<PathBuf> {
    let today = utc_date(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs());
    let cached = cache_dir.join(format!("{DEBIAN_PREFIX}{DEBIAN_SUITE}-{today}"));
    fs::create_dir_all(cache_dir)
        .with_context(|| format!("cannot create {}", cache_dir.display()))?;
    let lock = fs::File::create(cache_dir.join("debian.lock"))?;
    flock(&lock)?;
    if cached.join("index.json").is_file() {
        return Ok(cached);
    }
    remove_stale(cache_dir)?;
    let scratch = cache_dir.join(format!("{DEBIAN_PREFIX}scratch"));
    fs::create_dir(&scratch)?;
    let root = scratch.join("rootfs");
    let mirror = host_debian_mirror()?;
    println!("xtask: making the Debian {DEBIAN_SUITE} base image with debootstrap from {mirror}");
    output(
        Command::new("debootstrap")
            .args(["--variant=minbase", DEBIAN_SUITE])
            .arg(&root)
            .arg(&mirror),
    )
    .with_context(|| format!("cannot debootstrap {DEBIAN_SUITE} from {mirror}"))?;
    fs::remove_file(root.join("var/cache/ldconfig/aux-cache"))
        .context("cannot remove ldconfig's aux-cache from the Debian rootfs")?;
    for dir in ["var/lib/apt/lists", "var/cache/apt"] {
        empty_dir(&root.join(dir))?;
    }
    package(&root, &scratch.join("oci"), "bash")?;
    fs::rename(scratch.join("oci"), &cached)
        .with_context(|| format!("cannot keep {}", cached.display()))?;
    fs::remove_dir_all(&scratch)?;
    Ok(cached)
}

/// Pushes the OCI layout `oci` (tag `latest`) to `reference` over plain HTTP.
pub fn push(oci: &Path, reference: &str) -> Result<()> {
    output(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:latest", oci.display()))
            .arg(format!("docker://{reference}")),
    )
    .with_context(|| format!("cannot push {} to {reference}", oci.display()))?;
    Ok(())
}

/// Packages `rootfs` as a one-layer image in the new OCI layout `oci`,
/// keeping owners and modes, with Docker Hub's `PATH` and `Cmd [cmd]`.
fn package(rootfs: &Path, oci: &Path, cmd: &str) -> Result<()> {
    let image = format!("{}:latest", oci.display());
    output(Command::new("umoci").arg("init").arg("--layout").arg(oci))?;
    output(Command::new("umoci").args(["new", "--image", &image]))?;
    output(
        Command::new("umoci")
            .args(["insert", "--image", &image])
            .arg(rootfs)
            .arg("/"),
    )
    .with_context(|| format!("cannot package {} as an image", rootfs.display()))?;
    output(Command::new("umoci").args([
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

/// The host's Debian mirror for [`DEBIAN_SUITE`], from its apt sources.
fn host_debian_mirror() -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(text);
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files {
            if file
                .extension()
                .is_some_and(|ext| ext == "list" || ext == "sources")
            {
                texts.push(fs::read_to_string(&file)?);
            }
        }
    }
    match texts
        .iter()
        .find_map(|text| debian_mirror(text, DEBIAN_SUITE))
    {
        Some(mirror) => Ok(mirror),
        None => bail!(
            "no apt source in /etc/apt/sources.list(.d) names a mirror for {DEBIAN_SUITE}: \
             add one to make the Debian base image"
        ),
    }
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

/// Removes the regular files below `dir`, keeping its directories.
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

/// Removes earlier days' layouts and an interrupted scratch directory.
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

/// Takes an exclusive lock on `file`, released when it is closed.
fn flock(file: &fs::File) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to `file`, open for this call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("cannot lock the Debian base image cache");
    }
    Ok(())
}

/// The UTC date (`YYYY-MM-DD`) of `seconds` since the epoch, as the test
/// harness names its cached layouts.
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

/// Runs `cmd`, returning its stdout, failing with its output unless it
/// exits 0.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {:?}: is it installed?", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_is_read_from_one_line_and_deb822_sources() {
        let one_line = "deb-src http://src.example/debian bookworm main\n\
            deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n";
        assert_eq!(
            debian_mirror(one_line, "bookworm").as_deref(),
            Some("http://one.example/debian")
        );
        let deb822 = "Types: deb\nURIs: http://sec.example/debian-security\n\
            Suites: bookworm-security\n\n\
            Types: deb\nURIs: http://a.example/debian\nSuites: bookworm bookworm-updates\n";
        assert_eq!(
            debian_mirror(deb822, "bookworm").as_deref(),
            Some("http://a.example/debian")
        );
        assert_eq!(debian_mirror(deb822, "trixie"), None);
    }

    #[test]
    fn dates_match_the_test_harness_cache_names() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_735_689_600), "2025-01-01");
    }
}
