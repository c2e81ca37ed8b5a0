//! Dockerfile cases kept as directories (`tests/cases/NAME/`): a
//! `Dockerfile`, its context files, and optionally
//!
//! - `case.json`: `build_args` (object), `target`, `needs` (cases whose
//!   images this one builds on, named `@CASE:NAME@` in the Dockerfile),
//!   `oracle` (false: buildah cannot build it, `expected.json` says what kiln
//!   must produce), `oracle_divergences` (`{"/path" or "config Field":
//!   "why buildah is not BuildKit here"}`: left out of the comparison with
//!   buildah and required in `expected.json` instead), and how to shape the context where git cannot:
//!   `modes` (`{"path": "0755"}`), `empty_dirs`, `tarballs`
//!   (`{"archive.tar.gz": "dir"}`: a gzip tar of the case's `dir`, entries
//!   owned by [`TAR_OWNER`]);
//! - `expected.json`: exact expectations (see [`crate::check_expected`]).
//!
//! Placeholders such as `@BASE@` (busybox) and `@DEBIAN@` (Debian bookworm)
//! in the Dockerfile are replaced when the context is written, because
//! registry ports change from run to run.

use crate::buildah::BuildSpec;
use crate::context::BuildContext;
use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The uid and gid of every entry in a case's generated tarballs.
pub const TAR_OWNER: (u64, u64) = (1234, 5678);

/// A fixed mtime for generated tarball entries.
const TAR_MTIME: u64 = 1_000_000_000;

/// The starts of the placeholders a Dockerfile may use: a value must be
/// given for each one that it does.
const PLACEHOLDERS: &[&str] = &["@CASE:", "@BASE@", "@DEBIAN@"];

/// Files of a case directory that describe the case and are not context.
const CASE_FILES: &[&str] = &["case.json", "expected.json"];

/// One Dockerfile case.
#[derive(Clone, Debug)]
pub struct Case {
    /// The directory name.
    pub name: String,
    /// The case directory.
    pub dir: PathBuf,
    /// `--build-arg`s.
    pub build_args: Vec<(String, String)>,
    /// `--target`.
    pub target: Option<String>,
    /// Cases that must be built first (their images are `@CASE:NAME@`).
    pub needs: Vec<String>,
    /// Whether buildah can build it and serves as the oracle.
    pub oracle: bool,
    /// The exact expectations, if any.
    pub expected: Option<Value>,
    /// Paths and `config Field`s where buildah differs from BuildKit, with
    /// the reason; `expected` pins them down instead.
    pub oracle_divergences: BTreeMap<String, String>,
    modes: BTreeMap<String, u32>,
    empty_dirs: Vec<String>,
    tarballs: BTreeMap<String, String>,
}

impl Case {
    /// Every case under `dir`, sorted by name.
    pub fn load_all(dir: &Path) -> Result<Vec<Case>> {
        let mut cases = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                cases.push(
                    Case::load(&entry.path())
                        .with_context(|| format!("bad case {}", entry.path().display()))?,
                );
            }
        }
        cases.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(cases)
    }

    /// The case in `dir`.
    pub fn load(dir: &Path) -> Result<Case> {
        let name = dir
            .file_name()
            .context("a case directory has a name")?
            .to_string_lossy()
            .into_owned();
        if !dir.join("Dockerfile").is_file() {
            bail!("{} has no Dockerfile", dir.display());
        }
        let options = read_json(&dir.join("case.json"))?.unwrap_or(Value::Null);
        let expected = read_json(&dir.join("expected.json"))?;
        let empty = serde_json::Map::new();
        let options = match &options {
            Value::Null => &empty,
            Value::Object(map) => map,
            _ => bail!("case.json must hold an object"),
        };
        let mut case = Case {
            name,
            dir: dir.to_owned(),
            build_args: Vec::new(),
            target: None,
            needs: Vec::new(),
            oracle: true,
            expected,
            oracle_divergences: BTreeMap::new(),
            modes: BTreeMap::new(),
            empty_dirs: Vec::new(),
            tarballs: BTreeMap::new(),
        };
        for (key, value) in options {
            match key.as_str() {
                "build_args" => case.build_args = string_map(value, key)?.into_iter().collect(),
                "target" => case.target = Some(string(value, key)?),
                "needs" => case.needs = string_list(value, key)?,
                "oracle" => case.oracle = value.as_bool().context("`oracle` must be a bool")?,
                "oracle_divergences" => case.oracle_divergences = string_map(value, key)?,
                "modes" => {
                    for (path, mode) in string_map(value, key)? {
                        let parsed = u32::from_str_radix(&mode, 8)
                            .with_context(|| format!("mode {mode:?} of {path} is not octal"))?;
                        case.modes.insert(path, parsed);
                    }
                }
                "empty_dirs" => case.empty_dirs = string_list(value, key)?,
                "tarballs" => case.tarballs = string_map(value, key)?,
                other => bail!("unknown key {other:?} in case.json"),
            }
        }
        if !case.oracle && case.expected.is_none() {
            bail!("a case that buildah cannot check needs an expected.json");
        }
        for subject in case.oracle_divergences.keys() {
            if !case.expects(subject) {
                bail!(
                    "oracle divergence {subject:?} must be pinned down in expected.json \
                     (under `paths`, or `config` for \"config Field\")"
                );
            }
        }
        Ok(case)
    }

    /// Whether `expected.json` covers `subject`: a path under `paths` or a
    /// `config Field` under `config`.
    fn expects(&self, subject: &str) -> bool {
        let Some(expected) = &self.expected else {
            return false;
        };
        match subject.strip_prefix("config ") {
            Some(field) => expected["config"].get(field).is_some(),
            None => expected["paths"].get(subject).is_some(),
        }
    }

    /// Whether the Dockerfile uses `placeholder` (such as `@DEBIAN@`), so
    /// that costly values are made only for the cases that need them.
    pub fn mentions(&self, placeholder: &str) -> Result<bool> {
        let path = self.dir.join("Dockerfile");
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(text.contains(placeholder))
    }

    /// Writes the case's context into a fresh directory: its files with
    /// modes 0644/0755 (or those in `modes`), the generated empty
    /// directories and tarballs, and the Dockerfile with each
    /// `(placeholder, value)` substituted.
    pub fn context(&self, substitutions: &[(String, String)]) -> Result<BuildContext> {
        let context = BuildContext::new()?;
        // A temporary directory is 0700; `COPY . /dst` must not see that.
        fs::set_permissions(context.path(), fs::Permissions::from_mode(0o755))?;
        copy_tree(&self.dir, context.path(), true)?;
        let dockerfile = context.path().join("Dockerfile");
        let mut text = fs::read_to_string(&dockerfile)?;
        for (placeholder, value) in substitutions {
            text = text.replace(placeholder, value);
        }
        if let Some(start) = PLACEHOLDERS.iter().filter_map(|p| text.find(p)).min() {
            let rest = &text[start..];
            bail!(
                "{}: placeholder {} has no value",
                self.name,
                rest.split_whitespace().next().unwrap_or(rest)
            );
        }
        fs::write(&dockerfile, text)?;
        for dir in &self.empty_dirs {
            let path = context.path().join(dir);
            fs::create_dir_all(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
        for (path, mode) in &self.modes {
            let path = context.path().join(path);
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                .with_context(|| format!("cannot chmod {}", path.display()))?;
        }
        for (archive, source) in &self.tarballs {
            write_tarball(&context.path().join(source), &context.path().join(archive))
                .with_context(|| format!("cannot make {archive} from {source}"))?;
        }
        Ok(context)
    }

    /// What to build from `context`.
    pub fn spec(&self, context: &BuildContext) -> BuildSpec {
        BuildSpec {
            build_args: self.build_args.clone(),
            target: self.target.clone(),
            ..BuildSpec::new(context.path())
        }
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not valid JSON", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn string(value: &Value, key: &str) -> Result<String> {
    value
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("`{key}` must be a string"))
}

fn string_list(value: &Value, key: &str) -> Result<Vec<String>> {
    value
        .as_array()
        .with_context(|| format!("`{key}` must be an array"))?
        .iter()
        .map(|item| string(item, key))
        .collect()
}

fn string_map(value: &Value, key: &str) -> Result<BTreeMap<String, String>> {
    value
        .as_object()
        .with_context(|| format!("`{key}` must be an object"))?
        .iter()
        .map(|(name, item)| Ok((name.clone(), string(item, key)?)))
        .collect()
}

/// Copies regular files and directories with normalised modes, so that the
/// checkout's umask never reaches an image.
fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if top && CASE_FILES.iter().any(|file| name == *file) {
            continue;
        }
        let target = to.join(&name);
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            fs::create_dir(&target)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
            copy_tree(&entry.path(), &target, false)?;
        } else if file_type.is_file() {
            fs::copy(entry.path(), &target)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o644))?;
        } else {
            bail!(
                "{}: cases hold only files and directories; describe the rest in case.json",
                entry.path().display()
            );
        }
    }
    Ok(())
}

/// A gzip tar of the tree at `source` (its contents, not itself), sorted,
/// with the modes on disk and [`TAR_OWNER`] as owner.
fn write_tarball(source: &Path, archive: &Path) -> Result<()> {
    let mut builder = tar::Builder::new(GzEncoder::new(
        File::create(archive)?,
        Compression::default(),
    ));
    append_dir(&mut builder, source, Path::new(""))?;
    builder.into_inner()?.finish()?;
    Ok(())
}

fn append_dir<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    relative: &Path,
) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = relative.join(entry.file_name());
        let metadata = entry.metadata()?;
        let mut header = tar::Header::new_gnu();
        header.set_mode(metadata.permissions().mode() & 0o7777);
        header.set_uid(TAR_OWNER.0);
        header.set_gid(TAR_OWNER.1);
        header.set_mtime(TAR_MTIME);
        if metadata.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder.append_data(&mut header, &path, std::io::empty())?;
            append_dir(builder, &entry.path(), &path)?;
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(metadata.len());
            builder.append_data(&mut header, &path, File::open(entry.path())?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_normalised_substituted_and_shaped() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let case_dir = dir.path().join("demo");
        fs::create_dir_all(case_dir.join("src/sub"))?;
        fs::write(case_dir.join("Dockerfile"), "FROM @BASE@\nCOPY . /x\n")?;
        fs::write(case_dir.join("src/sub/f"), "f\n")?;
        fs::write(case_dir.join("tool.sh"), "#!/bin/sh\n")?;
        fs::write(
            case_dir.join("case.json"),
            r#"{"build_args": {"A": "1"}, "target": "t", "modes": {"tool.sh": "0750"},
                "empty_dirs": ["e/f"], "tarballs": {"a.tar.gz": "src"}}"#,
        )?;
        let case = Case::load(&case_dir)?;
        assert_eq!(case.build_args, [("A".to_owned(), "1".to_owned())]);
        assert!(case.mentions("@BASE@")?);
        assert!(!case.mentions("@DEBIAN@")?);
        assert!(case.oracle);

        let context = case.context(&[("@BASE@".into(), "reg/base:1".into())])?;
        let root = context.path();
        assert_eq!(
            fs::read_to_string(root.join("Dockerfile"))?,
            "FROM reg/base:1\nCOPY . /x\n"
        );
        assert!(!root.join("case.json").exists());
        let mode = |p: &str| -> Result<u32> {
            Ok(fs::metadata(root.join(p))?.permissions().mode() & 0o7777)
        };
        assert_eq!(mode("tool.sh")?, 0o750);
        assert_eq!(mode("src/sub/f")?, 0o644);
        assert_eq!(mode("src/sub")?, 0o755);
        assert!(root.join("e/f").is_dir());

        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(File::open(
            root.join("a.tar.gz"),
        )?));
        let mut seen = Vec::new();
        for entry in archive.entries()? {
            let entry = entry?;
            let header = entry.header();
            assert_eq!((header.uid()?, header.gid()?), TAR_OWNER);
            seen.push(entry.path()?.display().to_string());
        }
        assert_eq!(seen, ["sub", "sub/f"]);
        let spec = case.spec(&context);
        assert_eq!(spec.target.as_deref(), Some("t"));
        assert_eq!(spec.dockerfile, root.join("Dockerfile"));
        Ok(())
    }

    #[test]
    fn missing_placeholder_values_and_bad_options_fail() -> Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("Dockerfile"), "FROM @DEBIAN@\n")?;
        let err = Case::load(dir.path())?
            .context(&[("@BASE@".into(), "reg/base:1".into())])
            .err()
            .context("an unset @DEBIAN@ must fail")?;
        assert!(format!("{err:#}").contains("@DEBIAN@"), "{err:#}");
        fs::write(dir.path().join("Dockerfile"), "FROM @CASE:parent@\n")?;
        let case = Case::load(dir.path())?;
        let err = case
            .context(&[])
            .err()
            .context("an unset placeholder must fail")?;
        assert!(format!("{err:#}").contains("@CASE:parent@"), "{err:#}");

        fs::write(dir.path().join("case.json"), r#"{"oracle": false}"#)?;
        assert!(
            Case::load(dir.path()).is_err(),
            "oracle false needs expected.json"
        );
        fs::write(dir.path().join("case.json"), r#"{"colour": "red"}"#)?;
        assert!(Case::load(dir.path()).is_err());

        fs::write(
            dir.path().join("case.json"),
            r#"{"oracle_divergences": {"/x": "why", "config Cmd": "why"}}"#,
        )?;
        fs::write(dir.path().join("expected.json"), r#"{"paths": {"/x": {}}}"#)?;
        let err = Case::load(dir.path())
            .err()
            .context("config Cmd is not pinned down")?;
        assert!(format!("{err:#}").contains("config Cmd"), "{err:#}");
        fs::write(
            dir.path().join("expected.json"),
            r#"{"paths": {"/x": {}}, "config": {"Cmd": ["a"]}}"#,
        )?;
        assert_eq!(Case::load(dir.path())?.oracle_divergences.len(), 2);
        Ok(())
    }
}
