//! FROM and ARG: stages and the variables in scope.

use kiln_plugin_sdk::{Arg, Effect, Outcome, PluginError, StageStart};

use super::{Cx, Expander};
use crate::flags::Spec;
use crate::words;

impl<H: Expander> Cx<'_, H> {
    pub(super) fn from(&self) -> Result<Outcome, PluginError> {
        let args = words::split_blanks(self.text());
        let name = match args.as_slice() {
            [_] => None,
            [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
                Some(stage_name(name).map_err(|e| self.error(e))?)
            }
            _ => return Err(self.error("FROM requires either one or three arguments")),
        };
        let flags = self.flags(&[Spec::string("platform")])?;
        let image = self.expand(&args[0])?;
        if image.is_empty() {
            return Err(self.error(format!("base name ({}) should not be blank", args[0])));
        }
        let platform = match flags.value("platform") {
            Some(platform) => Some(self.expand(platform)?).filter(|p| !p.is_empty()),
            None => None,
        };
        Ok(Outcome::new(vec![Effect::Stage(StageStart {
            image,
            name,
            platform,
        })]))
    }

    /// `ARG name[=default] ...`: each value comes from `--build-arg`, else
    /// the default, else (in a stage) the global ARG of that name. A later
    /// default sees the ARGs declared before it on the same line.
    pub(super) fn arg(&self) -> Result<Outcome, PluginError> {
        // BuildKit never checks ARG's flags: they are ignored.
        let declarations =
            words::arg_declarations(self.text(), self.escape()).map_err(|e| self.error(e))?;
        let mut effects = Vec::with_capacity(declarations.len());
        let mut history = Vec::with_capacity(declarations.len());
        let mut on_this_line: Vec<(String, String)> = Vec::new();
        for declaration in declarations {
            let name = declaration.name;
            let shown = match (self.build_arg(&name), &declaration.default) {
                (Some(value), _) => Some(value.to_owned()),
                (None, Some(default)) => {
                    Some(self.expand_default(&name, default, &on_this_line)?)
                }
                (None, None) => self.global_arg(&name),
            };
            history.push(match &shown {
                Some(value) => format!("{name}={value}"),
                None => name.clone(),
            });
            // A bare redeclaration keeps the value in scope, as BuildKit's
            // build environment does, though its history shows no value.
            let value = shown.or_else(|| self.arg_in_scope(&name));
            if let Some(value) = &value {
                on_this_line.push((name.clone(), value.clone()));
            }
            effects.push(Effect::DeclareArg(Arg { name, value }));
        }
        Ok(Outcome::new(effects).created_by(format!("ARG {}", history.join(" "))))
    }

    /// Expands an ARG's default with the host's scope plus the ARGs
    /// declared earlier on the same line, which the host does not know yet.
    fn expand_default(
        &self,
        name: &str,
        default: &str,
        on_this_line: &[(String, String)],
    ) -> Result<String, PluginError> {
        if on_this_line.is_empty() {
            return self.expand(default);
        }
        let word = words::substitute_locals(default, on_this_line, self.escape()).map_err(|earlier| {
            self.error(format!(
                "ARG {name}: the default uses {earlier}, declared earlier in the same ARG instruction, in a form kiln cannot expand yet"
            ))
            .with_hint(format!(
                "declare {earlier} in its own ARG instruction before this one, or write it as ${earlier} or ${{{earlier}}}"
            ))
        })?;
        self.expand(&word)
    }

    /// The value of a global ARG that a stage redeclares without a default.
    fn global_arg(&self, name: &str) -> Option<String> {
        if self.state.before_first_from {
            return None;
        }
        self.state
            .global_args
            .iter()
            .rev()
            .find(|arg| arg.name == name)
            .and_then(|arg| arg.value.clone())
    }

    /// The value `name` has in the current scope (the stage, or the global
    /// scope before the first FROM).
    fn arg_in_scope(&self, name: &str) -> Option<String> {
        self.state
            .args
            .iter()
            .rev()
            .find(|arg| arg.name == name)
            .and_then(|arg| arg.value.clone())
    }
}

/// A stage name from `FROM image AS name`, lower-cased and checked.
fn stage_name(raw: &str) -> Result<String, String> {
    let name = raw.to_ascii_lowercase();
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "invalid name for build stage: \"{raw}\", name can't start with a number or contain symbols"
        ))
    }
}

#[cfg(test)]
mod tests {
    use kiln_plugin_sdk::{Effect, KeyValue, StageStart};

    use crate::instructions::testing::*;

    #[test]
    fn from_expands_the_image_and_lowercases_the_name() {
        let instr = with_flag(
            instruction("FROM", "alpine:$A AS Build"),
            "platform",
            Some("linux/$U"),
        );
        assert_eq!(
            only_effect(&ok(instr, &state())),
            &Effect::Stage(StageStart {
                image: "alpine:1".into(),
                name: Some("build".into()),
                platform: Some("linux/app".into()),
            })
        );
        let mut before = state();
        before.before_first_from = true;
        let outcome = ok(instruction("FROM", "scratch"), &before);
        assert_eq!(outcome.created_by, None);
        assert_eq!(
            outcome.effects,
            [Effect::Stage(StageStart {
                image: "scratch".into(),
                name: None,
                platform: None
            })]
        );
    }

    #[test]
    fn from_errors() {
        assert_eq!(
            err(instruction("FROM", "a AS"), &state()),
            "line 7: FROM requires either one or three arguments"
        );
        assert_eq!(
            err(instruction("FROM", "a AS 1x"), &state()),
            "line 7: invalid name for build stage: \"1x\", name can't start with a number or contain symbols"
        );
        assert_eq!(
            err(instruction("FROM", "$NONE"), &state()),
            "line 7: base name ($NONE) should not be blank"
        );
        let flagged = with_flag(instruction("FROM", "a"), "platfrom", Some("x"));
        assert_eq!(
            err(flagged, &state()),
            "line 7: unknown flag: --platfrom (did you mean platform?)"
        );
    }

    #[test]
    fn only_from_and_arg_come_before_the_first_from() {
        let mut before = state();
        before.before_first_from = true;
        let failure = handle_err(instruction("RUN", "true"), &before);
        assert_eq!(failure.message, "line 7: no build stage in current context");
        assert_eq!(failure.hint.as_deref(), Some("RUN must come after a FROM"));
    }

    #[test]
    fn arg_values_come_from_build_args_defaults_or_globals() {
        let mut state = state();
        state.build_args = vec![KeyValue::new("B", "cli")];
        state.global_args = vec![arg("G", Some("global")), arg("H", None)];
        let outcome = ok(instruction("ARG", "A=$DIR B=default G H N"), &state);
        assert_eq!(
            outcome.effects,
            vec![
                Effect::DeclareArg(arg("A", Some("/srv"))),
                Effect::DeclareArg(arg("B", Some("cli"))),
                Effect::DeclareArg(arg("G", Some("global"))),
                Effect::DeclareArg(arg("H", None)),
                Effect::DeclareArg(arg("N", None)),
            ]
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("ARG A=/srv B=cli G=global H N")
        );
        state.before_first_from = true;
        state.args = state.global_args.clone();
        assert_eq!(
            only_effect(&ok(instruction("ARG", "H"), &state)),
            &Effect::DeclareArg(arg("H", None))
        );
    }

    #[test]
    fn platform_args_are_seen_only_once_declared() {
        let mut state = state();
        state.global_args = [
            ("TARGETPLATFORM", "linux/arm64/v8"),
            ("TARGETOS", "linux"),
            ("TARGETARCH", "arm64"),
            ("TARGETVARIANT", "v8"),
            ("BUILDPLATFORM", "linux/amd64"),
            ("BUILDOS", "linux"),
            ("BUILDARCH", "amd64"),
            ("BUILDVARIANT", ""),
        ]
        .iter()
        .map(|(k, v)| arg(k, Some(v)))
        .collect();
        let outcome = ok(
            instruction(
                "ARG",
                "TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM BUILDOS BUILDARCH BUILDVARIANT",
            ),
            &state,
        );
        assert_eq!(
            outcome.effects,
            state
                .global_args
                .iter()
                .map(|a| Effect::DeclareArg(a.clone()))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some(
                "ARG TARGETPLATFORM=linux/arm64/v8 TARGETOS=linux TARGETARCH=arm64 TARGETVARIANT=v8 BUILDPLATFORM=linux/amd64 BUILDOS=linux BUILDARCH=amd64 BUILDVARIANT="
            )
        );
        // A build arg overrides the platform's value; a default does not
        // beat a build arg.
        state.build_args = vec![KeyValue::new("TARGETARCH", "riscv64")];
        assert_eq!(
            only_effect(&ok(instruction("ARG", "TARGETARCH=x"), &state)),
            &Effect::DeclareArg(arg("TARGETARCH", Some("riscv64")))
        );
    }

    #[test]
    fn a_bare_redeclaration_keeps_the_value_in_scope() {
        let mut state = state();
        state.args = vec![arg("V", Some("1"))];
        let outcome = ok(instruction("ARG", "V"), &state);
        assert_eq!(outcome.effects, [Effect::DeclareArg(arg("V", Some("1")))]);
        assert_eq!(outcome.created_by.as_deref(), Some("ARG V"));
        state.before_first_from = true;
        state.global_args = state.args.clone();
        assert_eq!(
            ok(instruction("ARG", "V"), &state).effects,
            [Effect::DeclareArg(arg("V", Some("1")))]
        );
    }

    #[test]
    fn later_defaults_see_earlier_args_of_the_same_line() {
        let mut state = state();
        state.build_args = vec![KeyValue::new("C", "c d")];
        let outcome = ok(
            instruction("ARG", r#"A=1 B=$A-${A} C Q="<$C>" A=2 E=$A"#),
            &state,
        );
        assert_eq!(
            outcome.effects,
            vec![
                Effect::DeclareArg(arg("A", Some("1"))),
                Effect::DeclareArg(arg("B", Some("1-1"))),
                Effect::DeclareArg(arg("C", Some("c d"))),
                Effect::DeclareArg(arg("Q", Some("<c d>"))),
                Effect::DeclareArg(arg("A", Some("2"))),
                Effect::DeclareArg(arg("E", Some("2"))),
            ]
        );
        let failure = handle_err(instruction("ARG", "A=1 B=${A:-x}"), &state);
        assert_eq!(
            failure.message,
            "line 7: ARG B: the default uses A, declared earlier in the same ARG instruction, in a form kiln cannot expand yet"
        );
        assert!(failure.hint.unwrap().contains("its own ARG instruction"));
    }

    #[test]
    fn arg_ignores_flags_and_rejects_blank_names() {
        let flagged = with_flag(instruction("ARG", "A=1"), "whatever", None);
        assert_eq!(
            ok(flagged, &state()).effects,
            [Effect::DeclareArg(arg("A", Some("1")))]
        );
        assert_eq!(
            err(instruction("ARG", "=1"), &state()),
            "line 7: ARG names can not be blank"
        );
        assert_eq!(
            err(instruction("ARG", ""), &state()),
            "line 7: ARG requires at least one argument"
        );
        let failure = handle_err(instruction("ARG", "A=$FAIL"), &state());
        assert_eq!(failure.message, "line 7: ARG: bad substitution");
    }
}
