//! A connection's socket, whatever is layered on the TCP: nothing, TLS (either side), or a
//! client's WebSocket. Reads go through [`ReadBuffer`], which busy-polls plain TCP only.

use futures_lite::io::{AsyncRead, AsyncWrite};
use shotover_executor::io::SpinRead;
pub use shotover_executor::io::{ReadBuffer, ReadMode};
use shotover_executor::rt::TcpStream;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A connection's socket: plain TCP, or TCP under TLS (either side), or a client's
/// WebSocket over either.
pub enum Stream {
    Plain(TcpStream),
    TlsServer(Box<futures_rustls::server::TlsStream<TcpStream>>),
    TlsClient(Box<futures_rustls::client::TlsStream<TcpStream>>),
    WebSocket(Box<crate::websocket::WebSocketStream>),
}

impl SpinRead for Stream {
    /// None under TLS or WebSocket, where every byte must go through rustls or tungstenite.
    fn spin_fd(&self) -> Option<RawFd> {
        match self {
            Stream::Plain(s) => Some(s.as_raw_fd()),
            _ => None,
        }
    }
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::TlsServer(s) => s.get_ref().0,
            Stream::TlsClient(s) => s.get_ref().0,
            Stream::WebSocket(s) => s.inner().tcp(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::WebSocket(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::WebSocket(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::WebSocket(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::WebSocket(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
