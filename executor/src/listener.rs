//! Listening sockets: one per source per worker core, all on the same address with
//! SO_REUSEPORT so the kernel spreads new connections across cores.

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// Backlog of each listener: room for connection bursts while a core is busy.
pub const BACKLOG: i32 = 4096;

/// Binds `count` listeners on `addr` with SO_REUSEADDR and SO_REUSEPORT.
///
/// First a probe bind *without* SO_REUSEPORT: if another process holds the port (even one
/// that set SO_REUSEPORT itself) this fails, so a stray process can never silently share our
/// connections. Port 0 picks a free port once and binds every core to that same port.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> Result<(SocketAddr, Vec<OwnedFd>)> {
    let probe = new_socket(addr, false)?;
    probe
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr}: the address is in use or not available"))?;
    let mut addr = addr;
    if addr.port() == 0 {
        let local = probe.local_addr()?.as_socket().context("listener has no IP address")?;
        addr.set_port(local.port());
    }
    // The probe is dropped only after the first real listener holds the port, so no other
    // process can take it in between.
    let fds = bind_more(addr, count)?;
    drop(probe);
    Ok((addr, fds))
}

/// Binds `count` more SO_REUSEPORT listeners on `addr`, which this process (or the instance
/// it hot-reloaded from) already listens on, joining the same group.
pub fn bind_more(addr: SocketAddr, count: usize) -> Result<Vec<OwnedFd>> {
    let mut fds = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = new_socket(addr, true)?;
        socket.bind(&addr.into()).with_context(|| format!("cannot listen on {addr}"))?;
        socket.listen(BACKLOG).with_context(|| format!("cannot listen on {addr}"))?;
        fds.push(socket.into());
    }
    Ok(fds)
}

fn new_socket(addr: SocketAddr, reuseport: bool) -> Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_held_elsewhere_is_an_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let err = bind_reuseport(addr, 2).unwrap_err();
        assert!(format!("{err:#}").contains("in use"), "{err:#}");
    }

    #[test]
    fn port_zero_binds_every_core_to_one_port() {
        let (addr, fds) = bind_reuseport("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(fds.len(), 3);
        // And now the port is ours: a second proxy cannot take it.
        assert!(bind_reuseport(addr, 1).is_err());
    }
}
