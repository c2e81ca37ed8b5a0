//! One small build context that every context source serves (directory,
//! tarballs, HTTP, S3, GCS, Azure, git), and the check that an image built
//! from it holds exactly that context: the COPY layer's entries (paths,
//! kinds, modes, owners, contents) and the output of a RUN that executes a
//! script of the context.

use crate::command;
use crate::image::{EntryKind, Image};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

/// Where the Dockerfile copies the context in the image.
const COPY_DIR: &str = "ctx";
/// The modification time of every file of the context (2020-01-01), so
/// that a directory and a tarball of it carry the same times.
const MTIME: i64 = 1_577_836_800;

/// How a context tarball is compressed.
#[derive(Clone, Copy, Debug)]
pub enum Compression {
    /// gzip (`.tar.gz`), kaniko's format.
    Gzip,
    /// zstd (`.tar.zst`).
    Zstd,
    /// None (`.tar`).
    Plain,
}

/// One entry of a context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A regular file with its contents and permission bits.
    File(String, u32),
    /// A directory (mode 0755).
    Dir,
    /// A symbolic link to a target.
    Symlink(String),
}

/// A context: relative paths and what they are.
#[derive(Clone, Debug)]
pub struct SampleContext {
    items: BTreeMap<String, Item>,
}

impl SampleContext {
    /// The standard context built `FROM base`: a Dockerfile that copies the
    /// context to `/ctx/` and runs `run.sh` (executable) into `/ran.txt`, a
    /// text file, a file in a subdirectory and a symlink.
    pub fn new(base: &str) -> SampleContext {
        let dockerfile =
            format!("FROM {base}\nCOPY . /{COPY_DIR}/\nRUN /{COPY_DIR}/run.sh > /ran.txt\n");
        let script = format!(
            "#!/bin/sh\necho \"ran: $(cat /{COPY_DIR}/hello.txt) $(cat /{COPY_DIR}/sub/nested.txt)\"\n"
        );
        SampleContext {
            items: BTreeMap::new(),
        }
        .with_file("Dockerfile", &dockerfile, 0o644)
        .with_file("hello.txt", "hello\n", 0o644)
        .with_file("run.sh", &script, 0o755)
        .with_dir("sub")
        .with_file("sub/nested.txt", "nested\n", 0o644)
        .with_symlink("link", "hello.txt")
    }

    /// This context with the file `path` set to `contents` and `mode`.
    pub fn with_file(mut self, path: &str, contents: &str, mode: u32) -> SampleContext {
        self.items
            .insert(path.to_owned(), Item::File(contents.to_owned(), mode));
        self
    }

    /// This context with the directory `path`.
    pub fn with_dir(mut self, path: &str) -> SampleContext {
        self.items.insert(path.to_owned(), Item::Dir);
        self
    }

    /// This context with a symlink at `path` to `target`.
    pub fn with_symlink(mut self, path: &str, target: &str) -> SampleContext {
        self.items
            .insert(path.to_owned(), Item::Symlink(target.to_owned()));
        self
    }

    /// This context without `path` and what is under it.
    pub fn without(mut self, path: &str) -> SampleContext {
        let prefix = format!("{path}/");
        self.items
            .retain(|p, _| p != path && !p.starts_with(&prefix));
        self
    }

    /// This context moved into the directory `dir` of a new context.
    pub fn under(&self, dir: &str) -> SampleContext {
        let mut items: BTreeMap<String, Item> = self
            .items
            .iter()
            .map(|(p, item)| (format!("{dir}/{p}"), item.clone()))
            .collect();
        items.insert(dir.to_owned(), Item::Dir);
        SampleContext { items }
    }

    /// Writes the context into the existing directory `dir`, every entry
    /// with the same fixed modification time.
    pub fn write(&self, dir: &Path) -> Result<()> {
        for (path, item) in &self.items {
            let target = dir.join(path);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            match item {
                Item::File(contents, mode) => {
                    fs::write(&target, contents)
                        .with_context(|| format!("cannot write {}", target.display()))?;
                    fs::set_permissions(&target, fs::Permissions::from_mode(*mode))?;
                }
                Item::Dir => {
                    fs::create_dir_all(&target)?;
                    fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
                }
                Item::Symlink(link) => symlink(link, &target)?,
            }
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        // Deepest first: setting a time inside a directory would not change
        // the directory's, but creating entries did.
        let mut paths: Vec<_> = self.items.keys().map(|p| dir.join(p)).collect();
        paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        paths.push(dir.to_owned());
        let time = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: MTIME,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: MTIME,
                tv_nsec: 0,
            },
        };
        for path in paths {
            rustix::fs::utimensat(
                rustix::fs::CWD,
                &path,
                &time,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .with_context(|| format!("cannot set the times of {}", path.display()))?;
        }
        Ok(())
    }

    /// Writes the context into a new directory below `scratch` and packs it
    /// as `scratch/<name>` with GNU tar (`tar -c .`, sorted, owned by root),
    /// as a user would; returns the tarball's path.
    pub fn tarball(
        &self,
        scratch: &Path,
        name: &str,
        compression: Compression,
    ) -> Result<std::path::PathBuf> {
        let dir = scratch.join(format!("{name}.d"));
        fs::create_dir_all(&dir)?;
        self.write(&dir)?;
        let out = scratch.join(name);
        let mut tar = Command::new("tar");
        tar.arg("-C")
            .arg(&dir)
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"]);
        match compression {
            Compression::Gzip => tar.arg("--gzip"),
            Compression::Zstd => tar.arg("--zstd"),
            Compression::Plain => &mut tar,
        };
        tar.arg("-cf").arg(&out).arg(".");
        command::run(&mut tar).context("cannot pack the sample context")?;
        Ok(out)
    }

    /// What the `COPY . /ctx/` layer must hold, one line per entry:
    /// `path kind mode uid:gid contents-or-target`, sorted.
    pub fn expected_layer(&self) -> Vec<String> {
        let mut lines = vec![line(COPY_DIR, "dir", 0o755, "")];
        for (path, item) in &self.items {
            let path = format!("{COPY_DIR}/{path}");
            lines.push(match item {
                Item::File(contents, mode) => line(&path, "file", *mode, contents),
                Item::Dir => line(&path, "dir", 0o755, ""),
                Item::Symlink(target) => line(&path, "symlink", 0o777, target),
            });
        }
        lines.sort();
        lines
    }

    /// What `/ran.txt` must hold.
    fn expected_ran(&self) -> Result<String> {
        let text = |path: &str| match self.items.get(path) {
            Some(Item::File(contents, _)) => Ok(contents.trim().to_owned()),
            _ => bail!("the sample context has no file {path}"),
        };
        Ok(format!(
            "ran: {} {}\n",
            text("hello.txt")?,
            text("sub/nested.txt")?
        ))
    }

    /// Checks that the image in the OCI layout `layout` was built from this
    /// context, and returns the digest of its COPY layer.
    pub fn check_image(&self, layout: &Path) -> Result<String> {
        let image = Image::layout(layout, None);
        let manifest = image.manifest()?;
        let layers = manifest["layers"]
            .as_array()
            .context("the built manifest has no layers")?;
        if layers.len() < 2 {
            bail!(
                "the built image has {} layers, not the base's plus COPY and RUN",
                layers.len()
            );
        }
        let copy_index = layers.len() - 2;
        let actual: Vec<String> = {
            let mut lines: Vec<String> = image
                .layer_entries(copy_index)?
                .iter()
                .filter(|e| !e.path.is_empty())
                .map(|e| {
                    let (kind, detail) = match &e.kind {
                        EntryKind::File => ("file", String::from_utf8_lossy(&e.data).into_owned()),
                        EntryKind::Dir => ("dir", String::new()),
                        EntryKind::Symlink(target) => ("symlink", target.clone()),
                        EntryKind::Hardlink(target) => ("hardlink", target.clone()),
                        EntryKind::Other(byte) => ("other", format!("type {byte}")),
                    };
                    // Symlink permission bits mean nothing on Linux.
                    let mode = if kind == "symlink" { 0o777 } else { e.mode };
                    format!("{} {kind} {mode:o} {}:{} {detail:?}", e.path, e.uid, e.gid)
                })
                .collect();
            lines.sort();
            lines
        };
        let expected = self.expected_layer();
        if actual != expected {
            let missing: Vec<_> = expected.iter().filter(|l| !actual.contains(l)).collect();
            let extra: Vec<_> = actual.iter().filter(|l| !expected.contains(l)).collect();
            bail!(
                "the COPY layer does not hold the context\nmissing or different:\n  {}\n\
                 unexpected:\n  {}",
                join(&missing),
                join(&extra)
            );
        }
        let ran = image
            .layer_entries(layers.len() - 1)?
            .into_iter()
            .find(|e| e.path == "ran.txt")
            .context("the RUN layer has no /ran.txt: run.sh did not run")?;
        let expected_ran = self.expected_ran()?;
        if ran.data != expected_ran.as_bytes() {
            bail!(
                "/ran.txt holds {:?}, not {expected_ran:?}",
                String::from_utf8_lossy(&ran.data)
            );
        }
        match layers[copy_index]["digest"].as_str() {
            Some(digest) => Ok(digest.to_owned()),
            None => bail!(
                "the COPY layer descriptor has no digest: {}",
                layers[copy_index]
            ),
        }
    }
}

fn line(path: &str, kind: &str, mode: u32, detail: &str) -> String {
    format!("{path} {kind} {mode:o} 0:0 {detail:?}")
}

fn join(lines: &[&String]) -> String {
    if lines.is_empty() {
        "(none)".to_owned()
    } else {
        lines
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_layer_lists_every_entry_under_the_copy_dir() {
        let context = SampleContext::new("base").without("sub").with_dir("empty");
        let lines = context.expected_layer();
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(lines.contains(&"ctx dir 755 0:0 \"\"".to_owned()));
        assert!(lines.contains(&"ctx/empty dir 755 0:0 \"\"".to_owned()));
        assert!(lines.contains(&"ctx/link symlink 777 0:0 \"hello.txt\"".to_owned()));
        assert!(lines.iter().any(|l| l.starts_with("ctx/run.sh file 755 ")));
        assert!(!lines.iter().any(|l| l.starts_with("ctx/sub")));
    }

    #[test]
    fn tarballs_hold_the_written_tree() -> Result<()> {
        let scratch = tempfile::tempdir()?;
        let context = SampleContext::new("base");
        let tarball = context.tarball(scratch.path(), "ctx.tar.gz", Compression::Gzip)?;
        let listing = command::run(Command::new("tar").arg("-tvzf").arg(&tarball))?;
        let listing = String::from_utf8(listing)?;
        assert!(listing.contains("-rwxr-xr-x 0/0"), "{listing}");
        assert!(listing.contains("./sub/nested.txt"), "{listing}");
        assert!(listing.contains("./link -> hello.txt"), "{listing}");
        assert!(listing.contains("2020-01-01"), "{listing}");
        let moved = context.under("app");
        assert_eq!(
            moved.expected_layer().len(),
            context.expected_layer().len() + 1
        );
        assert!(
            moved
                .expected_layer()
                .iter()
                .any(|l| l.starts_with("ctx/app/sub/nested.txt "))
        );
        Ok(())
    }
}
