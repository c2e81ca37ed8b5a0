//! From a request to a tar stream: pick the commit, fetch it, fetch the
//! submodules, and walk the tree.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use kiln_plugin_sdk::PluginError;

use crate::gitdir;
use crate::object::{Commit, EntryKind, Kind, ObjectId, parse_commit, parse_tag};
use crate::pack::Store;
use crate::protocol::{Remote, Transport, find_ref, ref_prefixes, some_ref_names};
use crate::request::{Request, Target};
use crate::submodule::{parse_gitmodules, resolve_url};
use crate::tar::{Repo, TarStream, read_tree};

/// How deep submodules may nest (a guard against cycles).
const MAX_SUBMODULE_DEPTH: usize = 8;

/// A checkout ready to stream, and what was fetched, for the log.
pub struct Checkout {
    /// The archive of the tree.
    pub tar: TarStream,
    /// The commit checked out.
    pub commit: ObjectId,
    /// Objects fetched, submodules included.
    pub objects: usize,
    /// How many of them came as deltas.
    pub deltas: usize,
    /// Submodules fetched, nested ones included.
    pub submodules: usize,
}

/// Fetches what `request` names into `scratch` and returns its tree as a tar stream.
pub fn checkout(
    transport: &dyn Transport,
    request: &Request,
    scratch: &Path,
) -> Result<Checkout, PluginError> {
    let display = request.display.as_str();
    let remote = Remote::connect(transport, &request.repo_url, display)?;
    let (want, reference) = choose(&remote, request)?;
    let store = remote.fetch(want, scratch)?;
    let (commit_id, commit) =
        peel_to_commit(&store, want).map_err(|e| PluginError::new(format!("{display}: {e}")))?;
    if let Some(sum) = &request.checksum {
        verify_checksum(display, sum, want, commit_id)?;
    }
    let mut objects = store.len();
    let mut deltas = store.deltas();
    let mut submodules = 0;
    let subs = if request.recurse_submodules {
        let mut fetcher = SubmoduleFetcher {
            transport,
            scratch,
            objects: &mut objects,
            deltas: &mut deltas,
            count: &mut submodules,
        };
        fetcher.fetch_all(&request.repo_url, display, &store, &commit.tree, 0)?
    } else {
        HashMap::new()
    };
    let tree = commit.tree;
    let repo = Rc::new(Repo {
        store,
        tree,
        submodules: subs,
    });
    let fail = |e: String| PluginError::new(format!("{display}: {e}"));
    let mut tar = TarStream::new(repo, commit.time, display).map_err(fail)?;
    if request.keep_git_dir {
        let spec = gitdir::Spec {
            commit: commit_id,
            reference: reference.filter(|(name, _)| name != "HEAD"),
            remote: request.repo_url.clone(),
            tree,
        };
        tar = tar.with_git_dir(&spec).map_err(fail)?;
    }
    Ok(Checkout {
        tar,
        commit: commit_id,
        objects,
        deltas,
        submodules,
    })
}

/// Fails unless the commit, or the annotated tag that led to it, starts
/// with `checksum` (BuildKit's `ADD --checksum` for git sources).
fn verify_checksum(
    display: &str,
    checksum: &str,
    want: ObjectId,
    commit: ObjectId,
) -> Result<(), PluginError> {
    let commit_hex = commit.to_string();
    if commit_hex.starts_with(checksum) || want.to_string().starts_with(checksum) {
        return Ok(());
    }
    Err(PluginError::new(format!(
        "{display}: checksum mismatch: expected commit {checksum}, the ref names commit {commit_hex}"
    ))
    .with_hint("update --checksum to the commit the ref names, or pin the commit in the URL"))
}

/// The object to fetch for the request's target, and the ref it came from.
fn choose(
    remote: &Remote,
    request: &Request,
) -> Result<(ObjectId, Option<(String, ObjectId)>), PluginError> {
    let display = &request.display;
    let find = |name: &str| -> Result<(ObjectId, Option<(String, ObjectId)>), PluginError> {
        let refs = remote.refs(&ref_prefixes(Some(name)))?;
        match find_ref(&refs, name) {
            Some(found) => Ok((found.id, Some((found.name.clone(), found.id)))),
            None if name == "HEAD" => Err(PluginError::new(format!(
                "{display}: the repository has no HEAD (it has {})",
                some_ref_names(&refs)
            ))
            .with_hint("name a branch or tag: git://host/repo.git#branch")),
            None => Err(PluginError::new(format!(
                "{display}: no branch, tag or ref `{name}`; the repository has {}",
                some_ref_names(&refs)
            ))
            .with_hint(
                "check the ref after `#` and --git branch=; commit ids must be full 40-hex ids",
            )),
        }
    };
    match &request.target {
        Target::Head => find("HEAD"),
        Target::Ref(name) => find(name),
        Target::Commit(id) => Ok((*id, None)),
        Target::RefCommit(name, id) => find(name).map(|_| (*id, None)),
    }
}

/// Follows annotated tags to the commit.
fn peel_to_commit(store: &Store, want: ObjectId) -> Result<(ObjectId, Commit), String> {
    let mut id = want;
    for _ in 0..16 {
        match store.kind(&id) {
            Some(Kind::Commit) => {
                let (_, data) = store.read(&id)?;
                let commit = parse_commit(&data).map_err(|e| format!("commit {id}: {e}"))?;
                return Ok((id, commit));
            }
            Some(Kind::Tag) => {
                let (_, data) = store.read(&id)?;
                id = parse_tag(&data).map_err(|e| format!("tag {id}: {e}"))?;
            }
            Some(other) => {
                return Err(format!(
                    "{want} names a {}, not a commit or tag",
                    other.name()
                ));
            }
            None => return Err(format!("the fetched pack lacks commit {id}")),
        }
    }
    Err(format!("{want} is a chain of more than 16 tags"))
}

/// The gitlink at `path` in `tree`, if there is one.
fn gitlink_at(store: &Store, tree: &ObjectId, path: &str) -> Result<Option<ObjectId>, String> {
    let mut tree = *tree;
    let mut parts = path.split('/').peekable();
    while let Some(part) = parts.next() {
        let entries = read_tree(store, &tree)?;
        let Some(entry) = entries.into_iter().find(|e| e.name == part) else {
            return Ok(None);
        };
        match (entry.kind, parts.peek().is_none()) {
            (EntryKind::Gitlink, true) => return Ok(Some(entry.id)),
            (EntryKind::Tree, false) => tree = entry.id,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

struct SubmoduleFetcher<'a> {
    transport: &'a dyn Transport,
    scratch: &'a Path,
    objects: &'a mut usize,
    deltas: &'a mut usize,
    count: &'a mut usize,
}

impl SubmoduleFetcher<'_> {
    /// Fetches the submodules that `.gitmodules` lists and the tree links.
    fn fetch_all(
        &mut self,
        repo_url: &str,
        display: &str,
        store: &Store,
        tree: &ObjectId,
        depth: usize,
    ) -> Result<HashMap<String, Rc<Repo>>, PluginError> {
        let fail = |e: String| PluginError::new(format!("{display}: {e}"));
        let entries = read_tree(store, tree).map_err(fail)?;
        let Some(gitmodules) = entries
            .iter()
            .find(|e| e.name == ".gitmodules" && matches!(e.kind, EntryKind::File { .. }))
        else {
            return Ok(HashMap::new());
        };
        let (_, text) = store.read(&gitmodules.id).map_err(fail)?;
        let mut repos = HashMap::new();
        for module in parse_gitmodules(&String::from_utf8_lossy(&text)) {
            let Some(commit) = gitlink_at(store, tree, &module.path).map_err(fail)? else {
                continue;
            };
            if depth == MAX_SUBMODULE_DEPTH {
                return Err(fail(format!(
                    "submodules nest more than {MAX_SUBMODULE_DEPTH} levels deep at `{}`",
                    module.path
                )));
            }
            let url = resolve_url(repo_url, &module.url).map_err(|e| {
                fail(e).with_hint("set the submodule's URL in .gitmodules to an http(s) URL")
            })?;
            let sub_display = format!("submodule `{}` ({url}) of {display}", module.path);
            let remote = Remote::connect(self.transport, &url, &sub_display)?;
            let store = remote.fetch(commit, self.scratch)?;
            let (_, sub_commit) = peel_to_commit(&store, commit)
                .map_err(|e| PluginError::new(format!("{sub_display}: {e}")))?;
            *self.objects += store.len();
            *self.deltas += store.deltas();
            *self.count += 1;
            let nested = self.fetch_all(&url, &sub_display, &store, &sub_commit.tree, depth + 1)?;
            repos.insert(
                module.path,
                Rc::new(Repo {
                    store,
                    tree: sub_commit.tree,
                    submodules: nested,
                }),
            );
        }
        Ok(repos)
    }
}
