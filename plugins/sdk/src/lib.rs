//! Write kiln plugins in a few dozen lines.
//!
//! A plugin is a WebAssembly component built for `wasm32-wasip2` from a
//! `cdylib` crate. Implement one trait and register it:
//!
//! - [`InstructionHandler`] + [`register_instruction_handler!`] for Dockerfile
//!   instructions (world `instruction-plugin`);
//! - [`ContextSource`] + [`register_context_source!`] for `--context` URL
//!   schemes (world `context-plugin`).
//!
//! The types are the ones of the WIT contract (`wit/plugin.wit`); [`host`]
//! holds what a handler may ask of the host, and [`info!`] and its siblings
//! write into kiln's log.
//!
//! ```no_run
//! use kiln_plugin_sdk::{
//!     ConfigChange, Effect, Instruction, InstructionHandler, KeyValue, Outcome, PluginError,
//!     State, host, info, register_instruction_handler,
//! };
//!
//! /// `GREET <name>` labels the image with a greeting.
//! struct Greet;
//!
//! impl InstructionHandler for Greet {
//!     fn keywords() -> Vec<String> {
//!         vec!["GREET".to_owned()]
//!     }
//!
//!     fn handle(instruction: Instruction, _state: State) -> Result<Outcome, PluginError> {
//!         let name = host::expand(&instruction.text)?;
//!         if name.is_empty() {
//!             return Err(instruction.error("GREET needs a name"));
//!         }
//!         info!("greeting {name}");
//!         let label = KeyValue::new("greeting", format!("hello {name}"));
//!         Ok(Outcome::new(vec![Effect::Config(ConfigChange::Label(vec![label]))]))
//!     }
//! }
//!
//! register_instruction_handler!(Greet);
//! # fn main() {}
//! ```

#[doc(hidden)]
pub mod bindings;
mod context;
pub mod host;
#[cfg(target_arch = "wasm32")]
pub mod http;
mod instruction;
mod logging;

pub use bindings::instruction::kiln::plugin::host::{FileKind, FileStat};
pub use bindings::instruction::kiln::plugin::instruction_types::{
    AddFiles, Arg, CacheSharing, ConfigChange, CopyFiles, Effect, Flag, Healthcheck, Heredoc,
    ImageConfig, Instruction, MakeDir, MountKind, NetworkMode, Outcome, Position, Run, RunMount,
    StageStart, State, WriteFile,
};
pub use bindings::instruction::kiln::plugin::types::{KeyValue, LogLevel, PluginError};
#[doc(hidden)]
pub use context::ContextExport;
pub use context::{ContextSource, Opened};
#[doc(hidden)]
pub use instruction::InstructionExport;
pub use instruction::InstructionHandler;
pub use logging::log;

impl PluginError {
    /// An error with a message and no hint.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
        }
    }

    /// Adds what the user can do about the error.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl KeyValue {
    /// A key-value pair.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl Instruction {
    /// An error about this instruction, prefixed with its Dockerfile line.
    pub fn error(&self, message: impl std::fmt::Display) -> PluginError {
        PluginError::new(format!("line {}: {message}", self.position.line))
    }
}

impl Outcome {
    /// An outcome whose history entry is the instruction as written.
    pub fn new(effects: Vec<Effect>) -> Self {
        Self {
            effects,
            created_by: None,
        }
    }

    /// Sets the history entry's `created_by`.
    pub fn created_by(mut self, created_by: impl Into<String>) -> Self {
        self.created_by = Some(created_by.into());
        self
    }
}
