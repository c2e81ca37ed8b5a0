//! `RUN --mount=type=ssh`: a socket of kiln's own, with the mode and owner
//! the mount asks for, that forwards each connection to the host's agent.
//! Binding the agent's socket itself would show the host's permissions, and
//! changing those would change them for the host too.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A running forwarder from `listen` to an agent socket; stopped when dropped.
pub(super) struct SshProxy {
    listen: PathBuf,
    stop: Arc<AtomicBool>,
    /// Both ends of every forwarded connection, shut down when the proxy stops.
    streams: Arc<Mutex<Vec<UnixStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl SshProxy {
    /// Listens on `listen` (a new path), shown with `mode`, `uid` and `gid`,
    /// and forwards to `agent`.
    pub(super) fn start(
        listen: &Path,
        agent: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<SshProxy> {
        let meta = fs::metadata(agent)?;
        if !meta.file_type().is_socket() {
            return Err(io::Error::other(
                "not a socket; pass the agent's socket (SSH_AUTH_SOCK)",
            ));
        }
        let listener = UnixListener::bind(listen).map_err(|e| {
            io::Error::new(e.kind(), format!("listen on {}: {e}", listen.display()))
        })?;
        std::os::unix::fs::chown(listen, Some(uid), Some(gid))?;
        fs::set_permissions(listen, fs::Permissions::from_mode(mode))?;
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, streams, agent) = (stop.clone(), streams.clone(), agent.to_owned());
            std::thread::Builder::new()
                .name("kiln-ssh-proxy".into())
                .spawn(move || accept_loop(&listener, &agent, &stop, &streams))?
        };
        Ok(SshProxy {
            listen: listen.to_owned(),
            stop,
            streams,
            accept: Some(accept),
        })
    }
}

fn accept_loop(
    listener: &UnixListener,
    agent: &Path,
    stop: &AtomicBool,
    streams: &Mutex<Vec<UnixStream>>,
) {
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                log::warn!("ssh agent proxy: cannot accept a connection: {e}");
                continue;
            }
        };
        let upstream = match UnixStream::connect(agent) {
            Ok(u) => u,
            Err(e) => {
                log::warn!(
                    "ssh agent proxy: cannot reach the agent at {}: {e}",
                    agent.display()
                );
                continue;
            }
        };
        if let Err(e) = forward(client, upstream, streams) {
            log::warn!("ssh agent proxy: cannot forward a connection: {e}");
        }
    }
}

/// Copies both ways on two threads; each passes on end-of-stream as a
/// half-close, so a request still gets its answer.
fn forward(
    client: UnixStream,
    upstream: UnixStream,
    streams: &Mutex<Vec<UnixStream>>,
) -> io::Result<()> {
    {
        let mut all = streams.lock().unwrap_or_else(|e| e.into_inner());
        all.push(client.try_clone()?);
        all.push(upstream.try_clone()?);
    }
    let pipe = |mut from: UnixStream, mut to: UnixStream| {
        move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        }
    };
    let builder = || std::thread::Builder::new().name("kiln-ssh-forward".into());
    builder().spawn(pipe(client.try_clone()?, upstream.try_clone()?))?;
    builder().spawn(pipe(upstream, client))?;
    Ok(())
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees the flag and returns.
        let _ = UnixStream::connect(&self.listen);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for s in self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn proxy_forwards_both_ways_with_its_own_mode_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent");
        let agent = UnixListener::bind(&agent_path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = agent.accept().unwrap();
            let mut req = [0u8; 4];
            c.read_exact(&mut req).unwrap();
            c.write_all(&[&req[..], b"-ok"].concat()).unwrap();
        });
        let listen = dir.path().join("proxy");
        let me = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let proxy = SshProxy::start(&listen, &agent_path, 0o640, me.0, me.1).unwrap();
        let meta = fs::metadata(&listen).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), me);

        let mut c = UnixStream::connect(&listen).unwrap();
        c.write_all(b"ping").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "ping-ok");
        server.join().unwrap();
        drop(proxy);
        assert!(UnixStream::connect(&listen).is_err(), "proxy still listens");
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = SshProxy::start(&dir.path().join("p"), dir.path(), 0o600, 0, 0)
            .err()
            .expect("a directory is not an agent");
        assert!(e.to_string().contains("not a socket"), "{e}");
    }
}
