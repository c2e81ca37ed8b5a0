//! kiln: a daemonless container image builder.
//!
//! The host owns every side effect; WebAssembly plugins own the meaning of
//! build contexts and Dockerfile instructions. Modules only depend downwards
//! in this list.

pub mod cli;
pub mod logging;
pub mod build;
pub mod context;
pub mod plugin;
pub mod registry;
pub mod image;
pub mod snapshot;
pub mod sandbox;
pub mod layer;
pub mod store;
pub mod dockerfile;
pub mod digest;
