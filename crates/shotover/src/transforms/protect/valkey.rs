//! Protect in a Valkey chain: the values of keys that match the configured patterns are
//! stored encrypted, in the same layout as CQL columns, and decrypted in the replies.
//!
//! - Writes whose values are encrypted: SET, SETNX, SETEX, PSETEX, GETSET, MSET, MSETNX,
//!   HSET, HMSET, HSETNX.
//! - Replies that are decrypted: GET, GETEX, GETDEL, GETSET, `SET ... GET`, MGET, HGET, HMGET,
//!   HVALS, HGETALL (an array, or a RESP3 map), and those commands inside MULTI, in EXEC's
//!   reply.
//! - Commands that only name or drop keys (DEL, EXISTS, EXPIRE, TTL, TYPE, HDEL, HKEYS, ...)
//!   pass. Any other command with an argument that matches a pattern is refused, so that
//!   nothing writes plaintext under a protected key, wherever the key stands (APPEND,
//!   SETRANGE, COPY, RENAME, SORT ... STORE, BITOP, ...); so are EVAL, EVALSHA and FCALL
//!   declaring such a key. A command refused inside MULTI makes EXEC abort, as Valkey does
//!   for a command it refuses while queueing.

use super::crypto::ProtectError;
use super::keyring::KeyRing;
use super::Refusal;
use crate::chain::{ChainResult, ChainState, Transform};
use crate::in_order::InOrder;
use crate::message::{Frame, Message, MessageId};
use async_trait::async_trait;
use bytes::Bytes;
use shotover_protocols::valkey::ValkeyFrame;
use std::collections::HashMap;
use std::rc::Rc;

/// Key patterns: `*` matches any run of bytes, `?` any one byte.
#[derive(Debug, Clone)]
pub(crate) struct Patterns(Vec<Vec<u8>>);

impl Patterns {
    pub(crate) fn new(patterns: &[String]) -> Self {
        Patterns(patterns.iter().map(|p| p.as_bytes().to_vec()).collect())
    }

    pub(crate) fn matches(&self, key: &[u8]) -> bool {
        self.0.iter().any(|p| glob(p, key))
    }
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative, with one backtrack point: linear in practice, never recursive.
    let (mut p, mut t, mut star, mut mark) = (0, 0, None, 0);
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some(p);
                mark = t;
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some(s) => {
                    p = s + 1;
                    mark += 1;
                    t = mark;
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|c| *c == b'*')
}

/// What a reply needs.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Nothing,
    /// One value (a bulk string or nil).
    Value,
    /// An array: which of its elements to decrypt.
    Elements(Vec<bool>),
    /// An array of every element (HMGET, HVALS).
    All,
    /// HGETALL: field, value, field, value... or a RESP3 map.
    Pairs,
    /// EXEC: an array of the queued commands' replies.
    Exec(Vec<Expect>),
    /// A command sent inside MULTI: `+QUEUED`, unless Valkey was not in MULTI after all
    /// (MULTI failed), when it is the command's own reply.
    Queued(Box<Expect>),
    /// EXEC of a transaction a command of which was refused: sent as DISCARD, answered
    /// with EXECABORT.
    ExecAbort,
}

/// Why a request is refused.
struct Refused {
    text: String,
    /// For want of a DEK (KMS): tried again once one is had.
    no_dek: bool,
}

impl From<String> for Refused {
    fn from(text: String) -> Self {
        Refused { text, no_dek: false }
    }
}

/// Commands that only name, drop or time keys: they pass whatever the key.
const KEY_ONLY: [&str; 24] = [
    "DEL",
    "UNLINK",
    "EXISTS",
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "TTL",
    "PTTL",
    "EXPIRETIME",
    "PEXPIRETIME",
    "PERSIST",
    "TYPE",
    "TOUCH",
    "HDEL",
    "HEXISTS",
    "HLEN",
    "HKEYS",
    "STRLEN",
    "HSTRLEN",
    "OBJECT",
    "KEYS",
    "SCAN",
    "WATCH",
];

pub struct ValkeyProtect {
    ring: Rc<KeyRing>,
    patterns: Rc<Patterns>,
    /// What each reply needs, by the id of its request.
    expects: HashMap<MessageId, Expect>,
    /// Inside MULTI: what each queued command's reply in EXEC's answer needs, and whether a
    /// command of the transaction was refused.
    queued: Option<(Vec<Expect>, bool)>,
    /// Refused requests' errors, among the replies in request order.
    order: InOrder,
}

impl ValkeyProtect {
    pub(crate) fn new(ring: Rc<KeyRing>, patterns: Rc<Patterns>) -> Self {
        ValkeyProtect { ring, patterns, expects: HashMap::new(), queued: None, order: InOrder::default() }
    }

    /// Encrypts what a request writes under protected keys; `Err` is the error reply.
    fn request(&mut self, request: &mut Message) -> Result<Expect, Refused> {
        let result = self.plan(request);
        if let (Err(_), Some((_, refused))) = (&result, &mut self.queued) {
            *refused = true;
        }
        result
    }

    fn plan(&mut self, request: &mut Message) -> Result<Expect, Refused> {
        // The parsed command, so that inline commands are split with Valkey's quoting rules.
        let words: Vec<Bytes> = match request.frame() {
            Ok(Frame::Valkey(ValkeyFrame::Array { data, .. })) => data
                .iter()
                .filter_map(|w| match w {
                    ValkeyFrame::BlobString { data, .. } | ValkeyFrame::SimpleString { data, .. } => Some(data.clone()),
                    _ => None,
                })
                .collect(),
            _ => return Ok(Expect::Nothing),
        };
        let Some((name, args)) = words.split_first() else { return Ok(Expect::Nothing) };
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        let protected = |i: usize| args.get(i).is_some_and(|k| self.patterns.matches(k));
        // (values to encrypt, by argument index; what the reply needs)
        let (values, expect): (Vec<usize>, Expect) = match name.as_str() {
            "SET" => {
                let get = args.iter().skip(2).any(|a| a.eq_ignore_ascii_case(b"GET"));
                let expect = if get && protected(0) { Expect::Value } else { Expect::Nothing };
                (if protected(0) { vec![1] } else { vec![] }, expect)
            }
            "SETNX" => (if protected(0) { vec![1] } else { vec![] }, Expect::Nothing),
            "SETEX" | "PSETEX" => (if protected(0) { vec![2] } else { vec![] }, Expect::Nothing),
            "GETSET" => {
                if protected(0) {
                    (vec![1], Expect::Value)
                } else {
                    (vec![], Expect::Nothing)
                }
            }
            "MSET" | "MSETNX" => {
                ((0..args.len()).step_by(2).filter(|i| protected(*i)).map(|i| i + 1).collect(), Expect::Nothing)
            }
            "HSET" | "HMSET" => {
                (if protected(0) { (2..args.len()).step_by(2).collect() } else { vec![] }, Expect::Nothing)
            }
            "HSETNX" => (if protected(0) { vec![2] } else { vec![] }, Expect::Nothing),
            "GET" | "GETEX" | "GETDEL" | "HGET" => (vec![], if protected(0) { Expect::Value } else { Expect::Nothing }),
            "MGET" => {
                let which: Vec<bool> = (0..args.len()).map(protected).collect();
                (vec![], if which.contains(&true) { Expect::Elements(which) } else { Expect::Nothing })
            }
            "HMGET" | "HVALS" => (vec![], if protected(0) { Expect::All } else { Expect::Nothing }),
            "HGETALL" => (vec![], if protected(0) { Expect::Pairs } else { Expect::Nothing }),
            "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => {
                let keys = args.get(1).and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok()).unwrap_or(0);
                if args.iter().skip(2).take(keys).any(|k| self.patterns.matches(k)) {
                    let text = "on a protected key is refused: the script could read or write its value unencrypted";
                    return Err(format!("{name} {text}").into());
                }
                (vec![], Expect::Nothing)
            }
            "MULTI" => {
                self.queued = Some((Vec::new(), false));
                return Ok(Expect::Nothing);
            }
            "EXEC" => {
                return Ok(match self.queued.take() {
                    Some((_, true)) => {
                        if let Ok(Frame::Valkey(ValkeyFrame::Array { data, .. })) = request.frame_mut() {
                            let discard =
                                ValkeyFrame::BlobString { data: Bytes::from_static(b"DISCARD"), attributes: None };
                            *data = vec![discard];
                        }
                        Expect::ExecAbort
                    }
                    Some((queued, false)) => Expect::Exec(queued),
                    None => Expect::Nothing,
                });
            }
            "DISCARD" | "RESET" => {
                self.queued = None;
                return Ok(Expect::Nothing);
            }
            name if KEY_ONLY.contains(&name) => (vec![], Expect::Nothing),
            name => {
                if args.iter().any(|a| self.patterns.matches(a)) {
                    return Err(
                        format!("{name} on a protected key is refused: its value would not be encrypted").into()
                    );
                }
                (vec![], Expect::Nothing)
            }
        };
        if !values.is_empty() {
            let mut encrypted = Vec::with_capacity(values.len());
            let mut keys = self.ring.keys.borrow_mut();
            for &i in &values {
                let Some(plain) = args.get(i) else { continue };
                let stored = keys.protect(plain).map_err(|e| Refused {
                    no_dek: e == ProtectError::Unavailable,
                    text: refusal_text(Refusal::encrypting(e)),
                })?;
                encrypted.push((i, stored));
            }
            drop(keys);
            let Ok(Frame::Valkey(ValkeyFrame::Array { data, .. })) = request.frame_mut() else {
                return Err(String::from("the proxy cannot read this command").into());
            };
            for (i, stored) in encrypted {
                // Element 0 is the command's name.
                if let Some(slot) = data.get_mut(i + 1) {
                    *slot = ValkeyFrame::BlobString { data: Bytes::from(stored), attributes: None };
                }
            }
        }
        Ok(match &mut self.queued {
            // Queued: the reply now is +QUEUED; EXEC's answer holds the real one.
            Some((queued, _)) => {
                queued.push(expect.clone());
                if expect == Expect::Nothing {
                    Expect::Nothing
                } else {
                    Expect::Queued(Box::new(expect))
                }
            }
            None => expect,
        })
    }

    /// Decrypts a reply as `expect` says; an error reply replaces one that cannot be.
    fn reply(&self, expect: &Expect, reply: &mut Message) {
        // A silent answer (CLIENT REPLY OFF) has nothing to decrypt.
        if reply.raw().is_some_and(|r| r.is_empty()) {
            return;
        }
        if *expect == Expect::ExecAbort {
            if let Ok(Frame::Valkey(frame)) = reply.frame_mut() {
                *frame = shotover_protocols::valkey::frame::error(
                    "EXECABORT Transaction discarded because of previous errors.",
                );
            }
            return;
        }
        if let Ok(Frame::Valkey(frame)) = reply.frame() {
            if !needs_work(expect, frame) {
                return;
            }
        }
        let result = match reply.frame_mut() {
            Ok(Frame::Valkey(frame)) => self.decrypt(expect, frame),
            _ => Err("cannot read the reply".into()),
        };
        if let Err(e) = result {
            tracing::warn!("Protect: {e}");
            if let Ok(Frame::Valkey(frame)) = reply.frame_mut() {
                *frame = shotover_protocols::valkey::frame::error(format!("ERR shotover: Protect: {e}"));
            }
        }
    }

    fn decrypt(&self, expect: &Expect, frame: &mut ValkeyFrame) -> Result<(), String> {
        match (expect, frame) {
            (Expect::Nothing, _) => Ok(()),
            (Expect::Value, ValkeyFrame::BlobString { data, .. }) => {
                let plain = self.ring.keys.borrow_mut().unprotect(data).map_err(|e| format!("cannot decrypt: {e}"))?;
                *data = Bytes::from(plain);
                Ok(())
            }
            (Expect::Elements(which), ValkeyFrame::Array { data, .. }) => {
                for (element, yes) in data.iter_mut().zip(which) {
                    if *yes {
                        self.decrypt(&Expect::Value, element)?;
                    }
                }
                Ok(())
            }
            (Expect::All, ValkeyFrame::Array { data, .. }) => {
                data.iter_mut().try_for_each(|element| self.decrypt(&Expect::Value, element))
            }
            (Expect::Pairs, ValkeyFrame::Array { data, .. }) => {
                data.iter_mut().skip(1).step_by(2).try_for_each(|element| self.decrypt(&Expect::Value, element))
            }
            (Expect::Pairs, ValkeyFrame::Map { data, .. }) => {
                data.values_mut().try_for_each(|element| self.decrypt(&Expect::Value, element))
            }
            (Expect::Exec(queued), ValkeyFrame::Array { data, .. }) => {
                data.iter_mut().zip(queued).try_for_each(|(element, expect)| self.decrypt(expect, element))
            }
            (Expect::Queued(inner), frame) if !is_queued(frame) => self.decrypt(inner, frame),
            // Nil, errors, and replies of another shape are left as they are.
            _ => Ok(()),
        }
    }

    /// The wrapped DEKs the replies need that the core does not hold (KMS only).
    fn missing(&self, responses: &mut [Message]) -> Vec<Vec<u8>> {
        let mut missing = Vec::new();
        let keys = self.ring.keys.borrow();
        for response in responses {
            let Some(expect) = response.request_id().and_then(|id| self.expects.get(&id)) else { continue };
            let Ok(Frame::Valkey(frame)) = response.frame() else { continue };
            let mut values = Vec::new();
            collect(expect, frame, &mut values);
            for value in values {
                missing.extend(keys.missing(value).filter(|m| !missing.contains(m)));
            }
        }
        missing
    }
}

/// Whether a reply holds anything to decrypt.
fn needs_work(expect: &Expect, frame: &ValkeyFrame) -> bool {
    let mut values = Vec::new();
    collect(expect, frame, &mut values);
    !values.is_empty()
}

/// The stored values in a reply that `expect` says to decrypt.
fn collect<'a>(expect: &Expect, frame: &'a ValkeyFrame, out: &mut Vec<&'a [u8]>) {
    match (expect, frame) {
        (Expect::Value, ValkeyFrame::BlobString { data, .. }) => out.push(data),
        (Expect::Elements(which), ValkeyFrame::Array { data, .. }) => {
            for (element, yes) in data.iter().zip(which) {
                if *yes {
                    collect(&Expect::Value, element, out);
                }
            }
        }
        (Expect::All, ValkeyFrame::Array { data, .. }) => data.iter().for_each(|e| collect(&Expect::Value, e, out)),
        (Expect::Pairs, ValkeyFrame::Array { data, .. }) => {
            data.iter().skip(1).step_by(2).for_each(|e| collect(&Expect::Value, e, out))
        }
        (Expect::Pairs, ValkeyFrame::Map { data, .. }) => data.values().for_each(|e| collect(&Expect::Value, e, out)),
        (Expect::Exec(queued), ValkeyFrame::Array { data, .. }) => {
            data.iter().zip(queued).for_each(|(e, expect)| collect(expect, e, out))
        }
        (Expect::Queued(inner), frame) if !is_queued(frame) => collect(inner, frame, out),
        _ => {}
    }
}

/// Whether a reply is `+QUEUED`.
fn is_queued(frame: &ValkeyFrame) -> bool {
    matches!(frame, ValkeyFrame::SimpleString { data, .. } if data.as_ref() == b"QUEUED")
}

fn refusal_text(r: Refusal) -> String {
    match r {
        Refusal::Invalid(t) | Refusal::Unavailable(t) => t,
        Refusal::Unprepared(_) => "unprepared".into(),
    }
}

#[async_trait(?Send)]
impl Transform for ValkeyProtect {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        self.ring.renew_if_due();
        // Requests refused are answered in their place, so that replies stay in order.
        let requests = std::mem::take(&mut state.requests);
        for mut request in requests {
            let refused_before = self.queued.as_ref().map(|(_, refused)| *refused);
            let mut result = self.request(&mut request);
            if matches!(&result, Err(r) if r.no_dek) && self.ring.ensure_dek().await {
                // Nothing was changed or queued for it yet: planned again, now with a DEK.
                if let (Some((_, refused)), Some(before)) = (&mut self.queued, refused_before) {
                    *refused = before;
                }
                result = self.request(&mut request);
            }
            match result {
                Ok(expect) => {
                    if expect != Expect::Nothing {
                        self.expects.insert(request.id(), expect);
                    }
                    self.order.passed_down(&request);
                    state.requests.push(request);
                }
                Err(r) => {
                    let text = format!("ERR shotover: Protect: {}", r.text);
                    self.order.answered_here(Message::valkey_error_to(&request, text));
                }
            }
        }
        let mut responses = if state.requests.is_empty() && !self.order.waits_below() {
            Vec::new()
        } else {
            self.order.run_below(state).await?
        };
        if self.ring.is_remote() && !self.expects.is_empty() {
            let missing = self.missing(&mut responses);
            if !missing.is_empty() {
                self.ring.unwrap(missing).await;
            }
        }
        for response in &mut responses {
            if let Some(expect) = response.request_id().and_then(|id| self.expects.remove(&id)) {
                self.reply(&expect, response);
            }
        }
        Ok(self.order.merge(responses))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let p = Patterns::new(&["secret:*".into(), "user:?:ssn".into(), "*:card".into()]);
        for yes in ["secret:", "secret:a", "user:1:ssn", "x:card", ":card"] {
            assert!(p.matches(yes.as_bytes()), "{yes}");
        }
        for no in ["secret", "Secret:a", "user:12:ssn", "x:cards", "public"] {
            assert!(!p.matches(no.as_bytes()), "{no}");
        }
        assert!(glob(b"a*b*c", b"aXXbYYbc"));
        assert!(!glob(b"a*b*c", b"aXXbYYb"));
        assert!(glob(b"**", b""));
    }
}
