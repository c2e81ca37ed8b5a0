//! One method per instruction: split the text, expand the words through the
//! host, and decide the effects and the history text, as BuildKit does.
//!
//! The checks run in BuildKit's order (its parser's, then its dispatcher's),
//! so that a Dockerfile with several mistakes reports the same one first.

mod config;
mod files;
mod run;
mod stage;
#[cfg(test)]
mod testing;

use std::fmt::Display;

use kiln_plugin_sdk::{Instruction, KeyValue, Outcome, PluginError, State};

use crate::flags::{self, Flags, Spec};

/// The instructions this plugin handles.
pub const KEYWORDS: &[&str] = &[
    "FROM",
    "RUN",
    "COPY",
    "ADD",
    "ENV",
    "ARG",
    "LABEL",
    "WORKDIR",
    "USER",
    "EXPOSE",
    "ENTRYPOINT",
    "CMD",
    "VOLUME",
    "STOPSIGNAL",
    "SHELL",
    "MAINTAINER",
    "HEALTHCHECK",
    "ONBUILD",
];

/// The shell of shell-form commands when the image sets none.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// Word expansion over the ARG and ENV values in scope (the host's job).
pub trait Expander {
    /// Expands one word.
    fn expand(&self, word: &str) -> Result<String, PluginError>;
    /// Splits text into words and expands each.
    fn expand_words(&self, text: &str) -> Result<Vec<String>, PluginError>;
}

/// Turns one instruction into effects.
pub fn handle(
    host: &impl Expander,
    instruction: &Instruction,
    state: &State,
) -> Result<Outcome, PluginError> {
    let cx = Cx {
        host,
        instruction,
        state,
    };
    let keyword = instruction.keyword.as_str();
    if state.before_first_from && !matches!(keyword, "FROM" | "ARG") {
        return Err(cx
            .error("no build stage in current context")
            .with_hint(format!("{keyword} must come after a FROM")));
    }
    match keyword {
        "FROM" => cx.from(),
        "ARG" => cx.arg(),
        "RUN" => cx.run(),
        "COPY" => cx.copy(),
        "ADD" => cx.add(),
        "ENV" => cx.env(),
        "LABEL" => cx.label(),
        "WORKDIR" => cx.workdir(),
        "USER" => cx.user(),
        "EXPOSE" => cx.expose(),
        "ENTRYPOINT" => cx.entrypoint(),
        "CMD" => cx.cmd(),
        "VOLUME" => cx.volume(),
        "STOPSIGNAL" => cx.stop_signal(),
        "SHELL" => cx.shell(),
        "MAINTAINER" => cx.maintainer(),
        "HEALTHCHECK" => cx.healthcheck(),
        "ONBUILD" => cx.onbuild(),
        other => Err(cx.error(format!("unknown instruction: {other}"))),
    }
}

/// The instruction being handled, with what it needs around it.
struct Cx<'a, H> {
    host: &'a H,
    instruction: &'a Instruction,
    state: &'a State,
}

impl<H: Expander> Cx<'_, H> {
    fn keyword(&self) -> &str {
        &self.instruction.keyword
    }

    fn text(&self) -> &str {
        self.instruction.text.trim()
    }

    /// The Dockerfile's escape character.
    fn escape(&self) -> char {
        self.state.escape.chars().next().unwrap_or('\\')
    }

    fn error(&self, message: impl Display) -> PluginError {
        self.instruction.error(message)
    }

    /// The arguments, which these instructions need exactly one of.
    fn single_argument(&self) -> Result<&str, PluginError> {
        match self.text() {
            "" => Err(self.error(format!("{} requires exactly one argument", self.keyword()))),
            text => Ok(text),
        }
    }

    fn flags(&self, specs: &[Spec]) -> Result<Flags, PluginError> {
        let given = self
            .instruction
            .flags
            .iter()
            .map(|flag| (flag.name.as_str(), flag.value.as_deref()));
        flags::parse(specs, given).map_err(|e| self.error(e))
    }

    fn no_flags(&self) -> Result<(), PluginError> {
        self.flags(&[]).map(drop)
    }

    fn expand(&self, word: &str) -> Result<String, PluginError> {
        self.host.expand(word).map_err(|e| self.host_error(e))
    }

    fn expand_all(&self, words: &[String]) -> Result<Vec<String>, PluginError> {
        words.iter().map(|word| self.expand(word)).collect()
    }

    /// A failure of the host's expansion, placed at this instruction.
    fn host_error(&self, e: PluginError) -> PluginError {
        PluginError {
            hint: e.hint,
            ..self.error(format!("{}: {}", self.keyword(), e.message))
        }
    }

    fn current_workdir(&self) -> Option<&str> {
        self.state
            .config
            .workdir
            .as_deref()
            .filter(|workdir| !workdir.is_empty())
    }

    /// The shell form's command line: the image's shell, then the text.
    fn with_shell(&self, command: String) -> Vec<String> {
        let mut argv = if self.state.config.shell.is_empty() {
            DEFAULT_SHELL.iter().map(|s| s.to_string()).collect()
        } else {
            self.state.config.shell.clone()
        };
        argv.push(command);
        argv
    }

    /// The value ENV gave `name`, which wins over an ARG of the same name.
    fn env_value(&self, name: &str) -> Option<&str> {
        self.state
            .config
            .env
            .iter()
            .rev()
            .find(|kv| kv.key == name)
            .map(|kv| kv.value.as_str())
    }

    /// The `--build-arg` value of `name`.
    fn build_arg(&self, name: &str) -> Option<&str> {
        self.state
            .build_args
            .iter()
            .rev()
            .find(|kv| kv.key == name)
            .map(|kv| kv.value.as_str())
    }

    /// ENV and LABEL pairs, key and value expanded, and their history text.
    fn pairs(&self) -> Result<(Vec<KeyValue>, String), PluginError> {
        self.no_flags()?;
        let raw = crate::words::name_values(self.keyword(), self.text(), self.escape())
            .map_err(|e| self.error(e))?;
        let mut pairs = Vec::with_capacity(raw.len());
        let mut created_by = self.keyword().to_owned();
        for pair in raw {
            let kv = KeyValue::new(self.expand(&pair.key)?, self.expand(&pair.value)?);
            created_by.push_str(&format!(" {}={}", kv.key, kv.value));
            pairs.push(kv);
        }
        Ok((pairs, created_by))
    }
}
