//! What an instruction handler may ask of the host while it runs.
//!
//! Only instruction handlers import these; calling them from a context source
//! fails to link.

pub use crate::bindings::instruction::kiln::plugin::host::{
    context_glob, context_read, context_stat, expand, expand_words,
};
