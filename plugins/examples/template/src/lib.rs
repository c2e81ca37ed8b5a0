//! Example kiln plugin: `TEMPLATE <src> <dest>` renders `{{NAME}}`
//! placeholders in a small context file with the ARGs in scope and writes
//! the result into the image.
//!
//! See README.md beside this crate for how to build and use it.

use kiln_plugin_sdk::{
    Effect, Instruction, InstructionHandler, Outcome, PluginError, State, WriteFile, host,
    register_instruction_handler,
};

/// The mode of rendered files.
const MODE: u32 = 0o644;

/// Handles `TEMPLATE`.
struct Template;

impl InstructionHandler for Template {
    fn keywords() -> Vec<String> {
        vec!["TEMPLATE".to_owned()]
    }

    fn handle(instruction: Instruction, state: State) -> Result<Outcome, PluginError> {
        if let Some(flag) = instruction.flags.first() {
            return Err(instruction.error(format!("TEMPLATE takes no flags, got --{}", flag.name)));
        }
        let words = host::expand_words(&instruction.text)?;
        let [src, dest] = words.as_slice() else {
            return Err(instruction
                .error("TEMPLATE needs a source and a destination")
                .with_hint("write TEMPLATE <context file> <path in the image>"));
        };
        let bytes = host::context_read(src)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| instruction.error(format!("TEMPLATE: {src} is not UTF-8 text")))?;
        let content = render(&text, |name| arg_value(&state, name)).map_err(|e| {
            let error = instruction.error(format!("TEMPLATE {src}: {e}"));
            match e {
                RenderError::Undefined(name) => error.with_hint(format!(
                    "declare it with `ARG {name}=...` or `ARG {name}` and --build-arg {name}=..."
                )),
                _ => error,
            }
        })?;
        let path = destination(state.config.workdir.as_deref(), src, dest);
        Ok(Outcome::new(vec![Effect::WriteFile(WriteFile {
            path,
            content: content.into_bytes(),
            mode: MODE,
            chown: None,
        })]))
    }
}

register_instruction_handler!(Template);

/// The value of an ARG in scope: its own value, else the `--build-arg` for
/// it. Undeclared names have none, even with a `--build-arg`.
fn arg_value(state: &State, name: &str) -> Option<String> {
    let arg = state.args.iter().rev().find(|arg| arg.name == name)?;
    arg.value.clone().or_else(|| {
        state
            .build_args
            .iter()
            .rev()
            .find(|kv| kv.key == name)
            .map(|kv| kv.value.clone())
    })
}

/// Why a template does not render.
#[derive(Debug, PartialEq, Eq)]
enum RenderError {
    /// `{{` without a closing `}}`.
    Unclosed,
    /// `{{...}}` whose inside is not a name.
    BadName(String),
    /// A name with no value.
    Undefined(String),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unclosed => write!(f, "a {{{{ has no closing }}}}"),
            Self::BadName(inside) => write!(f, "{{{{{inside}}}}} is not a placeholder name"),
            Self::Undefined(name) => write!(f, "placeholder {{{{{name}}}}} is not defined"),
        }
    }
}

/// Replaces each `{{NAME}}` (spaces inside allowed) with `value(NAME)`.
fn render(template: &str, value: impl Fn(&str) -> Option<String>) -> Result<String, RenderError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(RenderError::Unclosed)?;
        let name = after[..end].trim();
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(RenderError::BadName(after[..end].to_owned()));
        }
        out.push_str(&value(name).ok_or_else(|| RenderError::Undefined(name.to_owned()))?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The absolute path to write: `dest` relative to the working directory; a
/// `dest` ending in `/` is a directory that receives the source's name.
fn destination(workdir: Option<&str>, src: &str, dest: &str) -> String {
    let mut path = if dest.starts_with('/') {
        dest.to_owned()
    } else {
        let base = workdir.filter(|w| !w.is_empty()).unwrap_or("/");
        format!("{}/{dest}", base.trim_end_matches('/'))
    };
    if path.ends_with('/') {
        path.push_str(src.rsplit('/').next().unwrap_or(src));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(name: &str) -> Option<String> {
        match name {
            "NAME" => Some("kiln".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn renders_placeholders() {
        assert_eq!(
            render("hello {{NAME}}, {{ NAME }}!{{EMPTY}}\n", values).unwrap(),
            "hello kiln, kiln!\n"
        );
        assert_eq!(
            render("no placeholders { } }}", values).unwrap(),
            "no placeholders { } }}"
        );
    }

    #[test]
    fn render_errors_name_the_placeholder() {
        assert_eq!(
            render("{{MISSING}}", values),
            Err(RenderError::Undefined("MISSING".into()))
        );
        assert_eq!(
            RenderError::Undefined("MISSING".into()).to_string(),
            "placeholder {{MISSING}} is not defined"
        );
        assert_eq!(
            render("{{1x}}", values),
            Err(RenderError::BadName("1x".into()))
        );
        assert_eq!(render("a {{NAME", values), Err(RenderError::Unclosed));
    }

    #[test]
    fn destinations() {
        assert_eq!(
            destination(None, "conf.tmpl", "etc/app.conf"),
            "/etc/app.conf"
        );
        assert_eq!(
            destination(Some("/app/"), "conf.tmpl", "app.conf"),
            "/app/app.conf"
        );
        assert_eq!(
            destination(Some("/app"), "t/conf.tmpl", "/etc/"),
            "/etc/conf.tmpl"
        );
    }
}
