//! One connection to a Kafka broker, reading whole length-prefixed messages.

use super::{connect_stream, UpstreamTls};
use crate::stream::{ReadBuffer, ReadMode, Stream};
use bytes::Bytes;
use futures_lite::io::AsyncWriteExt;
use shotover_protocols::kafka::framing;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

pub struct KafkaConnection {
    stream: Stream,
    read: ReadBuffer,
}

impl KafkaConnection {
    /// Connects (and completes the TLS handshake, with `tls`), giving up after `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration, tls: Option<&UpstreamTls>) -> io::Result<Self> {
        Ok(KafkaConnection { stream: connect_stream(addr, timeout, tls).await?, read: ReadBuffer::default() })
    }

    /// Writes the whole buffer (and flushes it through TLS).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The next whole message already read, if there is one (no I/O).
    pub fn take_message(&mut self) -> io::Result<Option<Bytes>> {
        match framing::message_len(&self.read.buf) {
            Ok(Some(len)) => Ok(Some(self.read.buf.split_to(len).freeze())),
            Ok(None) => {
                framing::reserve_rest(&mut self.read.buf);
                Ok(None)
            }
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("broker sent: {e}"))),
        }
    }

    /// The next whole message, reading as needed (spinning in `mode` while the core is
    /// busy). End of stream is an `UnexpectedEof` error.
    pub fn poll_next(&mut self, cx: &mut Context<'_>, mode: ReadMode) -> Poll<io::Result<Bytes>> {
        loop {
            if let Some(message) = self.take_message()? {
                return Poll::Ready(Ok(message));
            }
            std::task::ready!(self.read.poll_fill_upstream(
                &mut self.stream,
                cx,
                mode,
                "the broker closed the connection"
            ))?;
        }
    }

    /// Waits for the next whole message.
    pub async fn next(&mut self) -> io::Result<Bytes> {
        std::future::poll_fn(|cx| self.poll_next(cx, ReadMode::Spin)).await
    }
}
