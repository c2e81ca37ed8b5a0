//! Registries: image references, credentials and tokens, pulling manifests
//! and blobs (through mirrors), and pushing images (blobs first, manifest
//! last); per-registry TLS, proxies and retries underneath.

mod auth;
pub mod client;
pub mod mirror;
pub mod proxy;
mod pull;
mod push;
pub mod reference;
mod retry;
mod stream;
mod tls;
mod upload;

pub use client::{
    BlobSource, DEFAULT_RETRIES, PulledImage, PushImage, Registry, RegistryError, RegistryOptions,
};
pub use mirror::parse_registry_map;
pub use proxy::ProxyConfig;
pub use push::PushOptions;
pub use reference::{Reference, ReferenceError};
pub use stream::GrowingUpload;
pub use tls::{Direction, environment_cas};
