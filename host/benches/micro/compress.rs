//! Layer compression (kiln's layer writer against pigz and zstd) and
//! digests (kiln's hashing reader against sha256sum), on the same corpus.

use super::data;
use crate::{Config, Report, alternate, median, mib_per_s, time, time_command, time_output};
use anyhow::{Context, Result, bail};
use kiln::digest::HashingReader;
use kiln::layer::{Compression, WriteOptions, write_layer};
use kiln::store::Store;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::Command;

/// The corpus size.
fn corpus_bytes(cfg: &Config) -> u64 {
    if cfg.quick { 32 << 20 } else { 500 << 20 }
}

/// One compressor and the tool it is compared with.
struct Codec {
    name: &'static str,
    compression: Compression,
    /// The peer's argv, to which `-c <input>` is appended.
    peer: &'static [&'static str],
}

const CODECS: [Codec; 2] = [
    Codec {
        name: "gzip",
        compression: Compression::Gzip { level: 6 },
        peer: &["pigz", "-6", "-p", "2"],
    },
    Codec {
        name: "zstd",
        compression: Compression::Zstd { level: 3 },
        peer: &["zstd", "-3", "-T0", "-q"],
    },
];

/// gzip and zstd layer writing against pigz and zstd.
pub fn run(cfg: &Config) -> Result<()> {
    let bytes = corpus_bytes(cfg);
    for codec in &CODECS {
        let bench = format!("{}-{}MiB", codec.name, bytes >> 20);
        if !cfg.wants(&bench) {
            continue;
        }
        let corpus = data::corpus(&cfg.data_dir, bytes)?;
        let tar = corpus.join("corpus.tar");
        data::warm(&tar)?;
        let input = tar.metadata()?.len();
        let scratch = cfg.scratch("compress-")?;
        let store = Store::open(&scratch.path().join("kiln"))?;
        let peer_out = scratch.path().join("peer.out");
        let (mut kiln_size, mut peer_size) = (0, 0);
        let opts = WriteOptions {
            mtime_clamp: Some(0),
            compression: codec.compression,
            watcher: None,
        };
        let (kiln, peer) = alternate(
            &bench,
            cfg.runs,
            || {
                let (secs, blob) = time(|| Ok(write_layer(&corpus, &store, &opts)?))?;
                let blob = blob.context("the corpus directory is empty")?;
                kiln_size = blob.size;
                std::fs::remove_file(store.blob_path(&blob.digest))?;
                Ok(secs)
            },
            || {
                let out = File::create(&peer_out)?;
                let secs = time_command(
                    Command::new(codec.peer[0])
                        .args(&codec.peer[1..])
                        .arg("-c")
                        .arg(&tar)
                        .stdout(out),
                )?;
                peer_size = peer_out.metadata()?.len();
                Ok(secs)
            },
        )?;
        Report {
            bench,
            unit: "s",
            note: format!(
                "input {input} bytes (tar of /usr/lib and /usr/share files); output kiln {kiln_size} bytes \
                 ({:.2}%), peer {peer_size} bytes ({:.2}%); median throughput kiln {:.0} MiB/s, peer {:.0} MiB/s; \
                 kiln writes the tar as one layer entry, digests both the tar and the blob, and stores the blob",
                pct(kiln_size, input),
                pct(peer_size, input),
                mib_per_s(input, median(&kiln)),
                mib_per_s(input, median(&peer)),
            ),
            kiln,
            peer: Some(codec.peer.join(" ")),
            peer_runs: peer,
        }
        .print();
    }
    Ok(())
}

fn pct(part: u64, whole: u64) -> f64 {
    part as f64 * 100.0 / whole as f64
}

/// Buffer of the digest loop: the size kiln's store reads blobs with.
const READ_BUF: usize = 1 << 20;

/// sha256 of the corpus with kiln's hashing reader, against sha256sum.
pub fn run_digest(cfg: &Config) -> Result<()> {
    let bytes = corpus_bytes(cfg);
    let bench = format!("sha256-{}MiB", bytes >> 20);
    if !cfg.wants(&bench) {
        return Ok(());
    }
    let tar = data::corpus(&cfg.data_dir, bytes)?.join("corpus.tar");
    data::warm(&tar)?;
    let input = tar.metadata()?.len();
    let (mut kiln_hex, mut peer_hex) = (String::new(), String::new());
    let (kiln, peer) = alternate(
        &bench,
        cfg.runs,
        || {
            let (secs, digest) = time(|| hash_file(&tar))?;
            kiln_hex = digest;
            Ok(secs)
        },
        || {
            let (secs, out) = time_output(Command::new("sha256sum").arg(&tar))?;
            peer_hex = String::from_utf8_lossy(&out)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            Ok(secs)
        },
    )?;
    if kiln_hex != peer_hex {
        bail!(
            "kiln's digest {kiln_hex} of {} differs from sha256sum's {peer_hex}",
            tar.display()
        );
    }
    Report {
        bench,
        unit: "s",
        note: format!(
            "input {input} bytes, page-cached; digests equal; median throughput kiln {:.0} MiB/s, peer {:.0} MiB/s",
            mib_per_s(input, median(&kiln)),
            mib_per_s(input, median(&peer)),
        ),
        kiln,
        peer: Some("sha256sum".into()),
        peer_runs: peer,
    }
    .print();
    Ok(())
}

/// The hex sha256 of a file, read through kiln's hashing reader.
fn hash_file(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = HashingReader::new(file);
    let mut buf = vec![0u8; READ_BUF];
    while reader.read(&mut buf)? != 0 {}
    Ok(reader.finish().0.hex().to_owned())
}
