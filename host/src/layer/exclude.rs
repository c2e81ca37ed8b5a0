//! Paths kiln must never touch when it works on a live root filesystem
//! (container-root mode): its own directory, the kernel's pseudo
//! filesystems, mount points and the user's `--ignore-path`s. Applying a
//! layer skips them, wiping keeps them, and snapshots leave them out.

/// A set of normalised relative paths (`a/b`, no leading `/`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    paths: Vec<Vec<u8>>,
}

/// `a/./b//c/` → `a/b/c`; `None` for a path with `..` (it could name
/// anything) or for the root itself (excluding it would exclude everything).
fn normalise(path: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(path.len());
    for comp in path.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return None,
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// True if `path` is `base` or lies below it.
fn at_or_under(path: &[u8], base: &[u8]) -> bool {
    path.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
}

impl Exclusions {
    /// Nothing excluded.
    pub const NONE: Exclusions = Exclusions { paths: Vec::new() };

    /// The set of `paths` (absolute or relative, as given); the root and
    /// paths with `..` are dropped, and paths under another one are folded
    /// into it.
    pub fn new<P: AsRef<[u8]>>(paths: impl IntoIterator<Item = P>) -> Self {
        let mut all: Vec<Vec<u8>> = paths
            .into_iter()
            .filter_map(|p| normalise(p.as_ref()))
            .collect();
        all.sort();
        all.dedup();
        let mut paths: Vec<Vec<u8>> = Vec::with_capacity(all.len());
        for p in all {
            // Sorted order puts a parent right before its descendants.
            if !paths.last().is_some_and(|kept| at_or_under(&p, kept)) {
                paths.push(p);
            }
        }
        Exclusions { paths }
    }

    /// True if nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The excluded paths, sorted, relative.
    pub fn paths(&self) -> &[Vec<u8>] {
        &self.paths
    }

    /// True if `rel` (normalised, relative) is excluded or lies below an
    /// excluded path.
    pub fn contains(&self, rel: &[u8]) -> bool {
        self.paths.iter().any(|p| at_or_under(rel, p))
    }

    /// True if an excluded path lies strictly below `rel` (the root `""`
    /// holds every excluded path), so `rel` must stay a directory.
    pub fn holds(&self, rel: &[u8]) -> bool {
        self.paths
            .iter()
            .any(|p| rel.is_empty() || (p.len() > rel.len() && at_or_under(p, rel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_and_nested_ones_folded() {
        let ex = Exclusions::new([
            "/proc",
            "/proc/sys/fs",
            "kiln//dir/",
            "/",
            "/a/../etc",
            "./var/run",
        ]);
        assert_eq!(
            ex.paths(),
            [b"kiln/dir".to_vec(), b"proc".to_vec(), b"var/run".to_vec()]
        );
    }

    #[test]
    fn contains_matches_whole_components_only() {
        let ex = Exclusions::new(["/var/run", "/proc"]);
        assert!(ex.contains(b"proc"));
        assert!(ex.contains(b"proc/1/status"));
        assert!(ex.contains(b"var/run/x"));
        assert!(!ex.contains(b"processes"));
        assert!(!ex.contains(b"var/running"));
        assert!(!ex.contains(b"var"));
        assert!(!ex.contains(b""));
    }

    #[test]
    fn holds_is_true_for_strict_ancestors() {
        let ex = Exclusions::new(["/var/run", "/workspace"]);
        assert!(ex.holds(b""));
        assert!(ex.holds(b"var"));
        assert!(!ex.holds(b"var/run"));
        assert!(!ex.holds(b"va"));
        assert!(!ex.holds(b"etc"));
        assert!(!Exclusions::default().holds(b""));
    }
}
