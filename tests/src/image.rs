//! Looking at built images with tools independent of kiln: `skopeo` copies
//! and inspects, `umoci` flattens, and layer tars are read entry by entry.

use crate::command;
use anyhow::{Context, Result, bail};
use flate2::read::GzDecoder;
use serde_json::Value;
use std::fs::{self, File, Metadata};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

/// The tag under which images are copied into scratch OCI layouts.
const LOCAL_TAG: &str = "image";

/// An image in a registry or an OCI layout, named as skopeo names it.
pub struct Image {
    transport_ref: String,
    remote: bool,
    credentials: Option<(String, String)>,
}

impl Image {
    /// An image in a registry (plain HTTP), e.g. `127.0.0.1:5000/app:latest`.
    pub fn remote(reference: String, credentials: Option<(String, String)>) -> Image {
        Image {
            transport_ref: format!("docker://{reference}"),
            remote: true,
            credentials,
        }
    }

    /// The image tagged `tag` in the OCI layout at `dir`; with no tag, the
    /// layout's only image.
    pub fn layout(dir: &Path, tag: Option<&str>) -> Image {
        let transport_ref = match tag {
            Some(tag) => format!("oci:{}:{tag}", dir.display()),
            None => format!("oci:{}", dir.display()),
        };
        Image {
            transport_ref,
            remote: false,
            credentials: None,
        }
    }

    /// The image config as stored (`skopeo inspect --config --raw`):
    /// without `--raw`, skopeo converts it to the OCI schema and drops
    /// Docker-only fields such as `Shell`.
    pub fn config(&self) -> Result<Value> {
        self.inspect(&["--config", "--raw"])
    }

    /// The manifest as the registry or layout serves it.
    pub fn manifest(&self) -> Result<Value> {
        self.inspect(&["--raw"])
    }

    /// The manifest digest (`sha256:...`) the registry or layout serves.
    pub fn digest(&self) -> Result<String> {
        let inspect = self.inspect(&[])?;
        match inspect["Digest"].as_str() {
            Some(digest) => Ok(digest.to_owned()),
            None => bail!(
                "skopeo inspect {} shows no Digest: {inspect}",
                self.transport_ref
            ),
        }
    }

    /// The number of layers in the image's manifest.
    pub fn layer_count(&self) -> Result<usize> {
        let copy = self.copy_to_layout()?;
        Ok(copy.layers()?.len())
    }

    /// Every entry of layer `index` (0 = the base-most layer), in tar order.
    pub fn layer_entries(&self, index: usize) -> Result<Vec<Entry>> {
        let copy = self.copy_to_layout()?;
        let layers = copy.layers()?;
        let Some(digest) = layers.get(index) else {
            bail!(
                "{} has {} layers, there is no layer {index}",
                self.transport_ref,
                layers.len()
            );
        };
        read_layer(&copy.blob_path(digest)?).with_context(|| {
            format!(
                "cannot read layer {index} ({digest}) of {}",
                self.transport_ref
            )
        })
    }

    /// The image's filesystem with every layer applied (whiteouts included),
    /// as unpacked by `umoci`.
    pub fn flatten(&self) -> Result<Flattened> {
        let copy = self.copy_to_layout()?;
        let rootfs = copy.dir.path().join("rootfs");
        let mut unpack = Command::new("umoci");
        unpack.args(["raw", "unpack"]);
        if !rustix::process::geteuid().is_root() {
            unpack.arg("--rootless");
        }
        unpack
            .arg("--image")
            .arg(format!("{}:{LOCAL_TAG}", copy.layout().display()))
            .arg(&rootfs);
        command::run(&mut unpack)
            .with_context(|| format!("cannot flatten {}", self.transport_ref))?;
        Ok(Flattened {
            _dir: copy.dir,
            rootfs,
        })
    }

    fn inspect(&self, extra: &[&str]) -> Result<Value> {
        let mut inspect = Command::new("skopeo");
        inspect.arg("inspect").args(extra);
        if self.remote {
            inspect.arg("--tls-verify=false");
        }
        if let Some((user, password)) = &self.credentials {
            inspect.arg("--creds").arg(format!("{user}:{password}"));
        }
        let out = command::run(inspect.arg(&self.transport_ref))?;
        serde_json::from_slice(&out)
            .with_context(|| format!("skopeo inspect {} printed invalid JSON", self.transport_ref))
    }

    /// Copies the image into a scratch OCI layout, which also normalises a
    /// Docker manifest to OCI and checks every blob's digest on the way.
    fn copy_to_layout(&self) -> Result<LocalCopy> {
        let copy = LocalCopy {
            dir: tempfile::Builder::new().prefix("kiln-image-").tempdir()?,
        };
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet"]);
        if self.remote {
            cmd.arg("--src-tls-verify=false");
        }
        if let Some((user, password)) = &self.credentials {
            cmd.arg("--src-creds").arg(format!("{user}:{password}"));
        }
        cmd.arg(&self.transport_ref)
            .arg(format!("oci:{}:{LOCAL_TAG}", copy.layout().display()));
        command::run(&mut cmd).with_context(|| format!("cannot copy {}", self.transport_ref))?;
        Ok(copy)
    }
}

/// A scratch OCI layout holding one image tagged [`LOCAL_TAG`].
struct LocalCopy {
    dir: TempDir,
}

impl LocalCopy {
    fn layout(&self) -> PathBuf {
        self.dir.path().join("oci")
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        match digest.split_once(':') {
            Some((algorithm, hex)) => Ok(self.layout().join("blobs").join(algorithm).join(hex)),
            None => bail!("malformed digest {digest:?}"),
        }
    }

    fn read_json(&self, path: &Path) -> Result<Value> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        serde_json::from_reader(BufReader::new(file))
            .with_context(|| format!("{} is not valid JSON", path.display()))
    }

    /// The layer digests of the manifest, base-most first.
    fn layers(&self) -> Result<Vec<String>> {
        let index = self.read_json(&self.layout().join("index.json"))?;
        let Some(manifest) = index["manifests"][0]["digest"].as_str() else {
            bail!("the copied layout's index.json names no manifest: {index}");
        };
        let manifest = self.read_json(&self.blob_path(manifest)?)?;
        let Some(layers) = manifest["layers"].as_array() else {
            bail!("the manifest has no layers array: {manifest}");
        };
        layers
            .iter()
            .map(|layer| match layer["digest"].as_str() {
                Some(digest) => Ok(digest.to_owned()),
                None => bail!("a layer descriptor has no digest: {layer}"),
            })
            .collect()
    }
}

/// What a tar entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link to the given target.
    Symlink(String),
    /// A hard link to the given path (normalised like [`Entry::path`]).
    Hardlink(String),
    /// Anything else (devices, fifos), by its tar type byte.
    Other(u8),
}

/// One entry of a layer tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The path without a leading `./` or `/` nor a trailing `/`; the root is `""`.
    pub path: String,
    /// The entry's type.
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Size recorded in the header.
    pub size: u64,
    /// The contents of a regular file (empty for other kinds).
    pub data: Vec<u8>,
}

fn read_layer(path: &Path) -> Result<Vec<Entry>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut file = BufReader::new(file);
    let mut magic = [0u8; 4];
    let head = file.fill_buf()?;
    let peeked = head.len().min(magic.len());
    magic[..peeked].copy_from_slice(&head[..peeked]);
    let reader: Box<dyn Read> = match magic {
        [0x1f, 0x8b, ..] => Box::new(GzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            bail!("zstd layers are not readable by the harness: build with gzip compression")
        }
        _ => Box::new(file),
    };
    let mut archive = tar::Archive::new(reader);
    let mut entries = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let header = entry.header();
        let link = || -> Result<String> {
            Ok(entry
                .link_name()?
                .map(|target| target.to_string_lossy().into_owned())
                .unwrap_or_default())
        };
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink(link()?),
            tar::EntryType::Link => EntryKind::Hardlink(normalise(&link()?)),
            other => EntryKind::Other(other.as_byte()),
        };
        let (mode, uid, gid, size) = (header.mode()?, header.uid()?, header.gid()?, header.size()?);
        let path = normalise(&entry.path()?.to_string_lossy());
        let mut data = Vec::new();
        if kind == EntryKind::File {
            entry.read_to_end(&mut data)?;
        }
        entries.push(Entry {
            path,
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            size,
            data,
        });
    }
    Ok(entries)
}

fn normalise(path: &str) -> String {
    let path = path.trim_start_matches("./").trim_start_matches('/');
    let path = path.trim_end_matches('/');
    if path == "." {
        String::new()
    } else {
        path.to_owned()
    }
}

/// A flattened image filesystem in a temporary directory.
pub struct Flattened {
    _dir: TempDir,
    rootfs: PathBuf,
}

impl Flattened {
    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.rootfs
    }

    /// The host path of `path` inside the image (`/app/x` or `app/x`).
    pub fn path(&self, path: &str) -> PathBuf {
        self.rootfs.join(path.trim_start_matches('/'))
    }

    /// Whether `path` exists (a dangling symlink counts).
    pub fn exists(&self, path: &str) -> bool {
        self.path(path).symlink_metadata().is_ok()
    }

    /// The contents of the file at `path`.
    pub fn read(&self, path: &str) -> Result<String> {
        fs::read_to_string(self.path(path))
            .with_context(|| format!("cannot read {path} in the flattened image"))
    }

    /// The metadata of `path` itself (symlinks are not followed).
    pub fn metadata(&self, path: &str) -> Result<Metadata> {
        self.path(path)
            .symlink_metadata()
            .with_context(|| format!("{path} is not in the flattened image"))
    }

    /// The permission bits of `path`, including setuid, setgid and sticky.
    pub fn mode(&self, path: &str) -> Result<u32> {
        Ok(self.metadata(path)?.permissions().mode() & 0o7777)
    }

    /// The owner `(uid, gid)` of `path`.
    pub fn owner(&self, path: &str) -> Result<(u32, u32)> {
        let metadata = self.metadata(path)?;
        Ok((metadata.uid(), metadata.gid()))
    }
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn normalise_strips_prefixes_and_trailing_slash() {
        assert_eq!(normalise("./data/"), "data");
        assert_eq!(normalise("/data/f1"), "data/f1");
        assert_eq!(normalise("data/f1"), "data/f1");
        assert_eq!(normalise("./"), "");
        assert_eq!(normalise("/"), "");
        assert_eq!(normalise("."), "");
    }
}
