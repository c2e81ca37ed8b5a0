//! The three builders, their exact command lines, and one cold build
//! followed by one warm (identical) rebuild of a case by each, measured.
//!
//! Cold means empty caches and a registry holding only the base images:
//! kiln gets a new kiln directory and `--cache-dir`, buildah a new storage
//! root, and BuildKit a daemon whose images and build cache were pruned.
//! Warm is the same command again right after, with everything the cold
//! build left behind.

use super::measure::{self, RssSampler, Usage};
use super::services::{self, DockerCli, Dockerd, Registry};
use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A builder under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builder {
    /// kiln, the release build of this workspace.
    Kiln,
    /// Debian's buildah 1.28, overlay storage, chroot isolation.
    Buildah,
    /// BuildKit inside Debian's Docker engine 20.10.
    Buildkit,
}

impl Builder {
    /// Every builder, in report order.
    pub const ALL: [Builder; 3] = [Builder::Kiln, Builder::Buildah, Builder::Buildkit];

    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Builder::Kiln => "kiln",
            Builder::Buildah => "buildah",
            Builder::Buildkit => "buildkit",
        }
    }

    /// The builder called `name`.
    pub fn parse(name: &str) -> Option<Builder> {
        Builder::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// Whether a build starts from empty caches or rebuilds with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Empty caches; the registry holds only the base images.
    Cold,
    /// An identical rebuild right after the cold one.
    Warm,
}

impl Mode {
    /// Both modes, in report order.
    pub const ALL: [Mode; 2] = [Mode::Cold, Mode::Warm];

    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::Warm => "warm",
        }
    }
}

/// The values a builder's command lines are made of; the report renders
/// them with placeholders such as `$CTX`.
pub struct Inputs<'a> {
    /// The case's name: the repository is `bench/<case>`.
    pub case: &'a str,
    /// The context directory; the Dockerfile is `<context>/Dockerfile`.
    pub context: &'a str,
    /// The registry, `127.0.0.1:PORT`.
    pub registry: &'a str,
    /// The builder's state directory (kiln directory and cache directory,
    /// or buildah's storage); unused by BuildKit.
    pub state: &'a str,
}

/// The command lines (argv) one build and push runs, in order.
pub fn command_lines(builder: Builder, program: &str, i: &Inputs) -> Vec<Vec<String>> {
    let dockerfile = format!("{}/Dockerfile", i.context);
    let owned = |args: &[&str]| -> Vec<String> { args.iter().map(|a| (*a).to_owned()).collect() };
    match builder {
        Builder::Kiln => vec![owned(&[
            program,
            "build",
            "--context",
            i.context,
            "--dockerfile",
            &dockerfile,
            "--destination",
            &format!("{}/bench/{}:kiln", i.registry, i.case),
            "--insecure",
            "--insecure-registry",
            i.registry,
            "--cache",
            "--cache-repo",
            &format!("{}/bench/cache", i.registry),
            "--cache-dir",
            &format!("{}/cache", i.state),
            "--kaniko-dir",
            &format!("{}/kiln", i.state),
        ])],
        Builder::Buildah => {
            let global = [
                program,
                "--root",
                &format!("{}/root", i.state),
                "--runroot",
                &format!("{}/runroot", i.state),
                "--storage-driver",
                "overlay",
            ]
            .map(str::to_owned);
            let name = format!("localhost/bench-{}", i.case);
            let mut bud = global.to_vec();
            bud.extend(owned(&[
                "bud",
                "--layers",
                "--isolation",
                "chroot",
                "--format",
                "docker",
                "--tls-verify=false",
                "-t",
                &name,
                "-f",
                &dockerfile,
                i.context,
            ]));
            let mut push = global.to_vec();
            push.extend(owned(&[
                "push",
                "--tls-verify=false",
                "--format",
                "v2s2",
                &name,
                &format!("docker://{}/bench/{}:buildah", i.registry, i.case),
            ]));
            vec![bud, push]
        }
        Builder::Buildkit => {
            let reference = format!("{}/bench/{}:buildkit", i.registry, i.case);
            vec![
                owned(&[
                    program,
                    "build",
                    "--network",
                    "host",
                    "-t",
                    &reference,
                    "-f",
                    &dockerfile,
                    i.context,
                ]),
                owned(&[program, "push", &reference]),
            ]
        }
    }
}

/// What runs the builds of one benchmark session.
pub struct Bench<'a> {
    /// The kiln binary.
    pub kiln: PathBuf,
    /// Precompiled plugins copied into every new kiln directory: they are
    /// part of kiln's installation, not a cache of anything a build made.
    pub kiln_plugins: PathBuf,
    /// Scratch space for the builders' state.
    pub work: PathBuf,
    /// Where the builders' output goes, one log per case and builder.
    pub logs: PathBuf,
    /// The registry every builder pulls from and pushes to.
    pub registry: &'a mut Registry,
    /// The BuildKit daemon, when BuildKit is benchmarked.
    pub dockerd: Option<&'a Dockerd>,
}

impl Bench<'_> {
    /// Builds `case` from `context` cold, then warm, with `builder`; the
    /// warm build is skipped (and fails) when the cold one failed.
    pub fn cold_and_warm(
        &mut self,
        builder: Builder,
        case: &str,
        context: &Path,
        run: usize,
    ) -> [Result<Usage>; 2] {
        let log = self
            .logs
            .join(format!("{case}-{}-{run}.log", builder.name()));
        let _ = fs::remove_file(&log);
        let state = self.work.join(format!("{}-{case}-{run}", builder.name()));
        let outcome = self.prepare(builder, &state).and_then(|()| {
            let inputs = Inputs {
                case,
                context: &context.to_string_lossy(),
                registry: &self.registry.addr(),
                state: &state.to_string_lossy(),
            };
            let lines = command_lines(builder, &self.program(builder)?, &inputs);
            let cold = self.build(builder, &lines, &state, &log);
            let warm = match &cold {
                Ok(_) => self.build(builder, &lines, &state, &log),
                Err(_) => Err(anyhow::anyhow!("not run: the cold build failed")),
            };
            Ok([cold, warm])
        });
        self.clean(builder, &state);
        match outcome {
            Ok(results) => results,
            Err(e) => {
                let message = format!("{e:#}");
                [Err(e), Err(anyhow::anyhow!("{message}"))]
            }
        }
    }

    /// The program of a builder's command lines.
    fn program(&self, builder: Builder) -> Result<String> {
        Ok(match builder {
            Builder::Kiln => self.kiln.to_string_lossy().into_owned(),
            Builder::Buildah => "buildah".to_owned(),
            Builder::Buildkit => self.docker()?.bin().to_string_lossy().into_owned(),
        })
    }

    fn docker(&self) -> Result<DockerCli> {
        match self.dockerd {
            Some(dockerd) => Ok(dockerd.docker()),
            None => bail!("BuildKit was asked for but its daemon was not started"),
        }
    }

    /// Empties the caches: a registry with only the base images, and the
    /// builder's own state.
    fn prepare(&mut self, builder: Builder, state: &Path) -> Result<()> {
        self.registry.reset()?;
        fs::create_dir_all(state).with_context(|| format!("cannot create {}", state.display()))?;
        match builder {
            Builder::Kiln => {
                fs::create_dir(state.join("kiln"))?;
                services::copy_tree(&self.kiln_plugins, &state.join("kiln/plugins"))
            }
            Builder::Buildah => {
                for dir in ["root", "runroot"] {
                    fs::create_dir(state.join(dir))?;
                }
                // The machine's storage.conf must not change what buildah does.
                fs::write(
                    state.join("storage.conf"),
                    format!(
                        "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                        state.join("root").display(),
                        state.join("runroot").display()
                    ),
                )?;
                Ok(())
            }
            Builder::Buildkit => {
                let docker = self.docker()?;
                for args in [
                    &["system", "prune", "-af"][..],
                    &["builder", "prune", "-af"],
                ] {
                    let out = docker.command().args(args).output()?;
                    if !out.status.success() {
                        bail!(
                            "`docker {}` failed: {}",
                            args.join(" "),
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
                Ok(())
            }
        }
    }

    /// Runs one build and push; for BuildKit the daemon's CPU time is
    /// added and its sampled RSS counts towards the peak.
    fn build(
        &self,
        builder: Builder,
        lines: &[Vec<String>],
        state: &Path,
        log: &Path,
    ) -> Result<Usage> {
        let daemon = match (builder, self.dockerd) {
            (Builder::Buildkit, Some(dockerd)) => Some(dockerd.daemon_pids()),
            _ => None,
        };
        let before = daemon.as_deref().map(measure::cpu_seconds).transpose()?;
        let sampler = daemon.clone().map(RssSampler::start);
        let mut total = Usage::default();
        let mut failure = None;
        for line in lines {
            let mut cmd = self.command(builder, line, state)?;
            match measure::run(&mut cmd, log) {
                Ok(usage) => total = total.then(usage),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let peak = sampler.map(RssSampler::finish);
        if let Some(e) = failure {
            return Err(e);
        }
        if let (Some(pids), Some(before)) = (&daemon, before) {
            total.cpu += measure::cpu_seconds(pids)? - before;
        }
        if let Some(peak) = peak {
            total.max_rss_kib = total.max_rss_kib.max(peak);
        }
        Ok(total)
    }

    fn command(&self, builder: Builder, line: &[String], state: &Path) -> Result<Command> {
        let mut cmd = match builder {
            Builder::Buildkit => self.docker()?.command(),
            Builder::Kiln | Builder::Buildah => Command::new(&line[0]),
        };
        cmd.args(&line[1..]);
        match builder {
            Builder::Kiln => {
                // No credentials of the machine's, and none are needed.
                let config = state.join("docker-config");
                fs::create_dir_all(&config)?;
                cmd.env("DOCKER_CONFIG", config);
            }
            Builder::Buildah => {
                cmd.env("CONTAINERS_STORAGE_CONF", state.join("storage.conf"))
                    .env("BUILDAH_ISOLATION", "chroot");
            }
            Builder::Buildkit => {}
        }
        Ok(cmd)
    }

    /// Removes a builder's state, whatever happened: buildah's containers,
    /// images and mounts, and anything left mounted below `state`.
    fn clean(&self, builder: Builder, state: &Path) {
        if !state.exists() {
            return;
        }
        if builder == Builder::Buildah {
            let program = "buildah";
            for args in [
                &["rm", "--all"][..],
                &["rmi", "--all", "--force"],
                &["umount", "--all"],
            ] {
                let _ = Command::new(program)
                    .arg("--root")
                    .arg(state.join("root"))
                    .arg("--runroot")
                    .arg(state.join("runroot"))
                    .args(["--storage-driver", "overlay"])
                    .args(args)
                    .env("CONTAINERS_STORAGE_CONF", state.join("storage.conf"))
                    .output();
            }
        }
        services::unmount_under(state);
        if let Err(e) = fs::remove_dir_all(state) {
            eprintln!("xtask: cannot remove {}: {e}", state.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs<'static> {
        Inputs {
            case: "run-small",
            context: "$CTX",
            registry: "$REGISTRY",
            state: "$STATE",
        }
    }

    #[test]
    fn kiln_builds_pushes_and_caches_in_one_command() {
        let lines = command_lines(Builder::Kiln, "kiln", &inputs());
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0].join(" "),
            "kiln build --context $CTX --dockerfile $CTX/Dockerfile \
             --destination $REGISTRY/bench/run-small:kiln --insecure --insecure-registry $REGISTRY \
             --cache --cache-repo $REGISTRY/bench/cache --cache-dir $STATE/cache \
             --kaniko-dir $STATE/kiln"
        );
    }

    #[test]
    fn peers_build_then_push_to_the_same_registry() {
        let buildah = command_lines(Builder::Buildah, "buildah", &inputs());
        assert_eq!(buildah.len(), 2);
        assert!(
            buildah[0]
                .join(" ")
                .contains(" bud --layers --isolation chroot ")
        );
        assert_eq!(
            buildah[1].last().map(String::as_str),
            Some("docker://$REGISTRY/bench/run-small:buildah")
        );
        let buildkit = command_lines(Builder::Buildkit, "docker", &inputs());
        assert_eq!(
            buildkit[1].join(" "),
            "docker push $REGISTRY/bench/run-small:buildkit"
        );
        assert_eq!(Builder::parse("buildkit"), Some(Builder::Buildkit));
        assert_eq!(Builder::parse("docker"), None);
    }
}
