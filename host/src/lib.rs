//! kiln: a daemonless container image builder.
//!
//! The host owns every side effect; WebAssembly plugins own the meaning of
//! build contexts and Dockerfile instructions. Modules only depend downwards
//! in this list.

pub mod build;
pub mod cache;
pub mod cli;
pub mod cloud;
pub mod context;
pub mod digest;
pub mod dockerfile;
pub mod image;
pub mod layer;
pub mod logging;
pub mod plugin;
pub mod progress;
pub mod registry;
pub mod sandbox;
pub mod snapshot;
pub mod store;
