//! kiln's `dir://` context source: a directory on the host, read in place.
//!
//! The plugin only checks the URL; the host reads the directory natively
//! (WASI exposes no owners or permission bits). Plain paths without a scheme
//! reach this plugin as `dir://<path>`.

use kiln_plugin_sdk::{ContextSource, KeyValue, Opened, PluginError, register_context_source};

/// The `dir` context source.
struct DirSource;

impl ContextSource for DirSource {
    fn schemes() -> Vec<String> {
        vec!["dir".to_owned()]
    }

    fn open(url: String, options: Vec<KeyValue>) -> Result<Opened, PluginError> {
        if let Some(option) = options.first() {
            return Err(PluginError::new(format!(
                "the dir context source takes no options, got `{}`",
                option.key
            )));
        }
        dir_path(&url)
            .map(|path| Opened::Directory(path.to_owned()))
            .map_err(|message| {
                PluginError::new(message)
                    .with_hint("write --context=dir:///abs/path or dir://rel/path")
            })
    }
}

register_context_source!(DirSource);

/// The directory a `dir://` URL names: absolute for `dir:///abs`, relative to
/// kiln's working directory for `dir://rel`.
fn dir_path(url: &str) -> Result<&str, String> {
    let path = url
        .strip_prefix("dir://")
        .ok_or_else(|| format!("`{url}` is not a dir:// URL"))?;
    if path.is_empty() {
        return Err(format!("`{url}` names no directory"));
    }
    if path.contains('\0') {
        return Err(format!("`{}` contains a NUL byte", url.escape_debug()));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::dir_path;

    #[test]
    fn absolute_and_relative_paths() {
        assert_eq!(dir_path("dir:///abs/ctx"), Ok("/abs/ctx"));
        assert_eq!(dir_path("dir://rel/ctx/"), Ok("rel/ctx/"));
        assert_eq!(dir_path("dir://."), Ok("."));
    }

    #[test]
    fn rejects_other_shapes() {
        assert!(
            dir_path("dir://")
                .unwrap_err()
                .contains("names no directory")
        );
        assert!(
            dir_path("dir:/abs")
                .unwrap_err()
                .contains("not a dir:// URL")
        );
        assert!(
            dir_path("tar:///x.tar")
                .unwrap_err()
                .contains("not a dir:// URL")
        );
        assert!(dir_path("dir://a\0b").unwrap_err().contains("NUL"));
    }
}
