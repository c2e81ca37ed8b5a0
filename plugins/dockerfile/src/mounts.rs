//! `RUN --mount=...` values: BuildKit's CSV options, checks, messages and
//! defaults.

use kiln_plugin_sdk::{CacheSharing, MountKind, RunMount};

use crate::history::go_quote;
use crate::{paths, suggest};

const TYPES: &[&str] = &["bind", "cache", "tmpfs", "secret", "ssh"];
const SHARING: &[&str] = &["shared", "private", "locked"];
const KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

/// One `--mount` as written, its values expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    kind: MountKind,
    from: String,
    source: String,
    target: String,
    read_only: bool,
    size: u64,
    id: String,
    sharing: Option<CacheSharing>,
    required: bool,
    env: Option<String>,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
}

/// Why a mount was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Error<E> {
    /// The mount is malformed; BuildKit's message.
    Invalid(String),
    /// Expanding a value failed.
    Expand(E),
}

impl<E> From<String> for Error<E> {
    fn from(message: String) -> Self {
        Error::Invalid(message)
    }
}

/// The checks BuildKit makes while parsing, before anything is expanded:
/// the CSV syntax, and no variables in `from`.
pub fn check_unexpanded(value: &str) -> Result<(), String> {
    for field in csv_fields(value)? {
        if let Some((key, value)) = field.split_once('=')
            && key.eq_ignore_ascii_case("from")
            && value.find('$').is_some_and(|i| i != value.len() - 1)
        {
            return Err(
                "'from' doesn't support variable expansion, define alias stage instead".to_owned(),
            );
        }
    }
    Ok(())
}

/// Parses one `--mount` value, expanding each option's value with `expand`.
pub fn parse<E>(
    value: &str,
    mut expand: impl FnMut(&str) -> Result<String, E>,
) -> Result<Mount, Error<E>> {
    let mut m = Mount {
        kind: MountKind::Bind,
        from: String::new(),
        source: String::new(),
        target: String::new(),
        read_only: false,
        size: 0,
        id: String::new(),
        sharing: None,
        required: false,
        env: None,
        mode: None,
        uid: None,
        gid: None,
    };
    let mut read_only_given = false;
    let unexpected = |key: &str, kind: MountKind| {
        format!("unexpected key '{key}' for mount type '{}'", name(kind))
    };
    for field in csv_fields(value)? {
        let Some((key, raw)) = field.split_once('=') else {
            match field.to_lowercase().as_str() {
                "readonly" | "ro" => (m.read_only, read_only_given) = (true, true),
                "readwrite" | "rw" => (m.read_only, read_only_given) = (false, true),
                "required" if matches!(m.kind, MountKind::Secret | MountKind::Ssh) => {
                    m.required = true;
                }
                key @ "required" => return Err(unexpected(key, m.kind).into()),
                _ => {
                    return Err(format!("invalid field '{field}' must be a key=value pair").into());
                }
            }
            continue;
        };
        let key = key.to_lowercase();
        let value = expand(raw).map_err(Error::Expand)?;
        match key.as_str() {
            "type" => {
                m.kind = kind(&value.to_lowercase()).ok_or_else(|| {
                    suggest::wrap(
                        format!("unsupported mount type {}", go_quote(&value)),
                        &value,
                        TYPES,
                    )
                })?;
            }
            "from" => m.from = value,
            "source" | "src" => m.source = value,
            "target" | "dst" | "destination" => m.target = value,
            "readonly" | "ro" => {
                m.read_only = parse_bool(&value).ok_or_else(|| invalid_value(&key, &value))?;
                read_only_given = true;
            }
            "readwrite" | "rw" => {
                m.read_only = !parse_bool(&value).ok_or_else(|| invalid_value(&key, &value))?;
                read_only_given = true;
            }
            "required" if matches!(m.kind, MountKind::Secret | MountKind::Ssh) => {
                m.required = parse_bool(&value).ok_or_else(|| invalid_value(&key, &value))?;
            }
            "size" if m.kind == MountKind::Tmpfs => {
                m.size = ram_in_bytes(&value).ok_or_else(|| invalid_value(&key, &value))?;
            }
            "required" | "size" => return Err(unexpected(&key, m.kind).into()),
            "id" => m.id = value,
            "sharing" => {
                m.sharing = Some(sharing(&value.to_lowercase()).ok_or_else(|| {
                    suggest::wrap(
                        format!("unsupported sharing value {}", go_quote(&value)),
                        &value,
                        SHARING,
                    )
                })?);
            }
            "mode" => {
                m.mode = Some(
                    parse_u32(&value, 8)
                        .ok_or_else(|| format!("invalid value {value} for mode"))?,
                );
            }
            "uid" => {
                m.uid = Some(
                    parse_u32(&value, 10)
                        .ok_or_else(|| format!("invalid value {value} for uid"))?,
                );
            }
            "gid" => {
                m.gid = Some(
                    parse_u32(&value, 10)
                        .ok_or_else(|| format!("invalid value {value} for gid"))?,
                );
            }
            "env" => m.env = Some(value),
            _ => {
                return Err(suggest::wrap(
                    format!("unexpected key '{key}' in '{field}'"),
                    &key,
                    KEYS,
                )
                .into());
            }
        }
    }
    if !matches!(
        m.kind,
        MountKind::Secret | MountKind::Ssh | MountKind::Cache
    ) {
        let kind = go_quote(name(m.kind));
        for (option, given) in [
            ("mode", m.mode.is_some()),
            ("uid", m.uid.is_some()),
            ("gid", m.gid.is_some()),
        ] {
            if given {
                return Err(format!("{option} not allowed for {kind} type mounts").into());
            }
        }
    }
    if !read_only_given {
        m.read_only = !matches!(m.kind, MountKind::Cache | MountKind::Tmpfs);
    }
    if m.kind == MountKind::Secret {
        if !m.from.is_empty() {
            return Err("secret mount should not have a from".to_owned().into());
        }
        if m.sharing.is_some() {
            return Err("secret mount should not define sharing".to_owned().into());
        }
        if m.source.is_empty() && m.target.is_empty() && m.id.is_empty() {
            return Err("invalid secret mount. one of source, target required"
                .to_owned()
                .into());
        }
        if !m.source.is_empty() && !m.id.is_empty() {
            return Err("both source and id can't be set".to_owned().into());
        }
    }
    if m.sharing.is_some() && m.kind != MountKind::Cache {
        return Err(format!("invalid cache sharing set for {} mount", name(m.kind)).into());
    }
    Ok(m)
}

/// The mounts of one RUN as the host runs them: targets resolved against
/// the working directory, and BuildKit's defaults for ids and the targets
/// of secret and ssh mounts.
pub fn resolve(mounts: Vec<Mount>, workdir: &str) -> Result<Vec<RunMount>, String> {
    let mut ssh_index = 0;
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        let mut mount = RunMount {
            kind: m.kind,
            target: None,
            source: Some(m.source.clone()).filter(|s| !s.is_empty()),
            from: Some(m.from.clone()).filter(|s| !s.is_empty()),
            read_write: None,
            id: Some(m.id.clone()).filter(|s| !s.is_empty()),
            sharing: m.sharing.unwrap_or(CacheSharing::Shared),
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            required: m.required,
            size: (m.size > 0).then_some(m.size),
            env: m.env.clone(),
        };
        match m.kind {
            MountKind::Secret => {
                // The secret's id: `id`, else `source`, else the target's name.
                let id = match (m.id.as_str(), m.source.as_str()) {
                    (_, source) if !source.is_empty() => source.to_owned(),
                    ("", _) => base(&m.target),
                    (id, _) => id.to_owned(),
                };
                mount.target = match (&m.env, m.target.as_str()) {
                    (Some(_), "") => None,
                    (_, "") => Some(format!("/run/secrets/{}", base(&id))),
                    (_, target) => Some(target.to_owned()),
                };
                mount.source = None;
                mount.id = Some(id);
            }
            MountKind::Ssh => {
                if !m.source.is_empty() {
                    return Err("ssh does not support source".to_owned());
                }
                mount.id = Some(mount.id.unwrap_or_else(|| "default".to_owned()));
                mount.target = Some(if m.target.is_empty() {
                    format!("/run/buildkit/ssh_agent.{ssh_index}")
                } else {
                    m.target.clone()
                });
                ssh_index += 1;
            }
            MountKind::Bind | MountKind::Cache | MountKind::Tmpfs => {
                let target = if paths::clean(&m.target).starts_with('/') {
                    m.target.clone()
                } else {
                    paths::clean(&format!("/{workdir}/{}", m.target))
                };
                if target == "/" {
                    return Err(format!("invalid mount target {}", go_quote(&target)));
                }
                if m.kind == MountKind::Cache && m.id.is_empty() {
                    mount.id = Some(paths::clean(&m.target));
                }
                mount.target = Some(target);
                mount.read_write = Some(!m.read_only);
            }
        }
        out.push(mount);
    }
    Ok(out)
}

/// The first ssh mount's socket, which BuildKit exports as `SSH_AUTH_SOCK`.
pub fn ssh_socket(mounts: &[RunMount]) -> Option<&str> {
    mounts
        .iter()
        .find(|m| m.kind == MountKind::Ssh)
        .and_then(|m| m.target.as_deref())
}

fn invalid_value(key: &str, value: &str) -> String {
    format!("invalid value for {key}: {value}")
}

fn kind(name: &str) -> Option<MountKind> {
    Some(match name {
        "bind" => MountKind::Bind,
        "cache" => MountKind::Cache,
        "tmpfs" => MountKind::Tmpfs,
        "secret" => MountKind::Secret,
        "ssh" => MountKind::Ssh,
        _ => return None,
    })
}

fn name(kind: MountKind) -> &'static str {
    match kind {
        MountKind::Bind => "bind",
        MountKind::Cache => "cache",
        MountKind::Tmpfs => "tmpfs",
        MountKind::Secret => "secret",
        MountKind::Ssh => "ssh",
    }
}

fn sharing(name: &str) -> Option<CacheSharing> {
    Some(match name {
        "shared" => CacheSharing::Shared,
        "private" => CacheSharing::Private,
        "locked" => CacheSharing::Locked,
        _ => return None,
    })
}

/// Go's `path.Base`.
fn base(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    match (path.is_empty(), trimmed.is_empty()) {
        (true, _) => ".".to_owned(),
        (false, true) => "/".to_owned(),
        (false, false) => trimmed.rsplit('/').next().unwrap_or(trimmed).to_owned(),
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseUint(value, radix, 32)`: digits only, no sign.
fn parse_u32(value: &str, radix: u32) -> Option<u32> {
    if value.is_empty() || !value.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(value, radix).ok()
}

/// docker/go-units' `RAMInBytes`: a number with an optional binary
/// `k`/`m`/`g`/`t`/`p` suffix, optionally followed by `b` or `ib`.
fn ram_in_bytes(value: &str) -> Option<u64> {
    let at = value.rfind(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')?;
    let (number, suffix) = if value.as_bytes()[at] == b' ' {
        (&value[..at], &value[at + 1..])
    } else {
        value.split_at(at + 1)
    };
    // Go's ParseFloat takes no special words here: a digit must be present.
    let size: f64 = number.parse().ok()?;
    if size.is_nan() || size < 0.0 || number.contains(['i', 'I', 'n', 'N']) {
        return None;
    }
    let suffix = suffix.to_lowercase();
    let multiplier: f64 = match suffix.as_str() {
        "" | "b" => 1.0,
        s => {
            let power = match s.as_bytes()[0] {
                b'k' => 1,
                b'm' => 2,
                b'g' => 3,
                b't' => 4,
                b'p' => 5,
                _ => return None,
            };
            if !matches!(&s[1..], "" | "b" | "ib") {
                return None;
            }
            1024f64.powi(power)
        }
    };
    Some((size * multiplier) as u64)
}

/// The fields of a one-line CSV value, as go-csvvalue reads them.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let wrap = |column: usize, what: &str| {
        format!("failed to parse csv mounts: parse error on line 1, column {column}: {what}")
    };
    let line = line
        .strip_suffix("\r\n")
        .or_else(|| line.strip_suffix('\n'))
        .unwrap_or(line);
    if line.is_empty() {
        return Err("failed to parse csv mounts: EOF".to_owned());
    }
    let bytes = line.as_bytes();
    let mut fields = Vec::new();
    let mut pos = 0;
    loop {
        if bytes.get(pos) != Some(&b'"') {
            let end = line[pos..].find(',').map(|i| pos + i);
            let field = &line[pos..end.unwrap_or(line.len())];
            if let Some(j) = field.find('"') {
                return Err(wrap(pos + j + 1, "bare \" in non-quoted-field"));
            }
            fields.push(field.to_owned());
            match end {
                Some(end) => pos = end + 1,
                None => return Ok(fields),
            }
            continue;
        }
        pos += 1;
        let mut field = String::new();
        loop {
            let Some(i) = line[pos..].find('"') else {
                return Err(wrap(pos + 1, "extraneous or missing \" in quoted-field"));
            };
            field.push_str(&line[pos..pos + i]);
            pos += i + 1;
            match bytes.get(pos) {
                Some(b'"') => {
                    field.push('"');
                    pos += 1;
                }
                Some(b',') => {
                    pos += 1;
                    fields.push(field);
                    break;
                }
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(_) => {
                    return Err(wrap(pos, "extraneous or missing \" in quoted-field"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(word: &str) -> Result<String, String> {
        match word {
            "$FAIL" => Err("bad substitution".into()),
            _ => Ok(word.replace("$DIR", "/srv").replace("$T", "cache")),
        }
    }

    fn mount(value: &str) -> Result<Mount, Error<String>> {
        parse(value, expand)
    }

    fn invalid(value: &str) -> String {
        match mount(value) {
            Err(Error::Invalid(message)) => message,
            other => panic!("{value}: {other:?}"),
        }
    }

    fn resolved(values: &[&str], workdir: &str) -> Result<Vec<RunMount>, String> {
        let mounts = values.iter().map(|v| mount(v).unwrap()).collect();
        resolve(mounts, workdir)
    }

    fn one(value: &str) -> RunMount {
        resolved(&[value], "/work").unwrap().remove(0)
    }

    #[test]
    fn csv_like_go_csvvalue() {
        assert_eq!(csv_fields("a,b=c,,d").unwrap(), ["a", "b=c", "", "d"]);
        assert_eq!(
            csv_fields(r#""target=/a,b",ro"#).unwrap(),
            ["target=/a,b", "ro"]
        );
        assert_eq!(csv_fields(r#""say ""hi""""#).unwrap(), [r#"say "hi""#]);
        assert_eq!(csv_fields("a,\n").unwrap(), ["a", ""]);
        assert_eq!(
            csv_fields("").unwrap_err(),
            "failed to parse csv mounts: EOF"
        );
        assert_eq!(
            csv_fields(r#"a,b"c"#).unwrap_err(),
            "failed to parse csv mounts: parse error on line 1, column 4: bare \" in non-quoted-field"
        );
        assert_eq!(
            csv_fields(r#""abc"#).unwrap_err(),
            "failed to parse csv mounts: parse error on line 1, column 2: extraneous or missing \" in quoted-field"
        );
        assert_eq!(
            csv_fields(r#""ab"c"#).unwrap_err(),
            "failed to parse csv mounts: parse error on line 1, column 4: extraneous or missing \" in quoted-field"
        );
    }

    #[test]
    fn from_may_not_hold_variables() {
        assert!(check_unexpanded("type=bind,from=build,target=/x").is_ok());
        assert!(check_unexpanded("type=bind,from=build$,target=/x").is_ok());
        assert!(check_unexpanded("target=$DIR").is_ok());
        assert_eq!(
            check_unexpanded("type=bind,FROM=$STAGE").unwrap_err(),
            "'from' doesn't support variable expansion, define alias stage instead"
        );
        assert!(check_unexpanded("a,\"b").is_err());
    }

    #[test]
    fn bind_defaults_and_workdir() {
        let m = one("target=app,source=src,from=build");
        assert_eq!(m.kind, MountKind::Bind);
        assert_eq!(m.target.as_deref(), Some("/work/app"));
        assert_eq!(m.source.as_deref(), Some("src"));
        assert_eq!(m.from.as_deref(), Some("build"));
        assert_eq!(m.read_write, Some(false));
        assert_eq!(m.sharing, CacheSharing::Shared);
        assert_eq!(m.id, None);
        let rw = one("type=bind,target=/x,rw");
        assert_eq!(rw.read_write, Some(true));
        assert_eq!(
            one("type=bind,target=/x,readwrite=true").read_write,
            Some(true)
        );
        assert_eq!(one("type=bind,target=/x,rw=0").read_write, Some(false));
        assert_eq!(one("target=/x/").target.as_deref(), Some("/x/"));
        assert_eq!(one("dst=$DIR").target.as_deref(), Some("/srv"));
        assert_eq!(one("destination=/d").target.as_deref(), Some("/d"));
        assert_eq!(one("type=bind").target.as_deref(), Some("/work"));
        assert_eq!(
            resolved(&["type=bind"], "/").unwrap_err(),
            "invalid mount target \"/\""
        );
        assert_eq!(
            resolved(&["type=tmpfs,target=../.."], "/a").unwrap_err(),
            "invalid mount target \"/\""
        );
    }

    #[test]
    fn cache_mounts() {
        let m = one("type=cache,target=/root/.cache/");
        assert_eq!(m.kind, MountKind::Cache);
        assert_eq!(m.id.as_deref(), Some("/root/.cache"));
        assert_eq!(m.read_write, Some(true));
        let m = one("type=Cache,target=$T,sharing=LOCKED,mode=0700,uid=1000,gid=50,ro");
        assert_eq!(m.id.as_deref(), Some("cache"));
        assert_eq!(m.target.as_deref(), Some("/work/cache"));
        assert_eq!(m.sharing, CacheSharing::Locked);
        assert_eq!((m.mode, m.uid, m.gid), (Some(0o700), Some(1000), Some(50)));
        assert_eq!(m.read_write, Some(false));
        let m = one("type=cache,id=go,target=/go,sharing=private,from=base,source=/c");
        assert_eq!(m.id.as_deref(), Some("go"));
        assert_eq!(m.sharing, CacheSharing::Private);
        assert_eq!(
            (m.from.as_deref(), m.source.as_deref()),
            (Some("base"), Some("/c"))
        );
    }

    #[test]
    fn tmpfs_sizes() {
        let size = |v: &str| one(&format!("type=tmpfs,target=/t,size={v}")).size;
        assert_eq!(size("1024"), Some(1024));
        assert_eq!(size("64m"), Some(64 << 20));
        assert_eq!(size("1GiB"), Some(1 << 30));
        assert_eq!(size("1.5k"), Some(1536));
        assert_eq!(size("2 MB"), Some(2 << 20));
        assert_eq!(size("10b"), Some(10));
        assert_eq!(one("type=tmpfs,target=/t").size, None);
        assert_eq!(one("type=tmpfs,target=/t").read_write, Some(true));
        for bad in ["", "m", "-1", "1x", "1kk", "1kib2", "inf"] {
            assert_eq!(
                invalid(&format!("type=tmpfs,target=/t,size={bad}")),
                format!("invalid value for size: {bad}"),
                "{bad}"
            );
        }
    }

    #[test]
    fn secret_mounts() {
        let m = one("type=secret,id=aws");
        assert_eq!(m.id.as_deref(), Some("aws"));
        assert_eq!(m.target.as_deref(), Some("/run/secrets/aws"));
        assert_eq!(m.read_write, None);
        assert!(!m.required);
        let m = one("type=secret,target=/root/.npmrc,required,mode=0440,uid=1");
        assert_eq!(m.id.as_deref(), Some(".npmrc"));
        assert_eq!(m.target.as_deref(), Some("/root/.npmrc"));
        assert!(m.required);
        assert_eq!((m.mode, m.uid), (Some(0o440), Some(1)));
        let m = one("type=secret,source=token,env=TOKEN,required=false");
        assert_eq!((m.id.as_deref(), m.source), (Some("token"), None));
        assert_eq!(m.target, None);
        assert_eq!(m.env.as_deref(), Some("TOKEN"));
        let m = one("type=secret,id=a/b,env=B,target=/f");
        assert_eq!(m.target.as_deref(), Some("/f"));
        assert_eq!(
            one("type=secret,id=a/b").target.as_deref(),
            Some("/run/secrets/b")
        );
    }

    #[test]
    fn ssh_mounts() {
        let mounts = resolved(
            &[
                "type=ssh",
                "type=secret,id=s",
                "type=ssh,id=gh,target=/agent,required",
            ],
            "/",
        )
        .unwrap();
        assert_eq!(mounts[0].id.as_deref(), Some("default"));
        assert_eq!(
            mounts[0].target.as_deref(),
            Some("/run/buildkit/ssh_agent.0")
        );
        assert_eq!(mounts[2].id.as_deref(), Some("gh"));
        assert_eq!(mounts[2].target.as_deref(), Some("/agent"));
        assert!(mounts[2].required);
        assert_eq!(ssh_socket(&mounts), Some("/run/buildkit/ssh_agent.0"));
        let mounts = resolved(&["type=ssh", "type=ssh"], "/").unwrap();
        assert_eq!(
            mounts[1].target.as_deref(),
            Some("/run/buildkit/ssh_agent.1")
        );
        assert_eq!(
            ssh_socket(&resolved(&["type=cache,target=/c"], "/").unwrap()),
            None
        );
        assert_eq!(
            resolved(&["type=ssh,source=x"], "/").unwrap_err(),
            "ssh does not support source"
        );
    }

    #[test]
    fn errors_are_buildkits() {
        let cases = [
            ("type=volume", "unsupported mount type \"volume\""),
            (
                "type=bnd",
                "unsupported mount type \"bnd\" (did you mean bind?)",
            ),
            (
                "type=cache,sharing=all",
                "unsupported sharing value \"all\"",
            ),
            (
                "type=cache,sharing=lockd",
                "unsupported sharing value \"lockd\" (did you mean locked?)",
            ),
            (
                "type=bind,target",
                "invalid field 'target' must be a key=value pair",
            ),
            (
                "type=bind,required",
                "unexpected key 'required' for mount type 'bind'",
            ),
            (
                "required,type=secret,id=x",
                "unexpected key 'required' for mount type 'bind'",
            ),
            (
                "type=cache,size=1",
                "unexpected key 'size' for mount type 'cache'",
            ),
            (
                "type=secret,id=x,required=maybe",
                "invalid value for required: maybe",
            ),
            ("type=bind,ro=yes", "invalid value for ro: yes"),
            ("type=bind,rw=no", "invalid value for rw: no"),
            ("type=cache,mode=0999", "invalid value 0999 for mode"),
            ("type=cache,mode=+7", "invalid value +7 for mode"),
            ("type=cache,uid=-1", "invalid value -1 for uid"),
            ("type=cache,gid=x", "invalid value x for gid"),
            (
                "type=cache,uid=4294967296",
                "invalid value 4294967296 for uid",
            ),
            (
                "type=bind,bogus=bar",
                "unexpected key 'bogus' in 'bogus=bar'",
            ),
            (
                "type=bind,foo=bar",
                "unexpected key 'foo' in 'foo=bar' (did you mean from?)",
            ),
            (
                "type=bind,tagret=/x",
                "unexpected key 'tagret' in 'tagret=/x' (did you mean target?)",
            ),
            (
                "type=bind,mode=0755",
                "mode not allowed for \"bind\" type mounts",
            ),
            (
                "type=tmpfs,uid=1",
                "uid not allowed for \"tmpfs\" type mounts",
            ),
            (
                "type=bind,gid=1",
                "gid not allowed for \"bind\" type mounts",
            ),
            (
                "type=secret,id=x,from=a",
                "secret mount should not have a from",
            ),
            (
                "type=secret,id=x,sharing=locked",
                "secret mount should not define sharing",
            ),
            (
                "type=secret",
                "invalid secret mount. one of source, target required",
            ),
            (
                "type=secret,id=a,source=b",
                "both source and id can't be set",
            ),
            (
                "type=bind,sharing=shared",
                "invalid cache sharing set for bind mount",
            ),
        ];
        for (value, message) in cases {
            assert_eq!(invalid(value), message, "{value}");
        }
        assert_eq!(
            mount("type=bind,target=$FAIL"),
            Err(Error::Expand("bad substitution".to_owned()))
        );
    }

    #[test]
    fn go_helpers() {
        assert_eq!(base("/a/b/"), "b");
        assert_eq!(base("b"), "b");
        assert_eq!(base("/"), "/");
        assert_eq!(base(""), ".");
        assert_eq!(parse_bool("T"), Some(true));
        assert_eq!(parse_bool("False"), Some(false));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_u32("777", 8), Some(0o777));
        assert_eq!(parse_u32("", 10), None);
    }
}
