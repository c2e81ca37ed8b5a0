//! Harness for kiln's end-to-end tests: real registries, real base images and
//! independent tools (skopeo, umoci, and buildah as an oracle) to check what
//! the real `kiln` binary built.
//!
//! Every helper owns what it starts or writes and cleans it up on drop, so each
//! test runs against its own registry and scratch directories.

mod base;
mod buildah;
mod cases;
mod command;
mod compare;
pub mod container_root;
pub mod containerd;
mod context;
mod credentials;
mod expected;
mod faults;
mod http;
mod image;
mod kiln;
mod registry;
mod skopeo;
mod token;
mod wire;

pub use base::{APP_ID, BaseImage, add_data_files, busybox_rootfs};
pub use buildah::{BuildSpec, Buildah, mounts_under};
pub use cases::{
    Case, CaseOutcome, CasePlan, CaseRun, CaseServices, CaseWorker, TAR_OWNER, case_problems,
    kiln_error_lines, report_outcomes, run_cases, select_cases,
};
pub use compare::{
    CONFIG_FIELDS, Comparison, ImageView, Node, NodeKind, Tree, compare_images, config_view,
    diff_configs, diff_trees,
};
pub use context::BuildContext;
pub use credentials::{CredentialHelper, docker_config_json};
pub use expected::check_expected;
pub use faults::{Exchange, Fault, FaultProxy, Faults};
pub use http::FileServer;
pub use image::{Entry, EntryKind, Flattened, Image};
pub use kiln::{KilnOutput, docker_config, kiln_bin, kiln_build, plugin_path, run_kiln};
pub use registry::Registry;
pub use skopeo::{copy as skopeo_copy, inspect_error, layer_digests, raw_manifest};
pub use token::{ISSUER, SERVICE, TokenIssuer, TokenRequest};
mod sample_context;
pub mod services;
pub use sample_context::{Compression, Item, SampleContext};
pub mod git_fixture;
