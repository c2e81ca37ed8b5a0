//! Images: the config, manifests and indexes, and the layout writers.

pub mod config;
pub mod layout;
pub mod manifest;
pub mod tarball;
