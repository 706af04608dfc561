//! [`ChainError`]: why a chain run failed, which side failed, whether the client may send
//! the request again, and whether its connection must close.
//!
//! ```
//! use shotover::chain::{ChainError, Retry, Side};
//!
//! let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
//! // Nothing was written: the client may send the request again.
//! let e = ChainError::upstream("cannot connect to upstream 127.0.0.1:6379").caused_by(refused).retry_safe();
//! assert_eq!(e.to_string(), "cannot connect to upstream 127.0.0.1:6379: connection refused");
//! assert_eq!((e.side(), e.retry(), e.closes_connection()), (Side::Upstream, Retry::Safe, false));
//! ```

use crate::message::CodecError;
use std::borrow::Cow;
use std::error::Error;
use std::fmt;

/// A [`Transform::transform`](super::Transform::transform) result: the responses, or why
/// the run failed.
pub type ChainResult<T = Vec<crate::message::Message>> = Result<T, ChainError>;

/// Which side of the proxy a chain failure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The client's request: the proxy cannot handle it as it was sent.
    Client,
    /// The upstream: unreachable, closed the connection, timed out, or sent what is not the
    /// protocol.
    Upstream,
    /// The proxy itself: a transform's own failure or bug, a configuration used before it
    /// was validated.
    Proxy,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Proxy => "proxy",
        })
    }
}

/// Whether the client may send the failed requests again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Nothing of the requests was written upstream: sending them again is safe.
    Safe,
    /// The requests may have reached the upstream, so writes may have been applied: only
    /// the client knows whether to send them again. The default of every constructor.
    Unsafe,
}

/// Why a chain run failed.
///
/// - [`side`](Self::side): who failed ([`Side`]);
/// - [`retry`](Self::retry): whether the failed requests may be sent again ([`Retry`]);
///   every constructor starts at [`Retry::Unsafe`], the conservative answer: call
///   [`retry_safe`](Self::retry_safe) where the code knows nothing was written upstream;
/// - [`closes_connection`](Self::closes_connection): the client connection closes once the
///   error answers are written, for state the proxy cannot restore (subscriptions lost with
///   their upstream connection, answers that would come too late);
/// - a message, with the error that caused it ([`caused_by`](Self::caused_by), kept as
///   [`source`](Error::source)).
///
/// `Display` writes the message and then every cause, `: `-separated, as anyhow's `{:#}`
/// does: `cannot connect to upstream 127.0.0.1:6379: Connection refused (os error 111)`.
/// The source codecs send that text to the client (`-ERR shotover: …`). Since it already
/// holds the causes, print a `ChainError` itself, not through a reporter that walks
/// `source()` too.
///
/// `?` converts the errors transform code meets most: an [`std::io::Error`] is an upstream
/// failure, an [`anyhow::Error`] or a [`CodecError`] one of the proxy; all three are
/// [`Retry::Unsafe`] and keep the error's own text. Where the side is known better, say it:
/// `.map_err(|e| ChainError::client("…").caused_by(e))`.
pub struct ChainError {
    side: Side,
    retry: Retry,
    close: bool,
    /// None: the error is `cause` itself (a conversion), shown as it is.
    message: Option<Cow<'static, str>>,
    cause: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl ChainError {
    /// A failure of `side`, retry-unsafe, that keeps the connection open.
    pub fn new(side: Side, message: impl Into<Cow<'static, str>>) -> Self {
        ChainError { side, retry: Retry::Unsafe, close: false, message: Some(message.into()), cause: None }
    }

    /// The client's request cannot be handled.
    pub fn client(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Side::Client, message)
    }

    /// The upstream failed: unreachable, closed, timed out, or sent garbage.
    pub fn upstream(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Side::Upstream, message)
    }

    /// The proxy failed: a transform's own failure or bug.
    pub fn proxy(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Side::Proxy, message)
    }

    /// `error` as a failure of `side`, shown as `error` itself (its text and causes).
    pub fn wrap(side: Side, error: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> Self {
        ChainError { side, retry: Retry::Unsafe, close: false, message: None, cause: Some(error.into()) }
    }

    /// Keeps `cause` as the reason for this error: shown after the message, and returned
    /// by [`source`](Error::source).
    pub fn caused_by(mut self, cause: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> Self {
        match self.message {
            Some(_) => self.cause = Some(cause.into()),
            None => {
                // A conversion has no message of its own: the old cause becomes the message.
                let head = self.cause.take().map(|c| Cow::Owned(c.to_string()));
                self.message = head;
                self.cause = Some(cause.into());
            }
        }
        self
    }

    /// This error, explained by `message` in front of it; side and flags stay.
    pub fn context(self, message: impl Into<Cow<'static, str>>) -> Self {
        let (side, retry, close) = (self.side, self.retry, self.close);
        ChainError { side, retry, close, message: Some(message.into()), cause: Some(Box::new(self)) }
    }

    /// Nothing of the failed requests was written upstream: the client may send them again.
    pub fn retry_safe(self) -> Self {
        self.with_retry(Retry::Safe)
    }

    /// Sets whether the failed requests may be sent again.
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// The client connection must close after the error answers are written.
    pub fn close_connection(mut self) -> Self {
        self.close = true;
        self
    }

    /// Which side failed.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Whether the failed requests may be sent again.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// True when nothing of the failed requests was written upstream.
    pub fn is_retry_safe(&self) -> bool {
        self.retry == Retry::Safe
    }

    /// True when the client connection must close after the error answers.
    pub fn closes_connection(&self) -> bool {
        self.close
    }
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut separator = "";
        if let Some(message) = &self.message {
            f.write_str(message)?;
            separator = ": ";
        }
        let mut next: Option<&(dyn Error + 'static)> = self.cause.as_deref().map(|c| c as _);
        while let Some(cause) = next {
            f.write_str(separator)?;
            separator = ": ";
            if let Some(inner) = cause.downcast_ref::<ChainError>() {
                // Its own text holds the rest of the chain.
                return write!(f, "{inner}");
            }
            write!(f, "{cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainError")
            .field("side", &self.side)
            .field("retry", &self.retry)
            .field("close", &self.close)
            .field("error", &self.to_string())
            .finish()
    }
}

impl Error for ChainError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match (&self.message, &self.cause) {
            (Some(_), Some(cause)) => Some(cause.as_ref()),
            // A conversion is its cause: what follows it is the cause's own source.
            (None, Some(cause)) => cause.source(),
            (_, None) => None,
        }
    }
}

/// An upstream I/O failure (connect, write, read), retry-unsafe: at this level nothing
/// says whether the request was written.
impl From<std::io::Error> for ChainError {
    fn from(error: std::io::Error) -> Self {
        ChainError::wrap(Side::Upstream, error)
    }
}

/// A transform's own failure, retry-unsafe, with anyhow's text (its `{:#}`). If the error
/// holds a `ChainError`, its side and flags are kept.
impl From<anyhow::Error> for ChainError {
    fn from(error: anyhow::Error) -> Self {
        // Only a ChainError that is the outermost error comes back as it is: `downcast` also
        // finds one under a `.context(..)`, whose message would be lost.
        let error = match error.chain().next().is_some_and(|outer| outer.is::<ChainError>()) {
            true => match error.downcast::<ChainError>() {
                Ok(inner) => return inner,
                Err(error) => error,
            },
            false => error,
        };
        let flags = error.chain().find_map(|e| e.downcast_ref::<ChainError>()).map(|e| (e.side, e.retry, e.close));
        let (side, retry, close) = flags.unwrap_or((Side::Proxy, Retry::Unsafe, false));
        ChainError { side, retry, close, message: None, cause: Some(error.into()) }
    }
}

/// A message that does not parse or encode: the transform that needed it fails, as the
/// proxy's failure, retry-unsafe.
impl From<CodecError> for ChainError {
    fn from(error: CodecError) -> Self {
        ChainError::wrap(Side::Proxy, error)
    }
}

#[cfg(test)]
mod tests;
