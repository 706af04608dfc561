use super::*;
use crate::chain::{Retry, Side};
use crate::observability::metrics::SourceToSink;
use crate::sinks::testing::{closed_port, on_a_core};
use std::time::Duration;

fn sink(address: std::net::SocketAddr) -> ValkeySinkSingle {
    let upstream = Upstream { address, tls: None, connect_timeout: Duration::from_secs(1), read_timeout: None };
    let failed = IntCounter::new("failed", "failed").unwrap();
    ValkeySinkSingle::new(Rc::new(upstream), failed, SourceToSink::unregistered())
}

fn get() -> Message {
    Message::from_bytes(Bytes::from_static(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), Protocol::Valkey, Instant::now())
}

#[test]
fn an_unreachable_upstream_is_an_upstream_failure_safe_to_retry() {
    let address = closed_port();
    let (side, retry, close, text, reply) = on_a_core(move || async move {
        let mut sink = sink(address);
        let e = sink.connection().await.err().expect("nothing listens there");
        let mut state = ChainState::last(vec![get()]);
        let responses = sink.transform(&mut state).await.expect("each request gets its own error");
        let reply = responses.first().and_then(|r| r.to_bytes().ok()).map(|r| String::from_utf8_lossy(&r).into_owned());
        (e.side(), e.retry(), e.closes_connection(), e.to_string(), reply)
    });
    assert_eq!((side, retry, close), (Side::Upstream, Retry::Safe, false));
    let expected = format!("cannot connect to upstream {address}: ");
    assert!(text.starts_with(&expected), "{text}");
    // The client's reply carries the same text as before the typed error.
    assert_eq!(reply, Some(format!("-ERR shotover: {text}\r\n")));
}

#[test]
fn subscriptions_lost_with_the_upstream_close_the_client_connection() {
    let e = futures_lite::future::block_on(async {
        let mut sink = sink(closed_port());
        sink.follower.observe(b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
        sink.connection_lost("upstream read failed: connection reset");
        sink.transform(&mut ChainState::last(vec![get()])).await.expect_err("the connection closes")
    });
    assert_eq!((e.side(), e.retry(), e.closes_connection()), (Side::Upstream, Retry::Safe, true));
    assert_eq!(
        e.to_string(),
        "upstream connection lost while subscribed or monitoring: upstream read failed: connection reset"
    );
}

#[test]
fn a_subscribed_upstream_lost_while_idle_is_reported_once() {
    let mut sink = sink(closed_port());
    sink.follower.observe(b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    sink.connection_lost("closed while idle");
    // The batch that finds the connection gone reports its own failure with that reason.
    let reason = sink.lost.clone().unwrap_or_default();
    sink.connection_lost(&reason);
    assert_eq!(
        sink.lost.as_deref(),
        Some("upstream connection lost while subscribed or monitoring: closed while idle")
    );
}
