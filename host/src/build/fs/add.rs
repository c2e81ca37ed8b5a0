//! ADD: COPY from the context, except that local archives are extracted
//! into the destination, `http(s)://` sources are downloaded (never
//! extracted) and git URLs are fetched through the `git` plugin, with
//! BuildKit's rules for names, modes, mtimes, `--checksum` and
//! `--keep-git-dir`.

use super::archive;
use super::chmod::Chmod;
use super::copy::{Copier, dest_is_dir};
use super::source::{CopySource, has_wildcards};
use super::{FsError, Owner, image_parent, io_at, make_dirs_mode, resolve_in_root};
use crate::context::ContextTree;
use crate::context::git::{Fetched, GitFetcher, GitSource, GitSourceError, fetch_git};
use sha2::digest::DynDigest;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::Path;

/// The name BuildKit gives a download whose URL path has no file name.
const UNNAMED: &str = "__unnamed__";

/// One ADD into an image root.
pub struct Add<'a> {
    pub context: &'a ContextTree,
    /// Context paths or globs, `http(s)://` URLs, or git URLs.
    pub sources: &'a [String],
    /// Absolute destination in the image; a trailing `/` means a directory.
    pub dest: &'a str,
    pub owner: Option<Owner>,
    pub chmod: Option<&'a Chmod>,
    pub excludes: &'a [String],
    /// `--checksum=<algorithm>:<hex>` of the one URL source.
    pub checksum: Option<&'a str>,
    /// The HTTP client for URL sources.
    pub agent: &'a ureq::Agent,
    /// Where downloads and extracted archives wait before entering the image.
    pub scratch: &'a Path,
    /// `--keep-git-dir`: git sources keep their `.git` directory.
    pub keep_git_dir: bool,
    /// The plugins that fetch git sources.
    pub git: Option<GitFetcher<'a>>,
}

/// What kind of thing an ADD source names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Local,
    Http,
    Git,
}

/// Classifies an ADD source as BuildKit's Dockerfile frontend does.
pub fn source_kind(src: &str) -> SourceKind {
    let lower = src.to_ascii_lowercase();
    let scheme = lower.split_once("://").map(|(s, _)| s);
    let is_scp = scp_like(src);
    match scheme {
        Some("git" | "ssh") => SourceKind::Git,
        Some("http" | "https") if url_path(src).ends_with(".git") => SourceKind::Git,
        // BuildKit only treats the lower-case prefixes as URLs.
        _ if src.starts_with("http://") || src.starts_with("https://") => SourceKind::Http,
        _ if is_scp => SourceKind::Git,
        _ => SourceKind::Local,
    }
}

/// `user@host:path`, git's scp-like syntax.
fn scp_like(src: &str) -> bool {
    let Some((user, rest)) = src.split_once('@') else {
        return false;
    };
    let Some((host, _)) = rest.split_once(':') else {
        return false;
    };
    !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The path of a URL, without query or fragment, still percent-encoded.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    rest.find('/').map_or("", |i| &rest[i..])
}

/// The file name of a download: the last segment of the URL's path.
pub fn download_name(url: &str) -> String {
    let path = crate::cloud::uri_decode(url_path(url));
    match path.trim_end_matches('/').rsplit('/').next() {
        Some(name) if !name.is_empty() && name != "." && name != ".." => name.to_owned(),
        _ => UNNAMED.to_owned(),
    }
}

/// A parsed `--checksum`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    algorithm: &'static str,
    hex: String,
}

/// Parses `--checksum=<sha256|sha384|sha512>:<hex>`, the digests BuildKit accepts.
pub fn parse_checksum(spec: &str) -> Result<Checksum, FsError> {
    let invalid = |reason: String| FsError::Checksum {
        spec: spec.into(),
        reason,
    };
    let (algorithm, hex) = spec
        .split_once(':')
        .ok_or_else(|| invalid("expected <algorithm>:<hex>, such as sha256:abc...".into()))?;
    let (algorithm, len) = match algorithm {
        "sha256" => ("sha256", 64),
        "sha384" => ("sha384", 96),
        "sha512" => ("sha512", 128),
        other => {
            return Err(invalid(format!(
                "unsupported algorithm {other:?}: use sha256, sha384 or sha512"
            )));
        }
    };
    if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid(format!(
            "a {algorithm} checksum is {len} lowercase hex digits"
        )));
    }
    Ok(Checksum {
        algorithm,
        hex: hex.into(),
    })
}

impl Checksum {
    fn hasher(&self) -> Box<dyn DynDigest> {
        match self.algorithm {
            "sha384" => Box::new(sha2::Sha384::default()),
            "sha512" => Box::new(sha2::Sha512::default()),
            _ => Box::new(sha2::Sha256::default()),
        }
    }
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an HTTP date (IMF-fixdate, RFC 850 or asctime, as Go's
/// `http.ParseTime`) into seconds since the epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let f: Vec<&str> = s.split_whitespace().collect();
    let month = |m: &str| MONTHS.iter().position(|x| *x == m).map(|i| i as i64 + 1);
    let weekday = |d: &str| DAYS.iter().any(|x| d.starts_with(x));
    let (year, mon, day, time) = match f.as_slice() {
        [wd, d, m, y, t, "GMT"] if wd.ends_with(',') && weekday(wd) && y.len() == 4 => {
            (y.parse().ok()?, month(m)?, d.parse().ok()?, *t)
        }
        [wd, date, t, "GMT"] if wd.ends_with(',') && weekday(wd) => {
            let mut parts = date.split('-');
            let (d, m, y) = (parts.next()?, parts.next()?, parts.next()?);
            let yy: i64 = y.parse().ok().filter(|_| y.len() == 2)?;
            // Go's two-digit years: 69-99 are 19xx, 00-68 are 20xx.
            let year = if yy >= 69 { 1900 + yy } else { 2000 + yy };
            (year, month(m)?, d.parse().ok()?, *t)
        }
        [wd, m, d, t, y] if weekday(wd) => (y.parse().ok()?, month(m)?, d.parse().ok()?, *t),
        _ => return None,
    };
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (hms.next()??, hms.next()??, hms.next()??);
    let valid = (1..=31).contains(&day) && h < 24 && mi < 60 && sec < 61;
    valid.then(|| days_from_civil(year, mon, day) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// A verified download waiting in the scratch directory.
struct Download {
    url: String,
    file: tempfile::NamedTempFile,
    mtime: i64,
}

fn download(
    agent: &ureq::Agent,
    url: &str,
    scratch: &Path,
    checksum: Option<&Checksum>,
) -> Result<Download, FsError> {
    let fail = |reason: String| FsError::Download {
        url: url.into(),
        reason,
    };
    let response = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    // No Last-Modified means the epoch, as in BuildKit.
    let mtime = response
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
        .unwrap_or(0);
    let mut file = tempfile::NamedTempFile::new_in(scratch).map_err(io_at(scratch))?;
    let mut hasher = checksum.map(Checksum::hasher);
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(e.to_string())),
        };
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        file.write_all(&buf[..n]).map_err(io_at(file.path()))?;
    }
    if let (Some(want), Some(h)) = (checksum, hasher) {
        let got = hex::encode(h.finalize());
        if got != want.hex {
            return Err(FsError::ChecksumMismatch {
                url: url.into(),
                expected: format!("{}:{}", want.algorithm, want.hex),
                actual: format!("{}:{got}", want.algorithm),
            });
        }
    }
    Ok(Download {
        url: url.into(),
        file,
        mtime,
    })
}

impl Add<'_> {
    /// Runs the ADD into `root`. Every URL is downloaded and verified
    /// before anything is written into the image.
    pub fn run(&self, root: &Path) -> Result<(), FsError> {
        let is_git = |s: &String| source_kind(s) == SourceKind::Git;
        let any_git = self.sources.iter().any(is_git);
        // A git source's checksum is a commit id, checked by the plugin.
        let checksum = self
            .checksum
            .filter(|_| !any_git)
            .map(parse_checksum)
            .transpose()?;
        if let Some(spec) = self.checksum {
            let misuse = |reason: &str| FsError::Checksum {
                spec: spec.into(),
                reason: reason.into(),
            };
            if self.sources.len() != 1 {
                return Err(misuse("it cannot be given with more than one source"));
            }
            if source_kind(&self.sources[0]) == SourceKind::Local {
                return Err(misuse("it needs an http(s) or git source"));
            }
        }
        if self.keep_git_dir && !any_git {
            // BuildKit ignores the flag for other sources; so does kiln.
            log::warn!("ADD --keep-git-dir applies to git sources only, and this ADD has none");
        }
        let source = CopySource::Context(self.context);
        let mut downloads = Vec::new();
        let mut fetched = Vec::new();
        let mut count = 0;
        for src in self.sources {
            if is_git(src) {
                fetched.push(self.fetch(src)?);
                count += 1;
            } else if source_kind(src) == SourceKind::Http {
                downloads.push(download(self.agent, src, self.scratch, checksum.as_ref())?);
                count += 1;
            } else {
                let found = source.expand(src)?;
                if found.is_empty() && !has_wildcards(src) {
                    return Err(source.not_found(src));
                }
                count += found.len();
            }
        }
        let dest_is_dir = dest_is_dir(root, self.dest)?;
        if count > 1 && !dest_is_dir {
            return Err(FsError::DestNotDir);
        }
        let mut copier = Copier::new(source, root, self.owner, self.chmod, self.excludes)?;
        let mut downloads = downloads.into_iter();
        let mut fetched = fetched.into_iter();
        for src in self.sources {
            if is_git(src) {
                if let Some(f) = fetched.next() {
                    self.place_tree(root, f.root())?;
                }
                continue;
            }
            if source_kind(src) == SourceKind::Http {
                if let Some(d) = downloads.next() {
                    self.place_download(root, &d, dest_is_dir)?;
                }
                continue;
            }
            for m in source.expand(src)? {
                if archive::is_archive(&m.host) {
                    if copier.excludes_name(&m) {
                        continue;
                    }
                    self.extract(root, &m.host)?;
                } else {
                    copier.copy_match(&m, self.dest, dest_is_dir)?;
                }
            }
        }
        Ok(())
    }

    /// Fetches a git source, with `--checksum` and `--keep-git-dir` merged
    /// into what its URL says, as BuildKit does.
    fn fetch(&self, src: &str) -> Result<Fetched, FsError> {
        let mut git = GitSource::parse(src).map_err(crate::context::ContextError::from)?;
        git.merge_checksum(self.checksum)
            .map_err(crate::context::ContextError::from)?;
        if self.keep_git_dir && git.keep_git_dir == Some(false) {
            return Err(crate::context::ContextError::from(GitSourceError::Invalid {
                url: git.display.clone(),
                reason: "inconsistent keep-git-dir configuration: --keep-git-dir=true \
                         but the URL says keep-git-dir=false"
                    .into(),
            })
            .into());
        }
        let keep = self.keep_git_dir || git.keep_git_dir == Some(true);
        let fetcher = self.git.as_ref().ok_or_else(|| {
            crate::context::ContextError::from(GitSourceError::NoPlugin {
                url: git.display.clone(),
            })
        })?;
        Ok(fetch_git(&git, keep, fetcher)?)
    }

    /// Copies a fetched tree's content into the destination directory: its
    /// files belong to root (or `--chown`), and `--chmod` and `--exclude`
    /// apply as for any other source.
    fn place_tree(&self, root: &Path, tree: &Path) -> Result<(), FsError> {
        let dir_mode = Chmod::created_dir_mode(self.chmod);
        let dest = make_dirs_mode(root, self.dest, self.owner, dir_mode)?;
        let owner = Some(self.owner.unwrap_or(Owner::ROOT));
        let mut copier = Copier::new(
            CopySource::Root(tree),
            root,
            owner,
            self.chmod,
            self.excludes,
        )?;
        copier.copy_tree(tree, Path::new(""), Path::new(""), &dest)
    }

    /// Extracts a local archive into the destination directory. The
    /// archive's owners are kept unless `--chown` is given; `--chmod` does
    /// not apply, as in BuildKit.
    fn extract(&self, root: &Path, archive_path: &Path) -> Result<(), FsError> {
        let dest = make_dirs_mode(root, self.dest, self.owner, 0o755)?;
        let unpacked = tempfile::Builder::new()
            .prefix("add-")
            .tempdir_in(self.scratch)
            .map_err(io_at(self.scratch))?;
        archive::extract(archive_path, unpacked.path(), self.owner.is_none())?;
        // Unpacked apart, then copied in: the archive's root entry must not
        // change the destination's own metadata, and --chown must reach
        // every entry.
        let mut copier = Copier::new(
            CopySource::Root(unpacked.path()),
            root,
            self.owner,
            None,
            &[],
        )?;
        copier.copy_tree(unpacked.path(), Path::new(""), Path::new(""), &dest)
    }

    fn place_download(&self, root: &Path, d: &Download, dest_is_dir: bool) -> Result<(), FsError> {
        let dir_mode = Chmod::created_dir_mode(self.chmod);
        let target = if dest_is_dir {
            make_dirs_mode(root, self.dest, self.owner, dir_mode)?.join(download_name(&d.url))
        } else {
            make_dirs_mode(root, &image_parent(self.dest), self.owner, dir_mode)?;
            resolve_in_root(root, self.dest, true)?
        };
        match fs::symlink_metadata(&target) {
            Ok(md) if md.is_dir() => {
                return Err(FsError::FileOntoDir {
                    source_path: d.url.clone(),
                    dest: self.dest.into(),
                });
            }
            Ok(_) => fs::remove_file(&target).map_err(io_at(&target))?,
            Err(_) => {}
        }
        fs::copy(d.file.path(), &target).map_err(io_at(&target))?;
        let owner = self.owner.unwrap_or(Owner::ROOT);
        lchown(&target, Some(owner.uid), Some(owner.gid)).map_err(io_at(&target))?;
        // BuildKit writes downloads with mode 0600 before --chmod applies.
        let mode = self.chmod.map_or(0o600, |c| c.apply(0o600, false));
        fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(io_at(&target))?;
        let t = rustix::fs::Timespec {
            tv_sec: d.mtime,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &target,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_at(&target)(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::archive::tests::{compress, tar_of};
    use super::super::chmod::parse_chmod;
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::os::unix::fs::MetadataExt;
    use tar::EntryType;

    const SHA_OF_HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    struct Fixture {
        context_dir: tempfile::TempDir,
        context: ContextTree,
        root: tempfile::TempDir,
        scratch: tempfile::TempDir,
        agent: ureq::Agent,
    }

    fn fixture(files: &[(&str, Vec<u8>)]) -> Fixture {
        let context_dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            fs::write(context_dir.path().join(name), content).unwrap();
        }
        let context = ContextTree::new(context_dir.path().to_owned(), None).unwrap();
        Fixture {
            context_dir,
            context,
            root: tempfile::tempdir().unwrap(),
            scratch: tempfile::tempdir().unwrap(),
            agent: ureq::Agent::new_with_defaults(),
        }
    }

    impl Fixture {
        fn add<'a>(
            &'a self,
            sources: &'a [String],
            dest: &'a str,
            tweak: impl FnOnce(&mut Add<'a>),
        ) -> Result<(), FsError> {
            let mut add = Add {
                context: &self.context,
                sources,
                dest,
                owner: None,
                chmod: None,
                excludes: &[],
                checksum: None,
                agent: &self.agent,
                scratch: self.scratch.path(),
                keep_git_dir: false,
                git: None,
            };
            tweak(&mut add);
            add.run(self.root.path())
        }

        fn path(&self, image_path: &str) -> std::path::PathBuf {
            self.root.path().join(image_path.trim_start_matches('/'))
        }
    }

    fn v(sources: &[&str]) -> Vec<String> {
        sources.iter().map(|s| s.to_string()).collect()
    }

    fn stat(p: &Path) -> (u32, u32, u32) {
        let md = fs::symlink_metadata(p).unwrap();
        (md.mode() & 0o7777, md.uid(), md.gid())
    }

    fn sample_tar() -> Vec<u8> {
        tar_of(&[
            ("./", EntryType::Directory, 0o777, ""),
            ("app/", EntryType::Directory, 0o750, ""),
            ("app/run.sh", EntryType::Regular, 0o755, "#!/bin/sh\n"),
            ("app/link", EntryType::Symlink, 0o777, "run.sh"),
        ])
    }

    #[test]
    fn local_archives_of_every_compression_are_extracted_with_their_owners() {
        let tar = sample_tar();
        let kinds = ["plain", "gz", "bz2", "xz", "zst"];
        let files: Vec<_> = kinds
            .iter()
            .map(|k| (format!("archive-{k}.bin"), compress(&tar, k)))
            .collect();
        let refs: Vec<_> = files.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
        let f = fixture(&refs);
        for kind in kinds {
            let dest = format!("/out-{kind}");
            fs::create_dir(f.path(&dest)).unwrap();
            fs::set_permissions(f.path(&dest), fs::Permissions::from_mode(0o700)).unwrap();
            fs::write(f.path(&dest).join("existing"), "kept").unwrap();
            f.add(&v(&[&format!("archive-{kind}.bin")]), &dest, |_| {})
                .unwrap();
            let out = f.path(&dest);
            assert_eq!(
                fs::read(out.join("app/run.sh")).unwrap(),
                b"#!/bin/sh\n",
                "{kind}"
            );
            assert_eq!(stat(&out.join("app/run.sh")), (0o755, 1234, 5678), "{kind}");
            assert_eq!(stat(&out.join("app")), (0o750, 1234, 5678), "{kind}");
            assert_eq!(
                fs::read_link(out.join("app/link")).unwrap(),
                Path::new("run.sh")
            );
            assert_eq!(fs::read(out.join("existing")).unwrap(), b"kept");
            // The archive's own root entry leaves the destination alone.
            assert_eq!(stat(&out), (0o700, 0, 0), "{kind}");
            assert!(!out.join(format!("archive-{kind}.bin")).exists());
        }
    }

    #[test]
    fn chown_reaches_extracted_entries_and_chmod_does_not() {
        let f = fixture(&[("a.tgz", compress(&sample_tar(), "gz"))]);
        let mode = parse_chmod("600").unwrap();
        f.add(&v(&["a.tgz"]), "/srv/", |a| {
            a.owner = Some(Owner { uid: 7, gid: 8 });
            a.chmod = Some(&mode);
        })
        .unwrap();
        assert_eq!(stat(&f.path("/srv/app/run.sh")), (0o755, 7, 8));
        assert_eq!(stat(&f.path("/srv/app")), (0o750, 7, 8));
        assert_eq!(stat(&f.path("/srv")), (0o755, 7, 8));
    }

    #[test]
    fn malicious_archives_cannot_write_outside_the_destination() {
        let marker = format!("kiln-add-test-{}", std::process::id());
        let dotdot = tar_of(&[("../escaped", EntryType::Regular, 0o644, "x")]);
        let absolute = tar_of(&[(
            &format!("/tmp/{marker}"),
            EntryType::Regular,
            0o644,
            "inside",
        )]);
        let via_link = tar_of(&[
            ("root", EntryType::Symlink, 0o777, "/"),
            (
                &format!("root/tmp/{marker}-link"),
                EntryType::Regular,
                0o644,
                "inside",
            ),
            ("up", EntryType::Symlink, 0o777, "../../../../.."),
            (
                &format!("up/{marker}-up"),
                EntryType::Regular,
                0o644,
                "inside",
            ),
        ]);
        let f = fixture(&[
            ("dotdot.tar", dotdot),
            ("absolute.tar", absolute),
            ("link.tar", via_link),
        ]);
        let err = f
            .add(&v(&["dotdot.tar"]), "/d/", |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("dotdot.tar") && err.contains(".."), "{err}");
        assert!(!f.root.path().join("escaped").exists());
        assert!(!f.path("/d/escaped").exists());
        f.add(&v(&["absolute.tar"]), "/d/", |_| {}).unwrap();
        assert_eq!(
            fs::read(f.path(&format!("/d/tmp/{marker}"))).unwrap(),
            b"inside"
        );
        f.add(&v(&["link.tar"]), "/l/", |_| {}).unwrap();
        assert_eq!(
            fs::read(f.path(&format!("/l/tmp/{marker}-link"))).unwrap(),
            b"inside"
        );
        assert_eq!(
            fs::read(f.path(&format!("/l/{marker}-up"))).unwrap(),
            b"inside"
        );
        for outside in [
            format!("/tmp/{marker}"),
            format!("/tmp/{marker}-link"),
            format!("/{marker}-up"),
        ] {
            assert!(!Path::new(&outside).exists(), "{outside}");
        }
        assert!(!f.scratch.path().join(&marker).exists());
    }

    #[test]
    fn files_that_are_not_archives_are_copied() {
        let f = fixture(&[
            ("notes.tar.gz", b"not really gzip".to_vec()),
            ("plain.txt", b"hello".to_vec()),
            ("real.tgz", compress(&sample_tar(), "gz")),
        ]);
        let ex = v(&["*.tgz"]);
        f.add(&v(&["*"]), "/e/", |a| a.excludes = &ex).unwrap();
        assert!(f.path("/e/plain.txt").exists());
        assert!(!f.path("/e/app").exists());
        f.add(&v(&["notes.tar.gz", "plain.txt"]), "/d/", |_| {})
            .unwrap();
        assert_eq!(
            fs::read(f.path("/d/notes.tar.gz")).unwrap(),
            b"not really gzip"
        );
        assert_eq!(fs::read(f.path("/d/plain.txt")).unwrap(), b"hello");
        assert!(f.context_dir.path().join("plain.txt").exists());
    }

    /// Serves `routes` (path, extra headers, body) over HTTP/1.1 on a
    /// loopback port; any other path is a 404.
    fn serve(routes: Vec<(&'static str, &'static str, Vec<u8>)>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or_default();
                let path = target.split('?').next().unwrap_or_default();
                let (status, headers, body) = match routes.iter().find(|r| r.0 == path) {
                    Some((_, headers, body)) => ("200 OK", *headers, body.as_slice()),
                    None => ("404 Not Found", "", &b"missing"[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(body).unwrap();
            }
        });
        base
    }

    #[test]
    fn urls_are_downloaded_with_mode_0600_and_last_modified() {
        let tgz = compress(&sample_tar(), "gz");
        let base = serve(vec![
            (
                "/files/app.tar.gz",
                "Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n",
                tgz.clone(),
            ),
            ("/hello", "", b"hello".to_vec()),
            ("/", "", b"index".to_vec()),
        ]);
        let f = fixture(&[]);
        f.add(
            &v(&[&format!("{base}/files/app.tar.gz?x=1")]),
            "/dl/",
            |_| {},
        )
        .unwrap();
        let got = f.path("/dl/app.tar.gz");
        // Downloads are never extracted.
        assert_eq!(fs::read(&got).unwrap(), tgz);
        assert_eq!(stat(&got), (0o600, 0, 0));
        assert_eq!(fs::metadata(&got).unwrap().mtime(), 1_445_412_480);
        let exec = parse_chmod("u+x,go+r").unwrap();
        f.add(&v(&[&format!("{base}/hello")]), "/bin/greeting", |a| {
            a.chmod = Some(&exec);
            a.owner = Some(Owner { uid: 3, gid: 4 });
        })
        .unwrap();
        let greeting = f.path("/bin/greeting");
        assert_eq!(fs::read(&greeting).unwrap(), b"hello");
        assert_eq!(stat(&greeting), (0o744, 3, 4));
        assert_eq!(fs::metadata(&greeting).unwrap().mtime(), 0);
        f.add(&v(&[&format!("{base}/")]), "/u/", |_| {}).unwrap();
        assert_eq!(fs::read(f.path("/u/__unnamed__")).unwrap(), b"index");
        let err = f
            .add(&v(&[&format!("{base}/nope")]), "/x/", |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot download") && err.contains("/nope"),
            "{err}"
        );
    }

    #[test]
    fn checksums_are_verified_before_anything_is_written() {
        let base = serve(vec![("/hello", "", b"hello".to_vec())]);
        let url = format!("{base}/hello");
        let f = fixture(&[("local", b"x".to_vec())]);
        let good = format!("sha256:{SHA_OF_HELLO}");
        f.add(&v(&[&url]), "/ok/", |a| a.checksum = Some(&good))
            .unwrap();
        assert_eq!(fs::read(f.path("/ok/hello")).unwrap(), b"hello");
        let bad = format!("sha256:{}", "0".repeat(64));
        let err = f
            .add(&v(&[&url]), "/bad/", |a| a.checksum = Some(&bad))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("checksum mismatch for {url}: expected {bad}, got {good}")
        );
        assert!(!f.path("/bad").exists());
        let misuse = f.add(&v(&["local"]), "/l/", |a| a.checksum = Some(&good));
        assert!(misuse.unwrap_err().to_string().contains("http(s) or git"));
        let two = f.add(&v(&[&url, &url]), "/t/", |a| a.checksum = Some(&good));
        assert!(
            two.unwrap_err()
                .to_string()
                .contains("more than one source")
        );
    }

    #[test]
    fn git_sources_are_checked_before_anything_is_fetched() {
        let f = fixture(&[("local", b"x".to_vec())]);
        let err = f
            .add(
                &v(&["git@github.com:moby/buildkit.git#v0.13.0"]),
                "/src/",
                |_| {},
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no ssh transport")
                && err.contains("https://github.com/moby/buildkit.git#v0.13.0"),
            "{err}"
        );
        let err = f
            .add(&v(&["https://h.example/r.git"]), "/src/", |a| {
                a.checksum = Some("sha256:00")
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("commit id"), "{err}");
        let err = f
            .add(
                &v(&["https://h.example/r.git?keep-git-dir=false"]),
                "/src/",
                |a| a.keep_git_dir = true,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("inconsistent keep-git-dir"), "{err}");
        let err = f
            .add(&v(&["https://h.example/r.git#main"]), "/src/", |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs kiln's git plugin"), "{err}");
        assert!(!f.path("/src").exists());
        // Like BuildKit, the flag does nothing for other sources.
        f.add(&v(&["local"]), "/l/", |a| a.keep_git_dir = true)
            .unwrap();
        assert_eq!(fs::read(f.path("/l/local")).unwrap(), b"x");
    }

    #[test]
    fn sources_are_classified_like_buildkit() {
        for (src, kind) in [
            ("https://example.com/a.tar.gz", SourceKind::Http),
            ("http://example.com/", SourceKind::Http),
            ("https://github.com/moby/buildkit.git", SourceKind::Git),
            (
                "https://github.com/moby/buildkit.git#main:docs",
                SourceKind::Git,
            ),
            ("https://example.com/x.git?ref=main", SourceKind::Git),
            ("git://example.com/repo", SourceKind::Git),
            ("ssh://git@example.com/repo", SourceKind::Git),
            ("git@github.com:moby/buildkit.git", SourceKind::Git),
            ("github.com/moby/buildkit", SourceKind::Local),
            ("HTTPS://example.com/a", SourceKind::Local),
            ("./file@x:y", SourceKind::Local),
            ("src/", SourceKind::Local),
        ] {
            assert_eq!(source_kind(src), kind, "{src}");
        }
    }

    #[test]
    fn download_names_come_from_the_url_path() {
        for (url, name) in [
            ("https://h/a/b/file.tgz", "file.tgz"),
            ("https://h/a/b/file.tgz?query=1#frag", "file.tgz"),
            ("https://h/dir/", "dir"),
            ("https://h/", "__unnamed__"),
            ("https://h", "__unnamed__"),
            ("https://h/a%20b.txt", "a b.txt"),
            ("https://h/x/..", "__unnamed__"),
        ] {
            assert_eq!(download_name(url), name, "{url}");
        }
    }

    #[test]
    fn http_dates_in_all_three_formats() {
        for (text, secs) in [
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(784_111_777)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", Some(784_111_777)),
            ("Sun Nov  6 08:49:37 1994", Some(784_111_777)),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(0)),
            ("Tue, 29 Feb 2000 12:00:00 GMT", Some(951_825_600)),
            ("Sun, 06 Nov 1994 08:49:37 UTC", None),
            ("yesterday", None),
            ("Sun, 06 Foo 1994 08:49:37 GMT", None),
        ] {
            assert_eq!(parse_http_date(text), secs, "{text}");
        }
    }

    #[test]
    fn checksums_parse_with_their_algorithm() {
        assert!(parse_checksum(&format!("sha256:{SHA_OF_HELLO}")).is_ok());
        assert!(parse_checksum(&format!("sha512:{}", "a".repeat(128))).is_ok());
        for bad in [
            "abc".to_string(),
            format!("md5:{SHA_OF_HELLO}"),
            "sha256:abc".into(),
            format!("sha256:{}", SHA_OF_HELLO.to_uppercase()),
        ] {
            let err = parse_checksum(&bad).unwrap_err().to_string();
            assert!(err.contains("invalid --checksum"), "{err}");
        }
    }
}
