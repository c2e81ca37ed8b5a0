//! Every build context source of issue #7 against a real server on
//! 127.0.0.1: the same small context (see `SampleContext`) served as a
//! directory, tarballs (gzip, zstd, plain, stdin), over HTTP, from S3
//! (moto), GCS (fake-gcs-server), Azure Blob (Azurite) and git (`git
//! http-backend`), each built into an OCI layout and checked entry by entry.
//! Wrong credentials must fail naming the source and authentication, and no
//! secret may appear in kiln's output even at trace verbosity.

use anyhow::{Context, Result, bail};
use kiln_e2e::git_fixture::{BRANCH, GitFixture, REPO, SUPER_REPO, TAG};
use kiln_e2e::services::{AZURITE_KEY, AwsKey, Azurite, FakeGcs, GitServer, Moto, Responder};
use kiln_e2e::{
    BaseImage, Compression, FileServer, KilnOutput, Registry, SampleContext, kiln_bin, run_kiln,
};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tempfile::TempDir;

const BUCKET: &str = "ctx-bucket";

/// A registry with the busybox base, and scratch space for one test.
struct Setup {
    registry: Registry,
    base: String,
    scratch: TempDir,
}

/// One finished kiln run and the OCI layout it wrote.
struct Built {
    out: KilnOutput,
    layout: PathBuf,
}

impl Setup {
    fn new() -> Result<Setup> {
        let registry = Registry::start()?;
        let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
        Ok(Setup {
            registry,
            base,
            scratch: tempfile::Builder::new()
                .prefix("kiln-contexts-")
                .tempdir()?,
        })
    }

    fn context(&self) -> SampleContext {
        SampleContext::new(&self.base)
    }

    /// The sample context packed as `scratch/<name>`.
    fn tarball(&self, name: &str, compression: Compression) -> Result<PathBuf> {
        self.context()
            .tarball(self.scratch.path(), name, compression)
    }

    fn args(&self, context: &str, layout: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "build",
            "--context",
            context,
            "--no-push",
            "--insecure-registry",
            &self.registry.addr(),
            "-v",
            "trace",
            "--oci-layout-path",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(layout.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn layout(&self) -> Result<PathBuf> {
        Ok(tempfile::Builder::new()
            .prefix("layout-")
            .tempdir_in(self.scratch.path())?
            .keep())
    }

    /// Runs `kiln build --context <context>` at trace verbosity into a new
    /// OCI layout.
    fn build(&self, context: &str, extra: &[&str], envs: &[(&str, &OsStr)]) -> Result<Built> {
        let layout = self.layout()?;
        let out = run_kiln(self.args(context, &layout, extra), envs)?;
        Ok(Built { out, layout })
    }

    /// Like [`Setup::build`], with `stdin` as kiln's standard input.
    fn build_with_stdin(&self, context: &str, extra: &[&str], stdin: File) -> Result<Built> {
        let layout = self.layout()?;
        let docker_config = self.scratch.path().join("docker-config");
        fs::create_dir_all(&docker_config)?;
        let output = Command::new(kiln_bin()?)
            .args(self.args(context, &layout, extra))
            .arg("--kaniko-dir")
            .arg(self.scratch.path().join("kaniko"))
            .env("DOCKER_CONFIG", &docker_config)
            .stdin(Stdio::from(stdin))
            .output()
            .context("cannot run kiln")?;
        let out = KilnOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        Ok(Built { out, layout })
    }
}

impl Built {
    /// Checks that the build succeeded and holds `expected`, and that no
    /// `secrets` were logged; returns the COPY layer's digest.
    fn check(&self, source: &str, expected: &SampleContext, secrets: &[&str]) -> Result<String> {
        assert_no_secrets(&self.out, secrets)?;
        self.out
            .ensure_success()
            .with_context(|| format!("the build from {source} failed"))?;
        expected
            .check_image(&self.layout)
            .with_context(|| format!("the image built from {source} is wrong"))
    }

    /// Checks that the build failed with an error that names every word of
    /// `words` (case-insensitive), and that no `secrets` were logged.
    fn check_failure(&self, source: &str, words: &[&str], secrets: &[&str]) -> Result<()> {
        assert_no_secrets(&self.out, secrets)?;
        self.out
            .ensure_failure()
            .with_context(|| format!("the build from {source} with wrong credentials"))?;
        let all = self.out.all().to_lowercase();
        let missing: Vec<_> = words.iter().filter(|w| !all.contains(*w)).collect();
        if !missing.is_empty() {
            bail!(
                "the failed build from {source} does not mention {missing:?}:\n{}",
                self.out.all()
            );
        }
        Ok(())
    }
}

fn assert_no_secrets(out: &KilnOutput, secrets: &[&str]) -> Result<()> {
    let all = out.all();
    for secret in secrets {
        if all.contains(secret) {
            bail!("kiln logged the secret {secret:?}:\n{all}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- tarballs

#[test]
fn tar_gzip_file_builds_the_same_layer_as_the_directory() -> Result<()> {
    let setup = Setup::new()?;
    let dir = setup.scratch.path().join("dir");
    fs::create_dir(&dir)?;
    setup.context().write(&dir)?;
    let from_dir = setup
        .build(&format!("dir://{}", dir.display()), &[], &[])?
        .check("dir://", &setup.context(), &[])?;

    let tarball = setup.tarball("ctx.tar.gz", Compression::Gzip)?;
    let from_tar = setup
        .build(&format!("tar://{}", tarball.display()), &[], &[])?
        .check("tar:// (gzip)", &setup.context(), &[])?;
    // Same files, modes, owners and times: the same layer.
    assert_eq!(
        from_tar, from_dir,
        "the tarball's COPY layer differs from the directory's"
    );
    Ok(())
}

#[test]
fn tar_zstd_file() -> Result<()> {
    let setup = Setup::new()?;
    let tarball = setup.tarball("ctx.tar.zst", Compression::Zstd)?;
    setup
        .build(&format!("tar://{}", tarball.display()), &[], &[])?
        .check("tar:// (zstd)", &setup.context(), &[])?;
    Ok(())
}

#[test]
fn tar_plain_file() -> Result<()> {
    let setup = Setup::new()?;
    let tarball = setup.tarball("ctx.tar", Compression::Plain)?;
    setup
        .build(&format!("tar://{}", tarball.display()), &[], &[])?
        .check("tar:// (plain)", &setup.context(), &[])?;
    Ok(())
}

#[test]
fn tar_stdin_with_and_without_interactive() -> Result<()> {
    let setup = Setup::new()?;
    let tarball = setup.tarball("ctx.tar.gz", Compression::Gzip)?;
    let with_i = setup
        .build_with_stdin("tar://stdin", &["-i"], File::open(&tarball)?)?
        .check("tar://stdin -i", &setup.context(), &[])?;
    // A pipe is not a TTY: -i is optional.
    let without_i = setup
        .build_with_stdin("tar://stdin", &[], File::open(&tarball)?)?
        .check("tar://stdin", &setup.context(), &[])?;
    assert_eq!(with_i, without_i);
    Ok(())
}

#[test]
fn context_sub_path_selects_a_directory_of_the_context() -> Result<()> {
    let setup = Setup::new()?;
    let outer = setup
        .context()
        .under("app")
        .with_file("outside.txt", "not in the context\n", 0o644)
        .with_file("Dockerfile", "FROM scratch\nCOPY outside.txt /\n", 0o644);
    let tarball = outer.tarball(setup.scratch.path(), "outer.tar.gz", Compression::Gzip)?;
    setup
        .build(
            &format!("tar://{}", tarball.display()),
            &["--context-sub-path", "app"],
            &[],
        )?
        .check("tar:// with --context-sub-path", &setup.context(), &[])?;
    Ok(())
}

// -------------------------------------------------------------------- HTTP

#[test]
fn http_tarball() -> Result<()> {
    let setup = Setup::new()?;
    let tarball = setup.tarball("ctx.tar.gz", Compression::Gzip)?;
    let server = FileServer::start(setup.scratch.path())?;
    let name = tarball
        .file_name()
        .context("no file name")?
        .to_string_lossy();
    setup
        .build(&format!("{}/{name}", server.url()), &[], &[])?
        .check("http://", &setup.context(), &[])?;
    Ok(())
}

#[test]
fn a_user_plugin_adds_a_scheme() -> Result<()> {
    let setup = Setup::new()?;
    let tarball = setup.tarball("ctx.tar.gz", Compression::Gzip)?;
    let server = FileServer::start(setup.scratch.path())?;
    let name = tarball
        .file_name()
        .context("no file name")?
        .to_string_lossy();
    // The test plugin `sneaky` claims `sneaky://HOST/fetch?url=URL`; kiln
    // lets it reach the host its URL names, here the file server.
    let host = server.url().trim_start_matches("http://").to_owned();
    let url = format!("sneaky://{host}/fetch?url={}/{name}", server.url());
    let plugin = kiln_e2e::plugin_path("sneaky")?;
    let plugin = plugin.display().to_string();
    setup.build(&url, &["--plugin", &plugin], &[])?.check(
        "a --plugin scheme",
        &setup.context(),
        &[],
    )?;
    let unknown = setup.build(&url, &[], &[])?;
    unknown.out.ensure_failure()?;
    let all = unknown.out.all();
    assert!(
        all.contains("unknown context scheme \"sneaky\"") && all.contains("s3://"),
        "{all}"
    );
    Ok(())
}

// ---------------------------------------------------------------------- S3

/// moto with the sample context at `s3://ctx-bucket/path/ctx.tar.gz`,
/// accepting only a signature made with the returned key.
fn moto_with_context(setup: &Setup) -> Result<(Moto, AwsKey)> {
    let tarball = setup.tarball("ctx.tar.gz", Compression::Gzip)?;
    let moto = Moto::start()?;
    let key = moto.create_access_key()?;
    moto.create_bucket(BUCKET)?;
    moto.put_object(BUCKET, "path/ctx.tar.gz", &tarball)?;
    moto.enforce_auth()?;
    Ok((moto, key))
}

fn s3_env(moto_endpoint: &OsStr) -> Vec<(&str, &OsStr)> {
    vec![
        ("S3_ENDPOINT", moto_endpoint),
        ("S3_FORCE_PATH_STYLE", OsStr::new("true")),
        ("AWS_REGION", OsStr::new("us-east-1")),
    ]
}

#[test]
fn s3_with_env_credentials_and_a_checked_sigv4_signature() -> Result<()> {
    let setup = Setup::new()?;
    let (moto, key) = moto_with_context(&setup)?;
    let endpoint = moto.endpoint();
    let mut env = s3_env(OsStr::new(&endpoint));
    env.push(("AWS_ACCESS_KEY_ID", OsStr::new(&key.id)));
    env.push(("AWS_SECRET_ACCESS_KEY", OsStr::new(&key.secret)));
    setup
        .build(&format!("s3://{BUCKET}/path/ctx.tar.gz"), &[], &env)?
        .check("s3://", &setup.context(), &[&key.secret])?;
    Ok(())
}

#[test]
fn s3_with_the_aws_credentials_file() -> Result<()> {
    let setup = Setup::new()?;
    let (moto, key) = moto_with_context(&setup)?;
    let home = setup.scratch.path().join("home");
    fs::create_dir_all(home.join(".aws"))?;
    fs::write(
        home.join(".aws/credentials"),
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            key.id, key.secret
        ),
    )?;
    let endpoint = moto.endpoint();
    let mut env = s3_env(OsStr::new(&endpoint));
    env.push(("HOME", home.as_os_str()));
    setup
        .build(&format!("s3://{BUCKET}/path/ctx.tar.gz"), &[], &env)?
        .check(
            "s3:// (~/.aws/credentials)",
            &setup.context(),
            &[&key.secret],
        )?;
    Ok(())
}

#[test]
fn s3_with_a_wrong_secret_fails_with_an_authentication_error() -> Result<()> {
    let setup = Setup::new()?;
    let (moto, key) = moto_with_context(&setup)?;
    let wrong = format!("{}WRONG", key.secret);
    let endpoint = moto.endpoint();
    let mut env = s3_env(OsStr::new(&endpoint));
    env.push(("AWS_ACCESS_KEY_ID", OsStr::new(&key.id)));
    env.push(("AWS_SECRET_ACCESS_KEY", OsStr::new(&wrong)));
    setup
        .build(&format!("s3://{BUCKET}/path/ctx.tar.gz"), &[], &env)?
        .check_failure("s3://", &["s3", "auth"], &[&wrong, &key.secret])
}

// --------------------------------------------------------------------- GCS

#[test]
fn gcs_object_and_default_object() -> Result<()> {
    let setup = Setup::new()?;
    let tarball = setup.tarball("ctx.tar.gz", Compression::Gzip)?;
    let gcs = FakeGcs::start()?;
    gcs.create_bucket(BUCKET)?;
    gcs.upload(BUCKET, "path/ctx.tar.gz", &tarball)?;
    gcs.upload(BUCKET, "dir/context.tar.gz", &tarball)?;
    let host = gcs.emulator_host();
    let env = [("STORAGE_EMULATOR_HOST", OsStr::new(&host))];
    let named = setup
        .build(&format!("gs://{BUCKET}/path/ctx.tar.gz"), &[], &env)?
        .check("gs:// (object)", &setup.context(), &[])?;
    let default = setup
        .build(&format!("gs://{BUCKET}/dir/"), &[], &env)?
        .check("gs:// (default context.tar.gz)", &setup.context(), &[])?;
    assert_eq!(named, default);
    Ok(())
}

#[test]
fn gcs_with_a_refused_service_account_fails_with_an_authentication_error() -> Result<()> {
    let setup = Setup::new()?;
    let token_endpoint = Responder::start(
        "400 Bad Request",
        r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
    )?;
    let key_path = setup.scratch.path().join("sa-key.pem");
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key_path)
        .output()
        .context("cannot run openssl (apt package openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pem = fs::read_to_string(&key_path)?;
    let account = serde_json::json!({
        "type": "service_account",
        "project_id": "kiln-tests",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "kiln@kiln-tests.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": format!("{}/token", token_endpoint.url()),
    });
    let credentials = setup.scratch.path().join("service-account.json");
    fs::write(&credentials, serde_json::to_vec_pretty(&account)?)?;
    // Lines of the key's base64 body: any one of them in the output leaks it.
    let key_lines: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .collect();
    let built = setup.build(
        &format!("gs://{BUCKET}/path/ctx.tar.gz"),
        &[],
        &[("GOOGLE_APPLICATION_CREDENTIALS", credentials.as_os_str())],
    )?;
    built.check_failure("gs://", &["gs://", "auth"], &key_lines)?;
    assert!(
        token_endpoint.hits() > 0,
        "kiln never asked the service account's token_uri for a token:\n{}",
        built.out.all()
    );
    Ok(())
}

// ------------------------------------------------------------------- Azure

/// Azurite with the sample context at `ctx/path/ctx.tar.gz`.
fn azurite_with_context(setup: &Setup) -> Result<Azurite> {
    let tarball = setup.tarball("ctx.tar.gz", Compression::Gzip)?;
    let azurite = Azurite::start()?;
    azurite.create_container("ctx")?;
    azurite.put_blob("ctx", "path/ctx.tar.gz", &tarball)?;
    Ok(azurite)
}

#[test]
fn azure_blob_with_the_shared_key() -> Result<()> {
    let setup = Setup::new()?;
    let azurite = azurite_with_context(&setup)?;
    let endpoint = azurite.endpoint();
    setup
        .build(
            &azurite.blob_url("ctx", "path/ctx.tar.gz"),
            &[],
            &[
                ("AZURE_STORAGE_BLOB_ENDPOINT", OsStr::new(&endpoint)),
                ("AZURE_STORAGE_ACCESS_KEY", OsStr::new(AZURITE_KEY)),
            ],
        )?
        .check("Azure Blob (shared key)", &setup.context(), &[AZURITE_KEY])?;
    Ok(())
}

#[test]
fn azure_blob_with_a_sas_url() -> Result<()> {
    let setup = Setup::new()?;
    let azurite = azurite_with_context(&setup)?;
    let endpoint = azurite.endpoint();
    let sas = azurite.sas_url("ctx", "path/ctx.tar.gz")?;
    let signature = sas.rsplit("sig=").next().unwrap_or_default().to_owned();
    setup
        .build(
            &sas,
            &[],
            &[("AZURE_STORAGE_BLOB_ENDPOINT", OsStr::new(&endpoint))],
        )?
        .check("Azure Blob (SAS)", &setup.context(), &[&signature])?;
    Ok(())
}

#[test]
fn azure_blob_with_a_wrong_key_fails_with_an_authentication_error() -> Result<()> {
    let setup = Setup::new()?;
    let azurite = azurite_with_context(&setup)?;
    let endpoint = azurite.endpoint();
    // Valid base64 of 64 bytes, but not the account's key.
    let wrong =
        "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXkgd3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXkgd3Jvbmc=";
    setup
        .build(
            &azurite.blob_url("ctx", "path/ctx.tar.gz"),
            &[],
            &[
                ("AZURE_STORAGE_BLOB_ENDPOINT", OsStr::new(&endpoint)),
                ("AZURE_STORAGE_ACCESS_KEY", OsStr::new(wrong)),
            ],
        )?
        .check_failure("Azure Blob", &["azure", "auth"], &[wrong])
}

// --------------------------------------------------------------------- git

/// A git server with the fixture repositories.
fn git_fixture(setup: &Setup) -> Result<(GitServer, GitFixture)> {
    let server = GitServer::start()?;
    let fixture = GitFixture::publish(&server, &setup.base)?;
    Ok((server, fixture))
}

const HTTP: (&str, &str) = ("GIT_PULL_METHOD", "http");

fn git_build(
    setup: &Setup,
    server: &GitServer,
    repo: &str,
    fragment: &str,
    extra: &[&str],
) -> Result<Built> {
    setup.build(
        &format!("{}{fragment}", server.context_url(repo)),
        extra,
        &[(HTTP.0, OsStr::new(HTTP.1))],
    )
}

#[test]
fn git_default_branch() -> Result<()> {
    let setup = Setup::new()?;
    let (server, fixture) = git_fixture(&setup)?;
    git_build(&setup, &server, REPO, "", &[])?.check("git:// (HEAD)", &fixture.main(), &[])?;
    Ok(())
}

#[test]
fn git_branch_and_full_ref() -> Result<()> {
    let setup = Setup::new()?;
    let (server, fixture) = git_fixture(&setup)?;
    git_build(&setup, &server, REPO, &format!("#{BRANCH}"), &[])?.check(
        "git:// #branch",
        &fixture.branch(),
        &[],
    )?;
    git_build(&setup, &server, REPO, &format!("#refs/heads/{BRANCH}"), &[])?.check(
        "git:// #refs/heads/branch",
        &fixture.branch(),
        &[],
    )?;
    Ok(())
}

#[test]
fn git_tag() -> Result<()> {
    let setup = Setup::new()?;
    let (server, fixture) = git_fixture(&setup)?;
    git_build(&setup, &server, REPO, &format!("#{TAG}"), &[])?.check(
        "git:// #tag",
        &fixture.older(),
        &[],
    )?;
    Ok(())
}

#[test]
fn git_commit_id_and_ref_then_commit() -> Result<()> {
    let setup = Setup::new()?;
    let (server, fixture) = git_fixture(&setup)?;
    git_build(
        &setup,
        &server,
        REPO,
        &format!("#{}", fixture.older_commit),
        &[],
    )?
    .check("git:// #<commit not at a tip>", &fixture.older(), &[])?;
    git_build(
        &setup,
        &server,
        REPO,
        &format!("#main#{}", fixture.older_commit),
        &[],
    )?
    .check("git:// #main#<older commit>", &fixture.older(), &[])?;
    Ok(())
}

#[test]
fn git_submodules_only_with_recurse_submodules() -> Result<()> {
    let setup = Setup::new()?;
    let (server, fixture) = git_fixture(&setup)?;
    git_build(
        &setup,
        &server,
        SUPER_REPO,
        "",
        &["--git", "recurse-submodules=true"],
    )?
    .check(
        "git:// --git recurse-submodules=true",
        &fixture.with_submodule(true),
        &[],
    )?;
    git_build(&setup, &server, SUPER_REPO, "", &[])?.check(
        "git:// without submodules",
        &fixture.with_submodule(false),
        &[],
    )?;
    Ok(())
}

#[test]
fn git_basic_auth_right_and_wrong_password() -> Result<()> {
    let setup = Setup::new()?;
    let password = "git-Pa55word-SENTINEL";
    let server = GitServer::start_with_basic_auth("gituser", password)?;
    let fixture = GitFixture::publish(&server, &setup.base)?;
    let url = server.context_url(REPO);
    setup
        .build(
            &url,
            &[],
            &[
                (HTTP.0, OsStr::new(HTTP.1)),
                ("GIT_USERNAME", OsStr::new("gituser")),
                ("GIT_PASSWORD", OsStr::new(password)),
            ],
        )?
        .check("git:// with basic auth", &fixture.main(), &[password])?;
    let wrong = "wrong-Pa55word-SENTINEL";
    setup
        .build(
            &url,
            &[],
            &[
                (HTTP.0, OsStr::new(HTTP.1)),
                ("GIT_USERNAME", OsStr::new("gituser")),
                ("GIT_PASSWORD", OsStr::new(wrong)),
            ],
        )?
        .check_failure("git://", &["git", "auth"], &[wrong, password])
}

#[test]
fn git_over_https_trusts_ssl_cert_file_or_skips_verification_when_asked() -> Result<()> {
    let setup = Setup::new()?;
    let server = GitServer::start_https()?;
    let fixture = GitFixture::publish(&server, &setup.base)?;
    let url = server.context_url(REPO);
    let ca = server.ca_file().context("an https git server has a CA")?;
    setup.build(&url, &[], &[])?.check_failure(
        "git:// over https signed by an unknown CA",
        &[
            server.host().as_str(),
            "does not trust",
            "unknownissuer",
            "ssl_cert_file",
            "insecure-skip-tls=true",
        ],
        &[],
    )?;
    setup
        .build(&url, &[], &[("SSL_CERT_FILE", ca.as_os_str())])?
        .check(
            "git:// over https, its CA in SSL_CERT_FILE",
            &fixture.main(),
            &[],
        )?;
    let ca_dir = ca.parent().context("the CA file has a directory")?;
    setup
        .build(
            &format!("{url}#{BRANCH}"),
            &[],
            &[("SSL_CERT_DIR", ca_dir.as_os_str())],
        )?
        .check(
            "git:// over https, its CA in SSL_CERT_DIR",
            &fixture.branch(),
            &[],
        )?;
    let skipped = setup.build(&url, &["--git", "insecure-skip-tls=true"], &[])?;
    skipped.check(
        "git:// over https, --git insecure-skip-tls=true",
        &fixture.main(),
        &[],
    )?;
    if !skipped
        .out
        .stderr
        .contains("Not verifying the TLS certificate")
    {
        bail!(
            "kiln did not warn that it skips verification:\n{}",
            skipped.out.all()
        );
    }
    Ok(())
}
