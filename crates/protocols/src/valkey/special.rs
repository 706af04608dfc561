//! The commands a proxy must treat apart from the rest, named once per request.
//!
//! Sources and sinks ask of every request whether it blocks, subscribes, opens a transaction
//! or binds state to its connection. Comparing its name against each list in turn cost more
//! than any other step of routing a plain `GET` through ValkeySinkCluster (about 5 % of a
//! worker core, measured with `perf`): [`Special::of`] reads the name once, and
//! [`RequestView`](super::command::RequestView) carries the answer.

/// A command that matters to how a proxy handles its connection; [`Special::None`] for every
/// other command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Special {
    #[default]
    None,
    Auth,
    Hello,
    Select,
    Client,
    ReadOnly,
    ReadWrite,
    Reset,
    Multi,
    Watch,
    Quit,
    Sync,
    Psync,
    Replconf,
    Asking,
    Monitor,
    Subscribe,
    PSubscribe,
    SSubscribe,
    Unsubscribe,
    PUnsubscribe,
    SUnsubscribe,
    /// May wait long before the server answers: the blocking list pops and moves, stream
    /// reads (`XREAD` and `XREADGROUP` block only with `BLOCK`, but counting them all costs
    /// nothing that matters), `WAIT` and `WAITAOF`.
    Blocking,
}

/// The longest name of a special command (`PUNSUBSCRIBE`, `SUNSUBSCRIBE`).
const LONGEST: usize = 12;

impl Special {
    /// The special command named `name`, in any case.
    pub fn of(name: &[u8]) -> Special {
        use Special::*;
        if name.len() > LONGEST {
            return None;
        }
        let mut buf = [0u8; LONGEST];
        for (to, from) in buf.iter_mut().zip(name) {
            *to = from.to_ascii_uppercase();
        }
        match buf.get(..name.len()).unwrap_or_default() {
            b"AUTH" => Auth,
            b"HELLO" => Hello,
            b"SELECT" => Select,
            b"CLIENT" => Client,
            b"READONLY" => ReadOnly,
            b"READWRITE" => ReadWrite,
            b"RESET" => Reset,
            b"MULTI" => Multi,
            b"WATCH" => Watch,
            b"QUIT" => Quit,
            b"SYNC" => Sync,
            b"PSYNC" => Psync,
            b"REPLCONF" => Replconf,
            b"ASKING" => Asking,
            b"MONITOR" => Monitor,
            b"SUBSCRIBE" => Subscribe,
            b"PSUBSCRIBE" => PSubscribe,
            b"SSUBSCRIBE" => SSubscribe,
            b"UNSUBSCRIBE" => Unsubscribe,
            b"PUNSUBSCRIBE" => PUnsubscribe,
            b"SUNSUBSCRIBE" => SUnsubscribe,
            b"BLPOP" | b"BRPOP" | b"BLMOVE" | b"BRPOPLPUSH" | b"BZPOPMIN" | b"BZPOPMAX" | b"BLMPOP" | b"BZMPOP"
            | b"XREAD" | b"XREADGROUP" | b"WAIT" | b"WAITAOF" => Blocking,
            _ => None,
        }
    }

    /// The subscribe family and `MONITOR`: the commands after which a connection streams
    /// messages nobody asked for.
    pub fn is_pubsub(self) -> bool {
        use Special::*;
        matches!(self, Monitor | Subscribe | PSubscribe | SSubscribe | Unsubscribe | PUnsubscribe | SUnsubscribe)
    }

    /// `MULTI` and `WATCH`: the commands that start a transaction.
    pub fn starts_transaction(self) -> bool {
        matches!(self, Special::Multi | Special::Watch)
    }
}

#[cfg(test)]
mod tests {
    use super::Special;

    #[test]
    fn names_in_any_case_and_nothing_else() {
        assert_eq!(Special::of(b"get"), Special::None);
        assert_eq!(Special::of(b"auth"), Special::Auth);
        assert_eq!(Special::of(b"PunSubscribe"), Special::PUnsubscribe);
        assert_eq!(Special::of(b"brpoplpush"), Special::Blocking);
        assert_eq!(Special::of(b"WAITAOF"), Special::Blocking);
        // Prefixes, longer names and empty names are other commands.
        for other in [&b"AUT"[..], b"AUTHX", b"SUNSUBSCRIBES", b"", b"XREADGROUPS", b"\xff\xfe"] {
            assert_eq!(Special::of(other), Special::None, "{other:?}");
        }
        assert!(Special::of(b"monitor").is_pubsub() && !Special::Multi.is_pubsub());
        assert!(Special::of(b"watch").starts_transaction() && !Special::of(b"EXEC").starts_transaction());
    }
}
