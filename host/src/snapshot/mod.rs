//! Snapshots: what a build step changed, turned into a layer.
//!
//! In isolated mode a step runs on an overlay whose upper dir holds exactly
//! its changes, already in overlay format, so the snapshot is
//! [`snapshot_upper`]: it costs what changed, not what exists. In
//! container-root mode a parallel stat walk ([`scan`]) finds what changed.

pub mod overlay;
pub mod prune;
pub mod scan;

pub use overlay::snapshot_upper;
pub use prune::prune_unchanged_dirs;

use crate::layer::LayerError;
use std::path::PathBuf;

/// Snapshot failures.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot snapshot {path}: {reason}")]
    NotADirectory { path: PathBuf, reason: String },
    #[error("cannot walk {path} for a snapshot: {source}")]
    Walk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot snapshot the overlay upper dir {path}: {source}")]
    Layer {
        path: PathBuf,
        #[source]
        source: LayerError,
    },
}
