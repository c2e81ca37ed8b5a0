//! Test plugin: `HOG` allocates and touches memory until an allocation
//! fails, so the host's memory limit must stop it.

use kiln_plugin_sdk::{
    Instruction, InstructionHandler, Outcome, PluginError, State, register_instruction_handler,
};

/// The size of each allocation.
const CHUNK: usize = 1 << 20;

/// Handles `HOG` by hoarding memory.
struct Hog;

impl InstructionHandler for Hog {
    fn keywords() -> Vec<String> {
        vec!["HOG".to_owned()]
    }

    fn handle(_instruction: Instruction, _state: State) -> Result<Outcome, PluginError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = Vec::new();
            if hoard.try_reserve(1).is_err() || chunk.try_reserve_exact(CHUNK).is_err() {
                let mib = hoard.len();
                // Free the hoard first so that the message itself can be allocated.
                drop(hoard);
                return Err(PluginError::new(format!(
                    "HOG: allocation failed after {mib} MiB"
                )));
            }
            // Writing every byte makes the pages real, not just reserved.
            chunk.resize(CHUNK, 0xA5);
            hoard.push(std::hint::black_box(chunk));
        }
    }
}

register_instruction_handler!(Hog);
