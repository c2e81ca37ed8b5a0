//! ADD's local archives: recognised by content, as BuildKit does (a
//! plain, gzip, bzip2, xz or zstd stream whose first block is a valid tar
//! header), and unpacked safely into a scratch directory.

use super::FsError;
use crate::layer::apply::{UnpackOptions, Whiteouts, unpack};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::thread::JoinHandle;

/// How a stream is compressed, told by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    Plain,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

fn sniff(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b, 0x08]) {
        Compression::Gzip
    } else if magic.starts_with(b"BZh") {
        Compression::Bzip2
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::Plain
    }
}

/// True if `block` is a tar header Go's `archive/tar` would accept: not
/// all zeros, and its checksum (unsigned or signed sum, with the checksum
/// field counted as spaces) matches the stored one.
fn looks_like_tar(block: &[u8]) -> bool {
    if block.len() < 512 || block[..512].iter().all(|b| *b == 0) {
        return false;
    }
    let field = &block[148..156];
    let text: String = field
        .iter()
        .map(|b| char::from(*b))
        .filter(|c| !matches!(c, '\0' | ' '))
        .collect();
    let Ok(stored) = i64::from_str_radix(&text, 8) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, b) in block[..512].iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || stored == signed
}

/// Reads until `buf` is full or the stream ends; returns how much it got.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The decompressed content of `file`, streamed.
fn decompress(mut file: File) -> io::Result<Box<dyn Read + Send>> {
    let mut magic = [0u8; 6];
    let n = read_full(&mut file, &mut magic)?;
    let stream = io::Cursor::new(magic).take(n as u64).chain(file);
    Ok(match sniff(&magic[..n]) {
        Compression::Plain => Box::new(stream),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(stream)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(stream)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
        ),
        Compression::Xz => Box::new(XzReader::spawn(stream)?),
    })
}

/// lzma-rs decodes xz into a writer; a thread runs it into a pipe so the
/// tar reader can pull from the other end with bounded memory.
struct XzReader {
    pipe: io::PipeReader,
    worker: Option<JoinHandle<io::Result<()>>>,
}

impl XzReader {
    fn spawn(input: impl Read + Send + 'static) -> io::Result<XzReader> {
        let (pipe, mut writer) = io::pipe()?;
        let worker = std::thread::Builder::new()
            .name("kiln-xz".into())
            .spawn(move || {
                let mut input = io::BufReader::new(input);
                lzma_rs::xz_decompress(&mut input, &mut writer).map_err(|e| match e {
                    lzma_rs::error::Error::IoError(e) => e,
                    other => io::Error::new(io::ErrorKind::InvalidData, format!("{other:?}")),
                })
            })?;
        Ok(XzReader {
            pipe,
            worker: Some(worker),
        })
    }
}

impl Read for XzReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0 && !buf.is_empty() {
            // The end of the pipe: a corrupt stream must not pass for a
            // short one, so the decoder's verdict decides.
            if let Some(worker) = self.worker.take() {
                worker
                    .join()
                    .map_err(|_| io::Error::other("the xz decoder thread panicked"))??;
            }
        }
        Ok(n)
    }
}

/// True if `path` is a regular file holding a (possibly compressed) tar.
pub fn is_archive(path: &Path) -> bool {
    let detect = || -> io::Result<bool> {
        let md = std::fs::symlink_metadata(path)?;
        if !md.is_file() {
            return Ok(false);
        }
        let mut stream = decompress(File::open(path)?)?;
        let mut block = [0u8; 512];
        let n = read_full(&mut stream, &mut block)?;
        Ok(looks_like_tar(&block[..n]))
    };
    // Anything that cannot be read as an archive is copied as a file.
    detect().unwrap_or(false)
}

/// Unpacks the archive at `path` into `dir`, an empty directory. Entries
/// keep the archive's owners when `keep_owners` is set; `..` paths,
/// escaping symlinks and whiteouts are refused.
pub fn extract(path: &Path, dir: &Path, keep_owners: bool) -> Result<(), FsError> {
    let fail = |message: String| FsError::Archive {
        path: path.display().to_string(),
        message,
    };
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let stream = decompress(file).map_err(|e| fail(e.to_string()))?;
    let opts = UnpackOptions {
        whiteouts: Whiteouts::Reject,
        preserve_owners: keep_owners,
        lowers: Vec::new(),
        exclude: Default::default(),
    };
    unpack(stream, dir, &opts).map_err(|e| fail(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::Write;
    use tar::{EntryType, Header};

    /// A tar with the given entries: (path, type, mode, link or content).
    pub fn tar_of(entries: &[(&str, EntryType, u32, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, mode, data) in entries {
            let mut h = Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_uid(1234);
            h.set_gid(5678);
            h.set_mtime(1_600_000_000);
            let body: &[u8] = if kind.is_file() { data.as_bytes() } else { b"" };
            h.set_size(body.len() as u64);
            if kind.is_symlink() || kind.is_hard_link() {
                h.set_link_name(data).unwrap();
            }
            // Written raw so that hostile names reach the unpacker intact.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// `tar` compressed with `kind`.
    pub fn compress(tar: &[u8], kind: &str) -> Vec<u8> {
        match kind {
            "plain" => tar.to_vec(),
            "gz" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).unwrap();
                e.finish().unwrap()
            }
            "bz2" => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(tar).unwrap();
                e.finish().unwrap()
            }
            "xz" => {
                let mut out = Vec::new();
                lzma_rs::xz_compress(&mut io::Cursor::new(tar), &mut out).unwrap();
                out
            }
            "zst" => {
                ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest)
            }
            other => panic!("unknown compression {other}"),
        }
    }

    #[test]
    fn tar_headers_are_recognised_by_checksum() {
        let tar = tar_of(&[("a", EntryType::Regular, 0o644, "x")]);
        assert!(looks_like_tar(&tar[..512]));
        let mut broken = tar[..512].to_vec();
        broken[0] ^= 1;
        assert!(!looks_like_tar(&broken));
        assert!(!looks_like_tar(&[0u8; 512]));
        assert!(!looks_like_tar(&tar[..100]));
    }

    #[test]
    fn every_compression_is_detected_and_extracted() {
        let tar = tar_of(&[
            ("d/", EntryType::Directory, 0o750, ""),
            ("d/f", EntryType::Regular, 0o640, "payload"),
        ]);
        for kind in ["plain", "gz", "bz2", "xz", "zst"] {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("archive.bin");
            std::fs::write(&file, compress(&tar, kind)).unwrap();
            assert!(is_archive(&file), "{kind}");
            let out = dir.path().join("out");
            std::fs::create_dir(&out).unwrap();
            extract(&file, &out, true).unwrap();
            assert_eq!(
                std::fs::read(out.join("d/f")).unwrap(),
                b"payload",
                "{kind}"
            );
        }
    }

    #[test]
    fn non_archives_are_not_mistaken_for_archives() {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in [
            ("empty", &b""[..]),
            ("text", b"hello world\n"),
            ("fake.tar.gz", &[0x1f, 0x8b, 0x08, 0, 1, 2, 3]),
            ("zeros.tar", &[0u8; 1024]),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            assert!(!is_archive(&p), "{name}");
        }
        let gz_text = compress(b"just some text, not a tar", "gz");
        std::fs::write(dir.path().join("t.gz"), gz_text).unwrap();
        assert!(!is_archive(&dir.path().join("t.gz")));
        assert!(!is_archive(dir.path()));
    }

    #[test]
    fn corrupt_xz_fails_instead_of_truncating() {
        let tar = tar_of(&[("f", EntryType::Regular, 0o644, "content")]);
        let mut xz = compress(&tar, "xz");
        let len = xz.len();
        xz[len - 20] ^= 0xff;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.xz");
        std::fs::write(&file, &xz).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let err = extract(&file, &out, true).unwrap_err().to_string();
        assert!(err.contains("bad.xz"), "{err}");
    }
}
