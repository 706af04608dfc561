//! A TCP fault proxy for tests (issue 16): it sits between Shotover and a real server,
//! forwards bytes both ways, and on demand delays them, stalls them, cuts connections in
//! the middle of a server's answer, drops connections silently (half-open: nothing
//! flows any more, and nothing closes), or goes down (every connection closed, new ones
//! refused) and comes back. It is a test tool, not a test double: the server behind it is
//! real.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to the bytes of connections open now and later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything at once.
    None,
    /// Hold every chunk this long before forwarding it.
    Delay(Duration),
    /// Forward nothing, keep it, and forward it once the fault ends.
    Stall,
}

struct Shared {
    fault: Mutex<Fault>,
    /// Bumped by [`FaultProxy::cut_mid_answer`] and [`FaultProxy::drop_silently`]: each
    /// connection of an older generation is cut (or goes silent) at its next chunk.
    generation: AtomicU64,
    /// What happens to the connections of older generations: cut (true) or silent.
    cut: AtomicBool,
    /// Connections accepted so far.
    accepted: AtomicU64,
    /// Down: connections are closed and refused, as if the server had stopped.
    down: AtomicBool,
    stop: AtomicBool,
}

/// One listening fault proxy in front of `upstream`. Dropping it stops accepting; the
/// connections it carries then end with their peers.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        FaultProxy::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream)
    }

    /// A fault proxy listening on `listen` (another loopback address, say).
    pub fn start_on(listen: SocketAddr, upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(listen).expect("fault proxy: bind");
        let port = listener.local_addr().expect("fault proxy: local address").port();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::None),
            generation: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        listener.set_nonblocking(true).expect("fault proxy: nonblocking listener");
        let listen = listener.local_addr().expect("fault proxy: local address");
        let mut listener = Some(listener);
        std::thread::spawn(move || {
            while !accept_shared.stop.load(Ordering::Acquire) {
                // Down, nothing listens (connections are refused); back up, the same port
                // is bound again.
                if accept_shared.down.load(Ordering::Acquire) {
                    listener = None;
                } else if listener.is_none() {
                    listener = TcpListener::bind(listen).ok();
                    listener.iter().for_each(|l| l.set_nonblocking(true).expect("fault proxy: nonblocking listener"));
                }
                let Some(accepting) = listener.as_ref() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                match accepting.accept() {
                    Ok((client, _)) => {
                        accept_shared.accepted.fetch_add(1, Ordering::AcqRel);
                        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
                            continue;
                        };
                        let _ = client.set_nonblocking(false);
                        pipe(client, server, accept_shared.clone());
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy { port, shared }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Applies `fault` to every connection, open or new, until the next call.
    pub fn set(&self, fault: Fault) {
        if let Ok(mut f) = self.shared.fault.lock() {
            *f = fault;
        }
    }

    /// Applies `fault` after `delay`, from a thread, while the test waits on a request.
    pub fn set_after(&self, delay: Duration, fault: Fault) {
        let shared = self.shared.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            if let Ok(mut f) = shared.fault.lock() {
                *f = fault;
            }
        });
    }

    /// Cuts every connection open now at the next chunk the server sends: the first half
    /// of that chunk reaches Shotover, then both sides are closed. New connections are fine.
    pub fn cut_mid_answer(&self) {
        self.shared.cut.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Every connection open now goes silent for good, without closing: what a server
    /// whose host vanished looks like. New connections are fine.
    pub fn drop_silently(&self) {
        self.shared.cut.store(false, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Down: every connection closes at once and new ones are refused, as when the server
    /// stops; `false` brings it back on the same port.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::Release);
    }

    /// Down for `how_long`, then back: a server restart, as its clients see it.
    pub fn restart(&self, how_long: Duration) {
        self.set_down(true);
        std::thread::sleep(how_long);
        self.set_down(false);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Acquire)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

/// Starts both directions of one connection.
fn pipe(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let generation = shared.generation.load(Ordering::Acquire);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else { return };
    let up = shared.clone();
    std::thread::spawn(move || pump(client, server, &up, generation, false));
    std::thread::spawn(move || pump(server2, client2, &shared, generation, true));
}

/// Forwards `from` to `to` under the current fault, until either side ends.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, generation: u64, from_server: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut held: Vec<u8> = Vec::new();
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        if shared.down.load(Ordering::Acquire) {
            reset(&to);
            reset(&from);
            return;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => 0,
            Err(_) => break,
        };
        held.extend_from_slice(&buf[..n]);
        if shared.generation.load(Ordering::Acquire) != generation {
            if !shared.cut.load(Ordering::Acquire) {
                // Silent: swallow everything, close nothing, for as long as the peers live.
                held.clear();
                continue;
            }
            if from_server && !held.is_empty() {
                let half = held.len().div_ceil(2);
                let _ = to.write_all(&held[..half]);
                reset(&to);
                reset(&from);
                return;
            }
            if !from_server {
                // The cut happens on the server's next answer; requests still go up.
                let _ = to.write_all(&held);
                held.clear();
            }
            continue;
        }
        let fault = shared.fault.lock().map(|f| *f).unwrap_or(Fault::None);
        match fault {
            Fault::Stall => continue,
            Fault::Delay(d) if !held.is_empty() => std::thread::sleep(d),
            _ => {}
        }
        if !held.is_empty() {
            if to.write_all(&held).is_err() {
                break;
            }
            held.clear();
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Ends both directions of the connection (the peer sees end of stream).
fn reset(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Both);
}

/// The fault schedule of the fault tests under load, starting `lead` after the call: 150 ms
/// delays on every node for 3 s, a 2 s stall of `faults[stalled]`, 1 s later a cut in the
/// middle of the next answer of every connection, then `settle` later every connection of
/// `faults[silent]` silent for good (when the sink has a read timeout to end that with).
pub fn delays_stall_cuts_then_silence(
    faults: &[FaultProxy],
    lead: Duration,
    stalled: usize,
    settle: Duration,
    silent: Option<usize>,
) {
    std::thread::sleep(lead);
    faults.iter().for_each(|f| f.set(Fault::Delay(Duration::from_millis(150))));
    std::thread::sleep(Duration::from_secs(3));
    faults.iter().for_each(|f| f.set(Fault::None));
    faults[stalled].set(Fault::Stall);
    std::thread::sleep(Duration::from_secs(2));
    faults[stalled].set(Fault::None);
    std::thread::sleep(Duration::from_secs(1));
    faults.iter().for_each(FaultProxy::cut_mid_answer);
    let silent = silent.map(|s| (&faults[s], faults[s].accepted()));
    std::thread::sleep(settle);
    if let Some((silent, before)) = silent {
        // Silence reaches only the connections open at that moment, and the cut closed them
        // all: wait (5 s at most) until the proxy in front has connected again, or a slow
        // client reconnecting late would find every connection fine and nothing would go silent.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while silent.accepted() <= before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        silent.drop_silently();
    }
}
