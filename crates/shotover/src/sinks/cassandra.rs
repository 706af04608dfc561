//! One connection to a Cassandra node, carrying whole CQL frames both ways.
//!
//! The connection negotiates for itself from the frames that cross it (the STARTUP it
//! sends, the READY it reads), so v5 segments and compression work as on the client side.

use super::{connect_stream, UpstreamTls};
use crate::stream::{ReadBuffer, ReadMode, Stream};
use bytes::{Bytes, BytesMut};
use futures_lite::io::AsyncWrite;
use shotover_protocols::cassandra::connection::CqlWire;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub struct CassandraConnection {
    stream: Stream,
    read: ReadBuffer,
    wire: CqlWire,
    out: BytesMut,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("upstream sent invalid CQL: {e}"))
}

impl CassandraConnection {
    /// Connects (and completes the TLS handshake, with `tls`), giving up after `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration, tls: Option<&UpstreamTls>) -> io::Result<Self> {
        Ok(CassandraConnection {
            stream: connect_stream(addr, timeout, tls).await?,
            read: ReadBuffer::default(),
            wire: CqlWire::new(),
            out: BytesMut::new(),
        })
    }

    /// Writes `frames` in one write (in segments once v5 has switched them on).
    pub async fn send(&mut self, frames: &[Bytes]) -> io::Result<()> {
        self.queue(frames)?;
        self.flush().await
    }

    /// Adds `frames` to what the next flush writes.
    pub fn queue(&mut self, frames: &[Bytes]) -> io::Result<()> {
        self.wire.encode(frames, &mut self.out).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// True when queued bytes wait for a flush.
    pub fn has_queued(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes what is queued; ready once all of it is written.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.stream).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            bytes::Buf::advance(&mut self.out, n);
        }
        shotover_executor::io::release_if_large(&mut self.out);
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        let result = std::future::poll_fn(|cx| self.poll_flush(cx)).await;
        if result.is_err() {
            self.out.clear();
        }
        result
    }

    /// How the node compresses the frame bodies it sends (v3/v4), as negotiated so far.
    pub fn compression(&self) -> shotover_protocols::cassandra::Compression {
        self.wire.frame_compression()
    }

    /// Moves every whole frame already read into `frames`.
    pub fn take_frames(&mut self, frames: &mut Vec<Bytes>) -> io::Result<()> {
        self.wire.decode(&mut self.read.buf, frames).map_err(invalid)
    }

    /// Reads what the node has sent. Ready once at least one whole frame is in `frames`;
    /// end of stream is an `UnexpectedEof` error.
    pub fn poll_frames(
        &mut self,
        cx: &mut Context<'_>,
        mode: ReadMode,
        frames: &mut Vec<Bytes>,
    ) -> Poll<io::Result<()>> {
        loop {
            let before = frames.len();
            self.take_frames(frames)?;
            if frames.len() > before {
                return Poll::Ready(Ok(()));
            }
            std::task::ready!(self.read.poll_fill_upstream(
                &mut self.stream,
                cx,
                mode,
                "the node closed the connection"
            ))?;
        }
    }

    /// Waits for at least one whole frame.
    pub async fn next_frames(&mut self, frames: &mut Vec<Bytes>) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_frames(cx, ReadMode::Spin, frames)).await
    }
}
