//! Harness for kiln's end-to-end tests: real registries, real base images and
//! independent tools (skopeo, umoci) to check what the real `kiln` binary built.
//!
//! Every helper owns what it starts or writes and cleans it up on drop, so each
//! test runs against its own registry and scratch directories.

mod base;
mod command;
mod context;
mod image;
mod kiln;
mod registry;

pub use base::{APP_ID, BaseImage, add_data_files, busybox_rootfs};
pub use context::BuildContext;
pub use image::{Entry, EntryKind, Flattened, Image};
pub use kiln::{KilnOutput, docker_config, kiln_bin, plugin_path, run_kiln};
pub use registry::Registry;
