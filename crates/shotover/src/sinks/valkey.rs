//! One connection to a Valkey server.

use crate::stream::{ReadBuffer, ReadMode, Stream};
use bytes::Bytes;
use futures_lite::io::AsyncWriteExt;
use shotover_protocols::valkey::framing::Scanner;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// After this long without traffic, check that the server has not closed the connection
/// before sending on it (Valkey's `timeout` closes idle clients after whole seconds).
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

pub use super::UpstreamTls;

/// A TCP connection to Valkey that yields whole messages.
pub struct ValkeyConnection {
    stream: Stream,
    read: ReadBuffer,
    scanner: Scanner,
    last_used: Instant,
}

impl ValkeyConnection {
    /// Connects (and completes the TLS handshake, with `tls`), giving up after `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration, tls: Option<&UpstreamTls>) -> io::Result<Self> {
        Ok(ValkeyConnection {
            stream: super::connect_stream(addr, timeout, tls).await?,
            read: ReadBuffer::default(),
            scanner: Scanner::default(),
            last_used: Instant::now(),
        })
    }

    /// Writes the whole buffer (and flushes it through TLS).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.last_used = Instant::now();
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        self.read.just_wrote();
        Ok(())
    }

    /// True if the server closed this connection while it sat idle, so that a request is
    /// never sent into a connection that can only answer with end-of-stream. Costs one
    /// non-blocking peek, and only after [`IDLE_CHECK_AFTER`] without traffic.
    pub fn closed_while_idle(&self) -> bool {
        if self.last_used.elapsed() < IDLE_CHECK_AFTER || !self.read.buf.is_empty() {
            return false;
        }
        shotover_executor::io::peer_closed(self.stream.tcp().as_raw_fd())
    }

    /// The next whole message already buffered, if any.
    pub fn try_next(&mut self) -> io::Result<Option<Bytes>> {
        match self.scanner.scan(&self.read.buf) {
            Ok(Some(len)) => Ok(Some(self.read.buf.split_to(len).freeze())),
            Ok(None) => Ok(None),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("upstream sent invalid RESP: {e}"))),
        }
    }

    /// The next whole message, reading as needed. End of stream is an `UnexpectedEof` error.
    pub fn poll_next(&mut self, cx: &mut Context<'_>, mode: ReadMode) -> Poll<io::Result<Bytes>> {
        loop {
            if let Some(msg) = self.try_next()? {
                return Poll::Ready(Ok(msg));
            }
            std::task::ready!(self.read.poll_fill_upstream(
                &mut self.stream,
                cx,
                mode,
                "upstream closed the connection"
            ))?;
            // Once a read, not once a message: one read often brings a hundred replies.
            self.last_used = Instant::now();
        }
    }

    /// Waits for the next whole message (a reply is expected, so reads may spin).
    pub async fn next(&mut self) -> io::Result<Bytes> {
        std::future::poll_fn(|cx| self.poll_next(cx, ReadMode::Spin)).await
    }
}
