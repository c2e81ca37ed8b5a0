//! One method per instruction: split the text, expand the words through the
//! host, and decide the effects and the history text, as BuildKit does.

use std::fmt::Display;

use kiln_plugin_sdk::{
    Arg, ConfigChange, CopyFiles, Effect, Instruction, KeyValue, MakeDir, NetworkMode, Outcome,
    PluginError, Run, StageStart, State,
};

use crate::flags::{self, Flags, Kind, Spec};
use crate::{history, paths, ports, signal, words};

/// The instructions this plugin handles.
pub const KEYWORDS: &[&str] = &[
    "FROM",
    "RUN",
    "COPY",
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
];

/// The shell of shell-form commands when the image sets none.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// Build args that reach RUN without an ARG declaration (and stay out of
/// the history), as in BuildKit.
const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

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
        return Err(cx.error(format!(
            "no build stage in current context: {keyword} comes before the first FROM"
        )));
    }
    match keyword {
        "FROM" => cx.from(),
        "RUN" => cx.run(),
        "COPY" => cx.copy(),
        "ENV" => cx.env(),
        "ARG" => cx.arg(),
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
        other => Err(cx.error(format!("{other} is not a standard Dockerfile instruction"))),
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
        flags::parse(self.keyword(), specs, given).map_err(|e| self.error(e))
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

    /// An expansion failure, placed at this instruction.
    fn host_error(&self, e: PluginError) -> PluginError {
        PluginError {
            message: format!(
                "line {}: {}: {}",
                self.instruction.position.line,
                self.keyword(),
                e.message
            ),
            hint: e.hint,
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

    fn from(&self) -> Result<Outcome, PluginError> {
        let flags = self.flags(&[Spec {
            name: "platform",
            kind: Kind::String,
        }])?;
        let args = words::split_blanks(self.text());
        let name = match args.as_slice() {
            [_] => None,
            [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
                Some(stage_name(name).map_err(|e| self.error(e))?)
            }
            _ => return Err(self.error("FROM requires either one or three arguments")),
        };
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

    fn run(&self) -> Result<Outcome, PluginError> {
        let flags = self.flags(&[
            Spec {
                name: "mount",
                kind: Kind::Strings,
            },
            Spec {
                name: "network",
                kind: Kind::String,
            },
            Spec {
                name: "security",
                kind: Kind::String,
            },
        ])?;
        if let Some(name) = ["mount", "network", "security"]
            .into_iter()
            .find(|name| flags.is_used(name))
        {
            return Err(self.error(format!("RUN --{name} is not supported yet")));
        }
        let heredocs = &self.instruction.heredocs;
        let argv = match &self.instruction.json {
            Some(_) if !heredocs.is_empty() => {
                return Err(self.error("RUN in JSON form cannot take a heredoc"));
            }
            Some(argv) if argv.is_empty() => {
                return Err(self.error("RUN requires at least one argument"));
            }
            Some(argv) => argv.clone(),
            None if self.text().is_empty() => {
                return Err(self.error("RUN requires at least one argument"));
            }
            None if heredocs.is_empty() => self.with_shell(self.text().to_owned()),
            None => self.with_shell(self.heredoc_script()?),
        };
        let created_by = format!(
            "RUN {} # buildkit",
            history::run_command(&argv, &self.build_args_for_history())
        );
        Ok(Outcome::new(vec![Effect::Run(Run {
            argv,
            env: self.run_env(),
            mounts: Vec::new(),
            network: NetworkMode::Default,
            insecure: false,
        })])
        .created_by(created_by))
    }

    /// The script a heredoc RUN gives the shell: the body alone for
    /// `RUN <<EOF`, else the command line with its heredocs put back for the
    /// shell to read.
    fn heredoc_script(&self) -> Result<String, PluginError> {
        let text = self.text();
        let heredocs = &self.instruction.heredocs;
        if words::heredoc_marker(text).is_some() {
            let body = &heredocs[0].content;
            if body.starts_with("#!") {
                return Err(self
                    .error("RUN with a heredoc script that starts with #! is not supported yet")
                    .with_hint("name the interpreter instead: RUN <<EOF python3"));
            }
            return Ok(body.clone());
        }
        let mut script = text.to_owned();
        for heredoc in heredocs {
            script.push('\n');
            script.push_str(&heredoc.content);
            if !heredoc.content.is_empty() && !heredoc.content.ends_with('\n') {
                script.push('\n');
            }
            script.push_str(&heredoc.name);
        }
        Ok(script)
    }

    /// The ARGs in scope with a value (unless ENV set the same name), and
    /// the proxy build args.
    fn run_env(&self) -> Vec<KeyValue> {
        let mut env: Vec<KeyValue> = Vec::new();
        for arg in &self.state.args {
            let Some(value) = &arg.value else { continue };
            if self.env_value(&arg.name).is_some() {
                continue;
            }
            match env.iter_mut().find(|kv| kv.key == arg.name) {
                Some(kv) => kv.value.clone_from(value),
                None => env.push(KeyValue::new(&arg.name, value)),
            }
        }
        for kv in &self.state.build_args {
            let declared = self.state.args.iter().any(|arg| arg.name == kv.key);
            if PROXY_ARGS.contains(&kv.key.as_str())
                && !declared
                && self.env_value(&kv.key).is_none()
                && !env.iter().any(|e| e.key == kv.key)
            {
                env.push(kv.clone());
            }
        }
        env
    }

    /// `K=V` for every ARG declared in the stage, once each, as RUN's
    /// history lists them.
    fn build_args_for_history(&self) -> Vec<(String, String)> {
        let mut list: Vec<(String, String)> = Vec::new();
        for arg in &self.state.args {
            let value = self
                .env_value(&arg.name)
                .map(str::to_owned)
                .or_else(|| arg.value.clone())
                .unwrap_or_default();
            match list.iter_mut().find(|(name, _)| *name == arg.name) {
                Some((_, v)) => *v = value,
                None => list.push((arg.name.clone(), value)),
            }
        }
        list
    }

    fn copy(&self) -> Result<Outcome, PluginError> {
        let flags = self.flags(&[
            Spec {
                name: "from",
                kind: Kind::String,
            },
            Spec {
                name: "chown",
                kind: Kind::String,
            },
            Spec {
                name: "chmod",
                kind: Kind::String,
            },
            Spec {
                name: "link",
                kind: Kind::Bool,
            },
            Spec {
                name: "parents",
                kind: Kind::Bool,
            },
            Spec {
                name: "exclude",
                kind: Kind::Strings,
            },
        ])?;
        let unsupported = if flags.is_used("from") {
            Some("from")
        } else if flags.is_used("exclude") {
            Some("exclude")
        } else {
            ["link", "parents"]
                .into_iter()
                .find(|name| flags.is_true(name))
        };
        if let Some(name) = unsupported {
            return Err(self.error(format!("COPY --{name} is not supported yet")));
        }
        let args = match &self.instruction.json {
            Some(args) => args.clone(),
            None => words::split_blanks(self.text()),
        };
        let Some((dest, sources)) = args.split_last().filter(|(_, s)| !s.is_empty()) else {
            return Err(self.error(
                "COPY requires at least two arguments, but only one was provided. \
                 Destination could not be determined",
            ));
        };
        if words::heredoc_marker(dest).is_some() {
            return Err(self.error("COPY cannot accept a heredoc as a destination"));
        }
        if !self.instruction.heredocs.is_empty()
            || sources.iter().any(|s| words::heredoc_marker(s).is_some())
        {
            return Err(self.error("COPY with a heredoc is not supported yet"));
        }
        let chown = self.optional_flag(&flags, "chown")?;
        let chmod = self.optional_flag(&flags, "chmod")?;
        if let Some(mode) = &chmod {
            check_chmod(mode).map_err(|e| self.error(e))?;
        }
        let sources = self.expand_all(sources)?;
        let dest = self.expand(dest)?;
        if sources.len() > 1 && !dest.ends_with('/') {
            return Err(self.error(
                "When using COPY with more than one source file, \
                 the destination must be a directory and end with a /",
            ));
        }
        let mut created_by = "COPY".to_owned();
        if let Some(chown) = &chown {
            created_by.push_str(&format!(" --chown={chown}"));
        }
        if let Some(chmod) = &chmod {
            created_by.push_str(&format!(" --chmod={chmod}"));
        }
        for source in &sources {
            created_by.push(' ');
            created_by.push_str(source);
        }
        created_by.push_str(&format!(" {dest} # buildkit"));
        Ok(Outcome::new(vec![Effect::Copy(CopyFiles {
            sources,
            from: None,
            dest: paths::copy_destination(self.current_workdir(), &dest),
            chown,
            chmod,
            link: false,
            parents: false,
            excludes: Vec::new(),
        })])
        .created_by(created_by))
    }

    /// A string flag's expanded value; empty counts as not given.
    fn optional_flag(&self, flags: &Flags, name: &str) -> Result<Option<String>, PluginError> {
        match flags.value(name) {
            Some(value) => Ok(Some(self.expand(value)?).filter(|v| !v.is_empty())),
            None => Ok(None),
        }
    }

    /// ENV and LABEL pairs, key and value expanded.
    fn pairs(&self) -> Result<(Vec<KeyValue>, String), PluginError> {
        self.no_flags()?;
        let raw = words::name_values(self.keyword(), self.text()).map_err(|e| self.error(e))?;
        let mut pairs = Vec::with_capacity(raw.len());
        let mut created_by = self.keyword().to_owned();
        for pair in raw {
            let kv = KeyValue::new(self.expand(&pair.key)?, self.expand(&pair.value)?);
            created_by.push_str(&format!(" {}={}", kv.key, kv.value));
            pairs.push(kv);
        }
        Ok((pairs, created_by))
    }

    fn env(&self) -> Result<Outcome, PluginError> {
        let (pairs, created_by) = self.pairs()?;
        Ok(config(ConfigChange::Env(pairs), created_by))
    }

    fn label(&self) -> Result<Outcome, PluginError> {
        let (pairs, created_by) = self.pairs()?;
        Ok(config(ConfigChange::Label(pairs), created_by))
    }

    fn arg(&self) -> Result<Outcome, PluginError> {
        self.no_flags()?;
        let declarations = words::arg_declarations(self.text()).map_err(|e| self.error(e))?;
        let mut effects = Vec::with_capacity(declarations.len());
        let mut history = Vec::with_capacity(declarations.len());
        for declaration in declarations {
            let value = match self.build_arg(&declaration.name) {
                Some(value) => Some(value.to_owned()),
                None => match &declaration.default {
                    Some(default) => Some(self.expand(default)?),
                    None => self.global_arg(&declaration.name),
                },
            };
            history.push(match &value {
                Some(value) => format!("{}={value}", declaration.name),
                None => declaration.name.clone(),
            });
            effects.push(Effect::DeclareArg(Arg {
                name: declaration.name,
                value,
            }));
        }
        Ok(Outcome::new(effects).created_by(format!("ARG {}", history.join(" "))))
    }

    fn build_arg(&self, name: &str) -> Option<&str> {
        self.state
            .build_args
            .iter()
            .rev()
            .find(|kv| kv.key == name)
            .map(|kv| kv.value.as_str())
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

    fn workdir(&self) -> Result<Outcome, PluginError> {
        self.no_flags()?;
        let path = self.expand(self.single_argument()?)?;
        let workdir = paths::workdir(self.current_workdir(), &path);
        let mut effects = Vec::with_capacity(2);
        if workdir != "/" {
            // BuildKit creates it as the current USER.
            effects.push(Effect::MakeDir(MakeDir {
                path: workdir.clone(),
                chown: self.state.config.user.clone().filter(|u| !u.is_empty()),
            }));
        }
        effects.push(Effect::Config(ConfigChange::Workdir(workdir.clone())));
        Ok(Outcome::new(effects).created_by(format!("WORKDIR {workdir}")))
    }

    fn user(&self) -> Result<Outcome, PluginError> {
        self.no_flags()?;
        let user = self.expand(self.single_argument()?)?;
        let created_by = format!("USER {user}");
        Ok(config(ConfigChange::User(user), created_by))
    }

    fn expose(&self) -> Result<Outcome, PluginError> {
        self.no_flags()?;
        let mut raw = words::split_blanks(self.text());
        if raw.is_empty() {
            return Err(self.error("EXPOSE requires at least one argument"));
        }
        raw.sort();
        let mut specs = Vec::new();
        for word in &raw {
            specs.extend(
                self.host
                    .expand_words(word)
                    .map_err(|e| self.host_error(e))?,
            );
        }
        let ports = ports::normalize(&specs).map_err(|e| self.error(format!("EXPOSE: {e}")))?;
        let created_by = format!("EXPOSE {}", history::go_list(&ports));
        Ok(config(ConfigChange::Expose(ports), created_by))
    }

    /// CMD's and ENTRYPOINT's command line: JSON as is, else through the shell.
    fn command_line(&self) -> Result<Vec<String>, PluginError> {
        self.no_flags()?;
        Ok(match &self.instruction.json {
            Some(argv) => argv.clone(),
            None => self.with_shell(self.text().to_owned()),
        })
    }

    fn entrypoint(&self) -> Result<Outcome, PluginError> {
        let argv = self.command_line()?;
        let created_by = format!("ENTRYPOINT {}", history::go_quoted_list(&argv));
        // `ENTRYPOINT []` removes the entrypoint; the host also drops a CMD
        // that the stage did not set itself, as BuildKit does.
        let entrypoint = Some(argv).filter(|argv| !argv.is_empty());
        Ok(config(ConfigChange::Entrypoint(entrypoint), created_by))
    }

    fn cmd(&self) -> Result<Outcome, PluginError> {
        let argv = self.command_line()?;
        let created_by = format!("CMD {}", history::go_quoted_list(&argv));
        Ok(config(ConfigChange::Cmd(Some(argv)), created_by))
    }

    fn volume(&self) -> Result<Outcome, PluginError> {
        self.no_flags()?;
        let raw = match &self.instruction.json {
            Some(volumes) => volumes.clone(),
            None => words::split_blanks(self.text()),
        };
        if raw.is_empty() {
            return Err(self.error("VOLUME requires at least one argument"));
        }
        let mut volumes = Vec::with_capacity(raw.len());
        for volume in &raw {
            let volume = self.expand(volume.trim())?;
            if volume.is_empty() {
                return Err(self.error("VOLUME specified can not be an empty string"));
            }
            volumes.push(volume);
        }
        let created_by = format!("VOLUME {}", history::go_list(&volumes));
        Ok(config(ConfigChange::Volume(volumes), created_by))
    }

    fn stop_signal(&self) -> Result<Outcome, PluginError> {
        self.no_flags()?;
        let signal = self.expand(self.single_argument()?)?;
        if !signal::is_valid(&signal) {
            return Err(self
                .error(format!("STOPSIGNAL: invalid signal: {signal}"))
                .with_hint("use a signal name such as SIGTERM or a number such as 15"));
        }
        let created_by = format!("STOPSIGNAL {signal}");
        Ok(config(ConfigChange::StopSignal(signal), created_by))
    }

    fn shell(&self) -> Result<Outcome, PluginError> {
        self.no_flags()?;
        let Some(shell) = &self.instruction.json else {
            return Err(self
                .error("SHELL requires the arguments to be in JSON form")
                .with_hint("write SHELL [\"/bin/bash\", \"-c\"]"));
        };
        if shell.is_empty() {
            return Err(self.error("SHELL requires at least one argument"));
        }
        let created_by = format!("SHELL {}", history::go_list(shell));
        Ok(config(ConfigChange::Shell(shell.clone()), created_by))
    }

    fn maintainer(&self) -> Result<Outcome, PluginError> {
        self.no_flags()?;
        let author = self.single_argument()?.to_owned();
        let created_by = format!("MAINTAINER {author}");
        Ok(config(ConfigChange::Author(author), created_by))
    }
}

/// An outcome that only changes the config.
fn config(change: ConfigChange, created_by: String) -> Outcome {
    Outcome::new(vec![Effect::Config(change)]).created_by(created_by)
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

/// Checks a `--chmod` value: octal, at most `7777`.
fn check_chmod(mode: &str) -> Result<(), String> {
    if mode.is_empty() || !mode.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "COPY --chmod={mode}: symbolic modes are not supported yet, use an octal mode such as 755"
        ));
    }
    match u32::from_str_radix(mode, 8) {
        Ok(bits) if bits <= 0o7777 => Ok(()),
        _ => Err(format!(
            "invalid chmod parameter: '{mode}'. it should be octal string and between 0 and 07777"
        )),
    }
}

#[cfg(test)]
mod tests {
    use kiln_plugin_sdk::{Flag, Heredoc, ImageConfig, Position};

    use super::*;

    /// Expands `$NAME`/`${NAME}` from a fixed table and removes quotes and
    /// escapes: enough of the host's rules to observe what gets expanded.
    struct Fake(&'static [(&'static str, &'static str)]);

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
                    (_, '\\') => out.extend(chars.next()),
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
                            return Err(PluginError::new("bad substitution"));
                        }
                        let value = self.0.iter().find(|(k, _)| *k == name);
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

    const VARS: Fake = Fake(&[
        ("A", "1"),
        ("DIR", "/srv"),
        ("PORTS", "80 53/udp"),
        ("U", "app"),
    ]);

    fn instruction(keyword: &str, text: &str) -> Instruction {
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

    fn with_flag(mut instruction: Instruction, name: &str, value: Option<&str>) -> Instruction {
        instruction.flags.push(Flag {
            name: name.to_owned(),
            value: value.map(str::to_owned),
        });
        instruction
    }

    fn with_json(mut instruction: Instruction, json: &[&str]) -> Instruction {
        instruction.json = Some(json.iter().map(|s| s.to_string()).collect());
        instruction
    }

    fn state() -> State {
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

    fn arg(name: &str, value: Option<&str>) -> Arg {
        Arg {
            name: name.to_owned(),
            value: value.map(str::to_owned),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn ok(instruction: Instruction, state: &State) -> Outcome {
        handle(&VARS, &instruction, state).unwrap()
    }

    fn err(instruction: Instruction, state: &State) -> String {
        handle(&VARS, &instruction, state).unwrap_err().message
    }

    fn only_effect(outcome: &Outcome) -> &Effect {
        assert_eq!(outcome.effects.len(), 1, "{outcome:?}");
        &outcome.effects[0]
    }

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
        assert_eq!(ok(instruction("FROM", "scratch"), &before).created_by, None);
    }

    #[test]
    fn from_errors() {
        assert!(err(instruction("FROM", "a AS"), &state()).contains("one or three arguments"));
        assert!(
            err(instruction("FROM", "a AS 1x"), &state()).contains("invalid name for build stage")
        );
        assert!(
            err(instruction("FROM", "$NONE"), &state())
                .contains("base name ($NONE) should not be blank")
        );
    }

    #[test]
    fn only_from_and_arg_come_before_the_first_from() {
        let mut before = state();
        before.before_first_from = true;
        assert_eq!(
            err(instruction("RUN", "true"), &before),
            "line 7: no build stage in current context: RUN comes before the first FROM"
        );
    }

    #[test]
    fn run_shell_form_passes_args_in_scope() {
        let mut state = state();
        state.args = vec![
            arg("A", Some("1")),
            arg("B", None),
            arg("A", Some("2")),
            arg("E", Some("x")),
        ];
        state.config.env = vec![KeyValue::new("E", "from-env")];
        state.build_args = vec![
            KeyValue::new("http_proxy", "http://proxy"),
            KeyValue::new("OTHER", "x"),
        ];
        let outcome = ok(instruction("RUN", "echo $A > /f"), &state);
        assert_eq!(
            only_effect(&outcome),
            &Effect::Run(Run {
                argv: strings(&["/bin/sh", "-c", "echo $A > /f"]),
                env: vec![
                    KeyValue::new("A", "2"),
                    KeyValue::new("http_proxy", "http://proxy")
                ],
                mounts: Vec::new(),
                network: NetworkMode::Default,
                insecure: false,
            })
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("RUN |3 A=2 B= E=from-env /bin/sh -c echo $A > /f # buildkit")
        );
    }

    #[test]
    fn run_uses_the_image_shell_and_json_form() {
        let mut state = state();
        state.config.shell = strings(&["/bin/bash", "-eu", "-c"]);
        let Effect::Run(run) = only_effect(&ok(instruction("RUN", "ls"), &state)).clone() else {
            panic!("not a run");
        };
        assert_eq!(run.argv, strings(&["/bin/bash", "-eu", "-c", "ls"]));
        let outcome = ok(
            with_json(instruction("RUN", "[\"ls\", \"-l\"]"), &["ls", "-l"]),
            &state,
        );
        assert_eq!(outcome.created_by.as_deref(), Some("RUN ls -l # buildkit"));
    }

    #[test]
    fn run_heredocs() {
        let heredoc = |name: &str, content: &str| Heredoc {
            name: name.to_owned(),
            content: content.to_owned(),
            expand: true,
        };
        let argv = |outcome: Outcome| match only_effect(&outcome) {
            Effect::Run(run) => run.argv.clone(),
            other => panic!("{other:?}"),
        };
        let mut single = instruction("RUN", "<<EOF");
        single.heredocs = vec![heredoc("EOF", "echo a\necho b\n")];
        assert_eq!(
            argv(ok(single.clone(), &state())),
            strings(&["/bin/sh", "-c", "echo a\necho b\n"])
        );

        let mut piped = instruction("RUN", "<<EOF python3");
        piped.heredocs = vec![heredoc("EOF", "print(1)\n")];
        assert_eq!(
            argv(ok(piped, &state())),
            strings(&["/bin/sh", "-c", "<<EOF python3\nprint(1)\nEOF"])
        );

        single.heredocs = vec![heredoc("EOF", "#!/usr/bin/env python3\nprint(1)\n")];
        assert!(err(single, &state()).contains("starts with #! is not supported yet"));
    }

    #[test]
    fn run_flags_are_refused_by_name() {
        let instr = with_flag(
            instruction("RUN", "make"),
            "mount",
            Some("type=cache,target=/c"),
        );
        assert_eq!(
            err(instr, &state()),
            "line 7: RUN --mount is not supported yet"
        );
        let instr = with_flag(instruction("RUN", "make"), "privileged", None);
        assert_eq!(
            err(instr, &state()),
            "line 7: unknown flag --privileged for RUN"
        );
        assert!(err(instruction("RUN", "  "), &state()).contains("requires at least one argument"));
    }

    #[test]
    fn copy_resolves_the_destination_and_expands() {
        let mut state = state();
        state.config.workdir = Some("/app".into());
        let instr = with_flag(
            instruction("COPY", "a.txt $DIR/b/ sub/"),
            "chown",
            Some("$U:$U"),
        );
        let instr = with_flag(instr, "chmod", Some("0755"));
        let outcome = ok(instr, &state);
        assert_eq!(
            only_effect(&outcome),
            &Effect::Copy(CopyFiles {
                sources: strings(&["a.txt", "/srv/b/"]),
                from: None,
                dest: "/app/sub/".into(),
                chown: Some("app:app".into()),
                chmod: Some("0755".into()),
                link: false,
                parents: false,
                excludes: Vec::new(),
            })
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("COPY --chown=app:app --chmod=0755 a.txt /srv/b/ sub/ # buildkit")
        );
        let json = with_json(instruction("COPY", ""), &["my file", "."]);
        let Effect::Copy(copy) = only_effect(&ok(json, &state)).clone() else {
            panic!("not a copy");
        };
        assert_eq!(
            (copy.sources, copy.dest),
            (strings(&["my file"]), "/app/".to_owned())
        );
    }

    #[test]
    fn copy_errors() {
        assert!(
            err(instruction("COPY", "a b /dest"), &state())
                .contains("the destination must be a directory and end with a /")
        );
        assert!(
            err(instruction("COPY", "only"), &state()).contains("requires at least two arguments")
        );
        let from = with_flag(instruction("COPY", "a /b"), "from", Some("build"));
        assert_eq!(
            err(from, &state()),
            "line 7: COPY --from is not supported yet"
        );
        let link = with_flag(instruction("COPY", "a /b"), "link", None);
        assert_eq!(
            err(link, &state()),
            "line 7: COPY --link is not supported yet"
        );
        let unlinked = with_flag(instruction("COPY", "a /b"), "link", Some("false"));
        assert!(handle(&VARS, &unlinked, &state()).is_ok());
        let chmod = with_flag(instruction("COPY", "a /b"), "chmod", Some("888"));
        assert!(err(chmod, &state()).contains("invalid chmod parameter: '888'"));
        let chmod = with_flag(instruction("COPY", "a /b"), "chmod", Some("17777"));
        assert!(err(chmod, &state()).contains("between 0 and 07777"));
        let chmod = with_flag(instruction("COPY", "a /b"), "chmod", Some("u+x"));
        assert!(err(chmod, &state()).contains("symbolic modes are not supported yet"));
        assert!(
            err(instruction("COPY", "<<EOF /x"), &state()).contains("heredoc is not supported yet")
        );
        assert!(err(instruction("COPY", "a <<EOF"), &state()).contains("heredoc as a destination"));
    }

    #[test]
    fn env_in_both_forms() {
        let outcome = ok(instruction("ENV", r#"X=$A Y="two words" Z=\$A"#), &state());
        assert_eq!(
            only_effect(&outcome),
            &Effect::Config(ConfigChange::Env(vec![
                KeyValue::new("X", "1"),
                KeyValue::new("Y", "two words"),
                KeyValue::new("Z", "$A"),
            ]))
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("ENV X=1 Y=two words Z=$A")
        );
        let legacy = ok(instruction("ENV", "PATH $DIR/bin:/bin"), &state());
        assert_eq!(
            only_effect(&legacy),
            &Effect::Config(ConfigChange::Env(vec![KeyValue::new(
                "PATH",
                "/srv/bin:/bin"
            )]))
        );
    }

    #[test]
    fn label_and_expansion_errors_carry_the_line() {
        let outcome = ok(
            instruction("LABEL", "org.opencontainers.image.title=\"kiln $A\""),
            &state(),
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("LABEL org.opencontainers.image.title=kiln 1")
        );
        let failure = handle(&VARS, &instruction("LABEL", "a=$FAIL"), &state()).unwrap_err();
        assert_eq!(failure.message, "line 7: LABEL: bad substitution");
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
        assert_eq!(
            only_effect(&ok(instruction("ARG", "G"), &state)),
            &Effect::DeclareArg(arg("G", None))
        );
    }

    #[test]
    fn workdir_joins_and_creates_the_directory_as_the_user() {
        let mut state = state();
        state.config.workdir = Some("/app".into());
        state.config.user = Some("app".into());
        let outcome = ok(instruction("WORKDIR", "src/../$A"), &state);
        assert_eq!(
            outcome.effects,
            vec![
                Effect::MakeDir(MakeDir {
                    path: "/app/1".into(),
                    chown: Some("app".into())
                }),
                Effect::Config(ConfigChange::Workdir("/app/1".into())),
            ]
        );
        assert_eq!(outcome.created_by.as_deref(), Some("WORKDIR /app/1"));
        let root = ok(instruction("WORKDIR", "/"), &state);
        assert_eq!(
            root.effects,
            vec![Effect::Config(ConfigChange::Workdir("/".into()))]
        );
        let flagged = with_flag(instruction("WORKDIR", "/x"), "chown", Some("app"));
        assert_eq!(
            err(flagged, &state),
            "line 7: unknown flag --chown for WORKDIR"
        );
    }

    #[test]
    fn expose_sorts_expands_and_normalises() {
        let outcome = ok(instruction("EXPOSE", "8080/TCP $PORTS"), &state());
        assert_eq!(
            only_effect(&outcome),
            &Effect::Config(ConfigChange::Expose(strings(&[
                "80/tcp", "53/udp", "8080/tcp"
            ])))
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("EXPOSE [80/tcp 53/udp 8080/tcp]")
        );
        assert!(err(instruction("EXPOSE", "80/http"), &state()).contains("invalid proto"));
    }

    #[test]
    fn entrypoint_and_cmd() {
        let outcome = ok(instruction("ENTRYPOINT", "exec app \"$A\""), &state());
        assert_eq!(
            only_effect(&outcome),
            &Effect::Config(ConfigChange::Entrypoint(Some(strings(&[
                "/bin/sh",
                "-c",
                "exec app \"$A\""
            ]))))
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some(r#"ENTRYPOINT ["/bin/sh" "-c" "exec app \"$A\""]"#)
        );
        let cleared = ok(with_json(instruction("ENTRYPOINT", "[]"), &[]), &state());
        assert_eq!(
            only_effect(&cleared),
            &Effect::Config(ConfigChange::Entrypoint(None))
        );
        assert_eq!(cleared.created_by.as_deref(), Some("ENTRYPOINT []"));
        let cmd = ok(with_json(instruction("CMD", "[]"), &[]), &state());
        assert_eq!(
            only_effect(&cmd),
            &Effect::Config(ConfigChange::Cmd(Some(Vec::new())))
        );
        let cmd = ok(
            with_json(
                instruction("CMD", r#"["app","--port=$A"]"#),
                &["app", "--port=$A"],
            ),
            &state(),
        );
        assert_eq!(
            cmd.created_by.as_deref(),
            Some(r#"CMD ["app" "--port=$A"]"#)
        );
    }

    #[test]
    fn volume_stopsignal_shell_user_maintainer() {
        let volume = ok(
            with_json(instruction("VOLUME", ""), &["$DIR/data", "/logs"]),
            &state(),
        );
        assert_eq!(
            only_effect(&volume),
            &Effect::Config(ConfigChange::Volume(strings(&["/srv/data", "/logs"])))
        );
        assert_eq!(
            volume.created_by.as_deref(),
            Some("VOLUME [/srv/data /logs]")
        );
        assert!(
            err(with_json(instruction("VOLUME", ""), &[" "]), &state()).contains("empty string")
        );

        let signal = ok(instruction("STOPSIGNAL", "SIGQUIT"), &state());
        assert_eq!(
            only_effect(&signal),
            &Effect::Config(ConfigChange::StopSignal("SIGQUIT".into()))
        );
        assert!(
            err(instruction("STOPSIGNAL", "SIGNOPE"), &state()).contains("invalid signal: SIGNOPE")
        );

        assert!(err(instruction("SHELL", "/bin/bash -c"), &state()).contains("JSON form"));
        let shell = ok(
            with_json(instruction("SHELL", ""), &["/bin/bash", "-c"]),
            &state(),
        );
        assert_eq!(shell.created_by.as_deref(), Some("SHELL [/bin/bash -c]"));

        let user = ok(instruction("USER", "$U:staff"), &state());
        assert_eq!(
            only_effect(&user),
            &Effect::Config(ConfigChange::User("app:staff".into()))
        );
        assert!(
            err(instruction("USER", ""), &state()).contains("USER requires exactly one argument")
        );

        let maintainer = ok(
            instruction("MAINTAINER", "Jo <jo@example.com> $A"),
            &state(),
        );
        assert_eq!(
            only_effect(&maintainer),
            &Effect::Config(ConfigChange::Author("Jo <jo@example.com> $A".into()))
        );
    }
}
