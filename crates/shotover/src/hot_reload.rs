//! Hot reload, the proxy's side: which listening sockets this instance takes over, and the
//! task on the control core that hands them on to the next instance.
//!
//! Every source's listeners are keyed by its `listen_addr` (`source 127.0.0.1:6380`). A new
//! instance deals the sockets it receives round-robin over its own worker cores, so every
//! socket has a core accepting from it and no connection waits in a queue nobody reads,
//! whatever the two instances' core counts. With fewer received sockets than cores it binds
//! more into the same SO_REUSEPORT group. Sockets of sources it no longer has are closed.
//! The wire protocol and fd passing are in [`shotover_executor::fd_handoff`].

use anyhow::{Context, Result};
use shotover_executor::fd_handoff::{Client, ListenerMap, Peer, Request, Server};
use shotover_executor::{listener, ControlHandle, WorkerCommands};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The key of a source's listeners in a [`ListenerMap`].
pub fn source_key(listen_addr: SocketAddr) -> String {
    format!("source {listen_addr}")
}

/// Every source's listeners, dealt to the worker cores.
pub struct Listeners {
    /// `per_core[core]` holds (source index, fd) pairs.
    pub per_core: Vec<Vec<(usize, OwnedFd)>>,
    /// The address each source listens on (the port chosen, for port 0).
    pub addrs: Vec<SocketAddr>,
    /// Copies of every listener, kept to hand over to the next instance (only with hot
    /// reload: a copy keeps the socket listening after the workers drop theirs).
    pub handover: ListenerMap,
}

/// Takes over the `inherited` listeners of the sources that have some, and binds the rest.
/// With `keep_copies` it also keeps a copy of each for the next instance.
pub fn assemble(
    sources: &[SocketAddr],
    cores: usize,
    mut inherited: ListenerMap,
    keep_copies: bool,
) -> Result<Listeners> {
    let mut per_core: Vec<Vec<(usize, OwnedFd)>> = (0..cores).map(|_| Vec::new()).collect();
    let mut addrs = Vec::with_capacity(sources.len());
    let mut handover = ListenerMap::new();
    for (index, &configured) in sources.iter().enumerate() {
        let key = source_key(configured);
        let (addr, fds) = match inherited.remove(&key).filter(|fds| !fds.is_empty()) {
            Some(mut fds) => {
                let taken = fds.len();
                if fds.len() < cores {
                    fds.extend(listener::bind_more(configured, cores - fds.len())?);
                }
                tracing::info!("hot reload: took over {taken} listening sockets of {configured}");
                (configured, fds)
            }
            None => listener::bind_reuseport(configured, cores)?,
        };
        for (i, fd) in fds.into_iter().enumerate() {
            if keep_copies {
                handover.entry(source_key(configured)).or_default().push(fd.try_clone().context("dup a listener")?);
            }
            if let Some(core) = per_core.get_mut(i % cores.max(1)) {
                core.push((index, fd));
            }
        }
        addrs.push(addr);
    }
    for (key, fds) in inherited {
        tracing::info!(
            "hot reload: closing {} listening sockets of `{key}`, which the topology no longer has",
            fds.len()
        );
    }
    Ok(Listeners { per_core, addrs, handover })
}

/// What the main thread needs to know about the hot reload socket when it exits.
#[derive(Default)]
pub struct SocketState {
    /// Set once this instance has handed its listeners over: the socket file's path and the
    /// new instance's connection. At exit the file is removed, then the connection closed,
    /// which tells the new instance to create the file anew.
    pub handed_over: Mutex<Option<(PathBuf, Peer)>>,
    /// True while this instance serves the socket file (it removes it on exit).
    pub serving: AtomicBool,
    /// The copies of this instance's listeners to hand over. Taken (and closed) when the
    /// instance stops, so that its ports stop listening.
    pub listeners: Mutex<Option<ListenerMap>>,
}

pub type HandedOver = Arc<SocketState>;

/// Serves hot reload requests on `server`, on the control core, until one new instance
/// takes over.
async fn serve(server: Server, commands: WorkerCommands, handed_over: HandedOver) {
    tracing::info!("hot reload socket ready at {}", server.path().display());
    loop {
        let peer = match server.accepted().await {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!("hot reload: {e:#}");
                shotover_executor::control::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match peer.request().await {
            Ok(Request::SendListeners) => {}
            Ok(other) => {
                tracing::warn!("hot reload: expected SEND_LISTENERS, got {other:?}");
                let _ = peer.reply("ERR expected SEND_LISTENERS");
                continue;
            }
            Err(e) => {
                tracing::warn!("hot reload: {e:#}");
                continue;
            }
        }
        commands.pause_accepting();
        // The lock is held while sending, so the fds cannot be closed under us.
        let sent = match handed_over.listeners.lock().as_deref() {
            Ok(Some(map)) => {
                let raw: BTreeMap<String, Vec<RawFd>> =
                    map.iter().map(|(k, fds)| (k.clone(), fds.iter().map(|fd| fd.as_raw_fd()).collect())).collect();
                peer.send_listeners(&raw).map(|()| raw.values().map(Vec::len).sum::<usize>())
            }
            _ => Err(anyhow::anyhow!("this instance is shutting down")),
        };
        let count = match sent {
            Ok(count) => count,
            Err(e) => {
                tracing::warn!("hot reload: cannot hand over the listeners ({e:#}); accepting connections again");
                let _ = peer.reply("ERR cannot hand over the listeners");
                commands.resume_accepting();
                continue;
            }
        };
        tracing::info!("hot reload: handed {count} listening sockets to a new instance; no longer accepting");
        match peer.request().await {
            Ok(Request::ShutdownGradually { seconds }) => {
                let _ = peer.reply("OK");
                tracing::info!("hot reload: the new instance is running; closing connections over {seconds} s");
                handed_over.serving.store(false, Ordering::Release);
                let path = server.close_keeping_file();
                // Recorded before the cores are told: a core with no connections ends at once,
                // and the main thread must then know that this is a hand-over, not a failure.
                if let Ok(mut slot) = handed_over.handed_over.lock() {
                    *slot = Some((path, peer));
                }
                commands.shutdown_gradually(Duration::from_secs(seconds));
                return;
            }
            other => {
                tracing::warn!(
                    "hot reload: the new instance went away before taking over ({other:?}); accepting connections again"
                );
                commands.resume_accepting();
            }
        }
    }
}

/// Creates the hot reload socket and serves it on the control core; false if it cannot be
/// created.
pub fn start_server(path: &Path, commands: WorkerCommands, handed_over: HandedOver, control: &ControlHandle) -> bool {
    match Server::bind(path) {
        Ok(server) => {
            handed_over.serving.store(true, Ordering::Release);
            control.spawn(serve(server, commands, handed_over));
            true
        }
        Err(e) => {
            tracing::error!("hot reload: {e:#}; this instance cannot be hot reloaded");
            false
        }
    }
}

/// After taking over from `previous`: waits on the control core for it to exit, then
/// serves the hot reload socket at `path` for the next instance.
pub fn serve_after_exit(
    previous: Client,
    path: PathBuf,
    commands: WorkerCommands,
    handed_over: HandedOver,
    control: &ControlHandle,
) {
    let handle = control.clone();
    control.spawn(async move {
        previous.exited().await;
        tracing::info!("hot reload: the old instance has exited");
        commands.hold_placement(false);
        start_server(&path, commands, handed_over, &handle);
    });
}
