//! A tiny HTTP/1.1 file server on 127.0.0.1 for `ADD <url>` tests: it serves
//! the regular files below one directory and nothing else.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// A fixed date for `Last-Modified`, so ADD's mtime is predictable.
const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

/// A file server thread; stopped and joined on drop.
pub struct FileServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FileServer {
    /// Serves the files under `root` at `http://127.0.0.1:PORT/<relative path>`.
    pub fn start(root: &Path) -> Result<FileServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_owned();
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    // A client that hangs up early only affects its own request.
                    let _ = serve(stream, &root);
                }
            }
        });
        Ok(FileServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, root: &Path) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The headers are not needed, but must be read before answering.
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let file = resolve(root, target).and_then(|path| File::open(path).ok());
    match (method, file) {
        ("GET" | "HEAD", Some(mut file)) if file.metadata()?.is_file() => {
            let length = file.metadata()?.len();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\
                 Content-Type: application/octet-stream\r\n\
                 Last-Modified: {LAST_MODIFIED}\r\nConnection: close\r\n\r\n"
            )?;
            if method == "GET" {
                io::copy(&mut file, &mut stream)?;
            }
        }
        ("GET" | "HEAD", _) => write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
        _ => write!(
            stream,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
    }
    stream.flush()
}

/// The file a request target names under `root`, refusing `..` and anything
/// else that could leave it.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?.trim_start_matches('/');
    let relative = Path::new(path);
    if relative
        .components()
        .all(|component| matches!(component, Component::Normal(_)))
    {
        Some(root.join(relative))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: &str, path: &str) -> Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }

    #[test]
    fn serves_files_and_refuses_escapes() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("sub"))?;
        std::fs::write(dir.path().join("sub/hello.txt"), "hello\n")?;
        let server = FileServer::start(dir.path())?;
        let addr = server.url().trim_start_matches("http://").to_owned();

        let ok = get(&addr, "/sub/hello.txt")?;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 6\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nhello\n"), "{ok}");
        assert!(get(&addr, "/sub/nope")?.starts_with("HTTP/1.1 404"));
        assert!(get(&addr, "/sub")?.starts_with("HTTP/1.1 404"));
        assert!(get(&addr, "/../etc/passwd")?.starts_with("HTTP/1.1 404"));

        drop(server);
        // Another test may bind the freed port, or a connect may pick it as its
        // own source port; either way, nothing may serve this file any more.
        let after = get(&addr, "/sub/hello.txt").unwrap_or_default();
        assert!(!after.ends_with("hello\n"), "{after}");
        Ok(())
    }
}
