//! Comparing two images the way a user of them would: the flattened file
//! tree and the parts of the config that a Dockerfile sets. Layer lists,
//! timestamps and history are deliberately left out: builders are free to
//! split layers differently.

use crate::image::{Flattened, Image};
use anyhow::{Context, Result};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// What a path in an image is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file: its size and the sha256 of its contents.
    File {
        /// Size in bytes.
        size: u64,
        /// Hex sha256 of the contents.
        sha256: String,
    },
    /// A directory.
    Dir,
    /// A symbolic link to this target.
    Symlink(String),
    /// A device, fifo or socket, described (`char 1:3`, `fifo`, `socket`).
    Special(String),
}

/// One path of a flattened image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Its type and contents.
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// The other paths that are hard links to the same file, sorted.
    pub hardlinks: Vec<String>,
    /// A regular file's `security.capability` xattr (its file
    /// capabilities), hex-encoded.
    pub capability: Option<String>,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            NodeKind::File { size, sha256 } => {
                write!(f, "file {size} bytes sha256:{}…", &sha256[..12])?
            }
            NodeKind::Dir => write!(f, "dir")?,
            NodeKind::Symlink(target) => write!(f, "symlink -> {target}")?,
            NodeKind::Special(what) => write!(f, "{what}")?,
        }
        write!(f, " {:04o} {}:{}", self.mode, self.uid, self.gid)?;
        if !self.hardlinks.is_empty() {
            write!(f, " linked with {}", self.hardlinks.join(", "))?;
        }
        if let Some(capability) = &self.capability {
            write!(f, " security.capability {capability}")?;
        }
        Ok(())
    }
}

/// A flattened image's file tree, keyed by absolute path (`/` is the root).
#[derive(Clone, Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// Reads every path under `root` (symlinks are not followed).
    pub fn read(root: &Path) -> Result<Tree> {
        let mut nodes = BTreeMap::new();
        let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
        walk(root, "/", &mut nodes, &mut inodes)?;
        for paths in inodes.values().filter(|paths| paths.len() > 1) {
            for path in paths {
                let mut others: Vec<String> = paths
                    .iter()
                    .filter(|other| *other != path)
                    .cloned()
                    .collect();
                others.sort();
                if let Some(node) = nodes.get_mut(path) {
                    node.hardlinks = others;
                }
            }
        }
        Ok(Tree { nodes })
    }

    /// The node at `path` (absolute, e.g. `/etc/passwd`).
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Every path strictly below the directory `dir`, in order.
    pub fn paths_under<'a>(&'a self, dir: &str) -> impl Iterator<Item = &'a str> + 'a {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        self.nodes
            .keys()
            .filter(move |path| path.starts_with(&prefix))
            .map(String::as_str)
    }
}

fn walk(
    dir: &Path,
    path: &str,
    nodes: &mut BTreeMap<String, Node>,
    inodes: &mut HashMap<(u64, u64), Vec<String>>,
) -> Result<()> {
    let metadata = dir
        .symlink_metadata()
        .with_context(|| format!("cannot stat {}", dir.display()))?;
    nodes.insert(path.to_owned(), node(dir, &metadata)?);
    let mut children: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<io::Result<_>>()?;
    children.sort_by_key(|child| child.file_name());
    for child in children {
        let name = child.file_name();
        let child_path = format!("{}/{}", path.trim_end_matches('/'), name.to_string_lossy());
        let metadata = child.path().symlink_metadata()?;
        if metadata.is_dir() {
            walk(&child.path(), &child_path, nodes, inodes)?;
        } else {
            if metadata.is_file() && metadata.nlink() > 1 {
                inodes
                    .entry((metadata.dev(), metadata.ino()))
                    .or_default()
                    .push(child_path.clone());
            }
            nodes.insert(child_path, node(&child.path(), &metadata)?);
        }
    }
    Ok(())
}

fn node(host_path: &Path, metadata: &fs::Metadata) -> Result<Node> {
    let file_type = metadata.file_type();
    let mut capability = None;
    let kind = if file_type.is_file() {
        capability = read_capability(host_path)?;
        let mut hasher = Sha256::new();
        let mut file = File::open(host_path)
            .with_context(|| format!("cannot open {}", host_path.display()))?;
        io::copy(&mut file, &mut hasher)?;
        NodeKind::File {
            size: metadata.len(),
            sha256: hex::encode(hasher.finalize()),
        }
    } else if file_type.is_dir() {
        NodeKind::Dir
    } else if file_type.is_symlink() {
        NodeKind::Symlink(fs::read_link(host_path)?.to_string_lossy().into_owned())
    } else if file_type.is_char_device() || file_type.is_block_device() {
        let rdev = metadata.rdev();
        let kind = if file_type.is_char_device() {
            "char"
        } else {
            "block"
        };
        NodeKind::Special(format!(
            "{kind} {}:{}",
            rustix::fs::major(rdev),
            rustix::fs::minor(rdev)
        ))
    } else if file_type.is_fifo() {
        NodeKind::Special("fifo".into())
    } else {
        NodeKind::Special("socket".into())
    };
    Ok(Node {
        kind,
        mode: metadata.mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
        hardlinks: Vec::new(),
        capability,
    })
}

/// The hex-encoded `security.capability` xattr of the file at `path`, if
/// it has one.
fn read_capability(path: &Path) -> Result<Option<String>> {
    // A v3 capability (with a root uid) is 24 bytes; twice that is ample.
    let mut value = [0u8; 48];
    match rustix::fs::lgetxattr(path, "security.capability", &mut value) {
        Ok(len) => Ok(Some(hex::encode(&value[..len]))),
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => Ok(None),
        Err(e) => Err(e)
            .with_context(|| format!("cannot read the security.capability of {}", path.display())),
    }
}

/// Paths that buildah's chroot isolation creates as mount points for RUN
/// (`/dev`, `/proc`, `/sys`, `/run` as directories; `/etc/hostname`,
/// `/etc/hosts`, `/etc/resolv.conf` as empty 0755 files) and leaves in the
/// image. BuildKit and kiln mount their own instead, so these say nothing
/// about the Dockerfile; they are skipped on both sides only while they are
/// empty, so content that a Dockerfile really puts there is still compared.
const RUNTIME_MOUNT_POINTS: &[&str] = &[
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
];

fn is_runtime_artifact(tree: &Tree, path: &str, node: &Node) -> bool {
    if !RUNTIME_MOUNT_POINTS.contains(&path) {
        return false;
    }
    match &node.kind {
        NodeKind::Dir => tree.paths_under(path).next().is_none(),
        NodeKind::File { size, .. } => *size == 0,
        _ => false,
    }
}

/// The readable differences between the `expected` tree (the oracle's) and
/// the `actual` one (kiln's), one line each; empty when they match.
pub fn diff_trees(expected: &Tree, actual: &Tree, names: (&str, &str)) -> Vec<String> {
    let (expected_name, actual_name) = names;
    let mut lines = Vec::new();
    let mut paths: Vec<&str> = expected
        .nodes
        .keys()
        .chain(actual.nodes.keys())
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    paths.dedup();
    for path in paths {
        let left = expected
            .get(path)
            .filter(|node| !is_runtime_artifact(expected, path, node));
        let right = actual
            .get(path)
            .filter(|node| !is_runtime_artifact(actual, path, node));
        match (left, right) {
            (Some(left), Some(right)) if left != right => {
                lines.push(format!(
                    "{path}: {}",
                    describe_node_diff(left, right, names)
                ));
            }
            (Some(left), None) => lines.push(format!("{path}: only in {expected_name} ({left})")),
            (None, Some(right)) => lines.push(format!("{path}: only in {actual_name} ({right})")),
            _ => {}
        }
    }
    lines
}

fn describe_node_diff(left: &Node, right: &Node, (l, r): (&str, &str)) -> String {
    let mut parts = Vec::new();
    match (&left.kind, &right.kind) {
        (a, b) if a == b => {}
        (NodeKind::Symlink(a), NodeKind::Symlink(b)) => {
            parts.push(format!("symlink target: {l} {a}, {r} {b}"));
        }
        (NodeKind::File { .. }, NodeKind::File { .. }) => {
            parts.push(format!("contents: {l} {left}, {r} {right}"));
        }
        _ => parts.push(format!("type: {l} {left}, {r} {right}")),
    }
    if left.mode != right.mode {
        parts.push(format!(
            "mode: {l} {:04o}, {r} {:04o}",
            left.mode, right.mode
        ));
    }
    if (left.uid, left.gid) != (right.uid, right.gid) {
        parts.push(format!(
            "owner: {l} {}:{}, {r} {}:{}",
            left.uid, left.gid, right.uid, right.gid
        ));
    }
    if left.hardlinks != right.hardlinks {
        parts.push(format!(
            "hard links: {l} [{}], {r} [{}]",
            left.hardlinks.join(", "),
            right.hardlinks.join(", ")
        ));
    }
    if left.capability != right.capability {
        let show = |capability: &Option<String>| capability.clone().unwrap_or("none".into());
        parts.push(format!(
            "security.capability: {l} {}, {r} {}",
            show(&left.capability),
            show(&right.capability)
        ));
    }
    parts.join("; ")
}

/// The config fields a Dockerfile sets, compared between builders.
/// `Shell` is included because SHELL writes it; `ArgsEscaped`, `Image`,
/// `Hostname` and the like are builder bookkeeping.
pub const CONFIG_FIELDS: &[&str] = &[
    "Env",
    "Entrypoint",
    "Cmd",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
];

/// Labels that a builder adds on its own: buildah stamps its version.
const BUILDER_LABELS: &[&str] = &["io.buildah.version"];

/// The compared part of an image config (the `config` object of the image
/// config JSON), normalised: a field that is missing, `null` or empty is
/// dropped (the runtime treats all three alike), builder labels are dropped,
/// and a healthcheck's zero durations and retries (meaning "default") too.
/// `Env` is sorted: buildah moves a redefined variable to the end where
/// BuildKit replaces it in place, and a process sees the same environment
/// either way (names are unique).
pub fn config_view(config: &Value) -> BTreeMap<String, Value> {
    let mut view = BTreeMap::new();
    for field in CONFIG_FIELDS {
        let mut value = config.get(*field).cloned().unwrap_or(Value::Null);
        if *field == "Labels"
            && let Value::Object(labels) = &mut value
        {
            for label in BUILDER_LABELS {
                labels.remove(*label);
            }
        }
        if *field == "Env"
            && let Value::Array(env) = &mut value
        {
            env.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
        if *field == "Healthcheck"
            && let Value::Object(check) = &mut value
        {
            check.retain(|_, v| !is_empty_value(v) && v.as_u64() != Some(0));
        }
        if !is_empty_value(&value) {
            view.insert((*field).to_owned(), value);
        }
    }
    view
}

fn is_empty_value(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// The readable differences between two normalised config views.
pub fn diff_configs(
    expected: &BTreeMap<String, Value>,
    actual: &BTreeMap<String, Value>,
    (l, r): (&str, &str),
) -> Vec<String> {
    let mut lines = Vec::new();
    for field in CONFIG_FIELDS {
        let left = expected.get(*field);
        let right = actual.get(*field);
        if left != right {
            lines.push(format!(
                "config {field}: {l} {}, {r} {}",
                show(left),
                show(right)
            ));
        }
    }
    lines
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "(unset)".to_owned(), Value::to_string)
}

/// The differences between two images, ready to print.
#[derive(Debug, Default)]
pub struct Comparison {
    /// One line per difference: file tree first, then config.
    pub differences: Vec<String>,
}

impl Comparison {
    /// Whether the two images are equivalent.
    pub fn is_match(&self) -> bool {
        self.differences.is_empty()
    }

    /// The comparison without the differences about `subjects`: a path
    /// (`/etc/x`) or a config field (`config Cmd`), each exactly.
    pub fn excluding<'a>(self, subjects: impl IntoIterator<Item = &'a String>) -> Comparison {
        let prefixes: Vec<String> = subjects.into_iter().map(|s| format!("{s}: ")).collect();
        Comparison {
            differences: self
                .differences
                .into_iter()
                .filter(|line| !prefixes.iter().any(|prefix| line.starts_with(prefix)))
                .collect(),
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.differences {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Flattens and reads both images, then compares trees and configs;
/// `names` label the two sides in the differences (`("buildah", "kiln")`).
pub fn compare_images(expected: &Image, actual: &Image, names: (&str, &str)) -> Result<Comparison> {
    let expected_side =
        ImageView::read(expected).with_context(|| format!("cannot read the {} image", names.0))?;
    let actual_side =
        ImageView::read(actual).with_context(|| format!("cannot read the {} image", names.1))?;
    Ok(expected_side.compare(&actual_side, names))
}

/// An image's file tree and config, read once; the flattened root stays on
/// disk while the view lives, for reading contents in failure messages.
pub struct ImageView {
    /// The flattened filesystem.
    pub root: Flattened,
    /// Its file tree.
    pub tree: Tree,
    /// The whole `config` object of the image config.
    pub config: Value,
}

impl ImageView {
    /// Flattens `image` and reads its tree and config.
    pub fn read(image: &Image) -> Result<ImageView> {
        let flattened = image.flatten()?;
        let tree = Tree::read(flattened.root())?;
        let config = image.config()?["config"].clone();
        let config = match config {
            Value::Null => Value::Object(Map::new()),
            config => config,
        };
        Ok(ImageView {
            root: flattened,
            tree,
            config,
        })
    }

    /// The differences from `self` (expected) to `actual`.
    pub fn compare(&self, actual: &ImageView, names: (&str, &str)) -> Comparison {
        let mut differences = diff_trees(&self.tree, &actual.tree, names);
        differences.extend(diff_configs(
            &config_view(&self.config),
            &config_view(&actual.config),
            names,
        ));
        Comparison { differences }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn sample() -> Result<tempfile::TempDir> {
        let dir = tempfile::tempdir()?;
        fs::create_dir_all(dir.path().join("app/empty"))?;
        fs::write(dir.path().join("app/a"), "a\n")?;
        fs::hard_link(dir.path().join("app/a"), dir.path().join("app/b"))?;
        symlink("a", dir.path().join("app/l"))?;
        fs::set_permissions(dir.path().join("app/a"), fs::Permissions::from_mode(0o4755))?;
        fs::create_dir(dir.path().join("proc"))?;
        Ok(dir)
    }

    #[test]
    fn tree_records_kinds_modes_and_hardlinks() -> Result<()> {
        let dir = sample()?;
        let tree = Tree::read(dir.path())?;
        let a = tree.get("/app/a").unwrap();
        assert_eq!(a.mode, 0o4755);
        assert_eq!(a.hardlinks, vec!["/app/b".to_owned()]);
        assert_eq!(
            a.kind,
            NodeKind::File {
                size: 2,
                sha256: "87428fc522803d31065e7bce3cf03fe475096631e5e07bbd7a0fde60c4cf25c7".into()
            }
        );
        assert_eq!(tree.get("/app/b").unwrap().hardlinks, vec!["/app/a"]);
        assert_eq!(
            tree.get("/app/l").unwrap().kind,
            NodeKind::Symlink("a".into())
        );
        assert_eq!(tree.get("/app/empty").unwrap().kind, NodeKind::Dir);
        assert!(tree.get("/").is_some());
        let under: Vec<_> = tree.paths_under("/app").collect();
        assert_eq!(under, ["/app/a", "/app/b", "/app/empty", "/app/l"]);
        Ok(())
    }

    #[test]
    fn identical_trees_match_and_changes_are_named() -> Result<()> {
        let dir = sample()?;
        let before = Tree::read(dir.path())?;
        assert!(diff_trees(&before, &before, ("x", "y")).is_empty());

        fs::set_permissions(
            dir.path().join("app/empty"),
            fs::Permissions::from_mode(0o700),
        )?;
        fs::write(dir.path().join("app/new"), "")?;
        fs::remove_file(dir.path().join("app/l"))?;
        symlink("b", dir.path().join("app/l"))?;
        let after = Tree::read(dir.path())?;
        let diff = diff_trees(&before, &after, ("buildah", "kiln"));
        assert_eq!(diff.len(), 3, "{diff:#?}");
        assert!(
            diff[0].starts_with("/app/empty: mode: buildah 0755, kiln 0700"),
            "{diff:#?}"
        );
        assert_eq!(diff[1], "/app/l: symlink target: buildah a, kiln b");
        assert!(
            diff[2].starts_with("/app/new: only in kiln (file 0 bytes"),
            "{diff:#?}"
        );
        Ok(())
    }

    #[test]
    fn file_capabilities_are_read_and_compared() -> Result<()> {
        let dir = sample()?;
        let before = Tree::read(dir.path())?;
        assert_eq!(before.get("/app/a").unwrap().capability, None);
        // VFS_CAP_REVISION_2 with the effective flag, permitting cap_net_raw (13).
        let net_raw = [
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        rustix::fs::lsetxattr(
            dir.path().join("app/a"),
            "security.capability",
            &net_raw,
            rustix::fs::XattrFlags::empty(),
        )
        .context("setting file capabilities needs root, as the e2e tests do")?;
        let after = Tree::read(dir.path())?;
        let hex = "0100000200200000000000000000000000000000";
        assert_eq!(
            after.get("/app/a").unwrap().capability.as_deref(),
            Some(hex)
        );
        let diff = diff_trees(&before, &after, ("buildah", "kiln"));
        // /app/b is the same inode, so it carries the capability too.
        assert_eq!(diff.len(), 2, "{diff:#?}");
        assert_eq!(
            diff[0],
            format!("/app/a: security.capability: buildah none, kiln {hex}")
        );
        Ok(())
    }

    #[test]
    fn empty_runtime_mount_points_are_ignored_but_content_is_not() -> Result<()> {
        let dir = sample()?;
        let with_proc = Tree::read(dir.path())?;
        fs::remove_dir(dir.path().join("proc"))?;
        let without = Tree::read(dir.path())?;
        assert!(diff_trees(&with_proc, &without, ("x", "y")).is_empty());

        fs::create_dir(dir.path().join("proc"))?;
        fs::write(dir.path().join("proc/leak"), "x")?;
        let leaked = Tree::read(dir.path())?;
        let diff = diff_trees(&without, &leaked, ("x", "y"));
        assert_eq!(diff.len(), 2, "{diff:#?}");
        assert!(diff[0].starts_with("/proc: only in y"));
        assert!(diff[1].starts_with("/proc/leak: only in y"));
        Ok(())
    }

    #[test]
    fn config_view_normalises_empties_and_builder_labels() {
        let buildah = json!({
            "Env": ["PATH=/bin", "A=1"],
            "Cmd": null,
            "Entrypoint": [],
            "Labels": {"io.buildah.version": "1.28.2", "team": "x"},
            "Volumes": {},
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 0, "Retries": 3},
            "Hostname": "abc",
        });
        let kiln = json!({
            "Env": ["PATH=/bin", "A=1"],
            "Labels": {"team": "x"},
            "Healthcheck": {"Test": ["CMD", "true"], "Retries": 3},
        });
        let excluded = Comparison {
            differences: vec![
                "/a: mode".into(),
                "/a/b: mode".into(),
                "config Cmd: x".into(),
            ],
        }
        .excluding(&["/a".to_owned(), "config Cmd".to_owned()]);
        assert_eq!(excluded.differences, ["/a/b: mode"]);

        let (b, k) = (config_view(&buildah), config_view(&kiln));
        assert_eq!(b, k);
        assert_eq!(b.len(), 3);

        let reordered = json!({"Env": ["A=1", "PATH=/bin"], "Labels": {"team": "x"}});
        let only_healthcheck = diff_configs(&b, &config_view(&reordered), ("x", "y"));
        assert_eq!(only_healthcheck.len(), 1, "{only_healthcheck:#?}");
        assert!(only_healthcheck[0].starts_with("config Healthcheck:"));
        let changed = json!({"Env": ["A=2", "PATH=/bin"], "Labels": {"team": "y"}});
        let diff = diff_configs(&b, &config_view(&changed), ("buildah", "kiln"));
        assert_eq!(diff.len(), 3, "{diff:#?}");
        assert_eq!(
            diff[0],
            r#"config Env: buildah ["A=1","PATH=/bin"], kiln ["A=2","PATH=/bin"]"#
        );
        assert!(
            diff[2].starts_with("config Healthcheck: buildah {"),
            "{diff:#?}"
        );
        assert!(diff[2].ends_with("kiln (unset)"), "{diff:#?}");
    }
}
