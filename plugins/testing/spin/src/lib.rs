//! Test plugin: `SPIN` never returns, so the host's CPU limits (epoch
//! deadline, fuel) must stop it.

use kiln_plugin_sdk::{
    Instruction, InstructionHandler, Outcome, PluginError, State, register_instruction_handler,
};

/// Handles `SPIN` by spinning forever.
struct Spin;

impl InstructionHandler for Spin {
    fn keywords() -> Vec<String> {
        vec!["SPIN".to_owned()]
    }

    fn handle(_instruction: Instruction, _state: State) -> Result<Outcome, PluginError> {
        let mut counter = 0u64;
        loop {
            // Opaque to the optimiser, so the loop stays a loop.
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
}

register_instruction_handler!(Spin);
