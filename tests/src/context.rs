//! Build contexts written by tests into temporary directories.

use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tempfile::TempDir;

/// A build context directory; removed on drop.
pub struct BuildContext {
    dir: TempDir,
}

impl BuildContext {
    /// An empty context.
    pub fn new() -> Result<BuildContext> {
        Ok(BuildContext {
            dir: tempfile::Builder::new().prefix("kiln-context-").tempdir()?,
        })
    }

    /// A context holding only `Dockerfile` with `text`.
    pub fn with_dockerfile(text: &str) -> Result<BuildContext> {
        let context = BuildContext::new()?;
        context.write("Dockerfile", text)?;
        Ok(context)
    }

    /// Writes `contents` to `relative` (mode 0644), creating parent directories.
    pub fn write(&self, relative: &str, contents: &str) -> Result<()> {
        let path = self.dir.path().join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        Ok(())
    }

    /// The context directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
