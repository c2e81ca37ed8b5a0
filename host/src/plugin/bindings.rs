//! Host bindings for each released version of the `kiln:plugin` WIT package.
//!
//! One module per world; the shared interfaces are generated once (in the
//! instruction world) and reused by the context world through `with`.

/// `kiln:plugin@0.1.0`, world `instruction-plugin`.
pub mod instruction {
    wasmtime::component::bindgen!({
        path: "../wit/plugin.wit",
        world: "instruction-plugin",
    });
}

/// `kiln:plugin@0.1.0`, world `context-plugin`.
pub mod context {
    wasmtime::component::bindgen!({
        path: "../wit/plugin.wit",
        world: "context-plugin",
        with: {
            "kiln:plugin/types": super::instruction::kiln::plugin::types,
            "kiln:plugin/logging": super::instruction::kiln::plugin::logging,
        },
    });
}

/// Fully qualified export names, used to tell what a component is.
pub const INSTRUCTION_HANDLER_EXPORT: &str = "kiln:plugin/instruction-handler@0.1.0";
/// See [`INSTRUCTION_HANDLER_EXPORT`].
pub const CONTEXT_SOURCE_EXPORT: &str = "kiln:plugin/context-source@0.1.0";
