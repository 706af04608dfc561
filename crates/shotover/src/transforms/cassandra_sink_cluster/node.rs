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
use std::collections::{HashMap, VecDeque};
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
    /// The stream of a request that changes the connection's state (a USE), until its
    /// answer comes. Cassandra runs the requests of one connection concurrently, so a
    /// PREPARE sent right behind a USE can run before it, without the keyspace; what is
    /// queued meanwhile waits in `held`.
    gate: Option<i16>,
    held: VecDeque<Held>,
    /// When the connection was opened: one that fails soon after is a sign of a node going
    /// down, one that served a while and then broke is reopened at once.
    pub opened_at: Instant,
    /// When a request was last sent or answered.
    last_active: Instant,
}

struct Held {
    frame: Bytes,
    purpose: Purpose,
    gates: bool,
}

/// Stream ids a connection can use: 0 to 32767 (v3+; negative ids are the server's).
const STREAMS: u16 = 1 << 15;

impl NodeConn {
    pub fn new(conn: CassandraConnection) -> Self {
        NodeConn {
            conn,
            in_flight: HashMap::new(),
            next_stream: 0,
            frames: Vec::new(),
            gate: None,
            held: VecDeque::new(),
            opened_at: Instant::now(),
            last_active: Instant::now(),
        }
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
    /// Behind a gate (see [`NodeConn::queue_gate`]) it waits for the gate's answer instead.
    pub fn queue(&mut self, frame: &[u8], purpose: Purpose, now: Instant) -> io::Result<()> {
        if self.gate.is_some() {
            self.held.push_back(Held { frame: Bytes::copy_from_slice(frame), purpose, gates: false });
            return Ok(());
        }
        self.send(frame, purpose, now).map(|_| ())
    }

    /// Queues a request that changes the connection's state (a USE): what is queued after
    /// it is sent only once it is answered.
    pub fn queue_gate(&mut self, frame: &[u8], purpose: Purpose, now: Instant) -> io::Result<()> {
        if self.gate.is_some() {
            self.held.push_back(Held { frame: Bytes::copy_from_slice(frame), purpose, gates: true });
            return Ok(());
        }
        let stream = self.send(frame, purpose, now)?;
        self.gate = Some(stream);
        Ok(())
    }

    /// Sends what waited behind a gate that has been answered, up to the next gate. On an
    /// error the request stays held, for [`NodeConn::drain`].
    pub fn release_held(&mut self) -> io::Result<()> {
        if self.gate.is_some() || self.held.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        while self.gate.is_none() {
            // Bytes clone: a reference count, so that the request stays held if this fails.
            let Some(frame) = self.held.front().map(|h| h.frame.clone()) else { return Ok(()) };
            let stream = self.write(&frame)?;
            let Some(held) = self.held.pop_front() else { return Ok(()) };
            self.in_flight.insert(stream, Pending { purpose: held.purpose, sent_at: now });
            self.gate = held.gates.then_some(stream);
        }
        Ok(())
    }

    /// Writes `frame` on a free stream, and remembers `purpose` for its answer.
    fn send(&mut self, frame: &[u8], purpose: Purpose, now: Instant) -> io::Result<i16> {
        let stream = self.write(frame)?;
        self.in_flight.insert(stream, Pending { purpose, sent_at: now });
        Ok(stream)
    }

    /// Writes `frame` on a free stream; the stream id.
    fn write(&mut self, frame: &[u8]) -> io::Result<i16> {
        let stream =
            self.free_stream().ok_or_else(|| io::Error::other("every stream id of the connection is in use"))?;
        let mut copy = frame.to_vec();
        header::set_stream_id(&mut copy, stream).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.conn.queue(&[Bytes::from(copy)])?;
        self.last_active = Instant::now();
        Ok(stream)
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

    /// The request a node frame answers (none for an EVENT or an unknown stream). An
    /// answered gate opens; [`NodeConn::release_held`] then sends what waited behind it.
    pub fn answered(&mut self, frame: &[u8]) -> Option<Pending> {
        let stream = header::stream_id(frame).ok()?;
        let pending = self.in_flight.remove(&stream)?;
        self.last_active = Instant::now();
        if self.gate == Some(stream) {
            self.gate = None;
        }
        Some(pending)
    }

    pub fn compression(&self) -> shotover_protocols::cassandra::Compression {
        self.conn.compression()
    }

    /// Requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.held.is_empty()
    }

    /// How long the connection has had nothing in flight nor held; `None` while it has.
    pub fn idle_for(&self, now: Instant) -> Option<std::time::Duration> {
        self.is_idle().then(|| now.saturating_duration_since(self.last_active))
    }

    /// True when requests have waited `limit` or more, and every one of them is the proxy's
    /// own ([`Purpose::Quiet`]): the node stopped answering, and no client waits on it yet.
    pub fn silent_on_own_requests(&self, limit: std::time::Duration) -> bool {
        let mut late = self.in_flight.values().filter(|p| p.sent_at.elapsed() >= limit).peekable();
        late.peek().is_some() && late.all(|p| matches!(p.purpose, Purpose::Quiet))
    }

    /// When the oldest request still unanswered was sent.
    pub fn oldest_sent(&self) -> Option<Instant> {
        self.in_flight.values().map(|p| p.sent_at).min()
    }

    /// Every request still unanswered or held, for failing them when the connection is lost.
    pub fn drain(&mut self) -> impl Iterator<Item = Pending> + '_ {
        let now = Instant::now();
        let held = self.held.drain(..).map(move |h| Pending { purpose: h.purpose, sent_at: now });
        self.in_flight.drain().map(|(_, p)| p).chain(held)
    }
}

/// A frame with the client's stream id put back.
pub fn with_stream(frame: &[u8], stream: i16) -> Bytes {
    let mut copy = frame.to_vec();
    let _ = header::set_stream_id(&mut copy, stream);
    Bytes::from(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::testing::on_a_core;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// A v4 frame: header (request or response) and body.
    fn frame(response: bool, stream: i16, opcode: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![if response { 0x84 } else { 0x04 }, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.push(opcode);
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn query(cql: &str) -> Vec<u8> {
        let mut body = (cql.len() as i32).to_be_bytes().to_vec();
        body.extend_from_slice(cql.as_bytes());
        body.extend_from_slice(&[0, 1, 0]);
        frame(false, 0, 0x07, &body)
    }

    /// Reads one frame, as the node would; `None` when nothing comes within `wait`.
    fn read_frame(s: &mut std::net::TcpStream, wait: Duration) -> Option<Vec<u8>> {
        s.set_read_timeout(Some(wait)).ok()?;
        let mut header = [0u8; 9];
        s.read_exact(&mut header).ok()?;
        let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).ok()?;
        Some([header.to_vec(), body].concat())
    }

    /// A connection with nothing in flight is idle; one whose only late request is the
    /// proxy's own is silent, and not before the limit.
    #[test]
    fn idle_and_silent_connections_are_told() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        // The far end stands in for a node that accepts and never answers.
        let node =
            std::thread::spawn(move || listener.accept().map(|(s, _)| read_frame(&mut { s }, Duration::from_secs(2))));
        on_a_core(move || async move {
            let conn = CassandraConnection::connect(address, Duration::from_secs(5), None).await.unwrap();
            let mut conn = NodeConn::new(conn);
            assert!(conn.idle_for(Instant::now()).is_some());
            let limit = Duration::from_millis(200);
            conn.queue(&frame(false, 0, 0x05, &[]), Purpose::Quiet, Instant::now()).unwrap();
            conn.flush().await.unwrap();
            assert_eq!(conn.idle_for(Instant::now()), None);
            assert!(!conn.silent_on_own_requests(limit), "not before the limit");
            crate::rt::sleep(limit).await;
            assert!(conn.silent_on_own_requests(limit));
        });
        assert!(node.join().unwrap().is_ok_and(|f| f.is_some_and(|f| f[4] == 0x05)), "the OPTIONS reached the node");
    }

    /// A query queued behind a USE reaches the node only after the node answered the USE
    /// (Cassandra would run the two concurrently), and a second USE gates again.
    #[test]
    fn requests_behind_a_use_wait_for_its_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        // The far end stands in for the node: it records what arrives, and when.
        let node = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let first = read_frame(&mut s, Duration::from_secs(5)).unwrap();
            seen.push(format!("opcode {} before any answer", first[4]));
            // Nothing else comes while the USE is unanswered.
            if let Some(f) = read_frame(&mut s, Duration::from_millis(300)) {
                seen.push(format!("opcode {} before the USE was answered", f[4]));
            }
            let mut set_keyspace = vec![0, 0, 0, 3, 0, 2];
            set_keyspace.extend_from_slice(b"ks");
            s.write_all(&frame(true, i16::from_be_bytes([first[2], first[3]]), 0x08, &set_keyspace)).unwrap();
            while let Some(f) = read_frame(&mut s, Duration::from_secs(2)) {
                seen.push(format!("opcode {} after the answer", f[4]));
            }
            seen
        });
        on_a_core(move || async move {
            let conn = CassandraConnection::connect(address, Duration::from_secs(5), None).await.unwrap();
            let mut conn = NodeConn::new(conn);
            let now = Instant::now();
            conn.queue_gate(&query("USE ks"), Purpose::Quiet, now).unwrap();
            conn.queue(&query("SELECT v FROM t"), Purpose::Quiet, now).unwrap();
            conn.queue_gate(&query("USE other"), Purpose::Quiet, now).unwrap();
            conn.queue(&query("SELECT v FROM u"), Purpose::Quiet, now).unwrap();
            assert!(!conn.is_idle());
            conn.flush().await.unwrap();
            // The USE's answer opens the gate: the SELECT and the second USE go out, and the
            // last SELECT waits for that one.
            while conn.frames.is_empty() {
                std::future::poll_fn(|cx| conn.poll_read(cx)).await.unwrap();
            }
            for f in std::mem::take(&mut conn.frames) {
                assert!(conn.answered(&f).is_some());
            }
            conn.release_held().unwrap();
            conn.flush().await.unwrap();
            assert_eq!(conn.drain().count(), 3, "two sent and unanswered, one held");
        });
        assert_eq!(
            node.join().unwrap(),
            ["opcode 7 before any answer", "opcode 7 after the answer", "opcode 7 after the answer"]
        );
    }
}
