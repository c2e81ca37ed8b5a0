//! Git object ids and the parts of commits, tags and trees a checkout needs.

use std::fmt;

/// A SHA-1 object id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 20]);

impl ObjectId {
    /// Parses 40 hex digits (either case).
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 40 {
            return None;
        }
        let mut id = [0; 20];
        for (byte, pair) in id.iter_mut().zip(hex.chunks(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(ObjectId(id))
    }

    /// The id of an object of `kind` whose content is `data`.
    pub fn hash(kind: Kind, data: &[u8]) -> Self {
        let mut hasher = hasher_for(kind, data.len() as u64);
        hasher.update(data);
        ObjectId(hasher.digest().bytes())
    }

    /// Whether this is git's all-zero id (an unborn or absent ref).
    pub fn is_null(&self) -> bool {
        self.0 == [0; 20]
    }
}

/// A SHA-1 hasher fed with git's object header, ready for the content.
pub fn hasher_for(kind: Kind, size: u64) -> sha1_smol::Sha1 {
    let mut hasher = sha1_smol::Sha1::new();
    hasher.update(format!("{} {size}\0", kind.name()).as_bytes());
    hasher
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The four kinds of git object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A commit.
    Commit,
    /// A tree (directory listing).
    Tree,
    /// File content.
    Blob,
    /// An annotated tag.
    Tag,
}

impl Kind {
    /// The name in object headers and messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Commit => "commit",
            Kind::Tree => "tree",
            Kind::Blob => "blob",
            Kind::Tag => "tag",
        }
    }
}

/// What a checkout needs from a commit.
#[derive(Debug, PartialEq, Eq)]
pub struct Commit {
    /// The root tree.
    pub tree: ObjectId,
    /// Committer time, seconds since the epoch.
    pub time: i64,
}

/// Parses a commit's header.
pub fn parse_commit(data: &[u8]) -> Result<Commit, String> {
    let mut tree = None;
    let mut time = None;
    for line in header_lines(data) {
        if let Some(hex) = line.strip_prefix(b"tree ") {
            tree = std::str::from_utf8(hex).ok().and_then(ObjectId::from_hex);
        } else if let Some(who) = line.strip_prefix(b"committer ") {
            time = signature_time(who);
        }
    }
    Ok(Commit {
        tree: tree.ok_or("the commit has no valid tree line")?,
        time: time.ok_or("the commit has no valid committer line")?,
    })
}

/// Parses an annotated tag's target.
pub fn parse_tag(data: &[u8]) -> Result<ObjectId, String> {
    header_lines(data)
        .find_map(|line| line.strip_prefix(b"object "))
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(ObjectId::from_hex)
        .ok_or_else(|| "the tag has no valid object line".to_owned())
}

/// The header lines of a commit or tag: up to the first empty line.
fn header_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
        .take_while(|line| !line.is_empty())
}

/// `Name <email> 1700000000 +0100` → 1700000000.
fn signature_time(who: &[u8]) -> Option<i64> {
    let after_email = &who[who.iter().rposition(|&b| b == b'>')? + 1..];
    let text = std::str::from_utf8(after_email).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// What a tree entry is, by its git mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file, with whether it is executable.
    File { executable: bool },
    /// A symbolic link; the blob holds the target.
    Symlink,
    /// A subdirectory.
    Tree,
    /// A submodule commit.
    Gitlink,
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// The file name (one path component).
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
    /// The blob, tree or commit it names.
    pub id: ObjectId,
}

/// Parses a tree's entries, refusing names that could escape the checkout.
pub fn parse_tree(mut data: &[u8]) -> Result<Vec<TreeEntry>, String> {
    let mut entries = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a tree entry has no mode")?;
        let mode = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .ok_or("a tree entry has an invalid mode")?;
        data = &data[space + 1..];
        let nul = data
            .iter()
            .position(|&b| b == 0)
            .ok_or("a tree entry has no name end")?;
        let name = String::from_utf8(data[..nul].to_vec())
            .map_err(|_| "a tree entry's name is not UTF-8".to_owned())?;
        data = &data[nul + 1..];
        let id: [u8; 20] = data
            .get(..20)
            .ok_or("a tree entry is truncated")?
            .try_into()
            .expect("20 bytes");
        data = &data[20..];
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(format!("the tree has an invalid entry name `{name}`"));
        }
        if name.eq_ignore_ascii_case(".git") {
            return Err("the tree has an entry named `.git`".to_owned());
        }
        let kind = match mode & 0o170000 {
            0o100000 => EntryKind::File {
                executable: mode & 0o100 != 0,
            },
            0o120000 => EntryKind::Symlink,
            0o040000 => EntryKind::Tree,
            0o160000 => EntryKind::Gitlink,
            _ => return Err(format!("the tree entry `{name}` has unknown mode {mode:o}")),
        };
        entries.push(TreeEntry {
            name,
            kind,
            id: ObjectId(id),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_print_and_hash_like_git() {
        let hex = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391";
        let id = ObjectId::from_hex(hex).unwrap();
        assert_eq!(id.to_string(), hex);
        // `git hash-object /dev/null`.
        assert_eq!(ObjectId::hash(Kind::Blob, b""), id);
        assert_eq!(ObjectId::from_hex(&hex.to_uppercase()), Some(id));
        assert_eq!(ObjectId::from_hex(&hex[1..]), None);
        assert_eq!(ObjectId::from_hex(&hex.replace('e', "g")), None);
        assert!(ObjectId([0; 20]).is_null());
    }

    #[test]
    fn commits_yield_tree_and_committer_time() {
        let data = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
            parent 0123456789abcdef0123456789abcdef01234567\n\
            author A <a@x> 1600000000 +0000\n\
            committer C D <c@x> 1700000000 -0130\n\
            \n\
            tree 0000000000000000000000000000000000000000\n";
        let commit = parse_commit(data).unwrap();
        assert_eq!(
            commit.tree.to_string(),
            "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
        );
        assert_eq!(commit.time, 1_700_000_000);
        assert!(parse_commit(b"author A <a@x> 1 +0000\n").is_err());
    }

    #[test]
    fn tags_yield_their_object() {
        let data = b"object 0123456789abcdef0123456789abcdef01234567\ntype commit\ntag v1\n\nmsg\n";
        assert_eq!(
            parse_tag(data).unwrap().to_string(),
            "0123456789abcdef0123456789abcdef01234567"
        );
        assert!(parse_tag(b"type commit\n").is_err());
    }

    fn entry(mode: &str, name: &str) -> Vec<u8> {
        let mut out = format!("{mode} {name}\0").into_bytes();
        out.extend_from_slice(&[7; 20]);
        out
    }

    #[test]
    fn tree_entries_map_git_modes() {
        let data = [
            entry("100644", "a.txt"),
            entry("100755", "run.sh"),
            entry("100664", "old"),
            entry("120000", "link"),
            entry("40000", "dir"),
            entry("160000", "sub"),
        ]
        .concat();
        let kinds: Vec<_> = parse_tree(&data)
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("a.txt".into(), EntryKind::File { executable: false }),
                ("run.sh".into(), EntryKind::File { executable: true }),
                ("old".into(), EntryKind::File { executable: false }),
                ("link".into(), EntryKind::Symlink),
                ("dir".into(), EntryKind::Tree),
                ("sub".into(), EntryKind::Gitlink),
            ]
        );
    }

    #[test]
    fn trees_with_escaping_or_broken_entries_are_refused() {
        for name in ["..", ".", ".GIT", "a/b"] {
            assert!(parse_tree(&entry("100644", name)).is_err(), "{name}");
        }
        assert!(parse_tree(&entry("100644", "a")[..10]).is_err());
        assert!(parse_tree(&entry("170000", "a")).is_err());
    }
}
