//! One connection to a Valkey server.

use crate::io::ReadBuffer;
use bytes::Bytes;
use futures_lite::io::AsyncWriteExt;
use glommio::net::TcpStream;
use shotover_protocols::valkey::framing::message_len;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

/// A TCP connection to Valkey that yields whole messages.
pub struct ValkeyConnection {
    stream: TcpStream,
    read: ReadBuffer,
}

impl ValkeyConnection {
    /// Connects, giving up after `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(addr, timeout).await.map_err(io::Error::from)?;
        stream.set_nodelay(true)?;
        Ok(ValkeyConnection { stream, read: ReadBuffer::default() })
    }

    /// Writes the whole buffer.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next whole message already buffered, if any.
    pub fn try_next(&mut self) -> io::Result<Option<Bytes>> {
        match message_len(&self.read.buf, false) {
            Ok(Some(len)) => Ok(Some(self.read.buf.split_to(len).freeze())),
            Ok(None) => Ok(None),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("upstream sent invalid RESP: {e}"))),
        }
    }

    /// The next whole message, reading as needed. End of stream is an `UnexpectedEof` error.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        loop {
            if let Some(msg) = self.try_next()? {
                return Poll::Ready(Ok(msg));
            }
            match self.read.poll_fill(&mut self.stream, cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection",
                    )))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Waits for the next whole message.
    pub async fn next(&mut self) -> io::Result<Bytes> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}
