//! One client's connection to one Cassandra node.
//!
//! A client's requests are spread over several nodes, and the proxy adds requests of its own
//! (USE and PREPARE on the other nodes, a PREPARE again after UNPREPARED). So each node
//! connection numbers its streams itself: a request gets a free stream id of this
//! connection, and its answer is matched by that id and given back the client's.

use super::system::SystemQuery;
use crate::message::MessageId;
use crate::sinks::cassandra::CassandraConnection;
use bytes::Bytes;
use shotover_protocols::cassandra::header::{self, FrameHeader};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

/// What a client request needs done to its answer.
#[derive(Debug, Clone)]
pub enum Kind {
    Plain,
    /// A PREPARE: its answer is remembered for routing and re-preparing.
    Prepare {
        query: Rc<str>,
        keyspace: Option<String>,
        system: Option<Rc<SystemQuery>>,
    },
    /// A SELECT on a system table that is rewritten; with the column names of the prepared
    /// statement it executes, if any.
    System(Rc<SystemQuery>, Option<Rc<[String]>>),
}

/// A client request on its way to a node.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub request_id: MessageId,
    /// The client's header: its stream id is put back on the answer.
    pub header: FrameHeader,
    /// The frame as the client sent it, to send again after a re-prepare.
    pub frame: Bytes,
    /// The prepared statement an EXECUTE runs (or a BATCH's first one).
    pub prepared_id: Option<Bytes>,
    pub kind: Kind,
}

/// Why a request is on the wire.
#[derive(Debug)]
pub enum Purpose {
    Client(ClientRequest),
    /// The proxy's own, whose answer nobody waits for (USE, PREPARE on other nodes).
    Quiet,
    /// A PREPARE sent after UNPREPARED; the client request follows once it succeeds.
    Reprepare(ClientRequest),
    /// The node's schema version, read right after it ran a schema change: the answer
    /// waits until every node has that version.
    SchemaVersion(super::Parked),
}

pub struct Pending {
    pub purpose: Purpose,
    pub sent_at: Instant,
}

pub struct NodeConn {
    conn: CassandraConnection,
    in_flight: HashMap<i16, Pending>,
    next_stream: u16,
    pub frames: Vec<Bytes>,
}

/// Stream ids a connection can use: 0 to 32767 (v3+; negative ids are the server's).
const STREAMS: u16 = 1 << 15;

impl NodeConn {
    pub fn new(conn: CassandraConnection) -> Self {
        NodeConn { conn, in_flight: HashMap::new(), next_stream: 0, frames: Vec::new() }
    }

    fn free_stream(&mut self) -> Option<i16> {
        if self.in_flight.len() >= usize::from(STREAMS) {
            return None;
        }
        loop {
            let id = self.next_stream as i16;
            self.next_stream = (self.next_stream + 1) % STREAMS;
            if !self.in_flight.contains_key(&id) {
                return Some(id);
            }
        }
    }

    /// Queues `frame` on a stream of this connection's own; flushed by [`NodeConn::poll_flush`].
    pub fn queue(&mut self, frame: &[u8], purpose: Purpose, now: Instant) -> io::Result<()> {
        let stream =
            self.free_stream().ok_or_else(|| io::Error::other("every stream id of the connection is in use"))?;
        let mut copy = frame.to_vec();
        header::set_stream_id(&mut copy, stream).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.conn.queue(&[Bytes::from(copy)])?;
        self.in_flight.insert(stream, Pending { purpose, sent_at: now });
        Ok(())
    }

    pub fn has_queued(&self) -> bool {
        self.conn.has_queued()
    }

    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.poll_flush(cx)
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.conn.flush().await
    }

    /// Reads what the node sent into `self.frames`; ready once there is at least one.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mode =
            if self.in_flight.is_empty() { crate::stream::ReadMode::Wait } else { crate::stream::ReadMode::Spin };
        self.conn.poll_frames(cx, mode, &mut self.frames)
    }

    /// Moves frames already read into `self.frames`.
    pub fn take_frames(&mut self) -> io::Result<()> {
        self.conn.take_frames(&mut self.frames)
    }

    /// The request a node frame answers (none for an EVENT or an unknown stream).
    pub fn answered(&mut self, frame: &[u8]) -> Option<Pending> {
        let stream = header::stream_id(frame).ok()?;
        self.in_flight.remove(&stream)
    }

    pub fn compression(&self) -> shotover_protocols::cassandra::Compression {
        self.conn.compression()
    }

    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// When the oldest request still unanswered was sent.
    pub fn oldest_sent(&self) -> Option<Instant> {
        self.in_flight.values().map(|p| p.sent_at).min()
    }

    /// Every request still unanswered, for failing them when the connection is lost.
    pub fn drain(&mut self) -> impl Iterator<Item = Pending> + '_ {
        self.in_flight.drain().map(|(_, p)| p)
    }
}

/// A frame with the client's stream id put back.
pub fn with_stream(frame: &[u8], stream: i16) -> Bytes {
    let mut copy = frame.to_vec();
    let _ = header::set_stream_id(&mut copy, stream);
    Bytes::from(copy)
}
