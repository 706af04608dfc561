//! A worker core's shared connection to one Valkey node, multiplexed: the batches of many
//! client connections go into it back to back, and its replies are handed back in the same
//! order (Valkey answers one connection's commands in order).
//!
//! One task per connection, the driver, owns the socket. It writes everything queued since
//! its last write in one write, so the requests of many clients cost one syscall, and reads
//! replies whenever some are owed. Callers [`Mux::submit_with`] their bytes, which queues them at
//! once, and then wait on the [`Ticket`]; a client sending to several nodes submits to all of
//! them before waiting, so the nodes work in parallel.
//!
//! Only commands that leave no state on the connection may use it: a client that sends one
//! ([`keeps_state`]) gets connections of its own from then on (ValkeySinkSingle and
//! ValkeySinkCluster both do this).

use super::valkey::ValkeyConnection;
use super::UpstreamTls;
use crate::message::Message;
use crate::stream::ReadMode;
use bytes::{Bytes, BytesMut};
use shotover_protocols::valkey::command::{array_strings, Special};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// Why a ticket got no replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxError {
    /// Nothing was written: the commands may be sent again, elsewhere.
    NotSent(String),
    /// Written, but the connection was lost before every reply came: they may have run.
    Lost(String),
}

/// Commands that change or depend on the state of their connection, or that are not plain
/// command arrays: a client that sends one must get connections of its own from then on, so
/// that no state leaks between clients through a shared connection (and no blocking command
/// holds one up).
pub fn keeps_state(request: &Message) -> bool {
    // A shared connection pairs replies with requests by count: only a plain command array
    // is sure to get exactly one reply (an inline command, or another RESP value, can get
    // several, and would shift every other client's replies).
    if !request.is_valkey_command_array() {
        return true;
    }
    let Some(view) = request.valkey_request() else { return true };
    match view.special {
        Special::None => false,
        // CLIENT SETINFO only labels the connection (drivers send it on connect).
        Special::Client => !request
            .raw()
            .is_some_and(|raw| array_strings(raw).get(1).is_some_and(|s| s.eq_ignore_ascii_case(b"SETINFO"))),
        // Every other special command binds state to its connection or changes what it
        // carries for everyone on it: AUTH, HELLO, SELECT, READONLY, READWRITE, RESET, MULTI
        // and WATCH set state; QUIT closes it; SYNC, PSYNC and REPLCONF turn it into a
        // replication stream; ASKING applies to the next command whoever sends it; MONITOR
        // and the subscribe family stream messages (and an UNSUBSCRIBE of three channels
        // gets three replies even when not subscribed); blocking commands hold it for long.
        _ => true,
    }
}

#[derive(Default)]
struct TicketState {
    expected: usize,
    replies: Vec<Bytes>,
    outcome: Option<Result<Vec<Bytes>, MuxError>>,
    waker: Option<Waker>,
}

/// Settles a ticket and wakes its caller. No `RefCell` borrow may be held across this call:
/// waking may run other code of this core that borrows the same cells.
fn finish(ticket: &Rc<RefCell<TicketState>>, outcome: Result<Vec<Bytes>, MuxError>) {
    let waker = {
        let mut t = ticket.borrow_mut();
        t.outcome = Some(outcome);
        t.waker.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// The replies owed for one [`Mux::submit_with`].
pub struct Ticket(Rc<RefCell<TicketState>>);

impl Ticket {
    /// Waits for every reply, in the order the commands were submitted.
    pub async fn wait(self) -> Result<Vec<Bytes>, MuxError> {
        poll_fn(|cx| {
            let mut t = self.0.borrow_mut();
            match t.outcome.take() {
                Some(outcome) => Poll::Ready(outcome),
                None => {
                    t.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

struct State {
    node: SocketAddr,
    /// What `node` is, for error messages: "upstream", "cluster node".
    what: &'static str,
    timeout: Duration,
    tls: Option<UpstreamTls>,
    /// Bytes submitted and not written yet.
    outbox: BytesMut,
    /// The tickets of `outbox`, oldest first.
    queued: Vec<Rc<RefCell<TicketState>>>,
    /// Tickets written and still owed replies, oldest first.
    written: VecDeque<Rc<RefCell<TicketState>>>,
    driver: Option<Waker>,
    running: bool,
}

/// One multiplexed connection to a node (connected on first use, and again after a loss).
pub struct Mux(Rc<RefCell<State>>);

impl Mux {
    pub fn new(node: SocketAddr, what: &'static str, timeout: Duration, tls: Option<UpstreamTls>) -> Self {
        Mux(Rc::new(RefCell::new(State {
            node,
            what,
            timeout,
            tls,
            outbox: BytesMut::new(),
            queued: Vec::new(),
            written: VecDeque::new(),
            driver: None,
            running: false,
        })))
    }

    /// Queues what `encode` appends to the outbox, behind everything submitted before; it
    /// holds `replies` commands. The bytes are copied once, straight into the next write.
    pub fn submit_with(&self, replies: usize, encode: impl FnOnce(&mut BytesMut)) -> Ticket {
        let ticket = Rc::new(RefCell::new(TicketState { expected: replies, ..TicketState::default() }));
        if replies == 0 {
            finish(&ticket, Ok(Vec::new()));
            return Ticket(ticket);
        }
        let (start, driver) = {
            let mut st = self.0.borrow_mut();
            encode(&mut st.outbox);
            st.queued.push(ticket.clone());
            let start = !st.running;
            st.running = true;
            (start, st.driver.take())
        };
        // With no borrow held: the driver may run at once.
        if start {
            crate::rt::spawn_local(drive(self.0.clone())).detach();
        } else if let Some(driver) = driver {
            driver.wake();
        }
        Ticket(ticket)
    }
}

impl Drop for Mux {
    /// Lets the driver notice that nobody can submit any more: it ends once nothing is owed.
    fn drop(&mut self) {
        let driver = self.0.borrow_mut().driver.take();
        if let Some(driver) = driver {
            driver.wake();
        }
    }
}

enum Work {
    Write(BytesMut, Vec<Rc<RefCell<TicketState>>>),
    Reply(std::io::Result<Bytes>),
    /// The mux is gone and nothing is owed: close the connection.
    Exit,
}

fn fail_all(tickets: impl IntoIterator<Item = Rc<RefCell<TicketState>>>, error: &MuxError) {
    for ticket in tickets {
        finish(&ticket, Err(error.clone()));
    }
}

/// The driver: writes what is queued, reads what is owed, for as long as the core runs.
async fn drive(state: Rc<RefCell<State>>) {
    let (node, what, timeout, tls) = {
        let st = state.borrow();
        (st.node, st.what, st.timeout, st.tls.clone())
    };
    let mut conn: Option<ValkeyConnection> = None;
    loop {
        let work = poll_fn(|cx| {
            let mut st = state.borrow_mut();
            if !st.outbox.is_empty() {
                let bytes = st.outbox.split();
                let tickets = std::mem::take(&mut st.queued);
                return Poll::Ready(Work::Write(bytes, tickets));
            }
            if !st.written.is_empty() {
                if let Some(c) = conn.as_mut() {
                    if let Poll::Ready(reply) = c.poll_next(cx, ReadMode::Spin) {
                        return Poll::Ready(Work::Reply(reply));
                    }
                }
            } else if Rc::strong_count(&state) == 1 {
                // Only this task holds the state: the Mux was dropped (its node left the
                // cluster) and every ticket is settled.
                return Poll::Ready(Work::Exit);
            }
            st.driver = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        match work {
            Work::Write(bytes, tickets) => {
                if conn.as_ref().is_some_and(|c| state.borrow().written.is_empty() && c.closed_while_idle()) {
                    conn = None;
                }
                if conn.is_none() {
                    match ValkeyConnection::connect(node, timeout, tls.as_ref()).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            // What was queued during the attempt fails too: each waiting for
                            // a connect timeout of its own would make a dead node cost many.
                            let error = MuxError::NotSent(format!("cannot connect to {what} {node}: {e}"));
                            let queued = {
                                let mut st = state.borrow_mut();
                                st.outbox.clear();
                                std::mem::take(&mut st.queued)
                            };
                            fail_all(tickets.into_iter().chain(queued), &error);
                            continue;
                        }
                    }
                }
                let written = match conn.as_mut() {
                    Some(c) => c.write_all(&bytes).await,
                    None => Err(std::io::Error::other("not connected")),
                };
                match written {
                    Ok(()) => state.borrow_mut().written.extend(tickets),
                    Err(e) => {
                        conn = None;
                        // Part of the write (whole commands of several clients) may have
                        // reached the node: they may have run, so they must not be retried.
                        fail_all(tickets, &MuxError::Lost(format!("{what} {node}: {e}")));
                        let owed = std::mem::take(&mut state.borrow_mut().written);
                        fail_all(owed, &MuxError::Lost(format!("{what} {node}: {e}")));
                    }
                }
            }
            Work::Reply(Ok(reply)) => {
                let complete = {
                    let mut st = state.borrow_mut();
                    let done = st.written.front().is_some_and(|front| {
                        let mut t = front.borrow_mut();
                        t.replies.push(reply);
                        t.replies.len() >= t.expected
                    });
                    if done {
                        st.written.pop_front()
                    } else {
                        None
                    }
                };
                if let Some(ticket) = complete {
                    let replies = std::mem::take(&mut ticket.borrow_mut().replies);
                    finish(&ticket, Ok(replies));
                }
            }
            Work::Exit => return,
            Work::Reply(Err(e)) => {
                conn = None;
                let owed = std::mem::take(&mut state.borrow_mut().written);
                fail_all(owed, &MuxError::Lost(format!("{what} {node}: {e}")));
            }
        }
    }
}
