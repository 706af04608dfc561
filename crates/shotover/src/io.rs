//! Reading into a growing buffer without losing bytes.
//!
//! [`ReadBuffer::poll_fill`] reads straight into the connection's own buffer through
//! `AsyncRead::poll_read`, so a poll that returns `Pending` (because the other side of a
//! select won) has consumed nothing: no read future is ever dropped holding data.

use bytes::BytesMut;
use futures_lite::io::AsyncRead;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;

/// A socket's receive buffer with a read size that adapts to the traffic.
pub struct ReadBuffer {
    pub buf: BytesMut,
    /// Bytes zeroed and offered to each read; doubles when a read fills it.
    chunk: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        ReadBuffer { buf: BytesMut::with_capacity(MIN_READ), chunk: MIN_READ }
    }
}

impl ReadBuffer {
    /// Reads once from `stream` into the buffer. `Ready(Ok(0))` is end of stream.
    pub fn poll_fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let start = self.buf.len();
        self.buf.resize(start + self.chunk, 0);
        let result = Pin::new(stream).poll_read(cx, &mut self.buf[start..]);
        let n = match &result {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        self.buf.truncate(start + n);
        if n == self.chunk && self.chunk < MAX_READ {
            self.chunk *= 2;
        }
        result
    }

    /// Reads once, waiting for data.
    pub async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(stream, cx)).await
    }
}
