//! The bindings wit-bindgen generates from `wit/plugin.wit`, one module per
//! world. The context world reuses the instruction world's shared interfaces
//! so both share one `PluginError`, `KeyValue` and logging import.

/// World `instruction-plugin`.
pub mod instruction {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "instruction-plugin",
        pub_export_macro: true,
        export_macro_name: "export_instruction_plugin",
        // Plain data only in this world: comparable, so plugins can assert
        // on their effects in tests.
        additional_derives: [PartialEq, Eq],
    });
}

/// World `context-plugin`.
pub mod context {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "context-plugin",
        pub_export_macro: true,
        export_macro_name: "export_context_plugin",
        with: {
            "kiln:plugin/types@0.1.0": crate::bindings::instruction::kiln::plugin::types,
            "kiln:plugin/logging@0.1.0": crate::bindings::instruction::kiln::plugin::logging,
        },
    });
}
