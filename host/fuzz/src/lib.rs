//! kiln's Dockerfile frontend built from its own sources, for the fuzz targets.
//! The module is pure (no I/O, no other kiln module), which is what lets it be
//! compiled here without the rest of the crate.

#[path = "../../src/dockerfile/mod.rs"]
pub mod dockerfile;
