//! The instructions that change the image config (and WORKDIR, which also
//! creates its directory).

use kiln_plugin_sdk::{ConfigChange, Effect, Healthcheck, MakeDir, Outcome, PluginError};

use super::{Cx, Expander};
use crate::flags::{Flags, Spec};
use crate::history::{go_list, go_quote, go_quoted_list};
use crate::{duration, paths, ports, signal, words};

/// HEALTHCHECK's durations below this (but zero) are refused.
const MIN_INTERVAL_NANOS: i64 = 1_000_000;

impl<H: Expander> Cx<'_, H> {
    pub(super) fn env(&self) -> Result<Outcome, PluginError> {
        let (pairs, created_by) = self.pairs()?;
        Ok(config(ConfigChange::Env(pairs), created_by))
    }

    pub(super) fn label(&self) -> Result<Outcome, PluginError> {
        let (pairs, created_by) = self.pairs()?;
        Ok(config(ConfigChange::Label(pairs), created_by))
    }

    pub(super) fn workdir(&self) -> Result<Outcome, PluginError> {
        let raw = self.single_argument()?;
        self.no_flags()?;
        let path = self.expand(raw)?;
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

    /// `USER name`, `uid`, `uid:gid`, `name:group`: passed on as expanded;
    /// the host resolves names when it needs ids.
    pub(super) fn user(&self) -> Result<Outcome, PluginError> {
        let raw = self.single_argument()?;
        self.no_flags()?;
        let user = self.expand(raw)?;
        let created_by = format!("USER {user}");
        Ok(config(ConfigChange::User(user), created_by))
    }

    pub(super) fn expose(&self) -> Result<Outcome, PluginError> {
        let mut raw = words::split_blanks(self.text());
        if raw.is_empty() {
            return Err(self.error("EXPOSE requires at least one argument"));
        }
        self.no_flags()?;
        // BuildKit sorts the words as written, before expanding them.
        raw.sort();
        let mut specs = Vec::new();
        for word in &raw {
            specs.extend(
                self.host
                    .expand_words(word)
                    .map_err(|e| self.host_error(e))?,
            );
        }
        let ports = ports::normalize(&specs).map_err(|e| self.error(e))?;
        let created_by = format!("EXPOSE {}", go_list(&ports));
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

    pub(super) fn entrypoint(&self) -> Result<Outcome, PluginError> {
        let argv = self.command_line()?;
        let created_by = format!("ENTRYPOINT {}", go_quoted_list(&argv));
        // `ENTRYPOINT []` removes the entrypoint; the host also drops a CMD
        // that the stage did not set itself, as BuildKit does.
        let entrypoint = Some(argv).filter(|argv| !argv.is_empty());
        Ok(config(ConfigChange::Entrypoint(entrypoint), created_by))
    }

    pub(super) fn cmd(&self) -> Result<Outcome, PluginError> {
        let argv = self.command_line()?;
        let created_by = format!("CMD {}", go_quoted_list(&argv));
        Ok(config(ConfigChange::Cmd(Some(argv)), created_by))
    }

    pub(super) fn volume(&self) -> Result<Outcome, PluginError> {
        let raw = match &self.instruction.json {
            Some(volumes) => volumes.clone(),
            None => words::split_blanks(self.text()),
        };
        if raw.is_empty() {
            return Err(self.error("VOLUME requires at least one argument"));
        }
        self.no_flags()?;
        let mut volumes = Vec::with_capacity(raw.len());
        for volume in &raw {
            let volume = self.expand(volume.trim())?;
            if volume.is_empty() {
                return Err(self.error("VOLUME specified can not be an empty string"));
            }
            volumes.push(volume);
        }
        let created_by = format!("VOLUME {}", go_list(&volumes));
        Ok(config(ConfigChange::Volume(volumes), created_by))
    }

    pub(super) fn stop_signal(&self) -> Result<Outcome, PluginError> {
        // BuildKit never checks STOPSIGNAL's flags: they are ignored.
        let signal = self.expand(self.single_argument()?)?;
        if !signal::is_valid(&signal) {
            return Err(self
                .error(format!("invalid signal: {signal}"))
                .with_hint("use a signal name such as SIGTERM or a number such as 15"));
        }
        let created_by = format!("STOPSIGNAL {signal}");
        Ok(config(ConfigChange::StopSignal(signal), created_by))
    }

    pub(super) fn shell(&self) -> Result<Outcome, PluginError> {
        self.no_flags()?;
        let shell = match &self.instruction.json {
            Some(shell) if shell.is_empty() => None,
            Some(shell) => Some(shell),
            None if self.text().is_empty() => None,
            None => {
                return Err(self
                    .error("SHELL requires the arguments to be in JSON form")
                    .with_hint("write SHELL [\"/bin/bash\", \"-c\"]"));
            }
        };
        let Some(shell) = shell else {
            return Err(self.error("SHELL requires at least one argument"));
        };
        let created_by = format!("SHELL {}", go_list(shell));
        Ok(config(ConfigChange::Shell(shell.clone()), created_by))
    }

    pub(super) fn maintainer(&self) -> Result<Outcome, PluginError> {
        let author = self.single_argument()?.to_owned();
        self.no_flags()?;
        let created_by = format!("MAINTAINER {author}");
        Ok(config(ConfigChange::Author(author), created_by))
    }

    /// `HEALTHCHECK NONE` or `HEALTHCHECK [options] CMD command`.
    pub(super) fn healthcheck(&self) -> Result<Outcome, PluginError> {
        let text = self.text();
        let (kind, rest) = match text.find(|c: char| c.is_ascii_whitespace()) {
            Some(at) => (&text[..at], text[at..].trim_start()),
            None => (text, ""),
        };
        if kind.is_empty() {
            return Err(self.error("HEALTHCHECK requires at least one argument"));
        }
        let kind = kind.to_uppercase();
        let args = match &self.instruction.json {
            Some(args) => args.clone(),
            None if rest.is_empty() => Vec::new(),
            None => vec![rest.to_owned()],
        };
        let check = if kind == "NONE" {
            // BuildKit reads no flags for NONE.
            if !args.is_empty() {
                return Err(self.error("HEALTHCHECK NONE takes no arguments"));
            }
            Healthcheck {
                test: vec![kind],
                interval: None,
                timeout: None,
                start_period: None,
                start_interval: None,
                retries: None,
            }
        } else {
            let flags = self.flags(&[
                Spec::string("interval"),
                Spec::string("timeout"),
                Spec::string("start-period"),
                Spec::string("start-interval"),
                Spec::string("retries"),
            ])?;
            if kind != "CMD" {
                return Err(self.error(format!(
                    "Unknown type {} in HEALTHCHECK (try CMD)",
                    go_quote(&kind)
                )));
            }
            if args.is_empty() {
                return Err(self.error("Missing command after HEALTHCHECK CMD"));
            }
            let shell_form = if self.instruction.json.is_some() {
                "CMD"
            } else {
                "CMD-SHELL"
            };
            let mut test = vec![shell_form.to_owned()];
            test.extend(args);
            Healthcheck {
                test,
                interval: self.interval(&flags, "interval")?,
                timeout: self.interval(&flags, "timeout")?,
                start_period: self.interval(&flags, "start-period")?,
                start_interval: self.interval(&flags, "start-interval")?,
                retries: self.retries(&flags)?,
            }
        };
        let created_by = format!("HEALTHCHECK {}", healthcheck_text(&check));
        Ok(config(ConfigChange::Healthcheck(check), created_by))
    }

    /// A HEALTHCHECK duration in nanoseconds; none when unset or zero.
    fn interval(&self, flags: &Flags, name: &str) -> Result<Option<u64>, PluginError> {
        let Some(text) = flags.value(name).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        match duration::parse(text).map_err(|e| self.error(e))? {
            0 => Ok(None),
            nanos if nanos < MIN_INTERVAL_NANOS => Err(self.error(format!(
                "Interval {} cannot be less than 1ms",
                go_quote(name)
            ))),
            nanos => Ok(Some(nanos as u64)),
        }
    }

    /// `--retries`, a non-negative 32-bit number; none when unset or zero.
    fn retries(&self, flags: &Flags) -> Result<Option<u32>, PluginError> {
        let Some(text) = flags.value("retries").filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let retries = text.parse::<i32>().map_err(|e| {
            let reason = match e.kind() {
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                    "value out of range"
                }
                _ => "invalid syntax",
            };
            self.error(format!(
                "strconv.ParseInt: parsing {}: {reason}",
                go_quote(text)
            ))
        })?;
        if retries < 0 {
            return Err(self.error(format!("--retries cannot be negative ({retries})")));
        }
        Ok(Some(retries as u32).filter(|r| *r > 0))
    }

    /// `ONBUILD <instruction>`: stores the trigger, checked as BuildKit
    /// checks it, for images built on this one.
    pub(super) fn onbuild(&self) -> Result<Outcome, PluginError> {
        let text = self.text();
        if text.is_empty() {
            return Err(self.error("ONBUILD requires at least one argument"));
        }
        self.no_flags()?;
        let trigger = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_uppercase();
        match trigger.as_str() {
            "ONBUILD" => {
                return Err(self.error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"));
            }
            "MAINTAINER" | "FROM" => {
                return Err(self.error(format!("{trigger} isn't allowed as an ONBUILD trigger")));
            }
            _ => {}
        }
        let mut expression = strip_onbuild(&self.instruction.original).to_owned();
        for heredoc in &self.instruction.heredocs {
            expression.push('\n');
            expression.push_str(&heredoc.content);
            expression.push_str(&heredoc.name);
        }
        let created_by = format!("ONBUILD {expression}");
        Ok(config(ConfigChange::Onbuild(expression), created_by))
    }
}

/// An outcome that only changes the config.
fn config(change: ConfigChange, created_by: String) -> Outcome {
    Outcome::new(vec![Effect::Config(change)]).created_by(created_by)
}

/// Go's `%+v` of Docker's `HealthcheckConfig`, as BuildKit's history has it.
fn healthcheck_text(check: &Healthcheck) -> String {
    let duration = |nanos: Option<u64>| duration::format(nanos.unwrap_or(0));
    format!(
        "{{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        go_list(&check.test),
        duration(check.interval),
        duration(check.timeout),
        duration(check.start_period),
        duration(check.start_interval),
        check.retries.unwrap_or(0)
    )
}

/// The instruction after `ONBUILD`, as BuildKit's `(?i)^\s*ONBUILD\s*`
/// removes it.
fn strip_onbuild(original: &str) -> &str {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\u{c}' | '\r');
    let rest = original.trim_start_matches(is_space);
    match rest.get(..7) {
        Some(keyword) if keyword.eq_ignore_ascii_case("ONBUILD") => {
            rest[7..].trim_start_matches(is_space)
        }
        _ => original,
    }
}

#[cfg(test)]
mod tests {
    use kiln_plugin_sdk::{ConfigChange, Effect, Healthcheck, KeyValue, MakeDir, Outcome};

    use crate::instructions::testing::*;

    fn change(outcome: &Outcome) -> ConfigChange {
        match only_effect(outcome) {
            Effect::Config(change) => change.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn env_in_both_forms() {
        let outcome = ok(instruction("ENV", r#"X=$A Y="two words" Z=\$A"#), &state());
        assert_eq!(
            change(&outcome),
            ConfigChange::Env(vec![
                KeyValue::new("X", "1"),
                KeyValue::new("Y", "two words"),
                KeyValue::new("Z", "$A"),
            ])
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("ENV X=1 Y=two words Z=$A")
        );
        let legacy = ok(instruction("ENV", "PATH $DIR/bin:/bin"), &state());
        assert_eq!(
            change(&legacy),
            ConfigChange::Env(vec![KeyValue::new("PATH", "/srv/bin:/bin")])
        );
        let flagged = with_flag(instruction("ENV", "A=1"), "x", None);
        assert_eq!(err(flagged, &state()), "line 7: unknown flag: --x");
    }

    #[test]
    fn env_splits_with_the_dockerfiles_escape() {
        let mut state = state();
        state.escape = "`".into();
        let outcome = handle(
            &BACKTICK_VARS,
            &instruction("ENV", r"A=`$NAME B=x` y C=C:\dir"),
            &state,
        )
        .unwrap();
        assert_eq!(
            change(&outcome),
            ConfigChange::Env(vec![
                KeyValue::new("A", "$NAME"),
                KeyValue::new("B", "x y"),
                KeyValue::new("C", r"C:\dir"),
            ])
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
        let failure = handle_err(instruction("LABEL", "a=$FAIL"), &state());
        assert_eq!(failure.message, "line 7: LABEL: bad substitution");
        assert_eq!(failure.hint.as_deref(), Some("fix it"));
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
        let relative = ok(instruction("WORKDIR", "rel"), &self::state());
        assert_eq!(relative.created_by.as_deref(), Some("WORKDIR /rel"));
        let flagged = with_flag(instruction("WORKDIR", "/x"), "chown", Some("app"));
        assert_eq!(err(flagged, &state), "line 7: unknown flag: --chown");
        assert_eq!(
            err(instruction("WORKDIR", " "), &state),
            "line 7: WORKDIR requires exactly one argument"
        );
    }

    #[test]
    fn user_forms_pass_through() {
        for (text, user) in [
            ("app", "app"),
            ("1000", "1000"),
            ("1000:1000", "1000:1000"),
            ("$U:staff", "app:staff"),
            ("nobody:$A", "nobody:1"),
        ] {
            let outcome = ok(instruction("USER", text), &state());
            assert_eq!(change(&outcome), ConfigChange::User(user.into()));
            assert_eq!(outcome.created_by, Some(format!("USER {user}")));
        }
        assert_eq!(
            err(instruction("USER", ""), &state()),
            "line 7: USER requires exactly one argument"
        );
    }

    #[test]
    fn expose_sorts_expands_and_normalises() {
        let outcome = ok(
            instruction("EXPOSE", "8080/TCP $PORTS 9000-9001/sctp"),
            &state(),
        );
        assert_eq!(
            change(&outcome),
            ConfigChange::Expose(strings(&[
                "80/tcp",
                "53/udp",
                "8080/tcp",
                "9000/sctp",
                "9001/sctp"
            ]))
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("EXPOSE [80/tcp 53/udp 8080/tcp 9000/sctp 9001/sctp]")
        );
        assert_eq!(
            err(instruction("EXPOSE", "80/http"), &state()),
            "line 7: invalid port: \"80/http\": invalid proto: http"
        );
        assert_eq!(
            err(instruction("EXPOSE", "8010-8000"), &state()),
            "line 7: invalid containerPort: 8010-8000"
        );
        assert_eq!(
            err(instruction("EXPOSE", ""), &state()),
            "line 7: EXPOSE requires at least one argument"
        );
        let empty = ok(instruction("EXPOSE", "$EMPTY"), &state());
        assert_eq!(change(&empty), ConfigChange::Expose(Vec::new()));
        assert_eq!(empty.created_by.as_deref(), Some("EXPOSE []"));
    }

    #[test]
    fn entrypoint_and_cmd() {
        let outcome = ok(instruction("ENTRYPOINT", "exec app \"$A\""), &state());
        assert_eq!(
            change(&outcome),
            ConfigChange::Entrypoint(Some(strings(&["/bin/sh", "-c", "exec app \"$A\""])))
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some(r#"ENTRYPOINT ["/bin/sh" "-c" "exec app \"$A\""]"#)
        );
        let cleared = ok(with_json(instruction("ENTRYPOINT", "[]"), &[]), &state());
        assert_eq!(change(&cleared), ConfigChange::Entrypoint(None));
        assert_eq!(cleared.created_by.as_deref(), Some("ENTRYPOINT []"));
        let cmd = ok(with_json(instruction("CMD", "[]"), &[]), &state());
        assert_eq!(change(&cmd), ConfigChange::Cmd(Some(Vec::new())));
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
    fn volume_stopsignal_shell_maintainer() {
        let volume = ok(
            with_json(instruction("VOLUME", ""), &["$DIR/data", "/logs"]),
            &state(),
        );
        assert_eq!(
            change(&volume),
            ConfigChange::Volume(strings(&["/srv/data", "/logs"]))
        );
        assert_eq!(
            volume.created_by.as_deref(),
            Some("VOLUME [/srv/data /logs]")
        );
        let shell_form = ok(instruction("VOLUME", "/a  /b"), &state());
        assert_eq!(
            change(&shell_form),
            ConfigChange::Volume(strings(&["/a", "/b"]))
        );
        assert_eq!(
            err(with_json(instruction("VOLUME", ""), &[" "]), &state()),
            "line 7: VOLUME specified can not be an empty string"
        );
        assert_eq!(
            err(instruction("VOLUME", "$EMPTY"), &state()),
            "line 7: VOLUME specified can not be an empty string"
        );

        let signal = ok(instruction("STOPSIGNAL", "SIGQUIT"), &state());
        assert_eq!(change(&signal), ConfigChange::StopSignal("SIGQUIT".into()));
        assert_eq!(signal.created_by.as_deref(), Some("STOPSIGNAL SIGQUIT"));
        let numbered = with_flag(instruction("STOPSIGNAL", "9"), "ignored", None);
        assert_eq!(
            change(&ok(numbered, &state())),
            ConfigChange::StopSignal("9".into())
        );
        assert_eq!(
            err(instruction("STOPSIGNAL", "SIGNOPE"), &state()),
            "line 7: invalid signal: SIGNOPE"
        );

        assert_eq!(
            err(instruction("SHELL", "/bin/bash -c"), &state()),
            "line 7: SHELL requires the arguments to be in JSON form"
        );
        assert_eq!(
            err(with_json(instruction("SHELL", "[]"), &[]), &state()),
            "line 7: SHELL requires at least one argument"
        );
        let shell = ok(
            with_json(instruction("SHELL", ""), &["/bin/bash", "-c"]),
            &state(),
        );
        assert_eq!(shell.created_by.as_deref(), Some("SHELL [/bin/bash -c]"));

        let maintainer = ok(
            instruction("MAINTAINER", "Jo <jo@example.com> $A"),
            &state(),
        );
        assert_eq!(
            change(&maintainer),
            ConfigChange::Author("Jo <jo@example.com> $A".into())
        );
        assert_eq!(
            maintainer.created_by.as_deref(),
            Some("MAINTAINER Jo <jo@example.com> $A")
        );
    }

    fn healthcheck(outcome: &Outcome) -> Healthcheck {
        match change(outcome) {
            ConfigChange::Healthcheck(check) => check,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn healthcheck_forms_and_options() {
        let instr = instruction("HEALTHCHECK", "CMD curl -f http://localhost/ || exit 1");
        let instr = with_flag(instr, "interval", Some("1m30s"));
        let instr = with_flag(instr, "timeout", Some("1.5s"));
        let instr = with_flag(instr, "start-period", Some("500ms"));
        let instr = with_flag(instr, "start-interval", Some("1.5h"));
        let instr = with_flag(instr, "retries", Some("3"));
        let outcome = ok(instr, &state());
        assert_eq!(
            healthcheck(&outcome),
            Healthcheck {
                test: strings(&["CMD-SHELL", "curl -f http://localhost/ || exit 1"]),
                interval: Some(90_000_000_000),
                timeout: Some(1_500_000_000),
                start_period: Some(500_000_000),
                start_interval: Some(5_400_000_000_000),
                retries: Some(3),
            }
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some(
                "HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/ || exit 1] Interval:1m30s Timeout:1.5s StartPeriod:500ms StartInterval:1h30m0s Retries:3}"
            )
        );
        let exec = with_json(
            instruction("HEALTHCHECK", r#"cmd ["/bin/check", "-q"]"#),
            &["/bin/check", "-q"],
        );
        let exec = with_flag(exec, "interval", Some("0"));
        let exec = with_flag(exec, "retries", Some("0"));
        let outcome = ok(exec, &state());
        assert_eq!(
            healthcheck(&outcome),
            Healthcheck {
                test: strings(&["CMD", "/bin/check", "-q"]),
                interval: None,
                timeout: None,
                start_period: None,
                start_interval: None,
                retries: None,
            }
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some(
                "HEALTHCHECK {Test:[CMD /bin/check -q] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}"
            )
        );
        let none = ok(instruction("HEALTHCHECK", "none"), &state());
        assert_eq!(healthcheck(&none).test, strings(&["NONE"]));
        assert_eq!(
            none.created_by.as_deref(),
            Some(
                "HEALTHCHECK {Test:[NONE] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}"
            )
        );
        // BuildKit reads no flags for NONE, not even unknown ones.
        let flagged = with_flag(instruction("HEALTHCHECK", "NONE"), "bogus", None);
        assert_eq!(healthcheck(&ok(flagged, &state())).test, strings(&["NONE"]));
    }

    #[test]
    fn healthcheck_errors() {
        let check = |text: &str, flags: &[(&str, &str)]| {
            let instr = flags
                .iter()
                .fold(instruction("HEALTHCHECK", text), |i, (n, v)| {
                    with_flag(i, n, Some(v))
                });
            err(instr, &state())
        };
        type Flags = &'static [(&'static str, &'static str)];
        let cases: &[(&str, Flags, &str)] = &[
            ("", &[], "HEALTHCHECK requires at least one argument"),
            ("NONE x", &[], "HEALTHCHECK NONE takes no arguments"),
            ("CMD", &[], "Missing command after HEALTHCHECK CMD"),
            (
                "RUN x",
                &[],
                "Unknown type \"RUN\" in HEALTHCHECK (try CMD)",
            ),
            (
                "CMD x",
                &[("interval", "10")],
                "time: missing unit in duration \"10\"",
            ),
            (
                "CMD x",
                &[("timeout", "1d")],
                "time: unknown unit \"d\" in duration \"1d\"",
            ),
            (
                "CMD x",
                &[("start-period", "x")],
                "time: invalid duration \"x\"",
            ),
            (
                "CMD x",
                &[("interval", "999us")],
                "Interval \"interval\" cannot be less than 1ms",
            ),
            (
                "CMD x",
                &[("start-interval", "-1s")],
                "Interval \"start-interval\" cannot be less than 1ms",
            ),
            (
                "CMD x",
                &[("retries", "-1")],
                "--retries cannot be negative (-1)",
            ),
            (
                "CMD x",
                &[("retries", "two")],
                "strconv.ParseInt: parsing \"two\": invalid syntax",
            ),
            (
                "CMD x",
                &[("retries", "9999999999")],
                "strconv.ParseInt: parsing \"9999999999\": value out of range",
            ),
            (
                "CMD x",
                &[("intervall", "1s")],
                "unknown flag: --intervall (did you mean interval?)",
            ),
            (
                "CMD x",
                &[("retries", "1"), ("retries", "2")],
                "duplicate flag specified: --retries",
            ),
        ];
        for (text, flags, message) in cases {
            assert_eq!(
                check(text, flags),
                format!("line 7: {message}"),
                "{text} {flags:?}"
            );
        }
        let empty = with_json(instruction("HEALTHCHECK", "CMD []"), &[]);
        assert_eq!(
            err(empty, &state()),
            "line 7: Missing command after HEALTHCHECK CMD"
        );
        assert!(
            ok(
                with_json(instruction("HEALTHCHECK", "NONE []"), &[]),
                &state()
            )
            .created_by
            .is_some()
        );
    }

    #[test]
    fn onbuild_stores_the_trigger() {
        let mut instr = instruction("ONBUILD", "run --mount=type=cache,target=/c make");
        instr.original = "  onbuild   run --mount=type=cache,target=/c make".into();
        let outcome = ok(instr, &state());
        assert_eq!(
            change(&outcome),
            ConfigChange::Onbuild("run --mount=type=cache,target=/c make".into())
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("ONBUILD run --mount=type=cache,target=/c make")
        );
        let heredoc = with_heredoc(
            instruction("ONBUILD", "COPY <<EOF /f"),
            "EOF",
            "hi $A\n",
            true,
        );
        assert_eq!(
            change(&ok(heredoc, &state())),
            ConfigChange::Onbuild("COPY <<EOF /f\nhi $A\nEOF".into())
        );
    }

    #[test]
    fn onbuild_errors() {
        assert_eq!(
            err(instruction("ONBUILD", ""), &state()),
            "line 7: ONBUILD requires at least one argument"
        );
        assert_eq!(
            err(instruction("ONBUILD", "onbuild RUN x"), &state()),
            "line 7: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
        );
        assert_eq!(
            err(instruction("ONBUILD", "from alpine"), &state()),
            "line 7: FROM isn't allowed as an ONBUILD trigger"
        );
        assert_eq!(
            err(instruction("ONBUILD", "MAINTAINER me"), &state()),
            "line 7: MAINTAINER isn't allowed as an ONBUILD trigger"
        );
        let flagged = with_flag(instruction("ONBUILD", "RUN x"), "x", None);
        assert_eq!(err(flagged, &state()), "line 7: unknown flag: --x");
    }
}
