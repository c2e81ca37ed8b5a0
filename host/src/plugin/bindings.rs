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

#[cfg(test)]
mod tests {
    /// A released WIT version is a contract with plugins already built
    /// against it: any change must come with a version bump.
    #[test]
    fn the_current_wit_matches_its_frozen_release() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../wit");
        let current = std::fs::read_to_string(format!("{root}/plugin.wit")).unwrap();
        let version = current
            .lines()
            .find_map(|l| l.strip_prefix("package kiln:plugin@"))
            .and_then(|v| v.strip_suffix(';'))
            .expect("plugin.wit declares package kiln:plugin@<version>;");
        assert!(super::INSTRUCTION_HANDLER_EXPORT.ends_with(&format!("@{version}")));
        let frozen_path = format!("{root}/frozen/v{version}/plugin.wit");
        let frozen =
            std::fs::read_to_string(&frozen_path).unwrap_or_else(|e| panic!("{frozen_path}: {e}"));
        assert_eq!(
            current, frozen,
            "wit/plugin.wit differs from {frozen_path}: bump the version instead"
        );
    }
}
