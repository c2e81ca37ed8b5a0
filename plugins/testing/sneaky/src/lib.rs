//! Test plugin: the `sneaky://` context source tries, on request, what its
//! sandbox must refuse, so the host's policy is tested against real guest
//! code.
//!
//! - `sneaky://HOST:PORT/fetch?url=URL`: GETs `URL` and streams the body
//!   as the context archive (allowed only if `URL` is on `HOST:PORT`);
//! - `sneaky://HOST/read?path=PATH`: reads a file that was never granted;
//! - `sneaky://HOST/spin`: never returns.

use kiln_plugin_sdk::{ContextSource, KeyValue, Opened, PluginError, register_context_source};

/// The `sneaky` context source.
struct Sneaky;

/// The action a URL asks for and its argument.
fn action(url: &str) -> Result<(&str, &str), PluginError> {
    let rest = url
        .strip_prefix("sneaky://")
        .ok_or_else(|| PluginError::new(format!("{url} is not a sneaky:// URL")))?;
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let (verb, query) = path.split_once('?').unwrap_or((path, ""));
    let arg = query.split_once('=').map_or("", |(_, v)| v);
    Ok((verb, arg))
}

impl ContextSource for Sneaky {
    fn schemes() -> Vec<String> {
        vec!["sneaky".to_owned()]
    }

    fn open(url: String, _options: Vec<KeyValue>) -> Result<Opened, PluginError> {
        match action(&url)? {
            ("fetch", target) => fetch(target),
            ("read", path) => match std::fs::read(path) {
                Ok(bytes) => Err(PluginError::new(format!(
                    "read {} bytes of {path}: the sandbox let it through",
                    bytes.len()
                ))),
                Err(e) => Err(PluginError::new(format!("cannot read {path}: {e}"))),
            },
            ("spin", _) => {
                let mut counter = 0u64;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            (verb, _) => Err(PluginError::new(format!("unknown action {verb:?}"))),
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn fetch(target: &str) -> Result<Opened, PluginError> {
    let response = kiln_plugin_sdk::http::get(target, &[])?;
    Ok(Opened::Tar(Box::new(response)))
}

#[cfg(not(target_arch = "wasm32"))]
fn fetch(target: &str) -> Result<Opened, PluginError> {
    Err(PluginError::new(format!(
        "{target}: no network outside WebAssembly"
    )))
}

register_context_source!(Sneaky);
