//! The runtime facade: everything the proxy library needs from the async runtime on a
//! worker core, so that glommio is named in this crate only.
//!
//! - tasks: [`spawn_local`] and [`Task`];
//! - time: [`sleep`] and [`Timer`], a resettable deadline that can be polled by hand;
//! - TCP: [`TcpStream`] and [`TcpListener`];
//! - a bounded channel between tasks of one core: [`local_channel`].
//!
//! Everything here must run on a worker core (inside [`crate::Workers`]); nothing is `Send`.

use futures_lite::io::{AsyncRead, AsyncWrite};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A task running on this core. Dropping it cancels the task; [`Task::detach`] lets it run on.
#[must_use = "dropping a Task cancels it; call detach() to let it run"]
pub struct Task<T>(glommio::Task<T>);

impl<T> Task<T> {
    /// Lets the task run to completion on its own.
    pub fn detach(self) {
        self.0.detach();
    }
}

impl<T> Future for Task<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// Starts `future` as a task on the calling worker core.
pub fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    Task(glommio::spawn_local(future))
}

/// Runs `f` on the core's thread for blocking calls (a DNS lookup) and waits for its
/// result without blocking the core.
pub async fn spawn_blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(f).await
}

/// Lets the core's other tasks run if this one has run for its share of time: for loops
/// that may go round without awaiting anything that waits (a connection whose every event
/// is ready at once must not starve the core's other connections and timers).
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await;
}

/// The longest wait a timer is set for; a longer one waits this long. glommio adds a wait to
/// the clock's reading, and a sum past what an `Instant` holds panics and takes the core
/// down: a configured `timeout` or `read_timeout` of `18446744073709551615` seconds would.
/// A hundred years is as good as forever to a proxy.
pub const LONGEST_WAIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Waits for `duration` (at most [`LONGEST_WAIT`]).
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration.min(LONGEST_WAIT)).await;
}

/// A deadline that can be polled from a hand-written `poll` function and moved.
pub struct Timer(glommio::timer::Timer);

impl Timer {
    /// Fires `after` from now (at most [`LONGEST_WAIT`]).
    pub fn new(after: Duration) -> Self {
        Timer(glommio::timer::Timer::new(after.min(LONGEST_WAIT)))
    }

    /// Fires `after` from now instead (at most [`LONGEST_WAIT`]).
    pub fn reset(&mut self, after: Duration) {
        self.0.reset(after.min(LONGEST_WAIT));
    }
}

impl Future for Timer {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A TCP connection on this core. The flag: whether its socket is in the core's busy poller.
pub struct TcpStream(glommio::net::TcpStream, bool);

impl TcpStream {
    fn new(inner: glommio::net::TcpStream) -> Self {
        TcpStream(inner, false)
    }

    /// Connects to `addr`, giving up after `timeout` (at most [`LONGEST_WAIT`]).
    pub async fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        glommio::net::TcpStream::connect_timeout(addr, timeout.min(LONGEST_WAIT))
            .await
            .map(TcpStream::new)
            .map_err(io::Error::from)
    }

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.0.set_nodelay(nodelay).map_err(io::Error::from)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr().map_err(io::Error::from)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr().map_err(io::Error::from)
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsyncRead for TcpStream {
    /// glommio's read, kept from waiting for a late reaping of its io_uring poll (see
    /// [`crate::io::read_unspun`]): TLS reads come this way too.
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let fd = this.0.as_raw_fd();
        let inner = &mut this.0;
        crate::io::read_unspun(fd, &mut this.1, cx, buf, |cx, buf| Pin::new(inner).poll_read(cx, buf))
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// A listening TCP socket on this core.
pub struct TcpListener(glommio::net::TcpListener);

impl TcpListener {
    /// Takes over a listening socket bound elsewhere (see [`crate::listener`]).
    pub fn from_owned_fd(fd: OwnedFd) -> Self {
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` comes from `into_raw_fd` on an OwnedFd we own, so it is a valid, open
        // listening TCP socket and nothing else will close it; glommio takes ownership here.
        TcpListener(unsafe { glommio::net::TcpListener::from_raw_fd(raw) })
    }

    /// The next connection, not yet tied to a core: it may be sent to another core and
    /// served there (see [`crate::placement`]).
    pub async fn accept_unbound(&self) -> io::Result<AcceptedStream> {
        self.0.shared_accept().await.map(AcceptedStream).map_err(io::Error::from)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr().map_err(io::Error::from)
    }
}

/// An accepted connection that no core serves yet; it can be sent to any core. Once sent,
/// it must reach [`AcceptedStream::bind`] there: dropped unbound, its socket stays open.
pub struct AcceptedStream(glommio::net::AcceptedTcpStream);

impl AcceptedStream {
    /// Makes it a connection of the calling core.
    pub fn bind(self) -> TcpStream {
        TcpStream::new(self.0.bind_to_executor())
    }
}

/// A bounded channel between tasks of one core.
pub mod local_channel {
    /// A send that failed: the receiver is gone (or, for `try_send`, the channel is full).
    #[derive(Debug, PartialEq, Eq)]
    pub struct SendError;

    /// The sending side; the channel closes when it is dropped.
    pub struct Sender<T>(glommio::channels::local_channel::LocalSender<T>);
    /// The receiving side.
    pub struct Receiver<T>(glommio::channels::local_channel::LocalReceiver<T>);

    /// A channel that holds at most `capacity` items.
    pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
        let (s, r) = glommio::channels::local_channel::new_bounded(capacity);
        (Sender(s), Receiver(r))
    }

    impl<T> Sender<T> {
        /// Waits for room, then sends; an error once the receiver is gone.
        pub async fn send(&self, item: T) -> Result<(), SendError> {
            self.0.send(item).await.map_err(|_| SendError)
        }

        /// Sends if there is room now.
        pub fn try_send(&self, item: T) -> Result<(), SendError> {
            self.0.try_send(item).map_err(|_| SendError)
        }
    }

    impl<T> Receiver<T> {
        /// The next item; `None` once every sender is gone and the channel is empty.
        pub async fn recv(&self) -> Option<T> {
            self.0.recv().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_past_what_an_instant_holds_are_cut_to_the_longest_wait() {
        let executor = glommio::LocalExecutorBuilder::default().make().expect("an executor");
        executor.run(async {
            // Unbounded, each of these would panic adding the wait to the clock's reading.
            let mut timer = Timer::new(Duration::MAX);
            timer.reset(Duration::from_secs(u64::MAX));
            let forever = async {
                sleep(Duration::MAX).await;
                "the endless sleep"
            };
            let short = async {
                sleep(Duration::from_millis(1)).await;
                "the short sleep"
            };
            assert_eq!(futures_lite::future::or(forever, short).await, "the short sleep");
        });
    }
}
