//! Instruction handlers: Dockerfile instructions in, effects out.

use std::marker::PhantomData;

use crate::bindings::instruction::exports::kiln::plugin::instruction_handler::Guest;
use crate::{Instruction, Outcome, PluginError, State};

/// Handles Dockerfile instructions by turning them into effects.
///
/// Every call runs in a fresh sandbox, so a handler keeps no state between
/// calls: all it knows comes from its arguments and [`crate::host`].
pub trait InstructionHandler {
    /// Upper-case keywords this handler claims.
    fn keywords() -> Vec<String>;
    /// Turns one instruction into effects.
    fn handle(instruction: Instruction, state: State) -> Result<Outcome, PluginError>;
}

/// Exports an [`InstructionHandler`] as the component's `instruction-handler`.
#[doc(hidden)]
pub struct InstructionExport<T>(PhantomData<T>);

impl<T: InstructionHandler> Guest for InstructionExport<T> {
    fn keywords() -> Vec<String> {
        T::keywords()
    }

    fn handle(instruction: Instruction, state: State) -> Result<Outcome, PluginError> {
        T::handle(instruction, state)
    }
}

/// Makes this crate's component export `$handler` (an [`InstructionHandler`]).
///
/// Use it once, at the top level of a `cdylib` crate.
#[macro_export]
macro_rules! register_instruction_handler {
    ($handler:ty) => {
        #[doc(hidden)]
        type __KilnInstructionExport = $crate::InstructionExport<$handler>;
        $crate::bindings::instruction::export_instruction_plugin!(
            __KilnInstructionExport with_types_in $crate::bindings::instruction
        );
    };
}
