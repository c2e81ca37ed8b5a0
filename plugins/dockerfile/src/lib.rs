//! kiln's built-in instruction handler: the standard Dockerfile instructions
//! with BuildKit's semantics.
//!
//! Everything but word expansion is pure and lives in modules that know
//! nothing of WebAssembly, so it is unit-tested natively.

mod chmod;
mod duration;
mod flags;
mod history;
mod instructions;
mod mounts;
mod paths;
mod ports;
mod signal;
mod sources;
mod suggest;
mod words;

use kiln_plugin_sdk::{
    Instruction, InstructionHandler, Outcome, PluginError, State, host,
    register_instruction_handler,
};

/// The standard Dockerfile instructions.
struct Dockerfile;

impl InstructionHandler for Dockerfile {
    fn keywords() -> Vec<String> {
        instructions::KEYWORDS
            .iter()
            .map(|k| k.to_string())
            .collect()
    }

    fn handle(instruction: Instruction, state: State) -> Result<Outcome, PluginError> {
        instructions::handle(&HostExpander, &instruction, &state)
    }
}

register_instruction_handler!(Dockerfile);

/// Expansion by the host, which knows the escape character and the scope.
struct HostExpander;

impl instructions::Expander for HostExpander {
    fn expand(&self, word: &str) -> Result<String, PluginError> {
        host::expand(word)
    }

    fn expand_words(&self, text: &str) -> Result<Vec<String>, PluginError> {
        host::expand_words(text)
    }
}
