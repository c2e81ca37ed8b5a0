//! Git over smart HTTP: `git http-backend` run as a CGI by a small threaded
//! HTTP/1.1 server of our own, serving the bare repositories under a
//! scratch `GIT_PROJECT_ROOT`, optionally behind HTTP basic auth or over
//! TLS with a certificate from a private CA.

use crate::command;
use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;
use tempfile::TempDir;

/// A fixed identity and clock for commits, so that ids are reproducible.
const GIT_ENV: &[(&str, &str)] = &[
    ("GIT_AUTHOR_NAME", "kiln tests"),
    ("GIT_AUTHOR_EMAIL", "tests@kiln.invalid"),
    ("GIT_AUTHOR_DATE", "2020-01-01T00:00:00Z"),
    ("GIT_COMMITTER_NAME", "kiln tests"),
    ("GIT_COMMITTER_EMAIL", "tests@kiln.invalid"),
    ("GIT_COMMITTER_DATE", "2020-01-01T00:00:00Z"),
    // Neither the machine's nor the user's configuration applies.
    ("GIT_CONFIG_NOSYSTEM", "1"),
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ("GIT_TERMINAL_PROMPT", "0"),
];

/// The configuration of every served repository: fetching any commit by
/// id (not only tips), and pushing over HTTP.
const SERVED_CONFIG: &[(&str, &str)] = &[
    ("uploadpack.allowReachableSHA1InWant", "true"),
    ("uploadpack.allowAnySHA1InWant", "true"),
    ("http.receivepack", "true"),
];

/// A git smart-HTTP server thread; stopped and joined on drop.
pub struct GitServer {
    addr: SocketAddr,
    root: TempDir,
    /// Over TLS: the directory holding the CA's certificate.
    ca: Option<TempDir>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The CA's certificate file name in [`GitServer::ca_file`]'s directory.
const CA_FILE: &str = "ca.pem";

impl GitServer {
    /// Serves the repositories under a new scratch root to anyone.
    pub fn start() -> Result<GitServer> {
        GitServer::start_inner(None, None)
    }

    /// Serves over https, with a certificate for 127.0.0.1 signed by a CA
    /// of its own (see [`GitServer::ca_file`]).
    pub fn start_https() -> Result<GitServer> {
        let ca_dir = tempfile::Builder::new().prefix("kiln-git-ca-").tempdir()?;
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kiln tests git CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        std::fs::write(ca_dir.path().join(CA_FILE), ca_cert.pem())?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?
            .signed_by(&key, &issuer)
            .context("cannot sign the git server's certificate")?;
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| anyhow::anyhow!("the git server's key: {e}"))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)?;
        let mut server = GitServer::start_inner(None, Some(Arc::new(config)))?;
        server.ca = Some(ca_dir);
        Ok(server)
    }

    /// Over https, the PEM file of the CA that signed the server's
    /// certificate.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca.as_ref().map(|d| d.path().join(CA_FILE))
    }

    /// Serves only requests carrying HTTP basic auth `user`/`password`;
    /// others get 401 with a `WWW-Authenticate: Basic` challenge.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Result<GitServer> {
        GitServer::start_inner(
            Some(format!(
                "Basic {}",
                STANDARD.encode(format!("{user}:{password}"))
            )),
            None,
        )
    }

    fn start_inner(
        authorization: Option<String>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<GitServer> {
        let root = tempfile::Builder::new()
            .prefix("kiln-git-root-")
            .tempdir()?;
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let project_root = root.path().to_owned();
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (project_root, authorization) = (project_root.clone(), authorization.clone());
                let tls = tls.clone();
                // git may open a second connection while the first is open.
                thread::spawn(move || {
                    // A client that hangs up early (or refuses the
                    // certificate) only affects its own request.
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = match tls {
                        Some(config) => rustls::ServerConnection::new(config)
                            .map_err(anyhow::Error::from)
                            .and_then(|conn| {
                                serve(
                                    rustls::StreamOwned::new(conn, stream),
                                    &project_root,
                                    authorization.as_deref(),
                                )
                            }),
                        None => serve(stream, &project_root, authorization.as_deref()),
                    };
                });
            }
        });
        Ok(GitServer {
            addr,
            root,
            ca: None,
            stop,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http(s)://127.0.0.1:PORT/<name>`, the clone URL of repository `name`.
    pub fn url(&self, name: &str) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/{name}", self.addr)
    }

    /// `git://127.0.0.1:PORT/<name>`, the repository as a kiln context URL.
    pub fn context_url(&self, name: &str) -> String {
        format!("git://{}/{name}", self.addr)
    }

    /// The directory the served bare repositories live in.
    pub fn project_root(&self) -> &Path {
        self.root.path()
    }

    /// Publishes the repository `work` (every branch and tag) as the bare
    /// repository `name` (e.g. `repo.git`).
    pub fn publish(&self, work: &GitWork, name: &str) -> Result<()> {
        let bare = self.root.path().join(name);
        git(
            self.root.path(),
            &["clone", "--quiet", "--bare", "--no-local"],
            &[work.path().as_os_str(), bare.as_os_str()],
        )?;
        for (key, value) in SERVED_CONFIG {
            git(&bare, &["config", key, value], &[])?;
        }
        Ok(())
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A git work tree in a scratch directory, with a fixed identity and clock.
pub struct GitWork {
    dir: TempDir,
}

impl GitWork {
    /// `git init` with `main` as the first branch.
    pub fn init() -> Result<GitWork> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-git-work-")
            .tempdir()?;
        git(
            dir.path(),
            &["init", "--quiet", "--initial-branch=main"],
            &[],
        )?;
        Ok(GitWork { dir })
    }

    /// The work tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs git with `args` in the work tree and returns its stdout, trimmed.
    pub fn git(&self, args: &[&str]) -> Result<String> {
        git(self.dir.path(), args, &[])
    }

    /// Commits everything in the work tree (additions, changes, deletions)
    /// and returns the new commit id.
    pub fn commit_all(&self, message: &str) -> Result<String> {
        self.git(&["add", "--all"])?;
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message])?;
        self.git(&["rev-parse", "HEAD"])
    }

    /// Adds the repository `source` (a path or URL git can clone without
    /// credentials) as a submodule at `path` whose URL in `.gitmodules` is
    /// `url`, without committing.
    pub fn add_submodule(&self, source: &Path, url: &str, path: &str) -> Result<()> {
        git(
            self.dir.path(),
            &["submodule", "--quiet", "add"],
            &[source.as_os_str(), std::ffi::OsStr::new(path)],
        )?;
        self.git(&[
            "config",
            "--file",
            ".gitmodules",
            &format!("submodule.{path}.url"),
            url,
        ])?;
        Ok(())
    }
}

/// Runs git in `dir` with `args` then `paths`, with [`GIT_ENV`]; returns its
/// stdout, trimmed.
fn git(dir: &Path, args: &[&str], paths: &[&std::ffi::OsStr]) -> Result<String> {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .envs(GIT_ENV.iter().copied())
        .args(["-c", "protocol.file.allow=always", "-c", "safe.directory=*"])
        .args(args)
        .args(paths);
    let out =
        command::run(&mut cmd).with_context(|| format!("git {args:?} in {}", dir.display()))?;
    Ok(String::from_utf8(out)?.trim().to_owned())
}

/// One request as the CGI needs it.
struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Answers the requests of one connection until the client closes it.
fn serve(stream: impl Read + Write, root: &Path, authorization: Option<&str>) -> Result<()> {
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader)? {
        let writer = reader.get_mut();
        if let Some(expected) = authorization
            && request.header("authorization") != Some(expected)
        {
            writer.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
                  Content-Length: 0\r\n\r\n",
            )?;
            writer.flush()?;
            continue;
        }
        let (status, headers, body) = match run_backend(&request, root, authorization.is_some()) {
            Ok(response) => response,
            Err(e) => {
                let text = format!("{e:#}\n");
                (
                    "500 Internal Server Error".to_owned(),
                    vec!["Content-Type: text/plain".to_owned()],
                    text.into_bytes(),
                )
            }
        };
        write!(writer, "HTTP/1.1 {status}\r\n")?;
        for header in headers {
            write!(writer, "{header}\r\n")?;
        }
        write!(writer, "Content-Length: {}\r\n\r\n", body.len())?;
        writer.write_all(&body)?;
        writer.flush()?;
    }
    Ok(())
}

/// Reads one request, its body de-chunked; `None` when the client closed
/// the connection.
fn read_request(reader: &mut BufReader<impl Read + Write>) -> Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("malformed request line {line:?}");
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers: Vec::new(),
        body: Vec::new(),
    };
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            bail!("the connection closed inside the headers");
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            request
                .headers
                .push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    if request
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        reader
            .get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        reader.get_mut().flush()?;
    }
    if request
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        request.body = read_chunked(reader)?;
    } else if let Some(length) = request.header("content-length") {
        let length: u64 = length.parse().context("malformed Content-Length")?;
        reader.take(length).read_to_end(&mut request.body)?;
    }
    Ok(Some(request))
}

/// A chunked body (git chunks request bodies over 1 MiB), trailers skipped.
fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = size.trim().split(';').next().unwrap_or_default();
        let size =
            u64::from_str_radix(size, 16).with_context(|| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            loop {
                let mut trailer = String::new();
                if reader.read_line(&mut trailer)? == 0 || trailer.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        reader.take(size).read_to_end(&mut body)?;
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
    }
}

/// Runs `git http-backend` for `request`; returns the status, the CGI's
/// headers (without `Status`) and its body.
fn run_backend(
    request: &Request,
    root: &Path,
    authenticated: bool,
) -> Result<(String, Vec<String>, Vec<u8>)> {
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .envs(GIT_ENV.iter().copied())
        // Served repositories may be owned by another user than the server.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "safe.directory")
        .env("GIT_CONFIG_VALUE_0", "*")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", &request.method)
        .env("PATH_INFO", percent_decode(&request.path))
        .env("QUERY_STRING", &request.query)
        .env("CONTENT_TYPE", request.header("content-type").unwrap_or(""))
        .env("CONTENT_LENGTH", request.body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if authenticated {
        cmd.env("REMOTE_USER", "git").env("AUTH_TYPE", "Basic");
    }
    if let Some(protocol) = request.header("git-protocol") {
        cmd.env("HTTP_GIT_PROTOCOL", protocol);
    }
    if let Some(encoding) = request.header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", encoding);
    }
    let mut child = cmd.spawn().context("cannot run `git http-backend`")?;
    let mut stdin = child.stdin.take().context("no stdin pipe")?;
    let body = request.body.clone();
    // Written from another thread: the backend may answer before reading all.
    let writer = thread::spawn(move || -> io::Result<()> { stdin.write_all(&body) });
    let output = child.wait_with_output()?;
    let _ = writer.join();
    if !output.status.success() && output.stdout.is_empty() {
        bail!(
            "git http-backend failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_cgi(&output.stdout)
}

/// Splits CGI output into status, headers and body.
fn parse_cgi(output: &[u8]) -> Result<(String, Vec<String>, Vec<u8>)> {
    let (head, body) = match find(output, b"\r\n\r\n") {
        Some(at) => (&output[..at], &output[at + 4..]),
        None => match find(output, b"\n\n") {
            Some(at) => (&output[..at], &output[at + 2..]),
            None => bail!(
                "git http-backend printed no header block: {:?}",
                String::from_utf8_lossy(output)
            ),
        },
    };
    let mut status = "200 OK".to_owned();
    let mut headers = Vec::new();
    for line in String::from_utf8_lossy(head).lines() {
        let line = line.trim_end();
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => {
                status = value.trim().to_owned();
            }
            Some(_) => headers.push(line.to_owned()),
            None => {}
        }
    }
    Ok((status, headers, body.to_vec()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `%XX` escapes of a URL path decoded (invalid escapes kept as they are).
fn percent_decode(path: &str) -> PathBuf {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgi_output_maps_status_and_headers() -> Result<()> {
        let (status, headers, body) =
            parse_cgi(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope")?;
        assert_eq!(status, "404 Not Found");
        assert_eq!(headers, ["Content-Type: text/plain"]);
        assert_eq!(body, b"nope");
        let (status, _, body) = parse_cgi(b"Content-Type: x\n\n\x00\x01")?;
        assert_eq!(status, "200 OK");
        assert_eq!(body, b"\x00\x01");
        Ok(())
    }

    #[test]
    fn chunked_bodies_are_joined() -> Result<()> {
        let mut input = &b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"[..];
        assert_eq!(read_chunked(&mut input)?, b"hello world");
        Ok(())
    }
}
