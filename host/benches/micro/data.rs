//! Benchmark inputs, generated once and cached: each is built under a
//! temporary name and renamed into place, so an existing one is complete.

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Where the corpus's bytes come from, and the share of it each gives:
/// binaries and libraries, then text, icons and locale data.
const CORPUS_SOURCES: [(&str, f64); 2] = [("/usr/lib", 0.6), ("/usr/share", 0.4)];

/// A directory holding one file, `corpus.tar`: a tar of about `bytes` of
/// real files from `/usr`, read in a fixed order. As a layer root, it makes
/// kiln compress the same bytes as a tool given the tar.
pub fn corpus(data_dir: &Path, bytes: u64) -> Result<PathBuf> {
    let dir = data_dir.join(format!("corpus-{}MiB", bytes >> 20));
    if dir.is_dir() {
        return Ok(dir);
    }
    eprintln!("micro: generating {} (once)", dir.display());
    let tmp = fresh(&dir)?;
    let path = tmp.join("corpus.tar");
    let out = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, out));
    tar.mode(tar::HeaderMode::Deterministic);
    for (root, share) in CORPUS_SOURCES {
        let mut budget = (bytes as f64 * share) as u64;
        add_files(&mut tar, Path::new(root), &mut budget)
            .with_context(|| format!("adding files of {root} to {}", path.display()))?;
    }
    tar.into_inner()
        .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
        .with_context(|| format!("writing {}", path.display()))?;
    rename(&tmp, &dir)?;
    Ok(dir)
}

/// Adds the regular files under `dir`, sorted, until `budget` bytes are in.
fn add_files(tar: &mut tar::Builder<impl Write>, dir: &Path, budget: &mut u64) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if *budget == 0 {
            return Ok(());
        }
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            add_files(tar, &path, budget)?;
        } else if kind.is_file() {
            // Files that vanish or are unreadable are simply not part of it.
            let Ok(mut file) = File::open(&path) else {
                continue;
            };
            let len = file.metadata()?.len();
            let name = path.strip_prefix("/").unwrap_or(&path);
            tar.append_file(name, &mut file)?;
            *budget = budget.saturating_sub(len);
        }
    }
    Ok(())
}

/// Files per directory of a generated rootfs, about what `/usr/lib` or
/// `/usr/share/doc` hold.
const FILES_PER_DIR: usize = 500;

/// A rootfs of `files` small regular files in directories of
/// [`FILES_PER_DIR`], each with distinct content.
pub fn rootfs(data_dir: &Path, files: usize) -> Result<PathBuf> {
    let dir = data_dir.join(format!("rootfs-{files}"));
    if dir.is_dir() {
        return Ok(dir);
    }
    eprintln!("micro: generating {} (once)", dir.display());
    let tmp = fresh(&dir)?;
    for i in 0..files {
        let sub = tmp.join(format!("d{:04}", i / FILES_PER_DIR));
        if i % FILES_PER_DIR == 0 {
            fs::create_dir(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        let path = sub.join(format!("f{i:06}"));
        fs::write(&path, format!("file {i} of a benchmark rootfs\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    rename(&tmp, &dir)?;
    Ok(dir)
}

/// `bytes` of pseudo-random bytes that do not compress, from a seed.
pub struct Noise {
    state: u64,
    left: u64,
}

impl Noise {
    /// `bytes` of noise from a non-zero `seed`.
    pub fn new(seed: u64, bytes: u64) -> Noise {
        Noise {
            state: seed | 1,
            left: bytes,
        }
    }
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        for chunk in buf[..n].chunks_mut(8) {
            // xorshift64: fast, and random enough that deflate finds nothing.
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads `path` once so that every timed reader finds it in the page cache.
pub fn warm(path: &Path) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    io::copy(&mut f, &mut io::sink()).with_context(|| format!("reading {}", path.display()))?;
    Ok(())
}

/// An empty `<dest>.tmp`, left-overs of an interrupted run removed.
fn fresh(dest: &Path) -> Result<PathBuf> {
    let tmp = dest.with_extension("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))
}
