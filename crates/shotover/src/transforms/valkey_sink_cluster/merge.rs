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
use shotover_protocols::valkey::commands::ResponsePolicy;
use shotover_protocols::valkey::frame::is_error_reply as is_error;
use shotover_protocols::valkey::frame::parse;
use shotover_protocols::valkey::ValkeyFrame;
use std::borrow::Cow;
use std::time::Instant;

/// The response to `request`, from the replies of its sub-requests (`plan.subs` of `subs`).
/// A single sub-request's reply is moved out of `subs`, not copied.
pub(super) fn merge(request: &Message, plan: &Plan, subs: &mut [Sub], failed_requests: &IntCounter) -> Message {
    let error = |text: String| {
        failed_requests.inc();
        Message::valkey_error_to(request, format!("ERR shotover: {text}"))
    };
    match &plan.merge {
        Merge::Error(text) => return Message::valkey_error_to(request, text.clone()),
        Merge::Local(bytes) => return reply_message(request, Bytes::from_static(bytes)),
        _ => {}
    }
    if plan.merge == Merge::Single {
        // The common case, one node's reply as it is: no list of replies to build.
        let taken = Err(Cow::Borrowed("reply already taken"));
        let first = subs.get_mut(plan.subs.clone()).and_then(|parts| parts.first_mut());
        return match first.map(|sub| std::mem::replace(&mut sub.reply, taken)) {
            Some(Ok(raw)) => reply_message(request, raw),
            Some(Err(reason)) => error(reason.to_string()),
            None => error("no node to send to".into()),
        };
    }
    let parts = subs.get(plan.subs.clone()).unwrap_or_default();
    // A failed sub-request fails the request; a node's own error reply is passed on.
    let mut replies = Vec::with_capacity(parts.len());
    for sub in parts {
        match &sub.reply {
            Ok(raw) => replies.push(raw.clone()),
            Err(reason) => return error(reason.to_string()),
        }
    }
    let first_error = replies.iter().position(|r| is_error(r));
    match (&plan.merge, first_error) {
        (Merge::Policy(ResponsePolicy::OneSucceeded), _) => {
            let success = replies.iter().position(|r| !is_error(r)).unwrap_or(0);
            return match replies.get(success) {
                Some(raw) => reply_message(request, raw.clone()),
                None => error("no node to send to".into()),
            };
        }
        (_, Some(at)) => {
            let Some(err) = replies.get(at).cloned() else { return error("no reply".into()) };
            // Some nodes did it and some did not: say which refused.
            let mixed = replies.iter().any(|r| !is_error(r));
            return match (mixed, parts.get(at)) {
                (true, Some(sub)) => {
                    let text = String::from_utf8_lossy(err.get(1..).unwrap_or_default());
                    Message::valkey_error_to(request, format!("{} (from node {})", text.trim_end(), sub.node))
                }
                _ => reply_message(request, err),
            };
        }
        (_, None) => {}
    }
    let Some(first) = replies.first().cloned() else { return error("no node to send to".into()) };
    match &plan.merge {
        Merge::Policy(ResponsePolicy::AggSum) => aggregate(request, &replies, i64::saturating_add),
        Merge::Policy(ResponsePolicy::AggMin) => aggregate(request, &replies, i64::min),
        Merge::Policy(ResponsePolicy::AggMax) => aggregate(request, &replies, i64::max),
        Merge::Policy(ResponsePolicy::AggLogicalAnd) => {
            aggregate(request, &replies, |a, b| i64::from(a != 0 && b != 0))
        }
        Merge::Policy(ResponsePolicy::AggLogicalOr) => aggregate(request, &replies, |a, b| i64::from(a != 0 || b != 0)),
        Merge::Policy(ResponsePolicy::Default) => {
            // Arrays are joined (KEYS, SLOWLOG GET); anything else is the first node's.
            let mut items = Vec::new();
            for raw in &replies {
                match parse(raw) {
                    Ok((ValkeyFrame::Array { data, .. }, _)) => items.extend(data),
                    _ => return reply_message(request, first),
                }
            }
            frame_message(request, ValkeyFrame::Array { data: items, attributes: None })
        }
        Merge::Info => match super::info::merge_info(&replies) {
            Some(raw) => reply_message(request, raw),
            None => reply_message(request, first),
        },
        Merge::RandomKey => {
            let keys: Vec<&Bytes> = replies.iter().filter(|r| !matches!(r.as_ref(), b"$-1\r\n" | b"_\r\n")).collect();
            match keys.get(random_below(keys.len())) {
                Some(key) => reply_message(request, (*key).clone()),
                None => reply_message(request, first),
            }
        }
        Merge::LatencyLatest => frame_message(request, latency_latest(&replies)),
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
            let Ok((ValkeyFrame::Array { data, .. }, _)) = parse(&first) else {
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
        // All succeeded (or one did), the special ones without a rule of their own (MEMORY
        // STATS, LATENCY DOCTOR): the first node's reply.
        _ => reply_message(request, first),
    }
}

/// Integer replies combined with `f`; arrays of integers element by element (SCRIPT
/// EXISTS). A reply of another kind is passed on as the first node wrote it.
fn aggregate(request: &Message, replies: &[Bytes], f: impl Fn(i64, i64) -> i64) -> Message {
    let frames: Vec<ValkeyFrame> = replies.iter().filter_map(|r| parse(r).ok()).map(|(f, _)| f).collect();
    let combined = match frames.first() {
        Some(ValkeyFrame::Number { .. }) => {
            frames.iter().map(number).reduce(&f).map(|n| ValkeyFrame::Number { data: n, attributes: None })
        }
        Some(ValkeyFrame::Array { .. }) => {
            let mut acc: Option<Vec<i64>> = None;
            for frame in &frames {
                let ValkeyFrame::Array { data, .. } = frame else { continue };
                let flags: Vec<i64> = data.iter().map(number).collect();
                acc = Some(match acc {
                    None => flags,
                    Some(acc) => acc.iter().zip(&flags).map(|(a, b)| f(*a, *b)).collect(),
                });
            }
            let items = acc.unwrap_or_default().into_iter().map(|n| ValkeyFrame::Number { data: n, attributes: None });
            Some(ValkeyFrame::Array { data: items.collect(), attributes: None })
        }
        _ => None,
    };
    match combined {
        Some(frame) if frames.len() == replies.len() => frame_message(request, frame),
        _ => reply_message(request, replies.first().cloned().unwrap_or_default()),
    }
}

/// LATENCY LATEST from every node: `[event, time of latest, latest ms, max ms]` per event,
/// merged by event: the most recent sample, and the largest.
fn latency_latest(replies: &[Bytes]) -> ValkeyFrame {
    let mut events: Vec<(ValkeyFrame, i64, i64, i64)> = Vec::new();
    for raw in replies {
        let Ok((ValkeyFrame::Array { data, .. }, _)) = parse(raw) else { continue };
        for event in data {
            let ValkeyFrame::Array { data: fields, .. } = event else { continue };
            let (Some(name), Some(at), Some(latest), Some(max)) =
                (fields.first(), fields.get(1), fields.get(2), fields.get(3))
            else {
                continue;
            };
            let (at, latest, max) = (number(at), number(latest), number(max));
            match events.iter_mut().find(|(n, ..)| n == name) {
                Some(known) => {
                    if at > known.1 {
                        (known.1, known.2) = (at, latest);
                    }
                    known.3 = known.3.max(max);
                }
                None => events.push((name.clone(), at, latest, max)),
            }
        }
    }
    let int = |n: i64| ValkeyFrame::Number { data: n, attributes: None };
    let data = events
        .into_iter()
        .map(|(name, at, latest, max)| ValkeyFrame::Array {
            data: vec![name, int(at), int(latest), int(max)],
            attributes: None,
        })
        .collect();
    ValkeyFrame::Array { data, attributes: None }
}

/// A number below `n` (0 when `n` is 0), different from call to call: the standard
/// library's random hash keys, so that no random-number crate is needed for RANDOMKEY.
fn random_below(n: usize) -> usize {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
    usize::try_from(random % (n.max(1) as u64)).unwrap_or(0)
}

fn number(frame: &ValkeyFrame) -> i64 {
    match frame {
        ValkeyFrame::Number { data, .. } => *data,
        _ => 0,
    }
}

/// A reply from a node, as the response to `request`. Its time of arrival is the core's last
/// read: the reply was read in this turn, and the clock is not read again for each reply.
pub(super) fn reply_message(request: &Message, raw: Bytes) -> Message {
    let read_at = shotover_executor::io::last_arrival().unwrap_or_else(Instant::now);
    let mut m = Message::from_bytes(raw, Protocol::Valkey, read_at);
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
        let response = merge(&request, &plan, &mut subs, &failed);
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
        // Some nodes did it: the error names the node that did not.
        let response = respond(&[b"MSET", b"hello", b"1", b"foo", b"2"], &[Ok(b"+OK\r\n"), Ok(oom)]);
        assert_eq!(
            response,
            &b"-OOM command not allowed when used memory > 'maxmemory'. (from node 10.0.0.3:7000)\r\n"[..]
        );
        let wrong = &b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"[..];
        let response = respond(&[b"MGET", b"foo", b"hello"], &[Ok(wrong), Ok(b"*1\r\n$1\r\n1\r\n")]);
        assert!(response.ends_with(b"value (from node 10.0.0.3:7000)\r\n"));
        // Every node refused: the error as the nodes wrote it.
        assert_eq!(respond(&[b"FLUSHALL"], &[Ok(oom), Ok(oom), Ok(oom)]), oom);
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
        let response = merge(&modified, &plan, &mut subs, &failed).to_bytes().unwrap();
        assert_eq!(
            (response, failed.get()),
            (Bytes::from_static(b"-ERR shotover: cannot route a modified request\r\n"), 0)
        );
    }

    #[test]
    fn latency_events_are_merged_by_name() {
        let a = &b"*1\r\n*4\r\n$7\r\ncommand\r\n:100\r\n:5\r\n:50\r\n"[..];
        let b = &b"*2\r\n*4\r\n$7\r\ncommand\r\n:200\r\n:7\r\n:9\r\n*4\r\n$4\r\nfork\r\n:150\r\n:2\r\n:2\r\n"[..];
        let merged = respond(&[b"LATENCY", b"LATEST"], &[Ok(a), Ok(b), Ok(b"*0\r\n")]);
        let expected = b"*2\r\n*4\r\n$7\r\ncommand\r\n:200\r\n:7\r\n:50\r\n*4\r\n$4\r\nfork\r\n:150\r\n:2\r\n:2\r\n";
        assert_eq!(merged, &expected[..]);
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
