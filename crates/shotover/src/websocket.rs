//! `transport: WebSocket`: CQL carried in binary WebSocket messages (RFC 6455).
//!
//! tungstenite does the protocol work (the HTTP upgrade, frame parsing, masking, fragments,
//! ping/pong and the closing handshake), driven over in-memory buffers: the socket I/O
//! stays ours, so the connection loop reads and writes a [`WebSocketStream`] exactly as it
//! does a TCP or TLS stream.
//!
//! - Reading yields the payloads of the client's binary messages as one byte stream, so a
//!   CQL frame may span messages or share one with other frames.
//! - Each `write` becomes one binary message. The connection loop writes every batch of
//!   responses with one `write_all`, so a message always holds whole frames, as
//!   WebSocket CQL clients expect.
//! - A text message is not CQL: the connection closes with code 1003 (unsupported data).

use crate::stream::Stream;
use bytes::{Buf, Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use std::io::{self, ErrorKind, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// The subprotocol a CQL client asks for in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "cql";
/// How long a client may take to send its upgrade request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Upgrade requests larger than this are refused (431), so a client cannot make the proxy
/// buffer headers without end.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// How long a refused upgrade waits for the client to close first.
const LINGER: Duration = Duration::from_secs(1);
/// Output waiting for the socket beyond which `write` waits for it to drain.
const MAX_PENDING_OUTPUT: usize = 1024 * 1024;

/// tungstenite's side of the socket: it reads what the socket delivered and writes into a
/// buffer that [`WebSocketStream`] then sends. Reading an empty buffer "would block".
#[derive(Default)]
struct Buffers {
    input: BytesMut,
    output: BytesMut,
}

impl Read for Buffers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        if let (Some(to), Some(from)) = (buf.get_mut(..n), self.input.get(..n)) {
            to.copy_from_slice(from);
        }
        self.input.advance(n);
        Ok(n)
    }
}

impl Write for Buffers {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Picks the answer to the client's `Sec-WebSocket-Protocol` offers: `Ok(true)` to answer
/// `cql`, `Ok(false)` when the client offered none, `Err` when it offered only others.
pub fn choose_subprotocol<'a>(offers: impl Iterator<Item = &'a str>) -> Result<bool, String> {
    let offered: Vec<&str> = offers.flat_map(|h| h.split(',')).map(str::trim).filter(|p| !p.is_empty()).collect();
    if offered.is_empty() {
        Ok(false)
    } else if offered.contains(&SUBPROTOCOL) {
        Ok(true)
    } else {
        Err(format!("this endpoint speaks the \"{SUBPROTOCOL}\" subprotocol, not {}", offered.join(", ")))
    }
}

// The signature is tungstenite's `Callback`, large error type included.
#[allow(clippy::result_large_err)]
fn on_request(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let offers = request.headers().get_all("Sec-WebSocket-Protocol").iter().filter_map(|v| v.to_str().ok());
    match choose_subprotocol(offers) {
        Ok(true) => {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", tungstenite::http::HeaderValue::from_static(SUBPROTOCOL));
            Ok(response)
        }
        Ok(false) => Ok(response),
        Err(reason) => {
            let mut refusal = ErrorResponse::new(Some(reason));
            *refusal.status_mut() = tungstenite::http::StatusCode::BAD_REQUEST;
            Err(refusal)
        }
    }
}

/// A plain HTTP answer for a request that cannot be upgraded.
fn http_error(status: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The largest message or frame accepted is the source's `max_request_bytes` (by default
/// the largest CQL frame, 256 MiB and its header), so any frame the source accepts fits in
/// one WebSocket message, and no message can make the proxy hold more than one frame.
fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(max_message)).max_frame_size(Some(max_message))
}

/// Sends an HTTP error and closes, once the client has closed or after [`LINGER`]. What the
/// client still sends meanwhile is read and dropped: closing a socket with unread bytes makes
/// the kernel reset the connection, and a reset can discard the reply before the client
/// reads it (seen under TLS).
async fn refuse(mut stream: Stream, reply: &[u8]) {
    let _ = stream.write_all(reply).await;
    let _ = stream.flush().await;
    {
        let drain = async {
            let mut scratch = [0u8; 4096];
            while let Ok(n) = futures_lite::io::AsyncReadExt::read(&mut stream, &mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        };
        futures_lite::future::or(drain, crate::rt::sleep(LINGER)).await;
    }
    let _ = stream.close().await;
}

/// Completes the HTTP upgrade on `stream`. On failure the client gets an HTTP error (400
/// for a request that is not a CQL WebSocket upgrade, 431 for an oversized one) and the
/// reason is returned for the log. Messages may be at most `max_message` bytes.
pub async fn accept(mut stream: Stream, max_message: usize) -> Result<WebSocketStream, String> {
    let mut attempt = tungstenite::accept_hdr_with_config(Buffers::default(), on_request, Some(config(max_message)));
    let mut scratch = vec![0u8; 4096];
    let mut received = 0usize;
    loop {
        let mid = match attempt {
            Ok(mut ws) => {
                let output = std::mem::take(&mut ws.get_mut().output);
                stream.write_all(&output).await.map_err(|e| format!("writing the upgrade response: {e}"))?;
                stream.flush().await.map_err(|e| format!("writing the upgrade response: {e}"))?;
                return Ok(WebSocketStream { inner: stream, ws, payload: Bytes::new() });
            }
            Err(HandshakeError::Interrupted(mid)) => mid,
            Err(HandshakeError::Failure(e)) => {
                let reply = match &e {
                    tungstenite::Error::Http(response) => {
                        let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                        let status = response.status();
                        http_error(status.as_u16(), status.canonical_reason().unwrap_or("Bad Request"), &body)
                    }
                    other => http_error(400, "Bad Request", &format!("not a WebSocket upgrade request: {other}\n")),
                };
                refuse(stream, &reply).await;
                return Err(format!("WebSocket upgrade refused: {e}"));
            }
        };
        let mut mid = mid;
        let n = futures_lite::io::AsyncReadExt::read(&mut stream, &mut scratch)
            .await
            .map_err(|e| format!("reading the upgrade request: {e}"))?;
        if n == 0 {
            return Err("the client closed the connection during the WebSocket upgrade".into());
        }
        received += n;
        if received > MAX_REQUEST_HEAD {
            refuse(stream, &http_error(431, "Request Header Fields Too Large", "")).await;
            return Err(format!("WebSocket upgrade request over {MAX_REQUEST_HEAD} bytes"));
        }
        mid.get_mut().get_mut().input.extend_from_slice(scratch.get(..n).unwrap_or_default());
        attempt = mid.handshake();
    }
}

/// A client connection after the upgrade: CQL bytes in and out, WebSocket on the wire.
pub struct WebSocketStream {
    inner: Stream,
    ws: WebSocket<Buffers>,
    /// What is left of the binary message being read.
    payload: Bytes,
}

impl WebSocketStream {
    /// The stream underneath (TCP or TLS).
    pub fn inner(&self) -> &Stream {
        &self.inner
    }

    /// Sends what tungstenite wrote (messages, pongs, close frames) to the socket, as far as
    /// it takes it now. `Ready(Ok)` once nothing is left.
    fn poll_send_output(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let output = &mut self.ws.get_mut().output;
            if output.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_write(cx, output) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.ws.get_mut().output.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Closes the WebSocket with `code` (the close frame is queued; the caller sends it).
    fn close_with(&mut self, code: CloseCode, reason: &'static str) {
        if self.ws.can_write() {
            let _ = self.ws.close(Some(CloseFrame { code, reason: reason.into() }));
            let _ = self.ws.flush();
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, e.to_string())
}

impl AsyncRead for WebSocketStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.payload.is_empty() {
                let n = buf.len().min(this.payload.len());
                if let (Some(to), Some(from)) = (buf.get_mut(..n), this.payload.get(..n)) {
                    to.copy_from_slice(from);
                }
                this.payload.advance(n);
                return Poll::Ready(Ok(n));
            }
            // A client that pings without reading our pongs is not read from until it reads.
            if this.ws.get_ref().output.len() > MAX_PENDING_OUTPUT {
                match this.poll_send_output(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => {}
                }
            }
            let message = this.ws.read();
            // Pongs and the reply to a close frame are queued by `read`: send them now if
            // the socket takes them (if not, the next read or write tries again).
            if let Poll::Ready(Err(e)) = this.poll_send_output(cx) {
                return Poll::Ready(Err(e));
            }
            match message {
                Ok(Message::Binary(payload)) => this.payload = payload,
                Ok(Message::Text(_)) => {
                    this.close_with(CloseCode::Unsupported, "CQL frames go in binary messages");
                    let _ = this.poll_send_output(cx);
                    return Poll::Ready(Err(invalid("a text WebSocket message (CQL goes in binary messages)")));
                }
                Ok(Message::Close(_)) => {
                    // Complete the closing handshake: `read` queued the reply; flush it out.
                    let _ = this.ws.flush();
                    let _ = this.poll_send_output(cx);
                    return Poll::Ready(Ok(0));
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                    // tungstenite needs more bytes: read them into the caller's buffer,
                    // then hand them over.
                    match Pin::new(&mut this.inner).poll_read(cx, buf) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                        Poll::Ready(Ok(n)) => {
                            this.ws.get_mut().input.extend_from_slice(buf.get(..n).unwrap_or_default())
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Poll::Ready(Ok(0))
                }
                Err(tungstenite::Error::Io(e)) => return Poll::Ready(Err(e)),
                Err(e) => {
                    // A protocol violation (unmasked frame, bad opcode, oversized message…).
                    let code = match e {
                        tungstenite::Error::Capacity(_) => CloseCode::Size,
                        _ => CloseCode::Protocol,
                    };
                    this.close_with(code, "WebSocket protocol error");
                    let _ = this.poll_send_output(cx);
                    return Poll::Ready(Err(invalid(format!("WebSocket protocol error: {e}"))));
                }
            }
        }
    }
}

impl AsyncWrite for WebSocketStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Poll::Ready(Err(e)) = this.poll_send_output(cx) {
            return Poll::Ready(Err(e));
        }
        if this.ws.get_ref().output.len() > MAX_PENDING_OUTPUT {
            // The client is not reading: wait for the socket (its writability wakes us).
            return Poll::Pending;
        }
        let sent = this.ws.write(Message::Binary(Bytes::copy_from_slice(buf))).and_then(|()| this.ws.flush());
        match sent {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(tungstenite::Error::Io(e)) => Poll::Ready(Err(e)),
            Err(e) => Poll::Ready(Err(io::Error::new(ErrorKind::BrokenPipe, e.to_string()))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_send_output(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Closing from our side (shutdown, idle timeout, malformed CQL): say so in a close
        // frame before the TCP connection goes.
        this.close_with(CloseCode::Away, "");
        match this.poll_send_output(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_close(cx),
            Poll::Ready(Err(_)) => Pin::new(&mut this.inner).poll_close(cx),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_choice() {
        assert_eq!(choose_subprotocol(std::iter::empty()), Ok(false));
        assert_eq!(choose_subprotocol(["cql"].into_iter()), Ok(true));
        assert_eq!(choose_subprotocol(["chat, cql"].into_iter()), Ok(true));
        assert_eq!(choose_subprotocol(["chat", " cql "].into_iter()), Ok(true));
        let refused = choose_subprotocol(["chat, mqtt"].into_iter()).unwrap_err();
        assert!(refused.contains("\"cql\"") && refused.contains("chat, mqtt"), "{refused}");
    }

    #[test]
    fn buffers_would_block_when_empty() {
        let mut b = Buffers::default();
        let mut out = [0u8; 4];
        assert_eq!(b.read(&mut out).unwrap_err().kind(), ErrorKind::WouldBlock);
        b.input.extend_from_slice(b"abcdef");
        assert_eq!(b.read(&mut out).unwrap(), 4);
        assert_eq!(&out, b"abcd");
        assert_eq!(b.read(&mut out).unwrap(), 2);
        assert_eq!(b.write(b"xy").unwrap(), 2);
        assert_eq!(&b.output[..], b"xy");
    }
}
