//! Precompiled components on disk: compile once with Cranelift, then
//! deserialize (mmap) on every later start.

use super::PluginError;
use sha2::{Digest as _, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The file that holds `wasm` precompiled for `engine`: keyed by the
/// component's bytes and by everything that makes precompiled code
/// incompatible (wasmtime version, target, engine settings).
pub fn cache_path(dir: &Path, engine: &Engine, wasm: &[u8]) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let engine_key = h.finish();
    let wasm_key = hex::encode(Sha256::digest(wasm));
    dir.join(format!("{wasm_key}-{engine_key:016x}.cwasm"))
}

/// The read-only directory of components precompiled when kiln was
/// installed: `plugins` beside the executable (`/kiln/plugins` in kiln's
/// image), so that a kiln directory on a fresh volume compiles nothing.
pub fn shipped_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join("plugins")).filter(|d| d.is_dir())
}

/// Loads `wasm` from `shipped` if it holds it precompiled for `engine`, else
/// from the cache in `dir`, compiling and storing it there first if needed.
pub fn load(
    dir: &Path,
    shipped: Option<&Path>,
    engine: &Engine,
    name: &str,
    wasm: &[u8],
) -> Result<Component, PluginError> {
    if let Some(shipped) = shipped {
        let path = cache_path(shipped, engine, wasm);
        if path.is_file() {
            // SAFETY: as below; files there were written by `compile_into`
            // of an engine with the compatibility hash in their name.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => log::debug!(
                    "shipped precompiled plugin {name} at {} is unusable ({e})",
                    path.display()
                ),
            }
        }
    }
    let path = cache_path(dir, engine, wasm);
    if !path.is_file() {
        compile_into(dir, &path, engine, name, wasm)?;
    }
    // SAFETY: the file was produced by `precompile_component` of an engine
    // with the same compatibility hash (it is part of the file name), and is
    // only ever written by renaming a complete temp file into place.
    let loaded = unsafe { Component::deserialize_file(engine, &path) };
    match loaded {
        Ok(c) => Ok(c),
        Err(first) => {
            // A cache file from a crashed or foreign writer: rebuild it once.
            log::debug!(
                "precompiled plugin {name} at {} is unusable ({first}); recompiling",
                path.display()
            );
            compile_into(dir, &path, engine, name, wasm)?;
            // SAFETY: as above; the file was just written by this process.
            unsafe { Component::deserialize_file(engine, &path) }.map_err(|e| PluginError::Load {
                plugin: name.into(),
                message: e.to_string(),
            })
        }
    }
}

fn compile_into(
    dir: &Path,
    path: &Path,
    engine: &Engine,
    name: &str,
    wasm: &[u8],
) -> Result<(), PluginError> {
    let io = |e: std::io::Error| PluginError::Cache {
        path: dir.to_owned(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let code = engine
        .precompile_component(wasm)
        .map_err(|e| PluginError::Load {
            plugin: name.into(),
            message: format!("{e:#}"),
        })?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    std::io::Write::write_all(&mut tmp, &code).map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
