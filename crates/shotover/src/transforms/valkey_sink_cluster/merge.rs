//! Merging: the replies of a request's sub-requests become its one response, as the
//! request's [`Merge`] says (integers summed, arrays joined, `MGET` values put back in the
//! order of the request's keys, a `SCAN` cursor made cluster-wide...).
//!
//! A sub-request that got no reply fails its request with `ERR shotover: ...` and counts as
//! a failed request; an error reply from a node is passed on as the node wrote it.

use super::plan::{Merge, Plan, Sub};
use crate::message::{Message, Protocol};
use bytes::Bytes;
use prometheus::IntCounter;
use shotover_protocols::valkey::frame::is_error_reply as is_error;
use shotover_protocols::valkey::frame::parse;
use shotover_protocols::valkey::ValkeyFrame;
use std::time::Instant;

/// The response to `request`, from the replies of its sub-requests (`plan.subs` of `subs`).
pub(super) fn merge(request: &Message, plan: &Plan, subs: &[Sub], failed_requests: &IntCounter) -> Message {
    let parts = subs.get(plan.subs.clone()).unwrap_or_default();
    let error = |text: String| {
        failed_requests.inc();
        Message::valkey_error_to(request, format!("ERR shotover: {text}"))
    };
    if let Merge::Error(text) = &plan.merge {
        return Message::valkey_error_to(request, text.clone());
    }
    // A failed sub-request fails the request; a node's own error reply is passed on.
    let mut replies = Vec::with_capacity(parts.len());
    for sub in parts {
        match &sub.reply {
            Ok(raw) => replies.push(raw.clone()),
            Err(reason) => return error(reason.to_string()),
        }
    }
    if let Some(err) = replies.iter().find(|r| is_error(r)).filter(|_| !matches!(plan.merge, Merge::Single)) {
        return reply_message(request, err.clone());
    }
    match &plan.merge {
        Merge::Single => match replies.into_iter().next() {
            Some(raw) => reply_message(request, raw),
            None => error("no reply".into()),
        },
        Merge::AllOk => match replies.into_iter().next() {
            Some(raw) => reply_message(request, raw),
            None => error("no node to send to".into()),
        },
        Merge::Sum => {
            let total: i64 =
                replies.iter().filter_map(|r| parse(r).ok()).map(|(f, _)| number(&f)).fold(0i64, i64::saturating_add);
            reply_message(request, Bytes::from(format!(":{total}\r\n")))
        }
        Merge::Concat => {
            let mut items = Vec::new();
            for raw in &replies {
                if let Ok((ValkeyFrame::Array { data, .. }, _)) = parse(raw) {
                    items.extend(data);
                }
            }
            frame_message(request, ValkeyFrame::Array { data: items, attributes: None })
        }
        Merge::AllOf => {
            let mut combined: Option<Vec<i64>> = None;
            for raw in &replies {
                let Ok((ValkeyFrame::Array { data, .. }, _)) = parse(raw) else { continue };
                let flags: Vec<i64> = data.iter().map(number).collect();
                combined = Some(match combined {
                    None => flags,
                    Some(acc) => acc.iter().zip(&flags).map(|(a, b)| (*a).min(*b)).collect(),
                });
            }
            let items = combined
                .unwrap_or_default()
                .into_iter()
                .map(|n| ValkeyFrame::Number { data: n, attributes: None })
                .collect();
            frame_message(request, ValkeyFrame::Array { data: items, attributes: None })
        }
        Merge::Mget(positions) => {
            let arrays: Vec<Vec<ValkeyFrame>> = replies
                .iter()
                .map(|raw| match parse(raw) {
                    Ok((ValkeyFrame::Array { data, .. }, _)) => data,
                    _ => Vec::new(),
                })
                .collect();
            let items = positions
                .iter()
                .map(|(sub, j)| {
                    sub.checked_sub(plan.subs.start)
                        .and_then(|k| arrays.get(k))
                        .and_then(|a| a.get(*j))
                        .cloned()
                        .unwrap_or(ValkeyFrame::Null)
                })
                .collect();
            frame_message(request, ValkeyFrame::Array { data: items, attributes: None })
        }
        Merge::Scan(index, masters) => {
            let Some(Ok((ValkeyFrame::Array { data, .. }, _))) = replies.first().map(parse) else {
                return error("unexpected SCAN reply".into());
            };
            let next = match data.first() {
                Some(ValkeyFrame::BlobString { data, .. }) => {
                    std::str::from_utf8(data).ok().and_then(|c| c.parse::<u64>().ok()).unwrap_or(0)
                }
                _ => 0,
            };
            let cursor = match (next, index + 1 < *masters) {
                (0, true) => (*index + 1) as u64,
                (0, false) => 0,
                (n, _) => (n << 8) | *index as u64,
            };
            let keys = data.get(1).cloned().unwrap_or(ValkeyFrame::Array { data: Vec::new(), attributes: None });
            let items = vec![shotover_protocols::valkey::frame::bulk(cursor.to_string()), keys];
            frame_message(request, ValkeyFrame::Array { data: items, attributes: None })
        }
        Merge::Error(_) => error("unreachable".into()),
    }
}

fn number(frame: &ValkeyFrame) -> i64 {
    match frame {
        ValkeyFrame::Number { data, .. } => *data,
        _ => 0,
    }
}

/// A reply from a node, as the response to `request`.
pub(super) fn reply_message(request: &Message, raw: Bytes) -> Message {
    let mut m = Message::from_bytes(raw, Protocol::Valkey, Instant::now());
    m.set_request_id(request.id());
    m
}

/// A response built by the proxy.
fn frame_message(request: &Message, frame: ValkeyFrame) -> Message {
    Message::response_to(request, crate::message::Frame::Valkey(frame))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{request, routes, three_masters, A};
    use super::*;
    use crate::sinks::valkey_slots::SlotMap;

    /// Plans `parts` over `map` (after another request, so that its sub-requests do not start
    /// the batch), gives its sub-requests `replies` in order and merges them: the response's
    /// bytes, and how many failed requests were counted.
    fn respond_with(map: &SlotMap, parts: &[&[u8]], replies: &[Result<&'static [u8], &str>]) -> (Bytes, u64) {
        let mut subs = Vec::new();
        routes(map).plan(&request(&[b"GET", b"bar"]), &mut subs);
        let request = request(parts);
        let plan = routes(map).plan(&request, &mut subs);
        assert_eq!(plan.subs.len(), replies.len(), "one reply per sub-request of {parts:?}");
        for (sub, reply) in subs.get_mut(plan.subs.clone()).unwrap_or_default().iter_mut().zip(replies) {
            sub.reply = reply.map(Bytes::from_static).map_err(|e| e.to_string().into());
        }
        let failed = IntCounter::new("failed_requests", "test").unwrap();
        let response = merge(&request, &plan, &subs, &failed);
        assert_eq!(response.request_id(), Some(request.id()));
        (response.to_bytes().unwrap(), failed.get())
    }

    fn respond(parts: &[&[u8]], replies: &[Result<&'static [u8], &str>]) -> Bytes {
        let (response, failed) = respond_with(&three_masters(), parts, replies);
        assert_eq!(failed, 0);
        response
    }

    #[test]
    fn mget_values_come_back_in_the_order_of_the_keys() {
        // Sub-requests: MGET foo {foo}x (C), MGET hello (A), MGET c (B).
        let replies = [Ok(&b"*2\r\n$3\r\nv-f\r\n$-1\r\n"[..]), Ok(b"*1\r\n$3\r\nv-h\r\n"), Ok(b"*1\r\n$3\r\nv-c\r\n")];
        let response = respond(&[b"MGET", b"foo", b"hello", b"{foo}x", b"c"], &replies);
        assert_eq!(response, &b"*4\r\n$3\r\nv-f\r\n$3\r\nv-h\r\n$-1\r\n$3\r\nv-c\r\n"[..]);
        // A reply shorter than asked for leaves nulls, not values of other keys.
        let response = respond(&[b"MGET", b"foo", b"hello", b"{foo}x"], &[Ok(b"*1\r\n$1\r\n1\r\n"), Ok(b"*0\r\n")]);
        assert_eq!(response, &b"*3\r\n$1\r\n1\r\n$-1\r\n$-1\r\n"[..]);
    }

    #[test]
    fn integer_replies_are_summed() {
        let response = respond(&[b"DEL", b"foo", b"hello", b"c"], &[Ok(b":1\r\n"), Ok(b":0\r\n"), Ok(b":1\r\n")]);
        assert_eq!(response, &b":2\r\n"[..]);
        let response = respond(&[b"DBSIZE"], &[Ok(b":3\r\n"), Ok(b":4\r\n"), Ok(b":5\r\n")]);
        assert_eq!(response, &b":12\r\n"[..]);
    }

    #[test]
    fn keys_are_joined_script_exists_needs_every_master_and_flushall_answers_once() {
        let keys = [Ok(&b"*1\r\n$3\r\nfoo\r\n"[..]), Ok(b"*0\r\n"), Ok(b"*2\r\n$1\r\nc\r\n$1\r\nk\r\n")];
        assert_eq!(respond(&[b"KEYS", b"*"], &keys), &b"*3\r\n$3\r\nfoo\r\n$1\r\nc\r\n$1\r\nk\r\n"[..]);
        let exists =
            [Ok(&b"*3\r\n:1\r\n:1\r\n:0\r\n"[..]), Ok(b"*3\r\n:1\r\n:0\r\n:0\r\n"), Ok(b"*3\r\n:1\r\n:1\r\n:0\r\n")];
        assert_eq!(respond(&[b"SCRIPT", b"EXISTS", b"s1", b"s2", b"s3"], &exists), &b"*3\r\n:1\r\n:0\r\n:0\r\n"[..]);
        let ok = [Ok(&b"+OK\r\n"[..]); 3];
        assert_eq!(respond(&[b"FLUSHALL"], &ok), &b"+OK\r\n"[..]);
    }

    #[test]
    fn an_error_reply_from_any_node_is_the_response() {
        let oom = &b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"[..];
        let response = respond(&[b"MSET", b"hello", b"1", b"foo", b"2"], &[Ok(b"+OK\r\n"), Ok(oom)]);
        assert_eq!(response, oom);
        let wrong = &b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"[..];
        let response = respond(&[b"MGET", b"foo", b"hello"], &[Ok(wrong), Ok(b"*1\r\n$1\r\n1\r\n")]);
        assert_eq!(response, wrong);
        assert_eq!(respond(&[b"GET", b"foo"], &[Ok(wrong)]), wrong);
    }

    #[test]
    fn a_sub_request_without_a_reply_fails_the_request_and_counts() {
        let lost = Err("node 10.0.0.3:7000: connection lost");
        let (response, failed) = respond_with(&three_masters(), &[b"DEL", b"hello", b"foo"], &[Ok(b":1\r\n"), lost]);
        assert_eq!(
            (response, failed),
            (Bytes::from_static(b"-ERR shotover: node 10.0.0.3:7000: connection lost\r\n"), 1)
        );
        let partial = SlotMap::from_ranges(&[(0, 5460, A)]);
        let unserved = Err("no node serves this slot");
        let (response, failed) = respond_with(&partial, &[b"MGET", b"hello", b"foo"], &[Ok(b"*1\r\n:1\r\n"), unserved]);
        assert_eq!((response, failed), (Bytes::from_static(b"-ERR shotover: no node serves this slot\r\n"), 1));
    }

    #[test]
    fn what_the_proxy_refuses_is_answered_but_not_counted_as_failed() {
        for (parts, answer) in [
            // Pub/sub never gets here (pubsub.rs takes it); if it did, a clear error.
            (
                &[&b"psubscribe"[..], b"n*"][..],
                &b"-ERR shotover: PSUBSCRIBE needs a pub/sub connection, and none is known\r\n"[..],
            ),
            (&[b"exec"], b"-ERR EXEC without MULTI\r\n"),
            (&[b"DISCARD"], b"-ERR DISCARD without MULTI\r\n"),
            (&[b"SCAN", b"nope"], b"-ERR invalid cursor\r\n"),
        ] {
            assert_eq!(respond(parts, &[]), answer);
        }
        let map = three_masters();
        let mut modified = request(&[b"GET", b"foo"]);
        modified.frame_mut().unwrap();
        let mut subs = Vec::new();
        let plan = routes(&map).plan(&modified, &mut subs);
        let failed = IntCounter::new("failed_requests", "test").unwrap();
        let response = merge(&modified, &plan, &subs, &failed).to_bytes().unwrap();
        assert_eq!(
            (response, failed.get()),
            (Bytes::from_static(b"-ERR shotover: cannot route a modified request\r\n"), 0)
        );
    }

    #[test]
    fn scan_cursors_become_cluster_wide() {
        // Master 0 of 3 has more: its cursor 17 moves up a byte, the master's index below it.
        let reply = respond(&[b"SCAN", b"0"], &[Ok(b"*2\r\n$2\r\n17\r\n*1\r\n$2\r\nk1\r\n")]);
        assert_eq!(reply, &b"*2\r\n$4\r\n4352\r\n*1\r\n$2\r\nk1\r\n"[..]);
        let reply = respond(&[b"SCAN", b"1", b"COUNT", b"5"], &[Ok(b"*2\r\n$2\r\n33\r\n*0\r\n")]);
        assert_eq!(reply, &b"*2\r\n$4\r\n8449\r\n*0\r\n"[..]);
        // Master 1 is done: go on with master 2 from its start.
        let reply = respond(&[b"SCAN", b"1"], &[Ok(b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\nk\r\n")]);
        assert_eq!(reply, &b"*2\r\n$1\r\n2\r\n*1\r\n$1\r\nk\r\n"[..]);
        // The last master is done: so is the scan.
        let reply = respond(&[b"SCAN", b"2"], &[Ok(b"*2\r\n$1\r\n0\r\n*0\r\n")]);
        assert_eq!(reply, &b"*2\r\n$1\r\n0\r\n*0\r\n"[..]);
        let (response, failed) = respond_with(&three_masters(), &[b"SCAN", b"0"], &[Ok(b"+OK\r\n")]);
        assert_eq!((response, failed), (Bytes::from_static(b"-ERR shotover: unexpected SCAN reply\r\n"), 1));
    }
}
