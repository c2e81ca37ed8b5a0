//! Resolution of a Dockerfile `USER` value against an image's `/etc/passwd`
//! and `/etc/group`, with Docker's (runc's) rules. Pure: the caller reads the
//! files.

use super::SandboxError;
use serde::{Deserialize, Serialize};

/// Ids above this are rejected, as runc does: the kernel treats `-1` specially.
const MAX_ID: u32 = i32::MAX as u32;

/// One line of `/etc/passwd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory (may be empty).
    pub home: String,
}

/// One line of `/etc/group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Names of the users listed as members.
    pub members: Vec<String>,
}

/// The identity a RUN command executes as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids, in `/etc/group` order.
    pub groups: Vec<u32>,
    /// Value for `HOME` when the environment does not set it.
    pub home: String,
}

/// Parses `/etc/passwd` content, skipping comments, NIS lines and malformed lines
/// (as libc does) rather than failing the build on them.
pub fn parse_passwd(content: &str) -> Vec<PasswdEntry> {
    content
        .lines()
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with('+') && !l.starts_with('-')
        })
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group` content with the same leniency as [`parse_passwd`].
pub fn parse_group(content: &str) -> Vec<GroupEntry> {
    content
        .lines()
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with('+') && !l.starts_with('-')
        })
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn numeric_id(spec: &str, part: &str) -> Result<Option<u32>, SandboxError> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match part.parse::<u64>() {
        Ok(n) if n <= u64::from(MAX_ID) => Ok(Some(n as u32)),
        _ => Err(SandboxError::InvalidUser {
            spec: spec.to_owned(),
            reason: format!("{part} is out of range: uids and gids must be in range 0-{MAX_ID}"),
        }),
    }
}

/// Resolves `USER` (`name|uid[:group|gid]`; `None` or empty = root) against
/// the image's passwd and group files (empty strings when they are absent).
pub fn resolve(spec: Option<&str>, passwd: &str, group: &str) -> Result<ExecUser, SandboxError> {
    let spec = spec.unwrap_or("");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, g),
        None => (spec, ""),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let users = parse_passwd(passwd);
    let uid_arg = numeric_id(spec, user_part)?;
    let entry = users
        .iter()
        .find(|e| e.name == user_part || uid_arg == Some(e.uid));
    let (uid, mut gid, name) = match (entry, uid_arg) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.as_str())),
        (None, Some(uid)) => (uid, 0, None),
        (None, None) => return Err(SandboxError::UnknownUser(user_part.to_owned())),
    };
    let home = match entry {
        Some(e) if !e.home.is_empty() => e.home.clone(),
        _ if uid == 0 => "/root".to_owned(),
        _ => "/".to_owned(),
    };

    let groups = parse_group(group);
    let mut supplementary = Vec::new();
    if group_part.is_empty() {
        // Docker gives an implicit-group user the groups that list it by name.
        if let Some(name) = name {
            for g in groups
                .iter()
                .filter(|g| g.members.iter().any(|m| m == name))
            {
                if !supplementary.contains(&g.gid) {
                    supplementary.push(g.gid);
                }
            }
        }
    } else {
        let gid_arg = numeric_id(spec, group_part)?;
        gid = match (
            groups
                .iter()
                .find(|g| g.name == group_part || gid_arg == Some(g.gid)),
            gid_arg,
        ) {
            (Some(g), _) => g.gid,
            (None, Some(n)) => n,
            (None, None) => return Err(SandboxError::UnknownGroup(group_part.to_owned())),
        };
    }
    Ok(ExecUser {
        uid,
        gid,
        groups: supplementary,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        app:x:1000:1001:App:/home/app:/bin/sh\n\
        nohome:x:1002:1002::\n";
    const GROUP: &str = "root:x:0:\n\
        app:x:1001:\n\
        wheel:x:10:root,app\n\
        audio:x:29: app , other\n\
        staff:x:50:other\n\
        dup:x:10:app\n";

    fn user(uid: u32, gid: u32, groups: &[u32], home: &str) -> ExecUser {
        ExecUser {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.to_owned(),
        }
    }

    #[test]
    fn parses_passwd_and_skips_malformed_lines() {
        let users = parse_passwd(PASSWD);
        assert_eq!(
            users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            ["root", "daemon", "app", "nohome"]
        );
        assert_eq!(
            users[2],
            PasswdEntry {
                name: "app".into(),
                uid: 1000,
                gid: 1001,
                home: "/home/app".into()
            }
        );
        assert_eq!(users[3].home, "");
    }

    #[test]
    fn parses_group_members() {
        let groups = parse_group(GROUP);
        assert_eq!(groups[2].members, ["root", "app"]);
        assert_eq!(groups[3].members, ["app", "other"]);
        assert!(groups[1].members.is_empty());
    }

    #[test]
    fn no_user_is_root_with_its_groups() {
        assert_eq!(
            resolve(None, PASSWD, GROUP).unwrap(),
            user(0, 0, &[10], "/root")
        );
        assert_eq!(resolve(Some(""), "", "").unwrap(), user(0, 0, &[], "/root"));
    }

    #[test]
    fn name_uses_primary_gid_home_and_member_groups() {
        assert_eq!(
            resolve(Some("app"), PASSWD, GROUP).unwrap(),
            user(1000, 1001, &[10, 29], "/home/app")
        );
    }

    #[test]
    fn numeric_uid_finds_entry_or_stands_alone() {
        assert_eq!(
            resolve(Some("1000"), PASSWD, GROUP).unwrap(),
            user(1000, 1001, &[10, 29], "/home/app")
        );
        assert_eq!(
            resolve(Some("4242"), PASSWD, GROUP).unwrap(),
            user(4242, 0, &[], "/")
        );
        assert_eq!(
            resolve(Some("4242"), "", "").unwrap(),
            user(4242, 0, &[], "/")
        );
    }

    #[test]
    fn explicit_group_by_name_or_number_drops_member_groups() {
        assert_eq!(
            resolve(Some("app:staff"), PASSWD, GROUP).unwrap(),
            user(1000, 50, &[], "/home/app")
        );
        assert_eq!(
            resolve(Some("app:777"), PASSWD, GROUP).unwrap(),
            user(1000, 777, &[], "/home/app")
        );
        assert_eq!(resolve(Some("5:6"), "", "").unwrap(), user(5, 6, &[], "/"));
        assert_eq!(
            resolve(Some("app:"), PASSWD, GROUP).unwrap(),
            user(1000, 1001, &[10, 29], "/home/app")
        );
    }

    #[test]
    fn empty_home_falls_back_to_slash() {
        assert_eq!(resolve(Some("nohome"), PASSWD, GROUP).unwrap().home, "/");
    }

    #[test]
    fn unknown_names_fail_like_docker() {
        let e = resolve(Some("nobody"), PASSWD, GROUP).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        let e = resolve(Some("app:nogroup"), PASSWD, GROUP).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to find group nogroup: no matching entries in group file"
        );
    }

    #[test]
    fn out_of_range_ids_are_rejected() {
        let e = resolve(Some("4294967295"), "", "").unwrap_err();
        assert!(e.to_string().contains("range 0-2147483647"), "{e}");
        let e = resolve(Some("1:99999999999"), "", "").unwrap_err();
        assert!(e.to_string().contains("99999999999 is out of range"), "{e}");
    }
}
