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
            Err(reason) => return error(reason.clone()),
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
            let total: i64 = replies.iter().filter_map(|r| parse(r).ok()).map(|(f, _)| number(&f)).sum();
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
