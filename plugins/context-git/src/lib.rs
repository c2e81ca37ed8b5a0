//! kiln's `git://` context source: a repository fetched over git's smart HTTP
//! protocol (v2, else v0) and streamed to the host as a tar of one commit's tree.
//!
//! `git://host[:port]/org/repo.git[#ref[#commit]]`, as kaniko spells it. Only
//! the needed commit is fetched (`deepen 1`). The pack is spilled to the
//! scratch directory the host preopens (`KILN_SCRATCH`, else `/scratch`) and
//! indexed there; the archive is produced entry by entry while the host reads
//! it. Credentials never reach the plugin: the host adds them to the requests.
//!
//! Options (from the host): `pull-method` (`https`, `http`), kaniko's
//! `--git` keys `branch`, `single-branch`, `recurse-submodules`, and for
//! `ADD <git url>`: `keep-git-dir` (the archive also carries a `.git`
//! directory) and `checksum` (the commit id, or a prefix, the ref must name).

mod checkout;
mod delta;
mod gitdir;
mod object;
mod pack;
mod pktline;
mod protocol;
mod request;
mod submodule;
mod tar;
// The end-to-end tests drive the real `git` CLI, so they run natively only.
#[cfg(all(test, unix))]
mod tests;

use std::path::PathBuf;

use kiln_plugin_sdk::{ContextSource, KeyValue, Opened, PluginError, register_context_source};

use crate::protocol::{HttpResponse, Transport};
use crate::request::Request;

/// The `git` context source.
struct GitSource;

impl ContextSource for GitSource {
    fn schemes() -> Vec<String> {
        vec!["git".to_owned()]
    }

    fn open(url: String, options: Vec<KeyValue>) -> Result<Opened, PluginError> {
        let request = Request::parse(&url, &options)?;
        let scratch = std::env::var_os("KILN_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/scratch"));
        let checkout = checkout::checkout(&WasiHttp, &request, &scratch)?;
        kiln_plugin_sdk::info!(
            "{url}: checked out commit {} ({} objects fetched, {} as deltas; {} submodules)",
            checkout.commit,
            checkout.objects,
            checkout.deltas,
            checkout.submodules
        );
        Ok(Opened::Tar(Box::new(checkout.tar)))
    }
}

register_context_source!(GitSource);

/// HTTP through the host's `wasi:http`.
struct WasiHttp;

#[cfg(target_arch = "wasm32")]
impl WasiHttp {
    fn convert(response: kiln_plugin_sdk::http::Response) -> HttpResponse {
        HttpResponse {
            status: response.status,
            content_type: response.header("content-type").map(str::to_owned),
            body: Box::new(response),
        }
    }
}

#[cfg(target_arch = "wasm32")]
impl Transport for WasiHttp {
    fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<HttpResponse, PluginError> {
        kiln_plugin_sdk::http::get(url, headers).map(Self::convert)
    }

    fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse, PluginError> {
        kiln_plugin_sdk::http::post(url, headers, body).map(Self::convert)
    }
}

// `wasi:http` exists only in the component; native builds serve the unit tests.
#[cfg(not(target_arch = "wasm32"))]
impl Transport for WasiHttp {
    fn get(&self, url: &str, _: &[(&str, &str)]) -> Result<HttpResponse, PluginError> {
        Err(native_network(url))
    }

    fn post(&self, url: &str, _: &[(&str, &str)], _: &[u8]) -> Result<HttpResponse, PluginError> {
        Err(native_network(url))
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn native_network(url: &str) -> PluginError {
    PluginError::new(format!(
        "{url}: this build of context-git has no network; it fetches only as a wasm32-wasip2 component"
    ))
}
