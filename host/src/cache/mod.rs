//! Caching: content-addressed step keys (pure), the layer cache in a
//! registry repository or an OCI layout, and the base-image cache on disk.

pub mod base;
pub mod file_digests;
pub mod key;
pub mod sources;
pub mod store;
