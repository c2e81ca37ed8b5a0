//! The instructions' test harness: a fake host expansion and builders for
//! instructions and states.

use kiln_plugin_sdk::{
    Arg, Effect, Flag, Heredoc, ImageConfig, Instruction, Outcome, PluginError, Position, State,
};

use super::Expander;
pub use super::handle;

/// Expands `$NAME`/`${NAME}` from a fixed table and removes quotes and
/// escapes (`\`, or `` ` `` when the table says so): enough of the host's
/// rules to observe what gets expanded.
pub struct Fake {
    vars: &'static [(&'static str, &'static str)],
    escape: char,
}

impl Expander for Fake {
    fn expand(&self, word: &str) -> Result<String, PluginError> {
        let mut out = String::new();
        let mut quote = None;
        let mut chars = word.chars().peekable();
        while let Some(c) = chars.next() {
            match (quote, c) {
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (Some('\''), c) => out.push(c),
                (_, c) if c == self.escape => out.extend(chars.next()),
                (_, '$') => {
                    let braced = chars.next_if_eq(&'{').is_some();
                    let mut name = String::new();
                    while let Some(c) = chars.next_if(|c| c.is_alphanumeric() || *c == '_') {
                        name.push(c);
                    }
                    if braced {
                        chars.next();
                    }
                    if name == "FAIL" {
                        return Err(PluginError::new("bad substitution").with_hint("fix it"));
                    }
                    let value = self.vars.iter().find(|(k, _)| *k == name);
                    out.push_str(value.map_or("", |(_, v)| v));
                }
                (_, c) => out.push(c),
            }
        }
        Ok(out)
    }

    fn expand_words(&self, text: &str) -> Result<Vec<String>, PluginError> {
        let expanded = self.expand(text)?;
        Ok(expanded.split_whitespace().map(str::to_owned).collect())
    }
}

/// The variables every test sees.
pub const VARS: Fake = Fake {
    vars: &[
        ("A", "1"),
        ("DIR", "/srv"),
        ("PORTS", "80 53/udp"),
        ("U", "app"),
        ("NAME", "world"),
        ("EMPTY", ""),
    ],
    escape: '\\',
};

/// The same variables for a Dockerfile with `# escape=``.
pub const BACKTICK_VARS: Fake = Fake {
    vars: VARS.vars,
    escape: '`',
};

/// An instruction at line 7 with `text` and nothing else.
pub fn instruction(keyword: &str, text: &str) -> Instruction {
    Instruction {
        keyword: keyword.to_owned(),
        flags: Vec::new(),
        text: text.to_owned(),
        json: None,
        heredocs: Vec::new(),
        original: format!("{keyword} {text}"),
        position: Position { line: 7, column: 1 },
    }
}

/// Adds `--name[=value]`.
pub fn with_flag(mut instruction: Instruction, name: &str, value: Option<&str>) -> Instruction {
    instruction.flags.push(Flag {
        name: name.to_owned(),
        value: value.map(str::to_owned),
    });
    instruction
}

/// Marks the arguments as the JSON form `json`.
pub fn with_json(mut instruction: Instruction, json: &[&str]) -> Instruction {
    instruction.json = Some(strings(json));
    instruction
}

/// Attaches a heredoc body.
pub fn with_heredoc(
    mut instruction: Instruction,
    name: &str,
    content: &str,
    expand: bool,
) -> Instruction {
    instruction.heredocs.push(Heredoc {
        name: name.to_owned(),
        content: content.to_owned(),
        expand,
    });
    instruction
}

/// A stage with an empty config and no ARGs.
pub fn state() -> State {
    State {
        config: ImageConfig {
            user: None,
            env: Vec::new(),
            workdir: None,
            entrypoint: None,
            cmd: None,
            shell: Vec::new(),
            labels: Vec::new(),
            exposed_ports: Vec::new(),
            volumes: Vec::new(),
            stop_signal: None,
        },
        args: Vec::new(),
        global_args: Vec::new(),
        build_args: Vec::new(),
        stage_names: Vec::new(),
        target_platform: "linux/amd64".to_owned(),
        before_first_from: false,
        escape: "\\".into(),
    }
}

/// An ARG with or without a value.
pub fn arg(name: &str, value: Option<&str>) -> Arg {
    Arg {
        name: name.to_owned(),
        value: value.map(str::to_owned),
    }
}

/// Owned strings.
pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Handles `instruction`, which must succeed.
pub fn ok(instruction: Instruction, state: &State) -> Outcome {
    handle(&VARS, &instruction, state).unwrap()
}

/// Handles `instruction`, which must fail.
pub fn handle_err(instruction: Instruction, state: &State) -> PluginError {
    handle(&VARS, &instruction, state).unwrap_err()
}

/// The message of the failure of `instruction`.
pub fn err(instruction: Instruction, state: &State) -> String {
    handle_err(instruction, state).message
}

/// The single effect of `outcome`.
pub fn only_effect(outcome: &Outcome) -> &Effect {
    assert_eq!(outcome.effects.len(), 1, "{outcome:?}");
    &outcome.effects[0]
}
