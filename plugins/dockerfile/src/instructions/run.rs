//! RUN: the command line, its environment, mounts, network and security.

use kiln_plugin_sdk::{Effect, KeyValue, NetworkMode, Outcome, PluginError, Run};

use super::{Cx, Expander};
use crate::flags::Spec;
use crate::history::{go_quote, run_command};
use crate::{mounts, words};

/// The proxy variables BuildKit passes from `--build-arg` to every RUN,
/// declared or not and in any case, under both spellings; they stay out of
/// the history.
const PROXIES: &[(&str, &str)] = &[
    ("HTTP_PROXY", "http_proxy"),
    ("HTTPS_PROXY", "https_proxy"),
    ("FTP_PROXY", "ftp_proxy"),
    ("NO_PROXY", "no_proxy"),
    ("ALL_PROXY", "all_proxy"),
];

impl<H: Expander> Cx<'_, H> {
    pub(super) fn run(&self) -> Result<Outcome, PluginError> {
        let flags = self.flags(&[
            Spec::strings("device"),
            Spec::strings("mount"),
            Spec::string("network"),
            Spec::string("security"),
        ])?;
        for mount in flags.values("mount") {
            mounts::check_unexpanded(mount).map_err(|e| self.error(e))?;
        }
        let network = match flags.value("network").unwrap_or("default") {
            "default" => NetworkMode::Default,
            "none" => NetworkMode::None,
            "host" => NetworkMode::Host,
            other => {
                return Err(self.error(format!("invalid network mode {}", go_quote(other))));
            }
        };
        let insecure = match flags.value("security").unwrap_or("sandbox") {
            "sandbox" => false,
            "insecure" => true,
            other => return Err(self.error(format!("security {} is not valid", go_quote(other)))),
        };
        let argv = self.run_argv()?;
        let mut parsed = Vec::new();
        for mount in flags.values("mount") {
            parsed.push(
                mounts::parse(mount, |value| self.expand(value)).map_err(|e| match e {
                    mounts::Error::Invalid(message) => self.error(message),
                    mounts::Error::Expand(e) => e,
                })?,
            );
        }
        let workdir = self.current_workdir().unwrap_or("/");
        let mounts = mounts::resolve(parsed, workdir).map_err(|e| self.error(e))?;
        if flags.is_used("device") {
            return Err(self
                .error(
                    "device feature is only supported in Dockerfile frontend 1.14.0-labs or later",
                )
                .with_hint("kiln builds with the stable Dockerfile syntax: remove --device"));
        }
        let mut env = self.run_env();
        if let Some(socket) = mounts::ssh_socket(&mounts)
            && !env.iter().any(|kv| kv.key == "SSH_AUTH_SOCK")
            && self.env_value("SSH_AUTH_SOCK").is_none()
        {
            env.push(KeyValue::new("SSH_AUTH_SOCK", socket));
        }
        let created_by = format!(
            "RUN {} # buildkit",
            run_command(&argv, &self.build_args_for_history())
        );
        Ok(Outcome::new(vec![Effect::Run(Run {
            argv,
            env,
            mounts,
            network,
            insecure,
        })])
        .created_by(created_by))
    }

    /// The command line: JSON as is, else the text (or its heredocs) through
    /// the image's shell.
    fn run_argv(&self) -> Result<Vec<String>, PluginError> {
        let heredocs = &self.instruction.heredocs;
        Ok(match &self.instruction.json {
            Some(argv) if argv.is_empty() => {
                return Err(self.error("arguments are required"));
            }
            Some(_) if !heredocs.is_empty() => {
                return Err(self.error(format!(
                    "parsing produced an invalid run command: {}",
                    self.text()
                )));
            }
            Some(argv) => argv.clone(),
            None if heredocs.is_empty() => self.with_shell(self.text().to_owned()),
            None => self.with_shell(self.heredoc_script()?),
        })
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
            script.push_str(&heredoc.name);
        }
        Ok(script)
    }

    /// The ARGs in scope with a value (unless ENV set the same name), then
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
        for (upper, lower) in PROXIES {
            // BuildKit visits the build args sorted by name, so the last
            // match in that order wins.
            let value = self
                .state
                .build_args
                .iter()
                .filter(|kv| kv.key.eq_ignore_ascii_case(upper))
                .max_by(|a, b| a.key.cmp(&b.key))
                .map(|kv| kv.value.as_str())
                .filter(|value| !value.is_empty());
            let Some(value) = value else { continue };
            for name in [upper, lower] {
                if !env.iter().any(|kv| kv.key == *name) && self.env_value(name).is_none() {
                    env.push(KeyValue::new(*name, value));
                }
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
}

#[cfg(test)]
mod tests {
    use kiln_plugin_sdk::{
        CacheSharing, Effect, KeyValue, MountKind, NetworkMode, Outcome, Run, RunMount,
    };

    use crate::instructions::testing::*;

    fn run_of(outcome: &Outcome) -> Run {
        match only_effect(outcome) {
            Effect::Run(run) => run.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn mounted(mounts: &[&str], state: &kiln_plugin_sdk::State) -> Vec<RunMount> {
        let instr = mounts.iter().fold(instruction("RUN", "make"), |i, m| {
            with_flag(i, "mount", Some(m))
        });
        run_of(&ok(instr, state)).mounts
    }

    #[test]
    fn shell_form_passes_args_in_scope() {
        let mut state = state();
        state.args = vec![
            arg("A", Some("1")),
            arg("B", None),
            arg("A", Some("2")),
            arg("E", Some("x")),
        ];
        state.config.env = vec![KeyValue::new("E", "from-env")];
        state.build_args = vec![KeyValue::new("OTHER", "x")];
        let outcome = ok(instruction("RUN", "echo $A > /f"), &state);
        assert_eq!(
            only_effect(&outcome),
            &Effect::Run(Run {
                argv: strings(&["/bin/sh", "-c", "echo $A > /f"]),
                env: vec![KeyValue::new("A", "2")],
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
    fn proxy_build_args_reach_run_but_not_history() {
        let mut state = state();
        state.build_args = vec![
            KeyValue::new("http_proxy", "http://lower"),
            KeyValue::new("HTTP_PROXY", "http://upper"),
            KeyValue::new("Https_Proxy", "http://mixed"),
            KeyValue::new("NO_PROXY", ""),
            KeyValue::new("all_proxy", "socks://a"),
        ];
        state.config.env = vec![KeyValue::new("ALL_PROXY", "socks://env")];
        let outcome = ok(instruction("RUN", "curl x"), &state);
        assert_eq!(
            run_of(&outcome).env,
            vec![
                KeyValue::new("HTTP_PROXY", "http://lower"),
                KeyValue::new("http_proxy", "http://lower"),
                KeyValue::new("HTTPS_PROXY", "http://mixed"),
                KeyValue::new("https_proxy", "http://mixed"),
                KeyValue::new("all_proxy", "socks://a"),
            ]
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("RUN /bin/sh -c curl x # buildkit")
        );
        state.args = vec![arg("http_proxy", Some("http://declared"))];
        let env = run_of(&ok(instruction("RUN", "curl x"), &state)).env;
        assert_eq!(env[0], KeyValue::new("http_proxy", "http://declared"));
        assert_eq!(env[1], KeyValue::new("HTTP_PROXY", "http://lower"));
    }

    #[test]
    fn image_shell_and_json_form() {
        let mut state = state();
        state.config.shell = strings(&["/bin/bash", "-eu", "-c"]);
        let run = run_of(&ok(instruction("RUN", "ls"), &state));
        assert_eq!(run.argv, strings(&["/bin/bash", "-eu", "-c", "ls"]));
        let outcome = ok(
            with_json(instruction("RUN", "[\"ls\", \"-l\"]"), &["ls", "-l"]),
            &state,
        );
        assert_eq!(outcome.created_by.as_deref(), Some("RUN ls -l # buildkit"));
        assert_eq!(
            run_of(&ok(instruction("RUN", ""), &state)).argv,
            strings(&["/bin/bash", "-eu", "-c", ""])
        );
        assert_eq!(
            err(with_json(instruction("RUN", "[]"), &[]), &state),
            "line 7: arguments are required"
        );
    }

    #[test]
    fn heredocs() {
        let mut single = with_heredoc(instruction("RUN", "<<EOF"), "EOF", "echo a\necho b\n", true);
        assert_eq!(
            run_of(&ok(single.clone(), &state())).argv,
            strings(&["/bin/sh", "-c", "echo a\necho b\n"])
        );
        let piped = with_heredoc(
            instruction("RUN", "<<EOF python3"),
            "EOF",
            "print(1)\n",
            true,
        );
        let outcome = ok(piped, &state());
        assert_eq!(
            run_of(&outcome).argv,
            strings(&["/bin/sh", "-c", "<<EOF python3\nprint(1)\nEOF"])
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("RUN /bin/sh -c <<EOF python3\nprint(1)\nEOF # buildkit")
        );
        let two = with_heredoc(
            with_heredoc(instruction("RUN", "cat <<A <<'B'"), "A", "a\n", true),
            "B",
            "",
            false,
        );
        assert_eq!(run_of(&ok(two, &state())).argv[2], "cat <<A <<'B'\na\nA\nB");
        single.heredocs[0].content = "#!/usr/bin/env python3\nprint(1)\n".into();
        assert!(err(single, &state()).contains("starts with #! is not supported yet"));
    }

    #[test]
    fn network_and_security() {
        let run = |flags: &[(&str, &str)]| {
            let instr = flags.iter().fold(instruction("RUN", "make"), |i, (n, v)| {
                with_flag(i, n, Some(v))
            });
            handle(&VARS, &instr, &state())
        };
        let modes = [
            ("default", NetworkMode::Default),
            ("none", NetworkMode::None),
            ("host", NetworkMode::Host),
        ];
        for (name, mode) in modes {
            let outcome = run(&[("network", name)]).unwrap();
            assert_eq!(run_of(&outcome).network, mode);
            assert_eq!(
                outcome.created_by.as_deref(),
                Some("RUN /bin/sh -c make # buildkit")
            );
        }
        assert!(run_of(&run(&[("security", "insecure")]).unwrap()).insecure);
        assert!(!run_of(&run(&[("security", "sandbox")]).unwrap()).insecure);
        assert_eq!(
            run(&[("network", "bridge")]).unwrap_err().message,
            "line 7: invalid network mode \"bridge\""
        );
        assert_eq!(
            run(&[("network", "$NET")]).unwrap_err().message,
            "line 7: invalid network mode \"$NET\""
        );
        assert_eq!(
            run(&[("security", "privileged")]).unwrap_err().message,
            "line 7: security \"privileged\" is not valid"
        );
        assert_eq!(
            run(&[("network", "none"), ("network", "host")])
                .unwrap_err()
                .message,
            "line 7: duplicate flag specified: --network"
        );
        assert_eq!(
            run(&[("device", "nvidia.com/gpu=all")])
                .unwrap_err()
                .message,
            "line 7: device feature is only supported in Dockerfile frontend 1.14.0-labs or later"
        );
    }

    #[test]
    fn mounts_expand_and_resolve() {
        let mut state = state();
        state.config.workdir = Some("/app".into());
        let mounts = mounted(
            &[
                "type=cache,target=node_modules,id=$U",
                "type=bind,from=build,source=$DIR,target=/src",
                "type=secret,id=npm",
                "type=tmpfs,target=/tmp,size=1m",
            ],
            &state,
        );
        assert_eq!(
            mounts[0],
            RunMount {
                kind: MountKind::Cache,
                target: Some("/app/node_modules".into()),
                source: None,
                from: None,
                read_write: Some(true),
                id: Some("app".into()),
                sharing: CacheSharing::Shared,
                mode: None,
                uid: None,
                gid: None,
                required: false,
                size: None,
                env: None,
            }
        );
        assert_eq!(mounts[1].source.as_deref(), Some("/srv"));
        assert_eq!(mounts[1].from.as_deref(), Some("build"));
        assert_eq!(mounts[1].read_write, Some(false));
        assert_eq!(mounts[2].target.as_deref(), Some("/run/secrets/npm"));
        assert_eq!(mounts[3].size, Some(1 << 20));
    }

    #[test]
    fn ssh_mounts_export_the_agent_socket() {
        let instr = with_flag(instruction("RUN", "git clone x"), "mount", Some("type=ssh"));
        let outcome = ok(instr.clone(), &state());
        let run = run_of(&outcome);
        assert_eq!(
            run.env,
            vec![KeyValue::new("SSH_AUTH_SOCK", "/run/buildkit/ssh_agent.0")]
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("RUN /bin/sh -c git clone x # buildkit")
        );
        let mut state = state();
        state.config.env = vec![KeyValue::new("SSH_AUTH_SOCK", "/mine")];
        assert!(run_of(&ok(instr, &state)).env.is_empty());
    }

    #[test]
    fn mount_errors_carry_the_line() {
        let bad = |value: &str| {
            err(
                with_flag(instruction("RUN", "make"), "mount", Some(value)),
                &state(),
            )
        };
        assert_eq!(
            bad("type=bind,from=$STAGE,target=/x"),
            "line 7: 'from' doesn't support variable expansion, define alias stage instead"
        );
        assert_eq!(
            bad("type=nfs,target=/x"),
            "line 7: unsupported mount type \"nfs\""
        );
        assert_eq!(bad("type=cache"), "line 7: invalid mount target \"/\"");
        assert_eq!(
            bad("type=ssh,src=/x"),
            "line 7: ssh does not support source"
        );
        let failure = handle_err(
            with_flag(instruction("RUN", "make"), "mount", Some("target=$FAIL")),
            &state(),
        );
        assert_eq!(failure.message, "line 7: RUN: bad substitution");
        assert_eq!(
            err(
                with_flag(instruction("RUN", "make"), "mount", None),
                &state()
            ),
            "line 7: missing a value on flag: --mount"
        );
        assert_eq!(
            err(
                with_flag(instruction("RUN", "make"), "mout", Some("x")),
                &state()
            ),
            "line 7: unknown flag: --mout (did you mean mount?)"
        );
        assert_eq!(
            err(
                with_flag(instruction("RUN", "make"), "privileged", None),
                &state()
            ),
            "line 7: unknown flag: --privileged"
        );
    }
}
