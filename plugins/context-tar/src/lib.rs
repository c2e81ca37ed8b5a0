//! kiln's `tar://` context source: a tar archive (plain, gzip or zstd) on the
//! host, streamed to the host as it is read; the host unpacks it.
//!
//! `tar://stdin` reads kiln's standard input, which the host grants to this
//! call alone. For a file, the host grants a read-only preopen of the
//! archive's parent directory at the same absolute path. A relative path is resolved against `PWD` when the
//! host sets it (its own working directory), else WASI resolves it against
//! the preopens.

use std::fs::File;
use std::path::PathBuf;

use kiln_plugin_sdk::{ContextSource, KeyValue, Opened, PluginError, register_context_source};

/// The `tar` context source.
struct TarSource;

impl ContextSource for TarSource {
    fn schemes() -> Vec<String> {
        vec!["tar".to_owned()]
    }

    fn open(url: String, options: Vec<KeyValue>) -> Result<Opened, PluginError> {
        if let Some(option) = options.first() {
            return Err(PluginError::new(format!(
                "the tar context source takes no options, got `{}`",
                option.key
            )));
        }
        let path = match archive_path(&url) {
            Ok(Archive::Stdin) => return Ok(Opened::Tar(Box::new(std::io::stdin()))),
            Ok(Archive::File(path)) => resolve(path),
            Err(message) => {
                return Err(PluginError::new(message)
                    .with_hint("write --context=tar:///abs/ctx.tar.gz or tar://rel/ctx.tar"));
            }
        };
        let file = File::open(&path).map_err(|e| {
            PluginError::new(format!(
                "cannot open the context archive {}: {e}",
                path.display()
            ))
            .with_hint("check the --context path and that kiln may read it")
        })?;
        Ok(Opened::Tar(Box::new(file)))
    }
}

register_context_source!(TarSource);

/// What a `tar://` URL names.
#[derive(Debug, PartialEq, Eq)]
enum Archive<'a> {
    /// `tar://stdin`: kiln's standard input.
    Stdin,
    /// A file, absolute for `tar:///abs`, relative for `tar://rel`.
    File(&'a str),
}

fn archive_path(url: &str) -> Result<Archive<'_>, String> {
    let path = url
        .strip_prefix("tar://")
        .ok_or_else(|| format!("`{url}` is not a tar:// URL"))?;
    match path {
        "" => Err(format!("`{url}` names no archive")),
        "stdin" => Ok(Archive::Stdin),
        path if path.ends_with('/') => Err(format!("`{url}` names a directory, not an archive")),
        path if path.contains('\0') => Err(format!("`{}` contains a NUL byte", url.escape_debug())),
        path => Ok(Archive::File(path)),
    }
}

fn resolve(path: &str) -> PathBuf {
    match std::env::var_os("PWD") {
        Some(pwd) if !path.starts_with('/') => PathBuf::from(pwd).join(path),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::{Archive, archive_path};

    #[test]
    fn urls() {
        assert_eq!(
            archive_path("tar:///ctx/a.tar.gz"),
            Ok(Archive::File("/ctx/a.tar.gz"))
        );
        assert_eq!(
            archive_path("tar://rel/a.tar"),
            Ok(Archive::File("rel/a.tar"))
        );
        assert_eq!(archive_path("tar://stdin"), Ok(Archive::Stdin));
        assert!(
            archive_path("tar://")
                .unwrap_err()
                .contains("names no archive")
        );
        assert!(
            archive_path("tar:///ctx/")
                .unwrap_err()
                .contains("names a directory")
        );
        assert!(
            archive_path("dir:///ctx")
                .unwrap_err()
                .contains("not a tar:// URL")
        );
    }
}
