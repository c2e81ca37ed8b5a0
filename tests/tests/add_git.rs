//! `ADD <git url>` against a real `git http-backend` on 127.0.0.1: a tag
//! through `git://` (with `GIT_PULL_METHOD=http`), a branch's subdirectory
//! through an `http://....git` URL, `--keep-git-dir` leaving a `.git` that
//! the real `git` accepts, basic auth, and ssh URLs refused with the https
//! URL to use instead. The images are checked file by file.

use anyhow::{Context, Result, bail};
use kiln_e2e::git_fixture::{BRANCH, GitFixture, REPO, TAG};
use kiln_e2e::services::GitServer;
use kiln_e2e::{BaseImage, Flattened, Image, KilnOutput, Registry, run_kiln};
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;
use tempfile::TempDir;

/// A registry with the busybox base, and scratch space for one test.
struct Setup {
    registry: Registry,
    base: String,
    scratch: TempDir,
}

impl Setup {
    fn new() -> Result<Setup> {
        let registry = Registry::start()?;
        let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
        Ok(Setup {
            registry,
            base,
            scratch: tempfile::Builder::new().prefix("kiln-add-git-").tempdir()?,
        })
    }

    /// Builds `dockerfile` (after `FROM base`) from an otherwise empty
    /// context into an OCI layout; returns kiln's output and the layout.
    fn build(
        &self,
        name: &str,
        dockerfile: &str,
        envs: &[(&str, &OsStr)],
    ) -> Result<(KilnOutput, std::path::PathBuf)> {
        let context = self.scratch.path().join(format!("ctx-{name}"));
        fs::create_dir_all(&context)?;
        fs::write(
            context.join("Dockerfile"),
            format!("FROM {}\n{dockerfile}", self.base),
        )?;
        let layout = self.scratch.path().join(format!("layout-{name}"));
        let args: Vec<String> = vec![
            "build".into(),
            "--context".into(),
            format!("dir://{}", context.display()),
            "--no-push".into(),
            "--insecure-registry".into(),
            self.registry.addr(),
            "-v".into(),
            "debug".into(),
            "--oci-layout-path".into(),
            layout.display().to_string(),
        ];
        let out = run_kiln(args, envs)?;
        Ok((out, layout))
    }
}

const HTTP: (&str, &str) = ("GIT_PULL_METHOD", "http");

/// Runs the host's `git` in `dir` and returns its trimmed output.
fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "safe.directory=*"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .context("cannot run git")?;
    if !output.status.success() {
        bail!(
            "git {args:?} in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The owner of `path` as the newest layer that has it records it (a
/// rootless flatten would show the current user instead).
fn owner(image: &Image, path: &str) -> Result<(u64, u64)> {
    for index in (0..image.layer_count()?).rev() {
        if let Some(e) = image
            .layer_entries(index)?
            .into_iter()
            .find(|e| e.path == path)
        {
            return Ok((e.uid, e.gid));
        }
    }
    bail!("no layer has {path}")
}

/// The names in directory `path` of the image, sorted.
fn names(image: &Flattened, path: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(image.path(path))
        .with_context(|| format!("{path} is not a directory in the image"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    Ok(names)
}

#[test]
fn add_git_tags_branches_subdirectories_and_kept_git_dirs() -> Result<()> {
    let setup = Setup::new()?;
    let server = GitServer::start()?;
    let fixture = GitFixture::publish(&server, &setup.base)?;
    let git_url = server.context_url(REPO);
    let http_url = server.url(REPO);
    let dockerfile = format!(
        "ADD {git_url}#{TAG} /src\n\
         ADD {http_url}#main:sub /sub\n\
         ADD --keep-git-dir=true --chown=1000:1001 {http_url}#{BRANCH} /withgit\n\
         ADD --chmod=755 {http_url}?ref=main&subdir=sub /modes/\n"
    );
    let (out, layout) = setup.build("refs", &dockerfile, &[(HTTP.0, OsStr::new(HTTP.1))])?;
    out.ensure_success()
        .context("the ADD of git sources failed")?;
    let oci = Image::layout(&layout, None);
    let image = oci.flatten()?;

    // The tag, through git:// over plain HTTP: its tree, and no .git.
    assert_eq!(image.read("/src/hello.txt")?, "older hello\n");
    assert_eq!(image.read("/src/sub/nested.txt")?, "nested\n");
    assert_eq!(
        fs::read_link(image.path("/src/link"))?.to_string_lossy(),
        "hello.txt"
    );
    assert_eq!(image.mode("/src/run.sh")? & 0o7777, 0o755);
    assert_eq!(image.mode("/src/hello.txt")? & 0o7777, 0o644);
    assert_eq!(owner(&oci, "src/hello.txt")?, (0, 0));
    assert!(!image.exists("/src/.git"), "a .git without --keep-git-dir");
    assert!(!image.exists("/src/branch.txt"));

    // A subdirectory of main: only its content.
    assert_eq!(names(&image, "/sub")?, ["nested.txt"]);
    assert_eq!(image.read("/sub/nested.txt")?, "nested\n");

    // --chmod reaches every file of the tree, as for any other source.
    assert_eq!(names(&image, "/modes")?, ["nested.txt"]);
    assert_eq!(image.mode("/modes/nested.txt")? & 0o7777, 0o755);

    // The branch with its .git: files owned as --chown says, and a
    // repository the real git accepts.
    assert_eq!(image.read("/withgit/branch.txt")?, "on the branch\n");
    assert_eq!(owner(&oci, "withgit/branch.txt")?, (1000, 1001));
    assert_eq!(owner(&oci, "withgit/.git/HEAD")?, (1000, 1001));
    assert_eq!(
        image.read("/withgit/.git/HEAD")?,
        format!("{}\n", fixture.branch_commit)
    );
    assert_eq!(
        image.read(&format!("/withgit/.git/refs/heads/{BRANCH}"))?,
        format!("{}\n", fixture.branch_commit)
    );
    let dir = image.path("/withgit");
    assert_eq!(
        git(&dir, &["log", "-1", "--format=%H"])?,
        fixture.branch_commit
    );
    assert_eq!(git(&dir, &["rev-parse", "HEAD"])?, fixture.branch_commit);
    git(&dir, &["fsck", "--full", "--no-dangling"])?;
    assert_eq!(git(&dir, &["status", "--porcelain"])?, "");
    assert_eq!(git(&dir, &["config", "remote.origin.url"])?, http_url);
    Ok(())
}

#[test]
fn add_git_basic_auth_and_wrong_password() -> Result<()> {
    let setup = Setup::new()?;
    let password = "add-git-Pa55word-SENTINEL";
    let server = GitServer::start_with_basic_auth("gituser", password)?;
    let fixture = GitFixture::publish(&server, &setup.base)?;
    let dockerfile = format!("ADD {}#main /app\n", server.url(REPO));
    let envs = |password| {
        [
            ("GIT_USERNAME", OsStr::new("gituser")),
            ("GIT_PASSWORD", OsStr::new(password)),
        ]
    };
    let (out, layout) = setup.build("auth", &dockerfile, &envs(password))?;
    out.ensure_success()
        .context("ADD with the right password failed")?;
    assert!(!out.all().contains(password), "kiln logged the password");
    let image = Image::layout(&layout, None).flatten()?;
    assert_eq!(image.read("/app/hello.txt")?, "hello\n");
    assert!(!fixture.main_commit.is_empty());

    let wrong = "wrong-Pa55word-SENTINEL";
    let (out, _) = setup.build("wrong", &dockerfile, &envs(wrong))?;
    out.ensure_failure()
        .context("ADD with a wrong password succeeded")?;
    let all = out.all();
    assert!(!all.contains(wrong) && !all.contains(password), "{all}");
    let lower = all.to_lowercase();
    assert!(
        lower.contains("auth") && lower.contains(&server.url(REPO)),
        "the failure names neither the repository nor authentication:\n{all}"
    );
    Ok(())
}

#[test]
fn add_git_over_ssh_is_refused_with_the_https_url() -> Result<()> {
    let setup = Setup::new()?;
    let (out, _) = setup.build(
        "ssh",
        "ADD git@github.com:moby/buildkit.git#v0.13.0 /src\n",
        &[],
    )?;
    out.ensure_failure()
        .context("ADD of an ssh URL succeeded")?;
    let all = out.all();
    assert!(
        all.contains("no ssh transport")
            && all.contains("https://github.com/moby/buildkit.git#v0.13.0"),
        "{all}"
    );
    Ok(())
}
