//! Git's smart HTTP protocol, client side: ref discovery and a shallow fetch
//! of one commit, in protocol v2 with a fallback to v0.

use std::io::Read;
use std::path::Path;

use kiln_plugin_sdk::PluginError;

use crate::object::ObjectId;
use crate::pack::{self, Store};
use crate::pktline::{self, Pkt, SideBand};

/// An HTTP response as the protocol needs it.
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body, streamed.
    pub body: Box<dyn Read>,
}

/// Sends HTTP requests (`wasi:http` in the plugin, a local `git` in tests).
pub trait Transport {
    /// `GET url`.
    fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<HttpResponse, PluginError>;
    /// `POST url` with `body`.
    fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse, PluginError>;
}

/// A ref the server advertises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRef {
    /// Full name (`refs/heads/main`) or `HEAD`.
    pub name: String,
    /// What it points at (a tag object for annotated tags).
    pub id: ObjectId,
}

/// The protocol a server speaks, with what discovery told.
enum Dialect {
    /// Protocol v2, its `fetch` capability's features, and whether the
    /// server takes an `agent` line (git refuses capabilities it did not offer).
    V2 {
        fetch_features: Vec<String>,
        agent: bool,
    },
    /// Protocol v0/v1: the refs came with the discovery, capabilities too.
    V0 {
        refs: Vec<RemoteRef>,
        capabilities: Vec<String>,
    },
}

/// A repository reached over smart HTTP.
pub struct Remote<'t> {
    transport: &'t dyn Transport,
    /// The smart-HTTP base URL.
    url: String,
    /// The URL the user wrote, for messages.
    display: String,
    dialect: Dialect,
}

const AGENT: &str = "agent=kiln/0.1";
/// Some hosting services serve the smart protocol only to agents named `git/...`.
const USER_AGENT: (&str, &str) = ("User-Agent", "git/2.0 (kiln)");
const UPLOAD_PACK: &str = "git-upload-pack";

impl<'t> Remote<'t> {
    /// Discovers the protocol and (for v0) the refs of the repository at `url`.
    pub fn connect(
        transport: &'t dyn Transport,
        url: &str,
        display: &str,
    ) -> Result<Self, PluginError> {
        let discovery = format!("{url}/info/refs?service={UPLOAD_PACK}");
        let headers = [("Git-Protocol", "version=2"), USER_AGENT];
        let response = transport
            .get(&discovery, &headers)
            .map_err(|e| prefixed(display, e))?;
        check_response(display, &discovery, &response, "advertisement")?;
        let mut body = response.body;
        let protocol_error = |e: std::io::Error| {
            PluginError::new(format!(
                "{display}: reading the ref advertisement of {url} failed: {e}"
            ))
            .with_hint("check that the URL names a git repository served over smart HTTP")
        };
        let mut first = pktline::read_line(&mut body).map_err(protocol_error)?;
        // Smart HTTP prefixes the v0 advertisement (and, from most servers, the v2 one)
        // with a service line and a flush.
        if first.as_deref() == Some("# service=git-upload-pack") {
            pktline::read_pkt(&mut body).map_err(protocol_error)?;
            first = pktline::read_line(&mut body).map_err(protocol_error)?;
        }
        let dialect = match first {
            Some(line) if line == "version 2" => {
                let mut fetch_features = None;
                let mut agent = false;
                while let Some(line) = pktline::read_line(&mut body).map_err(protocol_error)? {
                    agent |= line.starts_with("agent=");
                    if let Some(value) = line.strip_prefix("object-format=") {
                        check_sha1(display, value)?;
                    } else if line == "fetch" || line.starts_with("fetch=") {
                        let features = line.strip_prefix("fetch=").unwrap_or("");
                        fetch_features = Some(features.split(' ').map(str::to_owned).collect());
                    }
                }
                Dialect::V2 {
                    fetch_features: fetch_features.ok_or_else(|| {
                        PluginError::new(format!(
                            "{display}: the server speaks git protocol v2 but offers no fetch"
                        ))
                    })?,
                    agent,
                }
            }
            Some(line) => {
                let (refs, capabilities) =
                    parse_v0_advertisement(line, &mut body).map_err(protocol_error)?;
                if let Some(format) = capabilities
                    .iter()
                    .find_map(|c| c.strip_prefix("object-format="))
                {
                    check_sha1(display, format)?;
                }
                Dialect::V0 { refs, capabilities }
            }
            None => {
                return Err(protocol_error(std::io::Error::other(
                    "the advertisement is empty",
                )));
            }
        };
        Ok(Remote {
            transport,
            url: url.to_owned(),
            display: display.to_owned(),
            dialect,
        })
    }

    /// The refs whose names start with one of `prefixes` (all refs in v0).
    pub fn refs(&self, prefixes: &[String]) -> Result<Vec<RemoteRef>, PluginError> {
        match &self.dialect {
            Dialect::V0 { refs, .. } => Ok(refs.clone()),
            Dialect::V2 { agent, .. } => {
                let mut request = Vec::new();
                pktline::write_data(&mut request, b"command=ls-refs\n");
                if *agent {
                    pktline::write_data(&mut request, format!("{AGENT}\n").as_bytes());
                }
                pktline::write_delim(&mut request);
                pktline::write_data(&mut request, b"peel\n");
                pktline::write_data(&mut request, b"symrefs\n");
                for prefix in prefixes {
                    pktline::write_data(&mut request, format!("ref-prefix {prefix}\n").as_bytes());
                }
                pktline::write_flush(&mut request);
                let mut body = self.post(&request)?;
                let mut refs = Vec::new();
                loop {
                    let line = pktline::read_line(&mut body).map_err(|e| {
                        PluginError::new(format!(
                            "{}: listing the refs of {} failed: {e}",
                            self.display, self.url
                        ))
                    })?;
                    let Some(line) = line else { break };
                    refs.push(parse_ls_refs_line(&line).ok_or_else(|| {
                        PluginError::new(format!(
                            "{}: the server listed an invalid ref line `{line}`",
                            self.display
                        ))
                    })?);
                }
                Ok(refs)
            }
        }
    }

    /// Fetches `want` and only what its tree needs (depth 1) into a store in `scratch`.
    pub fn fetch(&self, want: ObjectId, scratch: &Path) -> Result<Store, PluginError> {
        let fail = |e: String| {
            let hint = if e.contains("not our ref") || e.contains("not valid") {
                "the commit is not on the server, or the server does not allow fetching \
                 commits by id (uploadpack.allowReachableSHA1InWant); name a branch or tag"
            } else if e.contains("scratch") {
                "kiln needs free space in its scratch directory for the fetched pack"
            } else {
                "retry; if it persists, check the server's logs"
            };
            PluginError::new(format!(
                "{}: fetching commit {want} from {} failed: {e}",
                self.display, self.url
            ))
            .with_hint(hint)
        };
        match &self.dialect {
            Dialect::V2 {
                fetch_features,
                agent,
            } => {
                let shallow = fetch_features.iter().any(|f| f == "shallow");
                let request = v2_fetch_request(want, shallow, *agent);
                let mut body = self.post(&request)?;
                loop {
                    let section = pktline::read_line(&mut body)
                        .map_err(|e| fail(e.to_string()))?
                        .ok_or_else(|| fail("the response has no packfile section".to_owned()))?;
                    if section == "packfile" {
                        return pack::index(SideBand::new(body), scratch).map_err(fail);
                    }
                    if section == "packfile-uris" {
                        return Err(fail("the server offers the pack only by URI".to_owned()));
                    }
                    skip_section(&mut body).map_err(|e| fail(e.to_string()))?;
                }
            }
            Dialect::V0 { capabilities, .. } => {
                let has = |c: &str| capabilities.iter().any(|x| x == c);
                let band = if has("side-band-64k") {
                    Some("side-band-64k")
                } else if has("side-band") {
                    Some("side-band")
                } else {
                    None
                };
                let shallow = has("shallow");
                let request = v0_fetch_request(want, band, has("ofs-delta"), shallow);
                let mut body = self.post(&request)?;
                if shallow {
                    while pktline::read_line(&mut body)
                        .map_err(|e| fail(e.to_string()))?
                        .is_some()
                    {}
                }
                let ack = pktline::read_line(&mut body).map_err(|e| fail(e.to_string()))?;
                if ack.as_deref() != Some("NAK") {
                    return Err(fail(format!(
                        "the server answered {ack:?} where git's protocol expects NAK"
                    )));
                }
                match band {
                    Some(_) => pack::index(SideBand::new(body), scratch),
                    None => pack::index(body, scratch),
                }
                .map_err(fail)
            }
        }
    }

    fn post(&self, request: &[u8]) -> Result<Box<dyn Read>, PluginError> {
        let url = format!("{}/{UPLOAD_PACK}", self.url);
        let mut headers = vec![
            USER_AGENT,
            ("Content-Type", "application/x-git-upload-pack-request"),
            ("Accept", "application/x-git-upload-pack-result"),
        ];
        if matches!(self.dialect, Dialect::V2 { .. }) {
            headers.push(("Git-Protocol", "version=2"));
        }
        let response = self
            .transport
            .post(&url, &headers, request)
            .map_err(|e| prefixed(&self.display, e))?;
        check_response(&self.display, &url, &response, "result")?;
        Ok(response.body)
    }
}

/// A transport error, prefixed with the context URL the user wrote.
fn prefixed(display: &str, e: PluginError) -> PluginError {
    PluginError {
        message: format!("{display}: {}", e.message),
        hint: e.hint,
    }
}

fn check_sha1(display: &str, format: &str) -> Result<(), PluginError> {
    if format == "sha1" {
        return Ok(());
    }
    Err(PluginError::new(format!(
        "{display}: the repository uses the {format} object format; kiln reads SHA-1 repositories"
    ))
    .with_hint("use a SHA-1 mirror of the repository, or a tar context"))
}

/// Maps HTTP failures to errors that say what to do.
fn check_response(
    display: &str,
    url: &str,
    response: &HttpResponse,
    kind: &str,
) -> Result<(), PluginError> {
    let status = response.status;
    let (message, hint) = match status {
        200 => {
            let expected = format!("application/x-git-upload-pack-{kind}");
            match response.content_type.as_deref() {
                Some(t) if t.trim().eq_ignore_ascii_case(&expected) => return Ok(()),
                other => (
                    format!(
                        "{url} answered with content type {} instead of {expected}",
                        other.unwrap_or("(none)")
                    ),
                    "the server does not speak git's smart HTTP protocol; check the repository URL",
                ),
            }
        }
        401 | 403 => (
            format!("{url}: authentication failed (HTTP {status})"),
            "set GIT_USERNAME and GIT_PASSWORD, or GIT_TOKEN, with read access to the repository",
        ),
        404 => (
            format!("{url} was not found (HTTP 404)"),
            "check the repository URL (private repositories also answer 404 without credentials)",
        ),
        300..=399 => (
            format!("{url} redirects (HTTP {status})"),
            "use the repository's final URL",
        ),
        _ => (
            format!("{url} failed with HTTP {status}"),
            "retry; if it persists, check the git server",
        ),
    };
    Err(PluginError::new(format!("{display}: {message}")).with_hint(hint))
}

/// Parses the v0 ref advertisement after its first line.
fn parse_v0_advertisement(
    first: String,
    body: &mut impl Read,
) -> std::io::Result<(Vec<RemoteRef>, Vec<String>)> {
    let invalid = |line: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("invalid ref advertisement line `{line}`"),
        )
    };
    let (first_ref, capabilities) = first.split_once('\0').ok_or_else(|| invalid(&first))?;
    let capabilities: Vec<String> = capabilities.split(' ').map(str::to_owned).collect();
    let mut refs = Vec::new();
    let mut line = Some(first_ref.to_owned());
    while let Some(text) = line {
        let (hex, name) = text.split_once(' ').ok_or_else(|| invalid(&text))?;
        let id = ObjectId::from_hex(hex).ok_or_else(|| invalid(&text))?;
        // `^{}` lines repeat a tag's target; an empty repository advertises a null id.
        if !name.ends_with("^{}") && !id.is_null() {
            refs.push(RemoteRef {
                name: name.to_owned(),
                id,
            });
        }
        line = pktline::read_line(body)?;
    }
    Ok((refs, capabilities))
}

/// `<id> <name>[ symref-target:..][ peeled:..]`.
fn parse_ls_refs_line(line: &str) -> Option<RemoteRef> {
    let mut parts = line.split(' ');
    let id = ObjectId::from_hex(parts.next()?)?;
    let name = parts.next()?.to_owned();
    Some(RemoteRef { name, id })
}

fn v2_fetch_request(want: ObjectId, shallow: bool, agent: bool) -> Vec<u8> {
    let mut request = Vec::new();
    pktline::write_data(&mut request, b"command=fetch\n");
    if agent {
        pktline::write_data(&mut request, format!("{AGENT}\n").as_bytes());
    }
    pktline::write_delim(&mut request);
    pktline::write_data(&mut request, b"ofs-delta\n");
    pktline::write_data(&mut request, b"no-progress\n");
    if shallow {
        pktline::write_data(&mut request, b"deepen 1\n");
    }
    pktline::write_data(&mut request, format!("want {want}\n").as_bytes());
    pktline::write_data(&mut request, b"done\n");
    pktline::write_flush(&mut request);
    request
}

fn v0_fetch_request(want: ObjectId, band: Option<&str>, ofs_delta: bool, shallow: bool) -> Vec<u8> {
    let mut capabilities = vec!["no-progress", AGENT];
    capabilities.extend(band);
    if ofs_delta {
        capabilities.push("ofs-delta");
    }
    if shallow {
        capabilities.push("shallow");
    }
    let mut request = Vec::new();
    pktline::write_data(
        &mut request,
        format!("want {want} {}\n", capabilities.join(" ")).as_bytes(),
    );
    if shallow {
        pktline::write_data(&mut request, b"deepen 1\n");
    }
    pktline::write_flush(&mut request);
    pktline::write_data(&mut request, b"done\n");
    request
}

/// Skips a v2 response section up to its delimiter.
fn skip_section(body: &mut impl Read) -> std::io::Result<()> {
    loop {
        match pktline::read_pkt(body)? {
            Pkt::Data(payload) if payload.starts_with(b"ERR ") => {
                return Err(std::io::Error::other(format!(
                    "the server said: {}",
                    String::from_utf8_lossy(&payload[4..]).trim_end()
                )));
            }
            Pkt::Data(_) => {}
            Pkt::Delim => return Ok(()),
            Pkt::Flush | Pkt::ResponseEnd => {
                return Err(std::io::Error::other(
                    "the response ended before its packfile section",
                ));
            }
        }
    }
}

/// Which advertised ref a name means: an exact full name, else a branch,
/// else a tag, else a name under `refs/` (so `pull/12/head` works too).
pub fn find_ref<'r>(refs: &'r [RemoteRef], name: &str) -> Option<&'r RemoteRef> {
    let candidates = if name == "HEAD" || name.starts_with("refs/") {
        vec![name.to_owned()]
    } else {
        vec![
            format!("refs/heads/{name}"),
            format!("refs/tags/{name}"),
            format!("refs/{name}"),
        ]
    };
    candidates
        .iter()
        .find_map(|candidate| refs.iter().find(|r| &r.name == candidate))
}

/// The `ls-refs` prefixes that cover every candidate of [`find_ref`] and list
/// branches and tags for error messages.
pub fn ref_prefixes(name: Option<&str>) -> Vec<String> {
    let mut prefixes = vec![
        "HEAD".to_owned(),
        "refs/heads/".to_owned(),
        "refs/tags/".to_owned(),
    ];
    match name {
        Some(name) if name.starts_with("refs/") => prefixes.push(name.to_owned()),
        Some(name) if name != "HEAD" => prefixes.push(format!("refs/{name}")),
        _ => {}
    }
    prefixes
}

/// A few branch and tag names, for "unknown ref" messages.
pub fn some_ref_names(refs: &[RemoteRef]) -> String {
    let names: Vec<&str> = refs
        .iter()
        .filter_map(|r| {
            r.name
                .strip_prefix("refs/heads/")
                .or_else(|| r.name.strip_prefix("refs/tags/"))
        })
        .collect();
    match names.len() {
        0 => "no branches or tags".to_owned(),
        n if n > 10 => format!("{}, ...", names[..10].join(", ")),
        _ => names.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, byte: u8) -> RemoteRef {
        RemoteRef {
            name: name.to_owned(),
            id: ObjectId([byte; 20]),
        }
    }

    #[test]
    fn branches_win_over_tags_and_full_names_are_exact() {
        let refs = [
            r("HEAD", 1),
            r("refs/heads/main", 1),
            r("refs/heads/v1", 2),
            r("refs/tags/v1", 3),
            r("refs/tags/v2", 4),
            r("refs/pull/12/head", 5),
        ];
        assert_eq!(find_ref(&refs, "main").unwrap().id, ObjectId([1; 20]));
        assert_eq!(find_ref(&refs, "v1").unwrap().id, ObjectId([2; 20]));
        assert_eq!(
            find_ref(&refs, "refs/tags/v1").unwrap().id,
            ObjectId([3; 20])
        );
        assert_eq!(find_ref(&refs, "v2").unwrap().id, ObjectId([4; 20]));
        assert_eq!(
            find_ref(&refs, "pull/12/head").unwrap().id,
            ObjectId([5; 20])
        );
        assert_eq!(
            find_ref(&refs, "refs/pull/12/head").unwrap().id,
            ObjectId([5; 20])
        );
        assert_eq!(find_ref(&refs, "HEAD").unwrap().id, ObjectId([1; 20]));
        assert!(find_ref(&refs, "refs/heads/v2").is_none());
        assert!(find_ref(&refs, "heads/nope").is_none());
        assert_eq!(some_ref_names(&refs), "main, v1, v1, v2");
        let many: Vec<_> = (0..12).map(|i| r(&format!("refs/heads/b{i}"), 0)).collect();
        assert_eq!(
            some_ref_names(&many),
            "b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, ..."
        );
        assert_eq!(some_ref_names(&[]), "no branches or tags");
    }

    #[test]
    fn prefixes_cover_the_candidates() {
        assert_eq!(
            ref_prefixes(Some("pull/1/head")),
            ["HEAD", "refs/heads/", "refs/tags/", "refs/pull/1/head"]
        );
        assert_eq!(ref_prefixes(Some("refs/x")).last().unwrap(), "refs/x");
        assert_eq!(ref_prefixes(None).len(), 3);
    }

    #[test]
    fn ls_refs_and_v0_lines_parse() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        let line = format!("{id} refs/tags/v1 peeled:{id}");
        assert_eq!(parse_ls_refs_line(&line).unwrap().name, "refs/tags/v1");
        assert_eq!(
            parse_ls_refs_line(&format!("{id} HEAD symref-target:refs/heads/main"))
                .unwrap()
                .name,
            "HEAD"
        );
        assert!(parse_ls_refs_line("zz HEAD").is_none());

        let mut rest = Vec::new();
        pktline::write_data(&mut rest, format!("{id} refs/tags/v1\n").as_bytes());
        pktline::write_data(&mut rest, format!("{id} refs/tags/v1^{{}}\n").as_bytes());
        pktline::write_flush(&mut rest);
        let first = format!("{id} HEAD\0multi_ack side-band-64k symref=HEAD:refs/heads/main");
        let (refs, capabilities) = parse_v0_advertisement(first, &mut &rest[..]).unwrap();
        let names: Vec<_> = refs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["HEAD", "refs/tags/v1"]);
        assert!(capabilities.iter().any(|c| c == "side-band-64k"));

        let empty = format!("{} capabilities^{{}}\0shallow", "0".repeat(40));
        let (refs, _) = parse_v0_advertisement(empty, &mut &b"0000"[..]).unwrap();
        assert!(refs.is_empty());
    }

    #[test]
    fn fetch_requests_ask_for_one_shallow_commit() {
        let id = ObjectId([0xab; 20]);
        let v2 = String::from_utf8(v2_fetch_request(id, true, true)).unwrap();
        assert!(v2.starts_with("0012command=fetch\n"), "{v2}");
        assert!(v2.contains("0001"), "{v2}");
        assert!(v2.contains(&format!("0032want {id}\n")), "{v2}");
        assert!(
            v2.contains("000ddeepen 1\n") && v2.ends_with("0009done\n0000"),
            "{v2}"
        );
        let bare = String::from_utf8(v2_fetch_request(id, false, false)).unwrap();
        assert!(
            !bare.contains("deepen") && !bare.contains("agent"),
            "{bare}"
        );

        let v0 =
            String::from_utf8(v0_fetch_request(id, Some("side-band-64k"), true, true)).unwrap();
        assert!(v0.contains(&format!(
            "want {id} no-progress {AGENT} side-band-64k ofs-delta shallow\n"
        )));
        assert!(v0.ends_with("000ddeepen 1\n00000009done\n"), "{v0}");
    }

    fn response(status: u16, content_type: Option<&str>) -> HttpResponse {
        HttpResponse {
            status,
            content_type: content_type.map(str::to_owned),
            body: Box::new(std::io::empty()),
        }
    }

    #[test]
    fn http_failures_carry_hints() {
        let check = |status, content_type| {
            check_response(
                "git://h/r",
                "https://h/r/x",
                &response(status, content_type),
                "result",
            )
        };
        assert!(check(200, Some("application/x-git-upload-pack-result")).is_ok());
        let e = check(401, None).unwrap_err();
        assert!(e.message.starts_with("git://h/r: "), "{e:?}");
        assert!(e.hint.unwrap().contains("GIT_TOKEN"));
        assert!(
            check(403, None)
                .unwrap_err()
                .hint
                .unwrap()
                .contains("GIT_USERNAME")
        );
        assert!(
            check(404, None)
                .unwrap_err()
                .hint
                .unwrap()
                .contains("check the repository URL")
        );
        let e = check(200, Some("text/html")).unwrap_err();
        assert!(e.message.contains("content type text/html"), "{e:?}");
        assert!(check(500, None).unwrap_err().message.contains("HTTP 500"));
    }
}
