//! kiln's pure parsers built from their own sources, for the fuzz targets.
//! Each module compiled here does no I/O and uses no kiln module outside this
//! file, which is what lets it be built without the rest of the crate
//! (and without wasmtime under sanitizers).

#[path = "../../src/dockerfile/mod.rs"]
pub mod dockerfile;

/// `reference` names its digest type as `crate::digest::Digest`.
#[path = "../../src/digest.rs"]
pub mod digest;

#[path = "../../src/registry/reference.rs"]
pub mod reference;

#[path = "../../src/registry/auth/challenge.rs"]
pub mod challenge;
