//! The command line: kaniko's executor flags under `kiln build` (and under
//! the name `executor`), with kaniko's names, defaults and environment
//! variables. A kaniko flag that kiln does not implement yet is accepted by
//! the parser only to fail with a clear "not supported yet" error.

use crate::build::SecretSource;
use crate::layer::Compression;
use crate::logging::Format;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// The WIT package this host implements, as `wit/plugin.wit` declares it.
pub const WIT_VERSION: &str = env!("KILN_WIT_PACKAGE");

/// What `kiln --version` prints after the name: the crate version, the git
/// commit it was built from and the WIT package plugins are built against.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KILN_GIT_COMMIT"),
    ", wit ",
    env!("KILN_WIT_PACKAGE"),
    ")"
);

/// kiln: build container images from Dockerfiles without a daemon.
#[derive(Debug, Parser)]
#[command(name = "kiln", version = VERSION)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// kiln's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile (kaniko's executor).
    Build(Box<BuildArgs>),
    /// Fill the base-image cache (kaniko's warmer).
    Warm(WarmArgs),
    /// Shrink the store to its size limit, least recently used first.
    Gc(GcArgs),
}

/// Flags of `kiln warm`, kaniko's warmer.
#[derive(Debug, Args)]
pub struct WarmArgs {
    /// Image to cache (repeatable).
    #[arg(short = 'i', long = "image")]
    pub images: Vec<String>,
    /// Also cache the base images of this Dockerfile's stages.
    #[arg(short = 'f', long)]
    pub dockerfile: Option<PathBuf>,
    /// Build argument K=V for expanding the Dockerfile's FROM lines.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// The base-image cache directory.
    #[arg(long, default_value = "/cache")]
    pub cache_dir: PathBuf,
    /// Platform of the images: os/arch[/variant].
    #[arg(long, default_value = "linux/amd64")]
    pub custom_platform: String,
    /// Registry reached over plain HTTP (repeatable).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Log level: trace, debug, info, warn, error, fatal, panic.
    #[arg(short = 'v', long, default_value = "info")]
    pub verbosity: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "color")]
    pub log_format: Format,
}

/// Flags of `kiln gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// kiln's working directory, whose store is collected.
    #[arg(long, env = "KANIKO_DIR")]
    pub kaniko_dir: Option<PathBuf>,
    /// Size to shrink the store to, such as 10GiB or 500MB (default: the automatic limit).
    #[arg(long, env = "KILN_STORE_MAX_SIZE", value_parser = crate::store::gc::parse_size)]
    pub max_size: Option<u64>,
    /// Report what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Log level: trace, debug, info, warn, error, fatal, panic.
    #[arg(short = 'v', long, default_value = "info")]
    pub verbosity: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "color")]
    pub log_format: Format,
}

/// Flags of `kiln build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Path to the Dockerfile; relative paths are looked up in the context too.
    #[arg(short = 'f', long, default_value = "Dockerfile")]
    pub dockerfile: PathBuf,
    /// Build context: a directory, dir://, tar:// or another scheme a plugin handles.
    #[arg(short = 'c', long, default_value = "/workspace/")]
    pub context: String,
    /// Registry destination (repeatable).
    #[arg(short = 'd', long = "destination")]
    pub destinations: Vec<String>,
    /// Build without pushing.
    #[arg(long, env = "KANIKO_NO_PUSH", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub no_push: bool,
    /// Also write the image as an OCI image layout at this path.
    #[arg(long)]
    pub oci_layout_path: Option<PathBuf>,
    /// Write the pushed image's digest to this file.
    #[arg(long)]
    pub digest_file: Option<PathBuf>,
    /// Also write the image as a docker-save tarball at this path.
    #[arg(long)]
    pub tar_path: Option<PathBuf>,
    /// Write REPO@DIGEST for each destination to this file.
    #[arg(long)]
    pub image_name_with_digest_file: Option<PathBuf>,
    /// Write REPO:TAG@DIGEST for each destination to this file.
    #[arg(long)]
    pub image_name_tag_with_digest_file: Option<PathBuf>,
    /// Do not check that every destination accepts a push before building.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub skip_push_permission_check: bool,
    /// Treat a rejected push of an immutable tag as a warning.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub push_ignore_immutable_tag_errors: bool,
    /// Build argument K=V; a bare K takes its value from the environment.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Label K=V added to the image (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Cache layers in `--cache-repo` and base images in `--cache-dir`.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub cache: bool,
    /// Where cached layers live: a repository, or `oci:/path` for a local layout.
    #[arg(long)]
    pub cache_repo: Option<String>,
    /// The base-image cache directory (filled by `kiln warm` and by builds with `--cache`).
    #[arg(long, default_value = "/cache")]
    pub cache_dir: PathBuf,
    /// How long cached layers and resolved base-image tags stay valid (Go duration).
    #[arg(long, default_value = "336h", value_parser = parse_duration)]
    pub cache_ttl: std::time::Duration,
    /// Cache COPY and ADD layers (kiln's default, since it hashes their content).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true")]
    pub cache_copy_layers: bool,
    /// Cache RUN layers.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true")]
    pub cache_run_layers: bool,
    /// Use the layer cache but do not add to it.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub no_push_cache: bool,
    /// Same inputs, same digest: timestamps are clamped to `SOURCE_DATE_EPOCH` (default 0).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub reproducible: bool,
    /// Stage to build as the image.
    #[arg(long)]
    pub target: Option<String>,
    /// Platform of the image: os/arch[/variant].
    #[arg(long, default_value = "linux/amd64")]
    pub custom_platform: String,
    /// Registry reached over plain HTTP (repeatable).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Push over plain HTTP.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub insecure: bool,
    /// Pull over plain HTTP.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub insecure_pull: bool,
    /// Do not verify TLS certificates when pushing.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub skip_tls_verify: bool,
    /// Do not verify TLS certificates when pulling.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub skip_tls_verify_pull: bool,
    /// Registry whose TLS certificate is not verified (repeatable).
    #[arg(long = "skip-tls-verify-registry")]
    pub skip_tls_verify_registries: Vec<String>,
    /// Extra CA for a registry: REGISTRY=CA.pem (repeatable).
    #[arg(long = "registry-certificate")]
    pub registry_certificates: Vec<String>,
    /// Client certificate for a registry: REGISTRY=CERT.pem,KEY.pem (repeatable).
    #[arg(long = "registry-client-cert")]
    pub registry_client_certs: Vec<String>,
    /// Mirror for docker.io: HOST[/PREFIX] (repeatable; env: comma-separated).
    #[arg(
        long = "registry-mirror",
        env = "KANIKO_REGISTRY_MIRROR",
        value_delimiter = ','
    )]
    pub registry_mirrors: Vec<String>,
    /// Registry replacements: ORIGINAL=NEW[;ORIGINAL=NEW...] (repeatable).
    #[arg(long = "registry-map", env = "KANIKO_REGISTRY_MAP")]
    pub registry_maps: Vec<String>,
    /// Do not fall back to the original registry when every mirror fails.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub skip_default_registry_fallback: bool,
    /// Retries of a failed registry request while pushing.
    #[arg(long, default_value_t = crate::registry::DEFAULT_RETRIES)]
    pub push_retry: u32,
    /// Retries of a failed registry request while pulling.
    #[arg(long, default_value_t = crate::registry::DEFAULT_RETRIES)]
    pub image_download_retry: u32,
    /// A WebAssembly plugin adding instructions or context schemes (repeatable).
    #[arg(long = "plugin")]
    pub plugins: Vec<PathBuf>,
    /// kiln's working directory: store, precompiled plugins, scratch space.
    #[arg(long, env = "KANIKO_DIR")]
    pub kaniko_dir: Option<PathBuf>,
    /// Store size kept by a gc after the build, such as 20GiB (default: a tenth of its filesystem, at most 20 GiB).
    #[arg(long, env = "KILN_STORE_MAX_SIZE", value_parser = crate::store::gc::parse_size)]
    pub store_max_size: Option<u64>,
    /// Log level: trace, debug, info, warn, error, fatal, panic.
    #[arg(short = 'v', long, default_value = "info")]
    pub verbosity: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "color")]
    pub log_format: Format,
    /// Print wall-clock timestamps instead of elapsed seconds.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub log_timestamp: bool,
    /// Build secret for `RUN --mount=type=secret`: `id=ID[,src=FILE|,env=VAR]` (repeatable).
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// SSH agent for `RUN --mount=type=ssh`: `default` or `ID[=SOCKET]` (repeatable).
    #[arg(long = "ssh")]
    pub ssh: Vec<String>,
    /// Layer compression: gzip, or zstd (which makes the manifest OCI).
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: CompressionKind,
    /// Compression level: gzip 0-9, zstd 1-22; -1 is the default (gzip 6, zstd 3).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub compression_level: i32,
    /// Write OCI media types (manifest, config, layers) even for gzip layers.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub oci_media_types: bool,
    /// Build only the stages the target needs (always the case; kept for kaniko).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true")]
    pub skip_unused_stages: bool,
    /// Container-root snapshots: what decides that a file changed (full, redo, time).
    #[arg(long, value_enum, default_value = "full")]
    pub snapshot_mode: SnapshotModeArg,
    /// Container-root snapshots of RUN: only what the command touched after it started.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub use_new_run: bool,
    /// One layer per stage, taken when the stage ends.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub single_snapshot: bool,
    /// A path container-root mode never unpacks, wipes or snapshots (repeatable).
    #[arg(long = "ignore-path")]
    pub ignore_paths: Vec<PathBuf>,
    /// Leave /var/run out of container-root snapshots.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true")]
    pub ignore_var_run: bool,
    /// Wipe the container root after the build.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub cleanup: bool,
    /// Build on / outside a container when no isolation is possible (replaces this machine's files).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub force: bool,
    /// Read the build context from standard input (`--context=tar://stdin`).
    #[arg(short = 'i', long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub interactive: bool,
    /// Use this directory inside the context as the context.
    #[arg(long)]
    pub context_sub_path: Option<String>,
    /// Options for git contexts: branch=NAME,single-branch=BOOL,recurse-submodules=BOOL,insecure-skip-tls=BOOL.
    #[arg(long)]
    pub git: Vec<String>,
    #[command(flatten)]
    pub not_yet: NotYet,
}

/// The values of `--snapshot-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SnapshotModeArg {
    Full,
    Redo,
    Time,
}

/// kaniko flags kiln does not implement yet; each one, when given, fails
/// the build before it starts.
#[derive(Debug, Args)]
pub struct NotYet {
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    compressed_caching: Option<String>,
    #[arg(long, hide = true)]
    image_fs_extract_retry: Option<String>,
}

impl NotYet {
    /// The first unimplemented flag the user gave, as `--name`.
    pub fn first_given(&self) -> Option<&'static str> {
        let flags: [(&'static str, bool); 2] = [
            ("--compressed-caching", self.compressed_caching.is_some()),
            (
                "--image-fs-extract-retry",
                self.image_fs_extract_retry.is_some(),
            ),
        ];
        flags
            .into_iter()
            .find(|(_, given)| *given)
            .map(|(name, _)| name)
    }
}

/// The values of `--compression`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressionKind {
    Gzip,
    Zstd,
}

/// The layer compression that `--compression` and `--compression-level`
/// ask for; level -1 is the format's default, as in kaniko.
pub fn parse_compression(kind: CompressionKind, level: i32) -> Result<Compression, String> {
    let compression = match (kind, level) {
        (CompressionKind::Gzip, -1) => Compression::GZIP,
        (CompressionKind::Zstd, -1) => Compression::ZSTD,
        (CompressionKind::Gzip, level) => Compression::Gzip {
            level: u32::try_from(level).map_err(|_| {
                format!(
                    "invalid --compression-level {level} for gzip: use 0 (store) to 9 (smallest), or -1 for the default"
                )
            })?,
        },
        (CompressionKind::Zstd, level) => Compression::Zstd { level },
    };
    compression
        .validate()
        .map_err(|e| format!("--compression-level: {e}, or -1 for the default"))
}

/// Parses `--secret id=ID[,src=FILE|,source=FILE|,env=VAR]`, BuildKit's
/// syntax; without src or env the secret is the environment variable ID.
pub fn parse_secret(spec: &str) -> Result<(String, SecretSource), String> {
    let mut id = None;
    let mut source = None;
    for field in spec.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("invalid --secret {spec:?}: {field:?} is not KEY=VALUE"))?;
        match k {
            "id" => id = Some(v.to_owned()),
            "src" | "source" => source = Some(SecretSource::File(PathBuf::from(v))),
            "env" => source = Some(SecretSource::Env(v.to_owned())),
            "type" if v == "file" || v == "env" => {}
            _ => {
                return Err(format!(
                    "invalid --secret {spec:?}: unknown key {k:?} (use id, src or env)"
                ));
            }
        }
    }
    let id = id
        .filter(|i| !i.is_empty())
        .ok_or_else(|| format!("invalid --secret {spec:?}: id= is required"))?;
    let source = source.unwrap_or_else(|| SecretSource::Env(id.clone()));
    Ok((id, source))
}

/// Parses `--ssh default` or `--ssh ID=SOCKET`; a bare id uses `$SSH_AUTH_SOCK`.
pub fn parse_ssh(spec: &str, auth_sock: Option<&str>) -> Result<(String, PathBuf), String> {
    match spec.split_once('=') {
        Some((id, path)) if !id.is_empty() && !path.is_empty() => {
            Ok((id.to_owned(), PathBuf::from(path)))
        }
        Some(_) => Err(format!("invalid --ssh {spec:?}: expected ID or ID=SOCKET")),
        None => auth_sock
            .map(|s| (spec.to_owned(), PathBuf::from(s)))
            .ok_or_else(|| {
                format!(
                    "--ssh {spec}: SSH_AUTH_SOCK is not set; give the agent socket as {spec}=PATH"
                )
            }),
    }
}

/// Parses a Go duration such as `336h`, `1h30m`, `90s` or `1.5h`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let err = || {
        format!("invalid duration {text:?}: use a number with a unit such as 336h, 30m or 1h30m")
    };
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(err()),
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// The epoch `--reproducible` clamps timestamps to: `SOURCE_DATE_EPOCH`,
/// or 0 as kaniko uses.
pub fn reproducible_epoch(source_date_epoch: Option<&str>) -> Result<u64, String> {
    match source_date_epoch.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
    }
}

/// Parses `--registry-certificate REGISTRY=PATH`.
pub fn parse_registry_certificate(spec: &str) -> Result<(String, PathBuf), String> {
    match spec.split_once('=') {
        Some((reg, path)) if !reg.is_empty() && !path.is_empty() => {
            Ok((reg.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "invalid --registry-certificate {spec:?}: expected REGISTRY=CA.pem"
        )),
    }
}

/// Parses `--registry-client-cert REGISTRY=CERT,KEY`.
pub fn parse_registry_client_cert(spec: &str) -> Result<(String, PathBuf, PathBuf), String> {
    let parsed = spec.split_once('=').and_then(|(reg, files)| {
        let (cert, key) = files.split_once(',')?;
        (!reg.is_empty() && !cert.is_empty() && !key.is_empty())
            .then(|| (reg.to_owned(), PathBuf::from(cert), PathBuf::from(key)))
    });
    parsed.ok_or_else(|| {
        format!("invalid --registry-client-cert {spec:?}: expected REGISTRY=CERT.pem,KEY.pem")
    })
}

/// Parses `K=V` pairs of `--label`.
pub fn parse_labels(raw: &[String]) -> Result<Vec<(String, String)>, String> {
    raw.iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("invalid --label {l:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// Rewrites argv so that the binary started as `executor` (kaniko's name)
/// behaves as `kiln build`.
pub fn normalise_args(mut args: Vec<String>) -> Vec<String> {
    let invoked_as = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        .unwrap_or_default();
    if invoked_as == "executor" {
        args.insert(1, "build".into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> BuildArgs {
        let mut argv = vec!["kiln", "build"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Build(b) => *b,
            Command::Warm(_) | Command::Gc(_) => unreachable!("parsed as build"),
        }
    }

    #[test]
    fn kaniko_flags_parse_with_kaniko_defaults() {
        let b = parse(&[
            "-d",
            "r/a:1",
            "--destination=r/b:2",
            "--build-arg",
            "A=1",
            "--no-push",
        ]);
        assert_eq!(b.destinations, vec!["r/a:1", "r/b:2"]);
        assert_eq!(b.context, "/workspace/");
        assert_eq!(b.dockerfile, PathBuf::from("Dockerfile"));
        assert!(b.no_push);
        assert_eq!(b.not_yet.first_given(), None);
        assert!(!parse(&["--no-push=false"]).no_push);
    }

    #[test]
    fn unimplemented_flags_are_reported_not_ignored() {
        assert_eq!(
            parse(&["--compressed-caching=false"]).not_yet.first_given(),
            Some("--compressed-caching")
        );
        let b = parse(&[
            "--context-sub-path",
            "sub",
            "--git",
            "branch=x",
            "--git=a=b,c=d",
        ]);
        assert_eq!(b.not_yet.first_given(), None);
        assert_eq!(b.context_sub_path.as_deref(), Some("sub"));
        assert_eq!(b.git, vec!["branch=x", "a=b,c=d"]);
        assert_eq!(parse(&["--use-new-run"]).not_yet.first_given(), None);
    }

    #[test]
    fn interactive_is_a_bool_flag_with_a_short_form() {
        assert!(!parse(&[]).interactive);
        let b = parse(&["-i", "--context=tar://stdin"]);
        assert!(b.interactive);
        assert_eq!(b.context, "tar://stdin");
        assert!(parse(&["--interactive"]).interactive);
        assert!(!parse(&["--interactive=false"]).interactive);
    }

    #[test]
    fn version_names_the_commit_and_the_wit_package() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")), "{VERSION}");
        assert!(VERSION.contains(", wit kiln:plugin@"), "{VERSION}");
        let wit = include_str!("../../wit/plugin.wit");
        let declared = wit
            .lines()
            .find_map(|l| l.strip_prefix("package "))
            .and_then(|v| v.strip_suffix(';'))
            .unwrap();
        assert_eq!(WIT_VERSION, declared);
        let err = Cli::try_parse_from(["kiln", "--version"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(err.to_string(), format!("kiln {VERSION}\n"));
    }

    #[test]
    fn snapshot_flags_take_kanikos_forms() {
        let b = parse(&[
            "--snapshot-mode=redo",
            "--use-new-run",
            "--single-snapshot",
            "--ignore-path=/a",
            "--ignore-path",
            "/b",
            "--ignore-var-run=false",
            "--cleanup",
            "--force",
        ]);
        assert_eq!(b.snapshot_mode, SnapshotModeArg::Redo);
        assert!(b.use_new_run && b.single_snapshot && b.cleanup && b.force);
        assert!(!b.ignore_var_run);
        assert_eq!(b.ignore_paths, [PathBuf::from("/a"), PathBuf::from("/b")]);
        let d = parse(&[]);
        assert_eq!(d.snapshot_mode, SnapshotModeArg::Full);
        assert!(d.ignore_var_run && !d.use_new_run && !d.force);
    }

    #[test]
    fn compression_flags_give_validated_levels() {
        let given = |args: &[&str]| {
            let b = parse(args);
            parse_compression(b.compression, b.compression_level)
        };
        assert_eq!(given(&[]), Ok(Compression::Gzip { level: 6 }));
        assert_eq!(
            given(&["--compression", "zstd"]),
            Ok(Compression::Zstd { level: 3 })
        );
        assert_eq!(
            given(&["--compression=zstd", "--compression-level", "19"]),
            Ok(Compression::Zstd { level: 19 })
        );
        assert_eq!(
            given(&["--compression-level=1"]),
            Ok(Compression::Gzip { level: 1 })
        );
        let err = given(&["--compression=zstd", "--compression-level=0"]).unwrap_err();
        assert!(err.contains("invalid zstd compression level 0"), "{err}");
        let err = given(&["--compression-level", "-3"]).unwrap_err();
        assert!(err.contains("-3 for gzip"), "{err}");
        assert!(given(&["--compression-level", "10"]).is_err());
        let b = Cli::try_parse_from(["kiln", "build", "--compression", "xz"]);
        assert!(b.is_err());
    }

    #[test]
    fn oci_media_types_is_a_kaniko_style_bool() {
        assert!(!parse(&[]).oci_media_types);
        assert!(parse(&["--oci-media-types"]).oci_media_types);
        assert!(parse(&["--oci-media-types=true"]).oci_media_types);
        assert!(!parse(&["--oci-media-types=false"]).oci_media_types);
    }

    #[test]
    fn executor_name_means_build() {
        let args = normalise_args(vec!["/kaniko/executor".into(), "--no-push".into()]);
        assert_eq!(args, vec!["/kaniko/executor", "build", "--no-push"]);
        let args = normalise_args(vec!["kiln".into(), "build".into()]);
        assert_eq!(args, vec!["kiln", "build"]);
    }

    #[test]
    fn secrets_and_ssh_specs() {
        assert_eq!(
            parse_secret("id=tok,src=/s").unwrap(),
            ("tok".into(), SecretSource::File("/s".into()))
        );
        assert_eq!(
            parse_secret("id=tok,env=T").unwrap(),
            ("tok".into(), SecretSource::Env("T".into()))
        );
        assert_eq!(
            parse_secret("id=TOK").unwrap(),
            ("TOK".into(), SecretSource::Env("TOK".into()))
        );
        assert!(parse_secret("src=/s").is_err());
        assert!(parse_secret("id=a,bogus=1").is_err());
        assert_eq!(
            parse_ssh("default", Some("/agent")).unwrap(),
            ("default".into(), "/agent".into())
        );
        assert_eq!(
            parse_ssh("gh=/s.sock", None).unwrap(),
            ("gh".into(), "/s.sock".into())
        );
        assert!(parse_ssh("default", None).is_err());
    }

    #[test]
    fn registry_tls_flags() {
        let b = parse(&[
            "--insecure",
            "--skip-tls-verify-pull",
            "--registry-mirror",
            "m1",
            "--registry-mirror=m2",
            "--push-retry",
            "5",
        ]);
        assert!(b.insecure && b.skip_tls_verify_pull && !b.insecure_pull);
        assert_eq!(b.registry_mirrors, vec!["m1", "m2"]);
        assert_eq!(
            (b.push_retry, b.image_download_retry),
            (5, crate::registry::DEFAULT_RETRIES)
        );
        assert_eq!(
            parse_registry_certificate("r:5000=/ca.pem").unwrap(),
            ("r:5000".into(), "/ca.pem".into())
        );
        assert!(parse_registry_certificate("/ca.pem").is_err());
        assert_eq!(
            parse_registry_client_cert("r=/c.pem,/k.pem").unwrap(),
            ("r".into(), "/c.pem".into(), "/k.pem".into())
        );
        assert!(parse_registry_client_cert("r=/c.pem").is_err());
    }

    #[test]
    fn reproducible_epoch_comes_from_source_date_epoch() {
        assert_eq!(reproducible_epoch(None), Ok(0));
        assert_eq!(reproducible_epoch(Some("1700000000")), Ok(1_700_000_000));
        assert!(reproducible_epoch(Some("yesterday")).is_err());
        assert!(parse(&["--reproducible"]).reproducible);
    }

    #[test]
    fn cache_flags_and_durations() {
        let b = parse(&[
            "--cache",
            "--cache-repo",
            "oci:/c",
            "--cache-ttl",
            "1h30m",
            "--cache-run-layers=false",
        ]);
        assert!(b.cache && !b.cache_run_layers && b.cache_copy_layers && !b.no_push_cache);
        assert_eq!(b.cache_ttl, std::time::Duration::from_secs(5400));
        assert_eq!(
            parse(&[]).cache_ttl,
            std::time::Duration::from_secs(336 * 3600)
        );
        assert_eq!(
            parse_duration("1.5h").unwrap(),
            std::time::Duration::from_secs(5400)
        );
        assert_eq!(
            parse_duration("250ms").unwrap(),
            std::time::Duration::from_millis(250)
        );
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn warm_takes_kanikos_warmer_flags() {
        let cli = Cli::try_parse_from([
            "kiln",
            "warm",
            "-i",
            "a:1",
            "--image=b:2",
            "--cache-dir",
            "/c",
        ])
        .unwrap();
        match cli.command {
            Command::Warm(w) => {
                assert_eq!(w.images, vec!["a:1", "b:2"]);
                assert_eq!(w.cache_dir, PathBuf::from("/c"));
            }
            Command::Build(_) | Command::Gc(_) => panic!("parsed as build"),
        }
    }

    #[test]
    fn gc_and_build_take_store_sizes() {
        let cli = Cli::try_parse_from([
            "kiln",
            "gc",
            "--kaniko-dir",
            "/k",
            "--max-size",
            "1.5GiB",
            "--dry-run",
        ])
        .unwrap();
        match cli.command {
            Command::Gc(g) => {
                assert_eq!(g.kaniko_dir, Some(PathBuf::from("/k")));
                assert_eq!(g.max_size, Some(3 << 29));
                assert!(g.dry_run);
            }
            Command::Build(_) | Command::Warm(_) => panic!("parsed as gc"),
        }
        assert_eq!(
            parse(&["--store-max-size=500MB"]).store_max_size,
            Some(500_000_000)
        );
        assert!(Cli::try_parse_from(["kiln", "gc", "--max-size", "lots"]).is_err());
    }

    #[test]
    fn labels_need_a_value() {
        assert_eq!(
            parse_labels(&["a=b=c".into()]).unwrap(),
            vec![("a".into(), "b=c".into())]
        );
        assert!(parse_labels(&["nolabel".into()]).is_err());
    }
}
