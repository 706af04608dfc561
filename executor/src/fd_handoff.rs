//! Hot reload: the listening sockets of a running instance move to a new instance over a
//! SEQPACKET unix socket, with SCM_RIGHTS, so that no connection attempt is refused.
//!
//! The conversation, one datagram per line below:
//!
//! ```text
//! new → old   SEND_LISTENERS
//! old → new   LISTENERS <part> <parts>\n<key>\n<key>…    (the fds of those keys attached, in order)
//! new → old   SHUTDOWN_GRADUALLY <seconds>
//! old → new   OK
//! ```
//!
//! The old instance then closes its connections over `<seconds>`, removes the socket file
//! and exits; the new instance sees its end of the socket close and creates the socket file
//! anew. A [`ListenerMap`] maps a key such as `source 127.0.0.1:6380` to that address's
//! listening sockets, one per worker core of the instance that made them.

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::socket::{
    accept, bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Listening sockets by key, e.g. `source 127.0.0.1:6380` → one fd per core.
pub type ListenerMap = BTreeMap<String, Vec<OwnedFd>>;

/// Fds per datagram, below the kernel's SCM_MAX_FD of 253.
const FDS_PER_PART: usize = 200;
/// Largest datagram: the keys of one part.
const MAX_DATAGRAM: usize = 64 * 1024;

/// A request the old instance receives.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    SendListeners,
    ShutdownGradually {
        seconds: u64,
    },
    /// The new instance closed its end.
    Closed,
}

fn seqpacket() -> Result<OwnedFd> {
    socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
        .context("cannot create a unix SEQPACKET socket")
}

fn send(fd: &OwnedFd, text: &str, fds: &[RawFd]) -> Result<()> {
    let iov = [IoSlice::new(text.as_bytes())];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .context("send on the hot reload socket")?;
    Ok(())
}

/// Waits, on the control core, until `fd` has something to read (a datagram, a connection
/// to accept, or the peer's close), so that the blocking call after it returns at once
/// instead of stalling the control thread. The control core's reactor (epoll) watches the fd
/// for as long as this waits, so a listening hot reload socket costs no wakeups.
async fn readable(fd: &OwnedFd) -> Result<()> {
    // SAFETY: `fd` is borrowed for the whole call and `watched`, which holds only its number,
    // is dropped before the call returns, so the fd stays open and the same while registered.
    let watched =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd.as_raw_fd(), tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watch the hot reload socket: {e}"))?;
    let mut guard = watched.readable().await.context("wait on the hot reload socket")?;
    // The caller reads next; the fd leaves the reactor when `watched` drops.
    guard.retain_ready();
    Ok(())
}

/// One datagram and the fds that came with it; an empty text means the peer closed.
fn receive(fd: &OwnedFd) -> Result<(String, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut space = nix::cmsg_space!([RawFd; FDS_PER_PART]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .context("receive on the hot reload socket")?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().context("read the fds passed on the hot reload socket")? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for r in raw {
                // SAFETY: SCM_RIGHTS installed `r` in this process as a new descriptor that
                // nothing else owns; wrapping it at once makes sure it is closed exactly once.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    let len = msg.bytes;
    let text = buf.get(..len).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    Ok((text, fds))
}

/// The new instance's connection to the old one.
pub struct Client {
    fd: OwnedFd,
}

/// Connects to the instance serving `path`. `Ok(None)` when no socket file exists (no
/// instance to take over from); an error when the file exists but nobody answers.
pub fn connect_to(path: &Path) -> Result<Option<Client>> {
    if !path.exists() {
        return Ok(None);
    }
    let fd = seqpacket()?;
    let addr = UnixAddr::new(path).with_context(|| format!("hot reload socket path {}", path.display()))?;
    connect(fd.as_raw_fd(), &addr).with_context(|| format!("no instance answers on {}", path.display()))?;
    Ok(Some(Client { fd }))
}

impl Client {
    /// Asks for every listening socket of the old instance. From here on the old instance
    /// no longer accepts, until this client goes away without asking it to shut down.
    pub fn request_listeners(&self) -> Result<ListenerMap> {
        send(&self.fd, "SEND_LISTENERS", &[])?;
        let mut map = ListenerMap::new();
        let mut parts = 1;
        let mut part = 0;
        while part < parts {
            let (text, fds) = receive(&self.fd)?;
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
            match header.as_slice() {
                ["LISTENERS", p, n] => {
                    part = p.parse::<usize>().map_err(|_| anyhow!("bad reply {text:?}"))? + 1;
                    parts = n.parse().map_err(|_| anyhow!("bad reply {text:?}"))?;
                }
                _ => bail!("unexpected reply to SEND_LISTENERS: {text:?}"),
            }
            let keys: Vec<&str> = lines.collect();
            if keys.len() != fds.len() {
                bail!("reply names {} listeners but carries {} fds", keys.len(), fds.len());
            }
            for (key, fd) in keys.into_iter().zip(fds) {
                map.entry(key.to_string()).or_default().push(fd);
            }
        }
        Ok(map)
    }

    /// Tells the old instance to close its connections over `seconds` and exit.
    pub fn request_gradual_shutdown(&self, seconds: u64) -> Result<()> {
        send(&self.fd, &format!("SHUTDOWN_GRADUALLY {seconds}"), &[])?;
        match receive(&self.fd)?.0.as_str() {
            "OK" => Ok(()),
            other => bail!("unexpected reply to SHUTDOWN_GRADUALLY: {other:?}"),
        }
    }

    /// Blocks until the old instance has exited (its end of the socket closes). The proxy
    /// waits with [`Client::exited`] on the control core; this is for tests.
    #[cfg(test)]
    pub fn wait_for_exit(self) {
        while let Ok((text, _)) = receive(&self.fd) {
            if text.is_empty() {
                return;
            }
        }
    }

    /// Waits on the control core, without blocking it, until the old instance has exited
    /// (its end of the socket closes).
    pub async fn exited(self) {
        loop {
            if readable(&self.fd).await.is_err() {
                return;
            }
            match receive(&self.fd) {
                Ok((text, _)) if !text.is_empty() => {}
                _ => return,
            }
        }
    }
}

/// The old instance's listening socket at the hot reload path. Dropping it removes the file
/// (see [`Server::close_keeping_file`] for the exception).
pub struct Server {
    fd: OwnedFd,
    path: PathBuf,
    remove_on_drop: bool,
}

impl Server {
    /// Creates the socket file at `path`, replacing a stale one that nobody answers on.
    pub fn bind(path: &Path) -> Result<Server> {
        if path.exists() {
            match connect_to(path) {
                Ok(Some(_)) => bail!("another instance already serves hot reload on {}", path.display()),
                _ => std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove the stale hot reload socket {}", path.display()))?,
            }
        }
        let fd = seqpacket()?;
        let addr = UnixAddr::new(path).with_context(|| format!("hot reload socket path {}", path.display()))?;
        bind(fd.as_raw_fd(), &addr)
            .with_context(|| format!("cannot create the hot reload socket {}", path.display()))?;
        listen(&fd, Backlog::new(4).map_err(|e| anyhow!("{e}"))?)
            .with_context(|| format!("cannot listen on the hot reload socket {}", path.display()))?;
        Ok(Server { fd, path: path.to_path_buf(), remove_on_drop: true })
    }

    /// Stops listening but leaves the file, and returns its path. After a hand-over the file
    /// stays until this instance exits (its removal tells nobody anything; the connection to
    /// the new instance does), while another instance that tries it is refused at once
    /// instead of waiting on a socket nobody accepts from.
    pub fn close_keeping_file(mut self) -> PathBuf {
        self.remove_on_drop = false;
        self.path.clone()
    }

    /// [`Server::accept`] on the control core, without blocking it.
    pub async fn accepted(&self) -> Result<Peer> {
        readable(&self.fd).await?;
        self.accept()
    }

    /// Waits for the next instance to connect.
    pub fn accept(&self) -> Result<Peer> {
        let raw = accept(self.fd.as_raw_fd()).context("accept on the hot reload socket")?;
        // SAFETY: accept(2) returned a new descriptor that nothing else owns.
        Ok(Peer { fd: unsafe { OwnedFd::from_raw_fd(raw) } })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A new instance connected to this (old) one.
pub struct Peer {
    fd: OwnedFd,
}

impl Peer {
    /// [`Peer::receive_request`] on the control core, without blocking it.
    pub async fn request(&self) -> Result<Request> {
        readable(&self.fd).await?;
        self.receive_request()
    }

    pub fn receive_request(&self) -> Result<Request> {
        let (text, _) = receive(&self.fd)?;
        match text.split(' ').collect::<Vec<_>>().as_slice() {
            [""] => Ok(Request::Closed),
            ["SEND_LISTENERS"] => Ok(Request::SendListeners),
            ["SHUTDOWN_GRADUALLY", s] => {
                Ok(Request::ShutdownGradually { seconds: s.parse().map_err(|_| anyhow!("bad request {text:?}"))? })
            }
            _ => bail!("unknown hot reload request {text:?}"),
        }
    }

    /// Sends every listener of `map`, in parts of at most [`FDS_PER_PART`] fds.
    pub fn send_listeners(&self, map: &BTreeMap<String, Vec<RawFd>>) -> Result<()> {
        let all: Vec<(&str, RawFd)> =
            map.iter().flat_map(|(k, fds)| fds.iter().map(move |fd| (k.as_str(), *fd))).collect();
        let parts = all.len().div_ceil(FDS_PER_PART).max(1);
        let mut chunks = all.chunks(FDS_PER_PART);
        for part in 0..parts {
            let chunk = chunks.next().unwrap_or_default();
            let mut text = format!("LISTENERS {part} {parts}");
            for (key, _) in chunk {
                text.push('\n');
                text.push_str(key);
            }
            let fds: Vec<RawFd> = chunk.iter().map(|(_, fd)| *fd).collect();
            send(&self.fd, &text, &fds)?;
        }
        Ok(())
    }

    pub fn reply(&self, text: &str) -> Result<()> {
        send(&self.fd, text, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsFd;

    #[test]
    fn listeners_cross_the_socket_and_still_accept() {
        let dir = std::env::temp_dir().join(format!("hotreload-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let server = Server::bind(&path).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let raw = listener.as_fd().as_raw_fd();
        let old = std::thread::spawn(move || {
            let peer = server.accept().unwrap();
            assert_eq!(peer.receive_request().unwrap(), Request::SendListeners);
            let mut map = BTreeMap::new();
            map.insert(format!("source {addr}"), vec![raw; 300]);
            peer.send_listeners(&map).unwrap();
            assert_eq!(peer.receive_request().unwrap(), Request::ShutdownGradually { seconds: 7 });
            peer.reply("OK").unwrap();
            drop(listener);
            drop(server);
        });
        let client = connect_to(&path).unwrap().unwrap();
        let mut map = client.request_listeners().unwrap();
        client.request_gradual_shutdown(7).unwrap();
        client.wait_for_exit();
        old.join().unwrap();
        assert!(!path.exists(), "the old instance removes the socket file");
        let fds = map.remove(&format!("source {addr}")).unwrap();
        assert_eq!(fds.len(), 300);
        let taken = TcpListener::from(fds.into_iter().next().unwrap());
        let _client = std::net::TcpStream::connect(addr).unwrap();
        assert!(taken.accept().is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn stale_socket_file_is_replaced_and_missing_is_none() {
        let dir = std::env::temp_dir().join(format!("hotreload-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        assert!(connect_to(&path).unwrap().is_none());
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(connect_to(&path).is_err(), "a file nobody answers on is an error");
        let server = Server::bind(&path).unwrap();
        assert!(Server::bind(&path).is_err(), "a live socket is not replaced");
        drop(server);
        std::fs::remove_dir_all(&dir).ok();
    }
}
