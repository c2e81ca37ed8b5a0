//! Packs, protocol and checkouts against the real `git`: repositories made
//! with the CLI, served by `git upload-pack --stateless-rpc` (what
//! `git http-backend` runs), and compared with `git ls-tree`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_plugin_sdk::{KeyValue, PluginError};

use crate::checkout::checkout;
use crate::object::ObjectId;
use crate::pack;
use crate::protocol::{HttpResponse, Transport};
use crate::request::Request;
use crate::tar::{Repo, TarStream};

/// Committer time of every test commit.
const TIME: i64 = 1_700_000_000;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "context-git-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn git_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .env("GIT_AUTHOR_DATE", format!("{} +0000", TIME - 100))
        .env("GIT_COMMITTER_DATE", format!("{TIME} +0000"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir);
    command
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = git_command(dir, args).output().unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .trim_end()
        .to_owned()
}

fn git_bytes(dir: &Path, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Vec<u8> {
    run_git(dir, args, stdin, env, true)
}

/// Runs git; unchecked, a failure still yields what it wrote (as a CGI would).
fn run_git(dir: &Path, args: &[&str], stdin: &[u8], env: &[(&str, &str)], check: bool) -> Vec<u8> {
    let mut child = git_command(dir, args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let output = child.wait_with_output().unwrap();
    // A server that dies early may not read its whole request.
    let _ = writer.join().unwrap();
    assert!(
        !check || output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn write(dir: &Path, path: &str, content: &str) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Lines that change a little from commit to commit, so `git pack-objects`
/// stores later versions as deltas.
fn text(version: usize) -> String {
    (0..400)
        .map(|i| {
            if i % 50 == version {
                format!("line {i} changed in version {version}\n")
            } else {
                format!("line {i} of a file that stays mostly the same\n")
            }
        })
        .collect()
}

/// A repository with files, an executable, a symlink, nested and long
/// paths, history, a branch, tags and a pull-request ref.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = TempDir::new("repo");
        let d = &dir.0;
        git(d, &["init", "-q"]);
        git(d, &["config", "uploadpack.allowAnySHA1InWant", "true"]);
        write(d, "README.md", "hello\n");
        write(d, "big.txt", &text(0));
        write(d, "run.sh", "#!/bin/sh\necho run\n");
        write(d, "empty", "");
        let long = format!("{}/{}", "n".repeat(60), "deep-".repeat(12));
        write(d, &format!("src/{long}/file.txt"), "far down\n");
        write(d, "src/lib/mod.rs", &text(1));
        std::os::unix::fs::symlink("src/lib/mod.rs", d.join("link")).unwrap();
        git(d, &["add", "-A"]);
        git(d, &["update-index", "--chmod=+x", "run.sh"]);
        git(d, &["commit", "-q", "-m", "one"]);
        git(d, &["tag", "light"]);
        for version in 2..6 {
            write(d, "big.txt", &text(version));
            write(d, "src/lib/mod.rs", &text(version + 10));
            write(d, &format!("v{version}.txt"), "new\n");
            git(d, &["add", "-A"]);
            git(d, &["commit", "-q", "-m", &format!("v{version}")]);
            if version == 3 {
                git(d, &["tag", "-a", "-m", "annotated", "v1"]);
                git(d, &["branch", "dev"]);
            }
        }
        // A commit reachable only from a pull-request ref.
        let tree = git(d, &["rev-parse", "HEAD~2^{tree}"]);
        let pr = git(d, &["commit-tree", &tree, "-p", "HEAD", "-m", "pr"]);
        git(d, &["update-ref", "refs/pull/7/head", &pr]);
        Fixture { dir }
    }

    fn path(&self) -> &Path {
        &self.dir.0
    }

    fn rev(&self, rev: &str) -> ObjectId {
        ObjectId::from_hex(&git(self.path(), &["rev-parse", rev])).unwrap()
    }
}

/// What a path is in a checkout.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File { mode: u32, content: Vec<u8> },
    Link(String),
}

/// The checkout of `commit` as `git` sees it.
fn git_tree(repo: &Path, commit: &str) -> BTreeMap<String, Node> {
    let listing = git(repo, &["ls-tree", "-r", "-t", "-z", "--full-tree", commit]);
    let mut nodes = BTreeMap::new();
    for record in listing.split('\0').filter(|r| !r.is_empty()) {
        let (meta, path) = record.split_once('\t').unwrap();
        let fields: Vec<&str> = meta.split(' ').collect();
        let blob = || git_bytes(repo, &["cat-file", "blob", fields[2]], b"", &[]);
        let node = match fields[0] {
            "040000" | "160000" => Node::Dir,
            "100644" => Node::File {
                mode: 0o644,
                content: blob(),
            },
            "100755" => Node::File {
                mode: 0o755,
                content: blob(),
            },
            "120000" => Node::Link(String::from_utf8(blob()).unwrap()),
            other => panic!("unexpected mode {other}"),
        };
        nodes.insert(path.to_owned(), node);
    }
    nodes
}

/// Reads an archive in 7-byte steps (exercising every state boundary) and
/// checks owner and mtime of each entry.
fn tar_tree(mut stream: impl Read) -> BTreeMap<String, Node> {
    let mut archive = Vec::new();
    let mut buf = [0; 7];
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        archive.extend_from_slice(&buf[..n]);
    }
    assert_eq!(archive.len() % 512, 0);
    let mut nodes = BTreeMap::new();
    for entry in tar::Archive::new(&archive[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        assert_eq!(header.mtime().unwrap(), TIME as u64);
        assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let node = match header.entry_type() {
            tar::EntryType::Directory => {
                assert_eq!(header.mode().unwrap(), 0o755);
                Node::Dir
            }
            tar::EntryType::Regular => {
                let mut content = Vec::new();
                entry.read_to_end(&mut content).unwrap();
                Node::File {
                    mode: header.mode().unwrap(),
                    content,
                }
            }
            tar::EntryType::Symlink => Node::Link(
                entry
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            ),
            other => panic!("unexpected entry type {other:?}"),
        };
        let previous = nodes.insert(path.trim_end_matches('/').to_owned(), node);
        assert!(previous.is_none(), "{path} twice");
    }
    nodes
}

fn scratch_is_empty(scratch: &Path) -> bool {
    std::fs::read_dir(scratch).unwrap().next().is_none()
}

/// Indexes a pack made by `git pack-objects` and checks the tree of every commit.
fn check_pack(delta_base_offset: bool) {
    let fixture = Fixture::new();
    let mut args = vec!["pack-objects", "--revs", "--stdout", "--all"];
    if delta_base_offset {
        args.push("--delta-base-offset");
    }
    let pack_bytes = git_bytes(fixture.path(), &args, b"", &[]);
    let scratch = TempDir::new("scratch");
    let count = git(fixture.path(), &["rev-list", "--objects", "--all"])
        .lines()
        .count();
    for rev in ["HEAD", "HEAD~2", "light", "refs/pull/7/head"] {
        let store = pack::index(&pack_bytes[..], &scratch.0).unwrap();
        assert_eq!(store.len(), count);
        assert!(store.deltas() > 0, "the fixture should produce deltas");
        let commit = fixture.rev(&format!("{rev}^{{commit}}"));
        let (_, data) = store.read(&commit).unwrap();
        let parsed = crate::object::parse_commit(&data).unwrap();
        assert_eq!(parsed.time, TIME);
        let repo = Rc::new(Repo {
            store,
            tree: parsed.tree,
            submodules: HashMap::new(),
        });
        let stream = TarStream::new(repo, parsed.time, "test").unwrap();
        assert_eq!(tar_tree(stream), git_tree(fixture.path(), rev), "{rev}");
        assert!(
            scratch_is_empty(&scratch.0),
            "stores remove their scratch files"
        );
    }
}

#[test]
fn packs_with_offset_deltas_check_out_like_git() {
    check_pack(true);
}

#[test]
fn packs_with_ref_deltas_check_out_like_git() {
    check_pack(false);
}

#[test]
fn corrupt_and_truncated_packs_are_refused() {
    let fixture = Fixture::new();
    let pack_bytes = git_bytes(
        fixture.path(),
        &["pack-objects", "--revs", "--stdout", "--all"],
        b"",
        &[],
    );
    let scratch = TempDir::new("scratch");
    let truncated = &pack_bytes[..pack_bytes.len() / 2];
    let e = pack::index(truncated, &scratch.0).err().unwrap();
    assert!(e.contains("pack entry at offset"), "{e}");
    let mut flipped = pack_bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let e = pack::index(&flipped[..], &scratch.0).err().unwrap();
    assert!(e.contains("checksum"), "{e}");
    let e = pack::index(&b"<html><body>not found</body></html>"[..], &scratch.0)
        .err()
        .unwrap();
    assert!(e.contains("PACK"), "{e}");
}

/// Serves repositories at `http://git.test/<name>` with the real
/// `git upload-pack`, as `git http-backend` would.
struct LocalGit {
    repos: HashMap<String, PathBuf>,
    /// Whether to honour `Git-Protocol: version=2` (an old server does not).
    v2: bool,
    requests: RefCell<Vec<String>>,
}

impl LocalGit {
    fn new(v2: bool, repos: &[(&str, &Path)]) -> Self {
        LocalGit {
            repos: repos
                .iter()
                .map(|(name, path)| (format!("https://git.test/{name}"), path.to_path_buf()))
                .collect(),
            v2,
            requests: RefCell::new(Vec::new()),
        }
    }

    fn serve(
        &self,
        url: &str,
        suffix: &str,
        headers: &[(&str, &str)],
        args: &[&str],
        body: &[u8],
    ) -> HttpResponse {
        self.requests.borrow_mut().push(url.to_owned());
        let Some(dir) = url
            .strip_suffix(suffix)
            .and_then(|base| self.repos.get(base))
        else {
            return HttpResponse {
                status: 404,
                content_type: Some("text/plain".into()),
                body: Box::new(&b"not found"[..]),
            };
        };
        let v2 = self.v2
            && headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("git-protocol") && *v == "version=2");
        let env: &[(&str, &str)] = if v2 {
            &[("GIT_PROTOCOL", "version=2")]
        } else {
            &[]
        };
        let mut out = Vec::new();
        let advertise = args.contains(&"--advertise-refs");
        if advertise && !v2 {
            crate::pktline::write_data(&mut out, b"# service=git-upload-pack\n");
            crate::pktline::write_flush(&mut out);
        }
        let mut full_args = vec!["upload-pack", "--stateless-rpc"];
        full_args.extend_from_slice(args);
        full_args.push(dir.to_str().unwrap());
        out.extend(run_git(dir, &full_args, body, env, false));
        let kind = if advertise { "advertisement" } else { "result" };
        HttpResponse {
            status: 200,
            content_type: Some(format!("application/x-git-upload-pack-{kind}")),
            body: Box::new(std::io::Cursor::new(out)),
        }
    }
}

impl Transport for LocalGit {
    fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<HttpResponse, PluginError> {
        let suffix = "/info/refs?service=git-upload-pack";
        Ok(self.serve(url, suffix, headers, &["--advertise-refs"], b""))
    }

    fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse, PluginError> {
        Ok(self.serve(url, "/git-upload-pack", headers, &[], body))
    }
}

fn fetch(
    server: &LocalGit,
    url: &str,
    options: &[(&str, &str)],
) -> Result<(ObjectId, BTreeMap<String, Node>), PluginError> {
    let options: Vec<KeyValue> = options.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect();
    let request = Request::parse(url, &options)?;
    let scratch = TempDir::new("scratch");
    let checkout = checkout(server, &request, &scratch.0)?;
    let commit = checkout.commit;
    let tree = tar_tree(checkout.tar);
    assert!(
        scratch_is_empty(&scratch.0),
        "scratch files outlive the stream"
    );
    Ok((commit, tree))
}

fn check_refs(v2: bool) {
    let fixture = Fixture::new();
    let server = LocalGit::new(v2, &[("org/repo.git", fixture.path())]);
    let base = "git://git.test/org/repo.git";
    let older = fixture.rev("HEAD~3");
    for (url, options, rev) in [
        (base.to_owned(), vec![], "HEAD"),
        (format!("{base}#dev"), vec![], "dev"),
        (format!("{base}#v1"), vec![], "v1^{commit}"),
        (format!("{base}#light"), vec![], "light"),
        (format!("{base}#refs/tags/v1"), vec![], "v1^{commit}"),
        (
            format!("{base}#refs/pull/7/head"),
            vec![],
            "refs/pull/7/head",
        ),
        (format!("{base}#pull/7/head"), vec![], "refs/pull/7/head"),
        (format!("{base}#{older}"), vec![], "HEAD~3"),
        (format!("{base}#main#{older}"), vec![], "HEAD~3"),
        (format!("{base}#nope"), vec![("branch", "dev")], "dev"),
        (
            base.to_owned(),
            vec![("single-branch", "true"), ("recurse-submodules", "true")],
            "HEAD",
        ),
    ] {
        let (commit, tree) =
            fetch(&server, &url, &options).unwrap_or_else(|e| panic!("{url}: {e:?}"));
        assert_eq!(commit, fixture.rev(rev), "{url}");
        assert_eq!(tree, git_tree(fixture.path(), rev), "{url}");
    }
}

#[test]
fn protocol_v2_fetches_branches_tags_refs_and_commits() {
    check_refs(true);
}

#[test]
fn protocol_v0_fetches_branches_tags_refs_and_commits() {
    check_refs(false);
}

#[test]
fn fetches_are_shallow() {
    let fixture = Fixture::new();
    let server = LocalGit::new(true, &[("r", fixture.path())]);
    let request = Request::parse("git://git.test/r#v1", &[]).unwrap();
    let scratch = TempDir::new("scratch");
    let checkout = checkout(&server, &request, &scratch.0).unwrap();
    // The tag, the commit, and the trees and blobs of one commit only.
    let v1 = fixture.rev("v1^{commit}").to_string();
    let listing = git(fixture.path(), &["ls-tree", "-r", "-t", &v1]);
    let distinct: std::collections::BTreeSet<&str> = listing
        .lines()
        .map(|line| line.split([' ', '\t']).nth(2).unwrap())
        .collect();
    assert_eq!(checkout.objects, distinct.len() + 3);
    assert_eq!(
        *server.requests.borrow(),
        [
            "https://git.test/r/info/refs?service=git-upload-pack",
            "https://git.test/r/git-upload-pack",
            "https://git.test/r/git-upload-pack",
        ]
    );
}

#[test]
fn failures_name_the_url_and_what_to_do() {
    let fixture = Fixture::new();
    for v2 in [true, false] {
        let server = LocalGit::new(v2, &[("r.git", fixture.path())]);
        let e = fetch(&server, "git://git.test/r.git#nope", &[]).unwrap_err();
        assert!(
            e.message.starts_with("git://git.test/r.git#nope: "),
            "{e:?}"
        );
        assert!(e.message.contains("no branch, tag or ref `nope`"), "{e:?}");
        assert!(e.message.contains("dev, main, light, v1"), "{e:?}");

        let missing = "0123456789abcdef0123456789abcdef01234567";
        let e = fetch(&server, &format!("git://git.test/r.git#{missing}"), &[]).unwrap_err();
        assert!(
            e.message.contains(&format!("fetching commit {missing}")),
            "{e:?}"
        );
        assert!(e.hint.unwrap().contains("allowReachableSHA1InWant"));

        let e = fetch(&server, "git://git.test/other.git", &[]).unwrap_err();
        assert!(e.message.contains("was not found (HTTP 404)"), "{e:?}");
        assert!(e.hint.unwrap().contains("check the repository URL"));
    }
}

#[test]
fn submodules_are_fetched_only_when_asked() {
    let sub = TempDir::new("sub");
    git(&sub.0, &["init", "-q"]);
    write(&sub.0, "inner.txt", "from the submodule\n");
    std::os::unix::fs::symlink("inner.txt", sub.0.join("inner-link")).unwrap();
    git(&sub.0, &["add", "-A"]);
    git(&sub.0, &["commit", "-q", "-m", "sub"]);
    git(&sub.0, &["commit", "-q", "--allow-empty", "-m", "later"]);
    // The superproject pins the submodule's first commit, not its tip.
    let pinned = git(&sub.0, &["rev-parse", "HEAD~1"]);

    let top = TempDir::new("top");
    git(&top.0, &["init", "-q"]);
    write(
        &top.0,
        ".gitmodules",
        "[submodule \"sub\"]\n\tpath = libs/sub\n\turl = ../sub.git\n",
    );
    write(&top.0, "main.txt", "top\n");
    git(&top.0, &["add", "-A"]);
    git(
        &top.0,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{pinned},libs/sub"),
        ],
    );
    git(&top.0, &["commit", "-q", "-m", "top"]);

    let server = LocalGit::new(true, &[("org/top.git", &top.0), ("org/sub.git", &sub.0)]);
    let url = "git://git.test/org/top.git";
    let (_, plain) = fetch(&server, url, &[]).unwrap();
    assert_eq!(plain, git_tree(&top.0, "HEAD"));
    assert_eq!(plain["libs/sub"], Node::Dir);
    assert!(!plain.contains_key("libs/sub/inner.txt"));

    let (_, tree) = fetch(&server, url, &[("recurse-submodules", "true")]).unwrap();
    let mut expected = git_tree(&top.0, "HEAD");
    for (path, node) in git_tree(&sub.0, &pinned) {
        expected.insert(format!("libs/sub/{path}"), node);
    }
    assert_eq!(tree, expected);
    assert_eq!(tree["libs/sub/inner-link"], Node::Link("inner.txt".into()));
}

/// Fetches `url` with `keep-git-dir` and unpacks the archive into a new directory.
fn fetch_with_git_dir(server: &LocalGit, url: &str) -> (ObjectId, TempDir) {
    let options = [KeyValue::new("keep-git-dir", "true")];
    let request = Request::parse(url, &options).unwrap();
    let scratch = TempDir::new("scratch");
    let checkout = checkout(server, &request, &scratch.0).unwrap_or_else(|e| panic!("{e:?}"));
    let out = TempDir::new("kept");
    let commit = checkout.commit;
    tar::Archive::new(checkout.tar).unpack(&out.0).unwrap();
    assert!(scratch_is_empty(&scratch.0));
    (commit, out)
}

#[test]
fn kept_git_dirs_pass_fsck_and_status_is_clean() {
    let fixture = Fixture::new();
    let server = LocalGit::new(true, &[("r.git", fixture.path())]);
    let base = "git://git.test/r.git";
    let older = fixture.rev("HEAD~3");
    for (fragment, rev, reference) in [
        ("", "HEAD", None),
        ("#dev", "dev", Some("refs/heads/dev")),
        ("#v1", "v1^{commit}", Some("refs/tags/v1")),
        ("#pull/7/head", "refs/pull/7/head", Some("refs/pull/7/head")),
        (&format!("#{older}"), "HEAD~3", None),
    ] {
        let url = format!("{base}{fragment}");
        let (commit, out) = fetch_with_git_dir(&server, &url);
        let dir = &out.0;
        assert_eq!(commit, fixture.rev(rev), "{url}");
        assert_eq!(git(dir, &["log", "-1", "--format=%H"]), commit.to_string());
        assert_eq!(git(dir, &["rev-parse", "HEAD"]), commit.to_string());
        // Detached, as BuildKit leaves it.
        assert_eq!(
            std::fs::read_to_string(dir.join(".git/HEAD")).unwrap(),
            format!("{commit}\n")
        );
        git(dir, &["fsck", "--full", "--strict", "--no-dangling"]);
        assert_eq!(git(dir, &["status", "--porcelain"]), "", "{url}");
        assert_eq!(git(dir, &["rev-parse", "--is-shallow-repository"]), "true");
        assert_eq!(
            git(dir, &["config", "remote.origin.url"]),
            "https://git.test/r.git"
        );
        assert_eq!(
            git(dir, &["ls-files", "-s"]),
            git(
                fixture.path(),
                &[
                    "ls-tree",
                    "-r",
                    "--format=%(objectmode) %(objectname) 0\t%(path)",
                    rev
                ]
            ),
            "{url}"
        );
        if let Some(name) = reference {
            let peeled = format!("{name}^{{commit}}");
            assert_eq!(git(dir, &["rev-parse", &peeled]), commit.to_string());
            assert_eq!(
                git(dir, &["rev-parse", name]),
                fixture.rev(name).to_string()
            );
        }
        // The tree itself is unchanged by the extra directory.
        let mut files = git_tree(fixture.path(), rev);
        files.retain(|path, _| !path.starts_with(".git"));
        for path in files.keys() {
            assert!(std::fs::symlink_metadata(dir.join(path)).is_ok(), "{path}");
        }
    }
}

#[test]
fn checksums_must_match_the_commit_or_tag() {
    let fixture = Fixture::new();
    let server = LocalGit::new(true, &[("r.git", fixture.path())]);
    let url = "git://git.test/r.git#v1";
    let commit = fixture.rev("v1^{commit}").to_string();
    let tag = fixture.rev("v1").to_string();
    for good in [&commit[..], &commit[..7], &tag[..12]] {
        let (id, _) = fetch(&server, url, &[("checksum", good)]).unwrap();
        assert_eq!(id.to_string(), commit);
    }
    let wrong = fixture.rev("HEAD").to_string();
    let e = fetch(&server, url, &[("checksum", &wrong)]).unwrap_err();
    assert!(e.message.contains("checksum mismatch"), "{e:?}");
    assert!(e.message.contains(&commit), "{e:?}");
}
