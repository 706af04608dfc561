//! One connection to a Cassandra node, carrying whole CQL frames both ways.
//!
//! The connection negotiates for itself from the frames that cross it (the STARTUP it
//! sends, the READY it reads), so v5 segments and compression work as on the client side.

use super::{connect_stream, UpstreamTls};
use crate::stream::{ReadBuffer, ReadMode, Stream};
use bytes::{Bytes, BytesMut};
use futures_lite::io::AsyncWriteExt;
use shotover_protocols::cassandra::connection::CqlWire;
use std::io;
use std::net::SocketAddr;
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
        self.out.clear();
        self.wire.encode(frames, &mut self.out).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await
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
