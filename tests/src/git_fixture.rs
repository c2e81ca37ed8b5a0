//! The sample context published as git repositories on a [`GitServer`]:
//! an older commit, the tip of `main`, a branch, a tag and a repository
//! with a submodule, with the context each one must produce.

use crate::sample_context::SampleContext;
use crate::services::{GitServer, GitWork};
use anyhow::{Context, Result};
use std::fs;
use std::path::Path;

/// The main repository, served as `repo.git`.
pub const REPO: &str = "repo.git";
/// A repository whose tree has [`SUBMODULE_PATH`] as a submodule.
pub const SUPER_REPO: &str = "withsub.git";
/// The repository used as a submodule, served as `sub.git`.
pub const SUB_REPO: &str = "sub.git";
/// Where [`SUPER_REPO`] mounts [`SUB_REPO`].
pub const SUBMODULE_PATH: &str = "vendor/sub";
/// The branch of [`REPO`] that adds a file.
pub const BRANCH: &str = "feature";
/// The annotated tag of [`REPO`], on its older commit.
pub const TAG: &str = "v1";

/// The published repositories and what each ref holds.
pub struct GitFixture {
    /// The commit before the tip of `main` (tagged [`TAG`]).
    pub older_commit: String,
    /// The tip of `main`.
    pub main_commit: String,
    /// The tip of [`BRANCH`].
    pub branch_commit: String,
    /// The tip of [`SUPER_REPO`]'s `main`.
    pub super_commit: String,
    base: String,
    gitmodules: String,
}

impl GitFixture {
    /// Publishes the repositories, whose Dockerfiles build `FROM base`, on
    /// `server`.
    pub fn publish(server: &GitServer, base: &str) -> Result<GitFixture> {
        let fixture = GitFixture {
            older_commit: String::new(),
            main_commit: String::new(),
            branch_commit: String::new(),
            super_commit: String::new(),
            base: base.to_owned(),
            gitmodules: String::new(),
        };

        let work = GitWork::init()?;
        replace_tree(work.path(), &fixture.older())?;
        let older_commit = work.commit_all("older")?;
        work.git(&["tag", "-a", TAG, "-m", "version 1", &older_commit])?;
        replace_tree(work.path(), &fixture.main())?;
        let main_commit = work.commit_all("main")?;
        work.git(&["checkout", "--quiet", "-b", BRANCH])?;
        replace_tree(work.path(), &fixture.branch())?;
        let branch_commit = work.commit_all("branch")?;
        work.git(&["checkout", "--quiet", "main"])?;
        server.publish(&work, REPO)?;

        let sub = GitWork::init()?;
        fs::write(sub.path().join("sub.txt"), "from the submodule\n")?;
        sub.commit_all("sub")?;
        server.publish(&sub, SUB_REPO)?;

        let with_sub = GitWork::init()?;
        replace_tree(with_sub.path(), &fixture.main())?;
        // Cloned from disk: the server may require credentials.
        with_sub.add_submodule(
            &server.project_root().join(SUB_REPO),
            &server.url(SUB_REPO),
            SUBMODULE_PATH,
        )?;
        let super_commit = with_sub.commit_all("with a submodule")?;
        let gitmodules = fs::read_to_string(with_sub.path().join(".gitmodules"))
            .context("git submodule add wrote no .gitmodules")?;
        server.publish(&with_sub, SUPER_REPO)?;

        Ok(GitFixture {
            older_commit,
            main_commit,
            branch_commit,
            super_commit,
            gitmodules,
            ..fixture
        })
    }

    /// The context at the tip of `main`.
    pub fn main(&self) -> SampleContext {
        SampleContext::new(&self.base)
    }

    /// The context at the older commit (and the tag).
    pub fn older(&self) -> SampleContext {
        self.main().with_file("hello.txt", "older hello\n", 0o644)
    }

    /// The context at the tip of the branch.
    pub fn branch(&self) -> SampleContext {
        self.main()
            .with_file("hello.txt", "branch hello\n", 0o644)
            .with_file("branch.txt", "on the branch\n", 0o644)
    }

    /// The context of [`SUPER_REPO`], with the submodule's files when
    /// `recursive`, else with its empty directory.
    pub fn with_submodule(&self, recursive: bool) -> SampleContext {
        let context = self
            .main()
            .with_file(".gitmodules", &self.gitmodules, 0o644)
            .with_dir("vendor")
            .with_dir(SUBMODULE_PATH);
        if recursive {
            context.with_file(
                &format!("{SUBMODULE_PATH}/sub.txt"),
                "from the submodule\n",
                0o644,
            )
        } else {
            context
        }
    }
}

/// Replaces the work tree at `dir` (all but `.git`) with `context`.
fn replace_tree(dir: &Path, context: &SampleContext) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == ".git" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    context.write(dir)
}
