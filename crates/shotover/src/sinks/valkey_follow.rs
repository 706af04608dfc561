//! Which upstream messages answer which request, on a Valkey connection of one client's own,
//! decided from what the server sends rather than predicted from the requests.
//!
//! A request is answered by one reply, except the subscribe family: `SUBSCRIBE a b c` is
//! answered by one confirmation per channel, `UNSUBSCRIBE` without channels by one per
//! channel the connection had (or one with no channel, or one `-NOSUB` error, when it had
//! none). Between replies the server may push messages nobody asked for: pub/sub messages
//! (RESP2 arrays while subscribed, RESP3 `>` pushes), client-tracking invalidations, and
//! MONITOR output. [`Follower`] keeps what the server's own replies say about the connection
//! (subscriptions, RESP3, MONITOR) and sorts each message into a reply to the request at the
//! head of the queue or a pushed message; it does no I/O.

use bytes::Bytes;
use shotover_protocols::valkey::command::{array_strings, RequestView, Special};
use shotover_protocols::valkey::frame::is_error_reply;
use std::collections::HashSet;

/// A kind of subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Channel,
    Pattern,
    Shard,
}

/// A subscribe-family confirmation: `subscribe`/`unsubscribe` and their pattern and shard
/// forms, with the name (none when an unsubscribe found nothing to unsubscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation<'a> {
    pub subscribe: bool,
    pub kind: Kind,
    pub name: Option<&'a [u8]>,
}

/// Reads a confirmation: a 3-element array (or RESP3 push) of the kind, the name (or a
/// null), and an integer count, and nothing after it.
pub fn confirmation(raw: &[u8]) -> Option<Confirmation<'_>> {
    let rest = raw.strip_prefix(b"*3\r\n").or_else(|| raw.strip_prefix(b">3\r\n"))?;
    let (word, rest) = string(rest)?;
    let (subscribe, kind) = match word?.to_ascii_lowercase().as_slice() {
        b"subscribe" => (true, Kind::Channel),
        b"psubscribe" => (true, Kind::Pattern),
        b"ssubscribe" => (true, Kind::Shard),
        b"unsubscribe" => (false, Kind::Channel),
        b"punsubscribe" => (false, Kind::Pattern),
        b"sunsubscribe" => (false, Kind::Shard),
        _ => return None,
    };
    let (name, rest) = string(rest)?;
    // The count is an integer: a reply that merely holds the same words has a string there.
    let count = rest.strip_prefix(b":")?;
    let end = count.iter().position(|b| *b == b'\r')?;
    (count.get(end..) == Some(b"\r\n".as_slice())).then_some(Confirmation { subscribe, kind, name })
}

/// A bulk or simple string, or a null (`None`), and what follows it.
fn string(buf: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let line_end = |b: &[u8]| b.windows(2).position(|w| w == b"\r\n");
    match buf.first()? {
        b'$' => {
            let end = line_end(buf)?;
            let len: i64 = std::str::from_utf8(buf.get(1..end)?).ok()?.parse().ok()?;
            let after = buf.get(end + 2..)?;
            if len < 0 {
                return Some((None, after));
            }
            let len = usize::try_from(len).ok()?;
            let item = after.get(..len)?;
            (after.get(len..len + 2)? == b"\r\n").then_some((Some(item), after.get(len + 2..)?))
        }
        b'+' => {
            let end = line_end(buf)?;
            Some((Some(buf.get(1..end)?), buf.get(end + 2..)?))
        }
        b'_' => Some((None, buf.strip_prefix(b"_\r\n")?)),
        _ => None,
    }
}

/// How a request sent upstream is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// By the next reply.
    One,
    /// By confirmations of `kind` (or one error): `left` more of them, or with `left: None`
    /// (an unsubscribe from everything) until none of the kind is left.
    Confirmations { subscribe: bool, kind: Kind, left: Option<usize> },
}

impl Expect {
    /// What `request` waits for.
    pub fn of(request: &RequestView<'_>) -> Expect {
        let family = [
            ("SUBSCRIBE", true, Kind::Channel),
            ("PSUBSCRIBE", true, Kind::Pattern),
            ("SSUBSCRIBE", true, Kind::Shard),
            ("UNSUBSCRIBE", false, Kind::Channel),
            ("PUNSUBSCRIBE", false, Kind::Pattern),
            ("SUNSUBSCRIBE", false, Kind::Shard),
        ];
        match family.iter().find(|(name, _, _)| request.is(name)) {
            None => Expect::One,
            // Without names, SUBSCRIBE is refused with one error; UNSUBSCRIBE means "all".
            Some((_, subscribe, kind)) => Expect::Confirmations {
                subscribe: *subscribe,
                kind: *kind,
                left: (*subscribe || request.argc > 0).then_some(request.argc.max(1)),
            },
        }
    }
}

/// Where an upstream message belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A reply to the request at the head of the queue.
    Reply,
    /// A message nobody asked for.
    Pushed,
}

/// What the connection is in, as the server's replies show.
#[derive(Debug, Default)]
pub struct Follower {
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shard: HashSet<Bytes>,
    /// After MONITOR's `+OK`, until RESET or QUIT.
    pub monitor: bool,
    /// After a HELLO answered in RESP3, until one answered in RESP2, or RESET.
    pub resp3: bool,
}

impl Follower {
    /// True while subscribed to anything.
    pub fn subscribed(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard.is_empty())
    }

    /// How many subscriptions of `kind` the connection has.
    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Channel => self.channels.len(),
            Kind::Pattern => self.patterns.len(),
            Kind::Shard => self.shard.len(),
        }
    }

    fn set(&mut self, kind: Kind) -> &mut HashSet<Bytes> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::Shard => &mut self.shard,
        }
    }

    /// Sorts an upstream message, given what the request at the head of the queue waits for.
    pub fn classify(&self, raw: &[u8], head: Option<&Expect>) -> Class {
        if let Some(c) = confirmation(raw) {
            return match head {
                Some(Expect::Confirmations { subscribe, kind, .. }) if *subscribe == c.subscribe && *kind == c.kind => {
                    Class::Reply
                }
                // An unsubscribe the server decided on itself (a shard channel's slot moved).
                _ => Class::Pushed,
            };
        }
        if raw.first() == Some(&b'>') || (self.monitor && is_monitor_line(raw)) {
            return Class::Pushed;
        }
        if self.subscribed() && !self.resp3 && is_pubsub_message(raw) {
            return Class::Pushed;
        }
        if head.is_none() {
            Class::Pushed
        } else {
            Class::Reply
        }
    }

    /// Follows what every upstream message says about the connection's subscriptions.
    pub fn observe(&mut self, raw: &[u8]) {
        if let Some(c) = confirmation(raw) {
            if let Some(name) = c.name {
                let set = self.set(c.kind);
                if c.subscribe {
                    set.insert(Bytes::copy_from_slice(name));
                } else {
                    set.remove(name);
                }
            }
        }
    }

    /// Takes a reply to the head request; true when that request is now fully answered.
    pub fn reply_completes(&mut self, raw: &[u8], head: &mut Expect) -> bool {
        match head {
            Expect::One => true,
            Expect::Confirmations { kind, left, .. } => {
                if is_error_reply(raw) {
                    return true;
                }
                match left {
                    Some(n) => {
                        *n = n.saturating_sub(1);
                        *n == 0
                    }
                    None => confirmation(raw).is_some_and(|c| c.name.is_none()) || self.set(*kind).is_empty(),
                }
            }
        }
    }

    /// A reply of `request` (named by `view`) was the first and only one it gets: follow
    /// what it changed. MONITOR, RESET and HELLO change how the server talks.
    pub fn answered(&mut self, view: &RequestView<'_>, reply: &[u8]) {
        if is_error_reply(reply) {
            return;
        }
        match view.special {
            Special::Monitor => self.monitor = true,
            Special::Reset => *self = Follower::default(),
            // The reply itself says which protocol the connection now speaks.
            Special::Hello => match reply.first() {
                Some(b'%') => self.resp3 = true,
                Some(b'*') => self.resp3 = false,
                _ => {}
            },
            _ => {}
        }
    }
}

/// MONITOR output: `+<seconds>.<micros> [<db> <client>] "<command>" ...`.
fn is_monitor_line(raw: &[u8]) -> bool {
    raw.first() == Some(&b'+') && raw.get(1).is_some_and(u8::is_ascii_digit) && raw.contains(&b'[')
}

/// A RESP2 pub/sub message: `message`, `pmessage` or `smessage`.
fn is_pubsub_message(raw: &[u8]) -> bool {
    if raw.first() != Some(&b'*') {
        return false;
    }
    array_strings(raw).first().is_some_and(|k| {
        [b"message".as_slice(), b"pmessage", b"smessage"].iter().any(|want| k.eq_ignore_ascii_case(want))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(raw: &[u8]) -> RequestView<'_> {
        RequestView::new(raw).unwrap()
    }

    #[test]
    fn confirmations_are_told_from_replies_that_hold_the_same_words() {
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n";
        assert_eq!(confirmation(sub), Some(Confirmation { subscribe: true, kind: Kind::Channel, name: Some(b"a") }));
        let push = b">3\r\n$12\r\npunsubscribe\r\n$2\r\np*\r\n:0\r\n";
        assert_eq!(confirmation(push), Some(Confirmation { subscribe: false, kind: Kind::Pattern, name: Some(b"p*") }));
        let none = b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n";
        assert_eq!(confirmation(none), Some(Confirmation { subscribe: false, kind: Kind::Channel, name: None }));
        // LRANGE of a list holding those words is no confirmation.
        assert_eq!(confirmation(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n$1\r\n1\r\n"), None);
        assert_eq!(confirmation(b"*2\r\n$9\r\nsubscribe\r\n$1\r\na\r\n"), None);
    }

    #[test]
    fn subscribe_to_three_channels_takes_three_confirmations() {
        let mut f = Follower::default();
        let mut expect = Expect::of(&view(b"*4\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"));
        for (i, ch) in ["a", "b", "c"].iter().enumerate() {
            let raw = format!("*3\r\n$9\r\nsubscribe\r\n$1\r\n{ch}\r\n:{}\r\n", i + 1);
            assert_eq!(f.classify(raw.as_bytes(), Some(&expect)), Class::Reply);
            f.observe(raw.as_bytes());
            assert_eq!(f.reply_completes(raw.as_bytes(), &mut expect), i == 2);
        }
        assert!(f.subscribed());
        // Now a RESP2 message is pushed, whatever waits.
        let message = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n";
        assert_eq!(f.classify(message, Some(&Expect::One)), Class::Pushed);
    }

    #[test]
    fn unsubscribe_when_not_subscribed_is_answered_by_one_error() {
        let mut f = Follower::default();
        let mut expect = Expect::of(&view(b"*4\r\n$11\r\nUNSUBSCRIBE\r\n$3\r\nfoo\r\n$3\r\nbar\r\n$4\r\nquux\r\n"));
        let nosub = b"-NOSUB 'unsubscribe' command executed not in subscribed mode\r\n";
        assert_eq!(f.classify(nosub, Some(&expect)), Class::Reply);
        assert!(f.reply_completes(nosub, &mut expect), "one error ends it: no more replies come");
    }

    #[test]
    fn unsubscribe_from_all_ends_when_the_server_says_nothing_is_left() {
        let mut f = Follower::default();
        for ch in ["a", "b"] {
            f.observe(format!("*3\r\n$9\r\nsubscribe\r\n$1\r\n{ch}\r\n:1\r\n").as_bytes());
        }
        let mut expect = Expect::of(&view(b"*1\r\n$11\r\nUNSUBSCRIBE\r\n"));
        let first = b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n";
        f.observe(first);
        assert!(!f.reply_completes(first, &mut expect));
        let second = b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n";
        f.observe(second);
        assert!(f.reply_completes(second, &mut expect));
        // A reply that names no channel (the server had none to drop) ends it too, even
        // while this follower still counts a channel.
        f.observe(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nz\r\n:1\r\n");
        let mut expect = Expect::of(&view(b"*1\r\n$11\r\nUNSUBSCRIBE\r\n"));
        assert!(f.reply_completes(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n", &mut expect));
    }

    #[test]
    fn resp3_pushes_and_monitor_lines_are_pushed_and_hello_follows_the_reply() {
        let mut f = Follower::default();
        let invalidate = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n";
        assert_eq!(f.classify(invalidate, Some(&Expect::One)), Class::Pushed);
        // A confirmation nobody waits for (a shard channel's slot moved) is pushed too.
        assert_eq!(f.classify(b">3\r\n$12\r\nsunsubscribe\r\n$1\r\ns\r\n:0\r\n", Some(&Expect::One)), Class::Pushed);
        f.answered(&view(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"), b"%7\r\n");
        assert!(f.resp3);
        f.answered(&view(b"*1\r\n$7\r\nMONITOR\r\n"), b"+OK\r\n");
        assert!(f.monitor);
        let line = b"+1700000000.123456 [0 127.0.0.1:5000] \"PING\"\r\n";
        assert_eq!(f.classify(line, Some(&Expect::One)), Class::Pushed);
        assert_eq!(f.classify(b"+RESET\r\n", Some(&Expect::One)), Class::Reply);
        f.answered(&view(b"*1\r\n$5\r\nRESET\r\n"), b"+RESET\r\n");
        assert!(!f.monitor && !f.resp3);
    }
}
