//! The servers behind the remote-context tests, checked with independent
//! clients (curl, git, boto3): each stores what it is given and serves it
//! back, and each that checks credentials refuses wrong ones.

use anyhow::{Context, Result, bail};
use kiln_e2e::git_fixture::{BRANCH, GitFixture, REPO, SUB_REPO, SUPER_REPO, TAG};
use kiln_e2e::services::{AZURITE_KEY, Azurite, FakeGcs, GitServer, GitWork, Moto, Responder};
use std::fs;
use std::path::Path;
use std::process::Command;

fn write_payload(dir: &Path) -> Result<(std::path::PathBuf, Vec<u8>)> {
    // Every byte value, so that nothing is mangled as text.
    let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let path = dir.join("payload.bin");
    fs::write(&path, &payload)?;
    Ok((path, payload))
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn moto_stores_and_serves_objects() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let (path, payload) = write_payload(scratch.path())?;
    let moto = Moto::start()?;
    moto.create_bucket("ctx-bucket")?;
    moto.put_object("ctx-bucket", "dir/ctx.tar.gz", &path)?;
    let key = moto.any_key();
    let (status, body) = moto.get_object(Some(&key), "ctx-bucket", "dir/ctx.tar.gz")?;
    assert_eq!(status, 200);
    assert!(body == payload, "moto served {} other bytes", body.len());
    assert_eq!(moto.get_object(Some(&key), "ctx-bucket", "missing")?.0, 404);
    assert_eq!(
        moto.get_object(None, "ctx-bucket", "dir/ctx.tar.gz")?.0,
        403
    );
    Ok(())
}

#[test]
fn moto_with_auth_enforced_checks_sigv4_signatures() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let (path, payload) = write_payload(scratch.path())?;
    let moto = Moto::start()?;
    let key = moto.create_access_key()?;
    assert!(key.id.starts_with("AKIA"), "{key:?}");
    moto.create_bucket("ctx-bucket")?;
    moto.put_object("ctx-bucket", "ctx.tar.gz", &path)?;
    moto.enforce_auth()?;

    let (status, body) = moto.get_object(Some(&key), "ctx-bucket", "ctx.tar.gz")?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == payload);
    let mut wrong = key.clone();
    wrong.secret.push('x');
    let (status, body) = moto.get_object(Some(&wrong), "ctx-bucket", "ctx.tar.gz")?;
    assert_eq!(status, 403);
    assert!(
        String::from_utf8_lossy(&body).contains("SignatureDoesNotMatch"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = moto.get_object(Some(&moto.any_key()), "ctx-bucket", "ctx.tar.gz")?;
    assert_eq!(status, 403, "moto accepted a key it never issued");
    Ok(())
}

#[test]
fn fake_gcs_stores_and_serves_objects() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let (path, payload) = write_payload(scratch.path())?;
    let gcs = FakeGcs::start()?;
    gcs.create_bucket("ctx-bucket")?;
    gcs.upload("ctx-bucket", "dir/context.tar.gz", &path)?;
    let (status, body) = gcs.download("ctx-bucket", "dir/context.tar.gz")?;
    assert_eq!(status, 200);
    assert!(
        body == payload,
        "fake-gcs-server served {} other bytes",
        body.len()
    );
    assert_eq!(gcs.download("ctx-bucket", "missing")?.0, 404);
    assert!(gcs.emulator_host().starts_with("127.0.0.1:"));
    Ok(())
}

#[test]
fn azurite_checks_shared_keys_and_sas_tokens() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let (path, payload) = write_payload(scratch.path())?;
    let azurite = Azurite::start()?;
    azurite.create_container("ctx")?;
    azurite.put_blob("ctx", "dir/ctx.tar.gz", &path)?;

    let (status, body) = azurite.signed_get("ctx", "dir/ctx.tar.gz", AZURITE_KEY)?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == payload, "Azurite served {} other bytes", body.len());
    let wrong_key = "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXkgd3Jvbmcga2V5IHdyb25nIGtleQ==";
    assert_eq!(
        azurite.signed_get("ctx", "dir/ctx.tar.gz", wrong_key)?.0,
        403
    );
    let unsigned = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(azurite.blob_url("ctx", "dir/ctx.tar.gz")))?;
    assert!(unsigned.starts_with('4'), "an unsigned GET got {unsigned}");

    let sas = azurite.sas_url("ctx", "dir/ctx.tar.gz")?;
    assert!(sas.contains("sig="), "{sas}");
    let served = Command::new("curl")
        .args(["-sS", "--fail"])
        .arg(&sas)
        .output()?;
    assert!(
        served.status.success(),
        "the SAS URL was refused: {}",
        String::from_utf8_lossy(&served.stderr)
    );
    assert!(served.stdout == payload);
    let tampered = sas.replace("sp=r", "sp=rw");
    let code = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(&tampered))?;
    assert_eq!(code, "403", "a tampered SAS got {code}");
    Ok(())
}

#[test]
fn responder_answers_every_request_the_same() -> Result<()> {
    let responder = Responder::start("400 Bad Request", r#"{"error":"invalid_grant"}"#)?;
    let out = Command::new("curl")
        .args(["-s", "-w", " %{http_code}", "-d", "grant_type=x"])
        .arg(format!("{}/token", responder.url()))
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        r#"{"error":"invalid_grant"} 400"#
    );
    assert_eq!(responder.hits(), 1);
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    run(Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args(args))
}

#[test]
fn git_server_serves_clones_fetches_by_id_and_pushes() -> Result<()> {
    let server = GitServer::start()?;
    let fixture = GitFixture::publish(&server, "example.invalid/base")?;
    let scratch = tempfile::tempdir()?;
    let root = scratch.path();

    // Protocol v2 (the default) and v0, each a full clone.
    for version in ["2", "0"] {
        let clone = root.join(format!("clone-v{version}"));
        git(
            root,
            &[
                "-c",
                &format!("protocol.version={version}"),
                "clone",
                "--quiet",
                &server.url(REPO),
                &clone.display().to_string(),
            ],
        )?;
        assert_eq!(
            git(&clone, &["rev-parse", "HEAD"])?.trim(),
            fixture.main_commit
        );
        assert_eq!(fs::read_to_string(clone.join("hello.txt"))?, "hello\n");
        assert_eq!(fs::read_link(clone.join("link"))?, Path::new("hello.txt"));
        let mode = fs::metadata(clone.join("run.sh"))?.permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o111,
            0o111
        );
        let tags = git(&clone, &["rev-parse", &format!("{TAG}^{{commit}}")])?;
        assert_eq!(tags.trim(), fixture.older_commit);
        let branch = git(&clone, &["rev-parse", &format!("origin/{BRANCH}")])?;
        assert_eq!(branch.trim(), fixture.branch_commit);
    }

    // A commit that is no ref's tip, fetched shallowly by its id.
    let shallow = root.join("shallow");
    git(root, &["init", "--quiet", &shallow.display().to_string()])?;
    git(&shallow, &["remote", "add", "origin", &server.url(REPO)])?;
    git(
        &shallow,
        &[
            "fetch",
            "--quiet",
            "--depth",
            "1",
            "origin",
            &fixture.older_commit,
        ],
    )?;
    git(&shallow, &["checkout", "--quiet", "FETCH_HEAD"])?;
    assert_eq!(
        fs::read_to_string(shallow.join("hello.txt"))?,
        "older hello\n"
    );

    // Submodules over HTTP.
    let with_sub = root.join("with-sub");
    git(
        root,
        &[
            "clone",
            "--quiet",
            "--recurse-submodules",
            &server.url(SUPER_REPO),
            &with_sub.display().to_string(),
        ],
    )?;
    assert_eq!(
        fs::read_to_string(with_sub.join("vendor/sub/sub.txt"))?,
        "from the submodule\n"
    );
    assert_eq!(
        git(&with_sub, &["rev-parse", "HEAD"])?.trim(),
        fixture.super_commit
    );

    // A push of 3 MiB: git sends the pack as a chunked body.
    let work = GitWork::init()?;
    let big: Vec<u8> = (0..3 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(work.path().join("big.bin"), &big)?;
    let pushed = work.commit_all("big")?;
    work.git(&[
        "push",
        "--quiet",
        &server.url(SUB_REPO),
        "HEAD:refs/heads/big",
    ])?;
    let remote = git(
        root,
        &["ls-remote", &server.url(SUB_REPO), "refs/heads/big"],
    )?;
    assert!(remote.starts_with(&pushed), "{remote}");
    Ok(())
}

#[test]
fn git_server_with_basic_auth_refuses_anonymous_and_wrong_passwords() -> Result<()> {
    let server = GitServer::start_with_basic_auth("gituser", "s3cret-pass")?;
    let work = GitWork::init()?;
    fs::write(work.path().join("f"), "x\n")?;
    let commit = work.commit_all("one")?;
    server.publish(&work, "private.git")?;
    let scratch = tempfile::tempdir()?;
    let with_creds = |user: &str, password: &str| {
        server
            .url("private.git")
            .replace("http://", &format!("http://{user}:{password}@"))
    };

    let refs = git(
        scratch.path(),
        &["ls-remote", &with_creds("gituser", "s3cret-pass")],
    )?;
    assert!(refs.contains(&commit), "{refs}");
    let anonymous = git(scratch.path(), &["ls-remote", &server.url("private.git")])
        .expect_err("an anonymous ls-remote succeeded");
    assert!(
        format!("{anonymous:#}").contains("Authentication failed")
            || format!("{anonymous:#}").contains("could not read Username"),
        "{anonymous:#}"
    );
    let wrong = git(
        scratch.path(),
        &["ls-remote", &with_creds("gituser", "wrong")],
    )
    .expect_err("a wrong password was accepted");
    assert!(
        format!("{wrong:#}").contains("Authentication failed"),
        "{wrong:#}"
    );
    Ok(())
}
