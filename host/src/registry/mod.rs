//! Registries: image references, credentials and tokens, pulling manifests
//! and blobs, and pushing images (blobs first, manifest last).

mod auth;
pub mod client;
mod pull;
mod push;
pub mod reference;

pub use client::{BlobSource, PulledImage, PushImage, Registry, RegistryError, RegistryOptions};
pub use reference::{Reference, ReferenceError};
