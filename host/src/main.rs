//! The `kiln` binary: the command line's edge, where errors become exit codes.

use clap::Parser;
use kiln::build::{self, BuildError, Options};
use kiln::cli::{self, BuildArgs, Cli, Command};
use kiln::image::config::Platform;
use kiln::{logging, sandbox};
use std::process::ExitCode;

fn main() -> ExitCode {
    // The RUN sandbox re-executes this binary; that path must come first,
    // before anything else runs in the fresh helper process.
    if std::env::args().nth(1).as_deref() == Some(sandbox::INIT_ARG) {
        sandbox::init_main();
    }
    // Mounts made by this process must stay private to it; unsharing only
    // works while the process is still single-threaded.
    let isolation = sandbox::enter_private_mount_namespace().map_err(|e| e.to_string());
    let cli = Cli::parse_from(cli::normalise_args(std::env::args().collect()));
    match cli.command {
        Command::Build(args) => run_build(*args, isolation),
    }
}

fn run_build(args: BuildArgs, isolation: Result<(), String>) -> ExitCode {
    let level = match logging::parse_level(&args.verbosity) {
        Ok(l) => l,
        Err(e) => return fail(&e, 1),
    };
    logging::init(level, args.log_format, args.log_timestamp);
    match build_options(&args, isolation) {
        Ok(opts) => match build::run(&opts) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail_build(&e),
        },
        Err(e) => fail(&format!("{e:#}"), 1),
    }
}

fn build_options(args: &BuildArgs, isolation: Result<(), String>) -> anyhow::Result<Options> {
    if let Some(flag) = args.not_yet.first_given() {
        anyhow::bail!("flag {flag} is not supported yet by kiln");
    }
    if args.destinations.is_empty() && !args.no_push {
        anyhow::bail!("you must provide --destination, or use --no-push");
    }
    let platform = Platform::parse(&args.custom_platform).ok_or_else(|| {
        anyhow::anyhow!(
            "invalid --custom-platform {:?}: expected os/arch[/variant]",
            args.custom_platform
        )
    })?;
    let labels = cli::parse_labels(&args.labels).map_err(anyhow::Error::msg)?;
    let init_exe = std::fs::read_link("/proc/self/exe")?;
    let secrets = args
        .secrets
        .iter()
        .map(|s| cli::parse_secret(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let auth_sock = std::env::var("SSH_AUTH_SOCK").ok();
    let ssh = args
        .ssh
        .iter()
        .map(|s| cli::parse_ssh(s, auth_sock.as_deref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    Ok(Options {
        dockerfile: args.dockerfile.clone(),
        context: args.context.clone(),
        destinations: args.destinations.clone(),
        no_push: args.no_push,
        oci_layout_path: args.oci_layout_path.clone(),
        digest_file: args.digest_file.clone(),
        build_args: build::resolve_build_args(&args.build_args, |k| std::env::var(k).ok()),
        labels,
        target: args.target.clone(),
        platform,
        insecure_registries: args.insecure_registries.clone(),
        plugins: args.plugins.clone(),
        kiln_dir: args
            .kaniko_dir
            .clone()
            .unwrap_or_else(build::default_kiln_dir),
        init_exe,
        isolation,
        secrets,
        ssh,
    })
}

fn fail_build(e: &BuildError) -> ExitCode {
    fail(&format!("error building image: {e}"), e.exit_code())
}

fn fail(message: &str, code: i32) -> ExitCode {
    log::error!("{message}");
    if !log::log_enabled!(log::Level::Error) {
        eprintln!("error: {message}");
    }
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
