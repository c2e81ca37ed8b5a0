//! The `kiln` binary: the command line's edge, where errors become exit codes.

use clap::Parser;
use kiln::build::container_root::ContainerRootOptions;
use kiln::build::{self, BuildError, CacheOptions, Options};
use kiln::cache::store::CacheRepo;
use kiln::cli::{self, BuildArgs, Cli, Command, GcArgs, WarmArgs};
use kiln::image::config::Platform;
use kiln::registry::{self, RegistryOptions};
use kiln::sandbox::Isolation;
use kiln::snapshot::scan::SnapshotMode;
use kiln::{cache, logging, sandbox, store};
use std::process::ExitCode;

fn main() -> ExitCode {
    // The RUN sandbox re-executes this binary; that path must come first,
    // before anything else runs in the fresh helper process.
    if std::env::args().nth(1).as_deref() == Some(sandbox::INIT_ARG) {
        sandbox::init_main();
    }
    let cli = Cli::parse_from(cli::normalise_args(std::env::args().collect()));
    match cli.command {
        Command::Build(args) => {
            // Mounts made by this process must stay private to it; unsharing
            // only works while the process is still single-threaded.
            let scratch = store::Store::scratch_dir(&kiln_dir(&args));
            let isolation = sandbox::isolate(&scratch).map_err(|e| e.to_string());
            run_build(*args, isolation)
        }
        Command::Warm(args) => run_warm(&args),
        Command::Gc(args) => run_gc(&args),
    }
}

fn run_warm(args: &WarmArgs) -> ExitCode {
    let level = match logging::parse_level(&args.verbosity) {
        Ok(l) => l,
        Err(e) => return fail(&e, 1),
    };
    logging::init(level, args.log_format, false);
    let options = RegistryOptions {
        insecure_registries: args.insecure_registries.clone(),
        user_agent: format!("kiln/{}", env!("CARGO_PKG_VERSION")),
        ..RegistryOptions::default()
    };
    let warmed = registry::Registry::new(options)
        .map_err(anyhow::Error::from)
        .and_then(|registry| {
            let build_args = build::resolve_build_args(&args.build_args, |k| std::env::var(k).ok());
            cache::base::warm(
                &args.images,
                args.dockerfile.as_deref(),
                &build_args,
                &args.custom_platform,
                &args.cache_dir,
                &registry,
            )
            .map_err(anyhow::Error::from)
        });
    match warmed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("error warming the cache: {e:#}"), 1),
    }
}

fn run_gc(args: &GcArgs) -> ExitCode {
    let level = match logging::parse_level(&args.verbosity) {
        Ok(l) => l,
        Err(e) => return fail(&e, 1),
    };
    logging::init(level, args.log_format, false);
    let kiln_dir = args
        .kaniko_dir
        .clone()
        .unwrap_or_else(build::default_kiln_dir);
    let max_size = args
        .max_size
        .unwrap_or_else(|| store::gc::default_max_size(&kiln_dir));
    let opts = store::gc::GcOptions::new(max_size, args.dry_run);
    match store::gc::collect(&kiln_dir, &opts) {
        Ok(report) => {
            log::info!("{}", report.summary());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("error collecting the store: {e}"), 1),
    }
}

/// The kiln directory a build uses.
fn kiln_dir(args: &BuildArgs) -> std::path::PathBuf {
    args.kaniko_dir
        .clone()
        .unwrap_or_else(build::default_kiln_dir)
}

fn run_build(args: BuildArgs, isolation: Result<Isolation, String>) -> ExitCode {
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

fn build_options(
    args: &BuildArgs,
    isolation: Result<Isolation, String>,
) -> anyhow::Result<Options> {
    if let Some(flag) = args.not_yet.first_given() {
        anyhow::bail!("flag {flag} is not supported yet by kiln");
    }
    kiln::context::check_stdin(
        &args.context,
        args.interactive,
        std::io::IsTerminal::is_terminal(&std::io::stdin()),
    )?;
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
    let compression = cli::parse_compression(args.compression, args.compression_level)
        .map_err(anyhow::Error::msg)?;
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
        context_options: kiln::context::ContextOptions {
            sub_path: args.context_sub_path.clone(),
            git: args.git.clone(),
        },
        destinations: args.destinations.clone(),
        no_push: args.no_push,
        oci_layout_path: args.oci_layout_path.clone(),
        tar_path: args.tar_path.clone(),
        image_name_with_digest_file: args.image_name_with_digest_file.clone(),
        image_name_tag_with_digest_file: args.image_name_tag_with_digest_file.clone(),
        push_ignore_immutable_tag_errors: args.push_ignore_immutable_tag_errors,
        push_permission_check: !args.skip_push_permission_check,
        cache: cache_options(args)?,
        reproducible: args
            .reproducible
            .then(|| cli::reproducible_epoch(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref()))
            .transpose()
            .map_err(anyhow::Error::msg)?,
        digest_file: args.digest_file.clone(),
        build_args: build::resolve_build_args(&args.build_args, |k| std::env::var(k).ok()),
        labels,
        target: args.target.clone(),
        platform,
        registry: registry_options(args)?,
        plugins: args.plugins.clone(),
        kiln_dir: kiln_dir(args),
        store_max_size: args.store_max_size,
        init_exe,
        container_root: container_root(args, &isolation)?,
        isolation,
        single_snapshot: args.single_snapshot,
        cleanup: args.cleanup,
        secrets,
        ssh,
        compression,
        oci_media_types: args.oci_media_types,
    })
}

/// Container-root mode's settings, when kiln has no isolation but may build
/// on its own root: inside a container, or with `--force`.
fn container_root(
    args: &BuildArgs,
    isolation: &Result<Isolation, String>,
) -> anyhow::Result<Option<ContainerRootOptions>> {
    if args.single_snapshot && args.cache {
        anyhow::bail!(
            "--single-snapshot makes one layer per stage, which the per-step layer cache (--cache) cannot key; use one of them"
        );
    }
    if isolation.is_ok() {
        let tuned = args.snapshot_mode != cli::SnapshotModeArg::Full
            || args.use_new_run
            || !args.ignore_paths.is_empty()
            || !args.ignore_var_run;
        if tuned {
            log::info!(
                "--snapshot-mode, --use-new-run and the ignore flags steer container-root snapshots; \
                 this build is isolated, where each step's layer is exactly what it wrote"
            );
        }
        return Ok(None);
    }
    let reason = match (sandbox::detect_container(), args.force) {
        (Some(evidence), _) => format!("inside a container: {evidence}"),
        (None, true) => "--force".to_owned(),
        (None, false) => return Ok(None),
    };
    Ok(Some(ContainerRootOptions {
        reason,
        mode: match args.snapshot_mode {
            cli::SnapshotModeArg::Full => SnapshotMode::Full,
            cli::SnapshotModeArg::Redo => SnapshotMode::Redo,
            cli::SnapshotModeArg::Time => SnapshotMode::Time,
        },
        use_new_run: args.use_new_run,
        ignore_paths: args.ignore_paths.clone(),
        ignore_var_run: args.ignore_var_run,
    }))
}

/// `--cache` and its settings, with kaniko's rules.
fn cache_options(args: &BuildArgs) -> anyhow::Result<Option<CacheOptions>> {
    if !args.cache {
        return Ok(None);
    }
    let repo = match (&args.cache_repo, args.destinations.first()) {
        (Some(spec), _) => CacheRepo::parse(spec)?,
        (None, _) if args.no_push => {
            anyhow::bail!(
                "--cache with --no-push needs --cache-repo (a repository or oci:/path), as in kaniko"
            )
        }
        (None, Some(dest)) => CacheRepo::default_for(&registry::Reference::parse(dest)?),
        (None, None) => {
            anyhow::bail!("--cache needs --cache-repo or a --destination to derive it from")
        }
    };
    Ok(Some(CacheOptions {
        repo,
        dir: args.cache_dir.clone(),
        ttl: args.cache_ttl,
        run_layers: args.cache_run_layers,
        copy_layers: args.cache_copy_layers,
        push: !args.no_push_cache,
    }))
}

/// The registry settings of kaniko's transport and mirror flags.
fn registry_options(args: &BuildArgs) -> anyhow::Result<RegistryOptions> {
    let registry_certificates = args
        .registry_certificates
        .iter()
        .map(|s| cli::parse_registry_certificate(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let registry_client_certs = args
        .registry_client_certs
        .iter()
        .map(|s| cli::parse_registry_client_cert(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let mut registry_map = Vec::new();
    for spec in &args.registry_maps {
        registry_map.extend(registry::parse_registry_map(spec).map_err(anyhow::Error::msg)?);
    }
    Ok(RegistryOptions {
        insecure_registries: args.insecure_registries.clone(),
        docker_config_dir: None,
        user_agent: format!("kiln/{}", env!("CARGO_PKG_VERSION")),
        insecure_pull: args.insecure_pull,
        insecure_push: args.insecure,
        skip_tls_verify_push: args.skip_tls_verify,
        skip_tls_verify_pull: args.skip_tls_verify_pull,
        skip_tls_verify_registries: args.skip_tls_verify_registries.clone(),
        registry_certificates,
        registry_client_certs,
        mirrors: args
            .registry_mirrors
            .iter()
            .filter(|m| !m.is_empty())
            .cloned()
            .collect(),
        registry_map,
        skip_default_registry_fallback: args.skip_default_registry_fallback,
        push_retries: args.push_retry,
        pull_retries: args.image_download_retry,
        proxy: None,
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
