//! Valkey's command table as the `COMMAND` command describes it: which arguments of each
//! command (and subcommand) are keys, from its key specifications, and where it runs in a
//! cluster and how its replies combine, from its `request_policy` and `response_policy` tips.
//!
//! A cluster proxy reads the table from a node, so that commands it has never heard of route
//! right. [`CommandTable::builtin`] is Valkey 8.0.1's own table, captured from its `COMMAND`
//! reply (`scripts/valkey-command-table` writes it again), for when a node refuses `COMMAND`.

use super::command::{array_strings, request_word};
use super::frame::parse;
use super::ValkeyFrame;
use bytes::Bytes;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

/// Valkey 8.0.1's `COMMAND` reply, in RESP2.
const VALKEY_8_0_1: &[u8] = include_bytes!("commands-valkey-8.0.1.resp");

/// Where a command runs in a cluster (its `request_policy` tip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestPolicy {
    /// No tip: the node of its keys, or any node when it has none.
    #[default]
    Default,
    /// Every node, masters and replicas (`CONFIG SET`, `SCRIPT LOAD`).
    AllNodes,
    /// Every master (`DBSIZE`, `FUNCTION LOAD`, `INFO`).
    AllShards,
    /// Split by the slots of its keys (`MGET`, `MSET`, `DEL`).
    MultiShard,
    /// Handled one by one (`SCAN`).
    Special,
}

/// How the replies of a command sent to several nodes become one (its `response_policy` tip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponsePolicy {
    /// No tip: arrays are joined (`KEYS`), replies of a split command are put back in key
    /// order (`MGET`).
    #[default]
    Default,
    /// The first success, else an error.
    OneSucceeded,
    /// Success only if every node succeeded.
    AllSucceeded,
    AggSum,
    AggMin,
    AggMax,
    /// Integers, or arrays of them element by element: 1 only where every node says 1.
    AggLogicalAnd,
    AggLogicalOr,
    /// Handled one by one (`INFO`, `RANDOMKEY`).
    Special,
}

/// The request policies by the names their tips give them.
const REQUEST_POLICIES: [(&str, RequestPolicy); 4] = [
    ("all_nodes", RequestPolicy::AllNodes),
    ("all_shards", RequestPolicy::AllShards),
    ("multi_shard", RequestPolicy::MultiShard),
    ("special", RequestPolicy::Special),
];

/// The response policies by the names their tips give them.
const RESPONSE_POLICIES: [(&str, ResponsePolicy); 8] = [
    ("one_succeeded", ResponsePolicy::OneSucceeded),
    ("all_succeeded", ResponsePolicy::AllSucceeded),
    ("agg_sum", ResponsePolicy::AggSum),
    ("agg_min", ResponsePolicy::AggMin),
    ("agg_max", ResponsePolicy::AggMax),
    ("agg_logical_and", ResponsePolicy::AggLogicalAnd),
    ("agg_logical_or", ResponsePolicy::AggLogicalOr),
    ("special", ResponsePolicy::Special),
];

/// Where a key specification starts looking for keys.
#[derive(Debug, Clone, PartialEq)]
enum BeginSearch {
    /// At this argument (the command name is argument 0).
    Index(i64),
    /// After `keyword`, searched from argument `startfrom` (from the end when negative).
    Keyword { keyword: Box<[u8]>, startfrom: i64 },
}

/// How a key specification finds its keys from where it begins.
#[derive(Debug, Clone, PartialEq)]
enum FindKeys {
    /// Keys every `keystep` arguments up to `lastkey` (relative; negative counts from the end,
    /// or with `limit`, covers `1/limit` of what is left).
    Range { lastkey: i64, keystep: i64, limit: i64 },
    /// A count of keys at `keynumidx`, keys from `firstkey` every `keystep` (`EVAL`).
    Keynum { keynumidx: i64, firstkey: i64, keystep: i64 },
}

#[derive(Debug, Clone, PartialEq)]
struct KeySpec {
    begin: BeginSearch,
    find: FindKeys,
}

/// One command or subcommand of the table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandInfo {
    /// Valkey's arity: the argument count with the name, at least its absolute value when
    /// negative.
    pub arity: i64,
    pub request: RequestPolicy,
    pub response: ResponsePolicy,
    key_specs: Vec<KeySpec>,
    /// Upper-case subcommand name (`SET` of `CONFIG SET`) to its entry.
    subcommands: Names<CommandInfo>,
}

/// Valkey's commands by upper-case name.
#[derive(Debug, Clone, Default)]
pub struct CommandTable {
    commands: Names<CommandInfo>,
}

/// A map by command name with a multiply-and-rotate hash over 8 bytes at a time (FxHash's
/// step): a lookup is on every request's path, and the standard SipHash costs more than the
/// rest of routing a GET. The keys come from the server's table and lookups never insert, so
/// a client cannot flood it with colliding names.
type Names<V> = HashMap<Box<[u8]>, V, BuildHasherDefault<WordHash>>;

#[derive(Default)]
struct WordHash(u64);

impl Hasher for WordHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word.get_mut(..chunk.len()).unwrap_or_default().copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

impl CommandTable {
    /// Reads a `COMMAND` (or `COMMAND INFO`) reply, RESP2 or RESP3.
    pub fn from_reply(raw: &Bytes) -> Result<CommandTable, String> {
        let (frame, _) = parse(raw).map_err(|e| format!("invalid COMMAND reply: {e}"))?;
        let entries = match frame {
            ValkeyFrame::Array { data, .. } => data,
            ValkeyFrame::SimpleError { data, .. } => return Err(data.to_string()),
            _ => return Err("COMMAND did not answer with an array".into()),
        };
        let mut commands = Names::with_capacity_and_hasher(entries.len(), Default::default());
        for entry in &entries {
            if let Some((name, info)) = command_info(entry) {
                commands.insert(name, info);
            }
        }
        if commands.is_empty() {
            return Err("COMMAND listed no command".into());
        }
        Ok(CommandTable { commands })
    }

    /// Valkey 8.0.1's table, built into the proxy (read once per process).
    pub fn builtin() -> &'static CommandTable {
        static BUILTIN: OnceLock<CommandTable> = OnceLock::new();
        // Tested to parse (the `builtin_table_is_valkey_8s` test); empty would route every
        // command by its first argument, the proxy's behaviour before it read tables.
        BUILTIN.get_or_init(|| CommandTable::from_reply(&Bytes::from_static(VALKEY_8_0_1)).unwrap_or_default())
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The entry of a command given its upper-case name and its first argument (which names
    /// the subcommand of a container command such as `CONFIG`, in any case; read only for
    /// those). A container
    /// command whose subcommand is unknown gives the container's own entry.
    pub fn lookup<'r>(&self, upper_name: &[u8], first_arg: impl FnOnce() -> Option<&'r [u8]>) -> Option<&CommandInfo> {
        let info = self.commands.get(upper_name)?;
        if info.subcommands.is_empty() {
            return Some(info);
        }
        let mut buf = [0u8; 32];
        let sub = first_arg().and_then(|arg| {
            let out = buf.get_mut(..arg.len())?;
            out.copy_from_slice(arg);
            out.make_ascii_uppercase();
            Some(&*out)
        });
        Some(sub.and_then(|s| info.subcommands.get(s)).unwrap_or(info))
    }
}

/// The first key of a whole request message `raw` whose upper-case name is `name` and whose
/// table entry is `info`, where the table says keys are. `leading` holds the request's first
/// words as [`super::command::leading_words`] read them, so the common single-key commands
/// need no second pass. A command the table does not know is taken to have its key first, as
/// most commands do. `DEBUG OBJECT key` and `DEBUG DIGEST-VALUE key` read a key that the table
/// does not name (DEBUG has no key specifications).
pub fn first_key<'r>(info: Option<&CommandInfo>, name: &[u8], leading: &[&'r [u8]], raw: &'r [u8]) -> Option<&'r [u8]> {
    let word = |at: usize| match leading.get(at) {
        Some(word) => Some(*word),
        None => request_word(raw, at),
    };
    if name == b"DEBUG" {
        let sub = word(1)?;
        if sub.eq_ignore_ascii_case(b"OBJECT") || sub.eq_ignore_ascii_case(b"DIGEST-VALUE") {
            return word(2);
        }
    }
    let Some(info) = info else { return word(1) };
    if let Some(at) = info.single_key_index() {
        return word(at);
    }
    if info.keyless() {
        return None;
    }
    let words = array_strings(raw);
    let mut keys = Vec::new();
    info.keys(&words, &mut keys);
    keys.first().and_then(|at| words.get(*at).copied())
}

impl CommandInfo {
    /// The position of the command's one key when it is always the same argument (`GET`,
    /// `SET`, `HSET`...): the common case, answered without reading every argument.
    pub fn single_key_index(&self) -> Option<usize> {
        match self.key_specs.as_slice() {
            [KeySpec { begin: BeginSearch::Index(i), find: FindKeys::Range { lastkey: 0, .. } }] => {
                usize::try_from(*i).ok()
            }
            _ => None,
        }
    }

    /// True when the command has no key specification: it takes no keys.
    pub fn keyless(&self) -> bool {
        self.key_specs.is_empty()
    }

    /// Arguments from one key to the next in a command of many (2 for `MSET`'s pairs):
    /// what goes with each key when the command is split by slot.
    pub fn key_step(&self) -> usize {
        match self.key_specs.first().map(|s| &s.find) {
            Some(FindKeys::Range { keystep, .. } | FindKeys::Keynum { keystep, .. }) => {
                usize::try_from(*keystep).unwrap_or(1).max(1)
            }
            None => 1,
        }
    }

    /// The positions of the keys in `argv` (argument 0 is the command name), in the order
    /// Valkey finds them, appended to `out`. A specification that does not fit the
    /// arguments (a key count that is not a number, say) gives no keys at all, as in Valkey,
    /// whose node then answers the command's own error.
    pub fn keys(&self, argv: &[&[u8]], out: &mut Vec<usize>) {
        let start = out.len();
        for spec in &self.key_specs {
            if find(spec, argv, self.arity, out).is_err() {
                out.truncate(start);
                return;
            }
        }
    }
}

/// Appends the keys one specification finds; `Err` when it does not fit the arguments.
fn find(spec: &KeySpec, argv: &[&[u8]], arity: i64, out: &mut Vec<usize>) -> Result<(), ()> {
    let argc = i64::try_from(argv.len()).map_err(|_| ())?;
    let mut first = match &spec.begin {
        BeginSearch::Index(i) => *i,
        BeginSearch::Keyword { keyword, startfrom } => {
            let (from, to) = if *startfrom > 0 { (*startfrom, argc - 1) } else { (argc + startfrom, 1) };
            let mut found = None;
            let mut i = from;
            while i != to && (1..argc).contains(&i) {
                if argv.get(i as usize).is_some_and(|a| a.eq_ignore_ascii_case(keyword)) {
                    found = Some(i + 1);
                    break;
                }
                i += if from <= to { 1 } else { -1 };
            }
            // No keyword: this specification has no keys here.
            let Some(first) = found else { return Ok(()) };
            first
        }
    };
    let (last, step) = match spec.find {
        FindKeys::Range { lastkey, keystep, limit } => {
            let last = match (lastkey >= 0, limit) {
                (true, _) => first + lastkey,
                (false, 0) => argc + lastkey,
                (false, limit) => first + ((argc - first) / limit + lastkey),
            };
            (last, keystep)
        }
        FindKeys::Keynum { keynumidx, firstkey, keystep } => {
            let count = usize::try_from(first + keynumidx).ok().and_then(|at| argv.get(at)).ok_or(())?;
            let count: i64 = std::str::from_utf8(count).ok().and_then(|c| c.parse().ok()).ok_or(())?;
            if count < 0 {
                return Err(());
            }
            first += firstkey;
            (first.saturating_add(count) - 1, keystep)
        }
    };
    let step = step.max(1);
    let mut i = first;
    while i <= last {
        if i >= argc || i < 1 {
            // Fewer arguments than the specification wants: a command of variable arity
            // simply has fewer keys; one of fixed arity is malformed.
            if arity < 0 {
                break;
            }
            return Err(());
        }
        out.push(i as usize);
        i += step;
    }
    Ok(())
}

/// The name-value pairs of a RESP2 array of alternating names and values, or a RESP3 map.
fn pairs(frame: &ValkeyFrame) -> Vec<(&[u8], &ValkeyFrame)> {
    match frame {
        ValkeyFrame::Array { data, .. } => {
            data.chunks(2).filter_map(|pair| Some((text(pair.first()?)?, pair.get(1)?))).collect()
        }
        ValkeyFrame::Map { data, .. } => data.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
        _ => Vec::new(),
    }
}

fn text(frame: &ValkeyFrame) -> Option<&[u8]> {
    match frame {
        ValkeyFrame::BlobString { data, .. } | ValkeyFrame::SimpleString { data, .. } => Some(data),
        _ => None,
    }
}

fn number(frame: Option<&ValkeyFrame>) -> Option<i64> {
    match frame? {
        ValkeyFrame::Number { data, .. } => Some(*data),
        _ => None,
    }
}

fn field<'a>(fields: &[(&[u8], &'a ValkeyFrame)], name: &str) -> Option<&'a ValkeyFrame> {
    fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| *v)
}

/// One entry of the table: `[name, arity, flags, first, last, step, acl, tips, key specs,
/// subcommands]`. The name is upper-cased; a subcommand's (`config|set`) keeps what follows
/// the `|`.
fn command_info(entry: &ValkeyFrame) -> Option<(Box<[u8]>, CommandInfo)> {
    let ValkeyFrame::Array { data: fields, .. } = entry else { return None };
    let name = text(fields.first()?)?;
    let name = name.rsplit(|c| *c == b'|').next().unwrap_or(name).to_ascii_uppercase();
    let mut info = CommandInfo { arity: number(fields.get(1)).unwrap_or(-1), ..CommandInfo::default() };
    if let Some(ValkeyFrame::Array { data: tips, .. }) = fields.get(7) {
        for tip in tips.iter().filter_map(text) {
            if let Some(policy) = tip.strip_prefix(b"request_policy:") {
                let found = REQUEST_POLICIES.iter().find(|(name, _)| name.as_bytes() == policy);
                info.request = found.map_or(info.request, |(_, p)| *p);
            } else if let Some(policy) = tip.strip_prefix(b"response_policy:") {
                let found = RESPONSE_POLICIES.iter().find(|(name, _)| name.as_bytes() == policy);
                info.response = found.map_or(info.response, |(_, p)| *p);
            }
        }
    }
    if let Some(ValkeyFrame::Array { data: specs, .. }) = fields.get(8) {
        // A specification of an unknown kind (SORT's BY and GET patterns) finds no key.
        info.key_specs = specs.iter().filter_map(key_spec).collect();
    } else if let (Some(first), Some(last), Some(step)) =
        (number(fields.get(3)), number(fields.get(4)), number(fields.get(5)))
    {
        info.key_specs.extend(KeySpec::legacy(first, last, step));
    }
    if let Some(ValkeyFrame::Array { data: subs, .. }) = fields.get(9) {
        info.subcommands = subs.iter().filter_map(command_info).collect();
    }
    Some((name.into_boxed_slice(), info))
}

fn key_spec(spec: &ValkeyFrame) -> Option<KeySpec> {
    let spec = pairs(spec);
    let begin = pairs(field(&spec, "begin_search")?);
    let find = pairs(field(&spec, "find_keys")?);
    let begin_spec = pairs(field(&begin, "spec")?);
    let find_spec = pairs(field(&find, "spec")?);
    let begin = match text(field(&begin, "type")?)? {
        b"index" => BeginSearch::Index(number(field(&begin_spec, "index"))?),
        b"keyword" => BeginSearch::Keyword {
            keyword: text(field(&begin_spec, "keyword")?)?.into(),
            startfrom: number(field(&begin_spec, "startfrom"))?,
        },
        _ => return None,
    };
    let find = match text(field(&find, "type")?)? {
        b"range" => FindKeys::Range {
            lastkey: number(field(&find_spec, "lastkey"))?,
            keystep: number(field(&find_spec, "keystep"))?,
            limit: number(field(&find_spec, "limit"))?,
        },
        b"keynum" => FindKeys::Keynum {
            keynumidx: number(field(&find_spec, "keynumidx"))?,
            firstkey: number(field(&find_spec, "firstkey"))?,
            keystep: number(field(&find_spec, "keystep"))?,
        },
        _ => return None,
    };
    let spec = KeySpec { begin, find };
    spec.is_sane().then_some(spec)
}

/// Bounds on the numbers of a key specification, far beyond any real command's, so that a
/// server's table cannot make key finding overflow or spin.
const SPEC_BOUND: i64 = 1 << 20;

impl KeySpec {
    fn is_sane(&self) -> bool {
        let within = |n: i64| (-SPEC_BOUND..=SPEC_BOUND).contains(&n);
        let begin = match &self.begin {
            BeginSearch::Index(i) => (0..=SPEC_BOUND).contains(i),
            BeginSearch::Keyword { startfrom, .. } => within(*startfrom),
        };
        let find = match self.find {
            FindKeys::Range { lastkey, keystep, limit } => {
                within(lastkey) && (1..=SPEC_BOUND).contains(&keystep) && (0..=SPEC_BOUND).contains(&limit)
            }
            FindKeys::Keynum { keynumidx, firstkey, keystep } => {
                (0..=SPEC_BOUND).contains(&keynumidx)
                    && (0..=SPEC_BOUND).contains(&firstkey)
                    && (1..=SPEC_BOUND).contains(&keystep)
            }
        };
        begin && find
    }

    /// A specification from the legacy first/last/step fields of a table without key
    /// specifications (Redis 6): keys from `first` to `last` (negative: from the end).
    fn legacy(first: i64, last: i64, step: i64) -> Option<KeySpec> {
        let lastkey = if last < 0 { last } else { last - first };
        let spec =
            KeySpec { begin: BeginSearch::Index(first), find: FindKeys::Range { lastkey, keystep: step, limit: 0 } };
        (first > 0 && spec.is_sane()).then_some(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(table: &CommandTable, argv: &[&str]) -> Vec<usize> {
        let argv: Vec<&[u8]> = argv.iter().map(|a| a.as_bytes()).collect();
        let name = argv[0].to_ascii_uppercase();
        let info = table.lookup(&name, || argv.get(1).copied()).expect("known command");
        let mut out = Vec::new();
        info.keys(&argv, &mut out);
        out
    }

    #[test]
    fn builtin_table_is_valkey_8s() {
        let table = CommandTable::builtin();
        assert_eq!(table.len(), 241, "COMMAND COUNT of Valkey 8.0.1");
        let get = table.lookup(b"GET", || None).unwrap();
        assert_eq!((get.arity, get.request, get.single_key_index()), (2, RequestPolicy::Default, Some(1)));
        let config_set = table.lookup(b"CONFIG", || Some(&b"set"[..])).unwrap();
        assert_eq!((config_set.request, config_set.response), (RequestPolicy::AllNodes, ResponsePolicy::AllSucceeded));
        let info = table.lookup(b"INFO", || None).unwrap();
        assert_eq!((info.request, info.response), (RequestPolicy::AllShards, ResponsePolicy::Special));
        let mset = table.lookup(b"MSET", || None).unwrap();
        assert_eq!((mset.request, mset.key_step()), (RequestPolicy::MultiShard, 2));
        assert_eq!(table.lookup(b"FUNCTION", || Some(&b"LOAD"[..])).unwrap().request, RequestPolicy::AllShards);
        assert_eq!(table.lookup(b"NOSUCH", || None), None);
        // An unknown subcommand: the container's entry.
        assert_eq!(
            table.lookup(b"CONFIG", || Some(&b"nosuch"[..])).unwrap().subcommands.len(),
            5,
            "GET SET RESETSTAT REWRITE HELP"
        );
        assert!(table.lookup(b"DEBUG", || Some(&b"SLEEP"[..])).unwrap().keyless(), "DEBUG names no keys");
    }

    #[test]
    fn keys_are_found_as_valkey_finds_them() {
        let table = CommandTable::builtin();
        assert_eq!(keys(table, &["get", "k"]), [1]);
        assert_eq!(keys(table, &["MSET", "a", "1", "b", "2"]), [1, 3]);
        assert_eq!(keys(table, &["MGET", "a", "b", "c"]), [1, 2, 3]);
        assert_eq!(keys(table, &["EVAL", "return 1", "2", "a", "b", "arg"]), [3, 4]);
        assert_eq!(keys(table, &["EVAL", "return 1", "0", "a"]), Vec::<usize>::new());
        assert_eq!(keys(table, &["EVAL", "return 1", "x", "a"]), Vec::<usize>::new(), "not a count");
        assert_eq!(keys(table, &["EVAL", "return 1", "9223372036854775807", "a"]), [3], "a huge count stops");
        assert_eq!(keys(table, &["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"]), [4, 5]);
        assert_eq!(keys(table, &["ZUNIONSTORE", "dst", "2", "a", "b", "WEIGHTS", "1", "2"]), [1, 3, 4]);
        assert_eq!(keys(table, &["OBJECT", "encoding", "k"]), [2]);
        assert_eq!(keys(table, &["MEMORY", "USAGE", "k", "SAMPLES", "5"]), [2]);
        assert_eq!(keys(table, &["LMOVE", "src", "dst", "LEFT", "RIGHT"]), [1, 2]);
        assert_eq!(keys(table, &["DEBUG", "SLEEP", "0.2"]), Vec::<usize>::new());
        assert_eq!(keys(table, &["PING"]), Vec::<usize>::new());
        assert_eq!(keys(table, &["SORT", "l", "BY", "w_*", "STORE", "d"]), [1]);
        assert_eq!(keys(table, &["GET"]), Vec::<usize>::new(), "too few arguments for a fixed arity");
        let first = |parts: &[&[u8]]| {
            let raw = super::super::command::encode(parts);
            let name = parts[0].to_ascii_uppercase();
            first_key(table.lookup(&name, || request_word(&raw, 1)), &name, &[], &raw).map(<[u8]>::to_vec)
        };
        assert_eq!(first(&[b"GET", b"k"]), Some(b"k".to_vec()));
        assert_eq!(first(&[b"EVAL", b"s", b"1", b"k"]), Some(b"k".to_vec()));
        assert_eq!(first(&[b"debug", b"object", b"k"]), Some(b"k".to_vec()));
        assert_eq!(first(&[b"DEBUG", b"SLEEP", b"0"]), None);
        assert_eq!(first(&[b"NOSUCH", b"k"]), Some(b"k".to_vec()), "unknown: the first argument");
    }

    #[test]
    fn a_table_from_resp3_and_refusals() {
        // One entry, RESP3 maps for the key specification.
        let raw = Bytes::from_static(
            b"*1\r\n*10\r\n$3\r\nget\r\n:2\r\n*0\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n*1\r\n%2\r\n$12\r\nbegin_search\r\n%2\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n%1\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n%2\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n%3\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n",
        );
        let table = CommandTable::from_reply(&raw).unwrap();
        assert_eq!(table.lookup(b"GET", || None).and_then(CommandInfo::single_key_index), Some(1));
        let refused = Bytes::from_static(b"-NOPERM User x has no permissions to run the 'command' command\r\n");
        assert!(CommandTable::from_reply(&refused).unwrap_err().starts_with("NOPERM"));
        assert!(CommandTable::from_reply(&Bytes::from_static(b"*0\r\n")).is_err());
        // A Redis 6 entry (no key specifications): the legacy first/last/step.
        let legacy = Bytes::from_static(b"*1\r\n*7\r\n$4\r\nmset\r\n:-3\r\n*0\r\n:1\r\n:-1\r\n:2\r\n*0\r\n");
        let table = CommandTable::from_reply(&legacy).unwrap();
        let mut found = Vec::new();
        table.lookup(b"MSET", || None).unwrap().keys(&[b"MSET", b"a", b"1", b"b", b"2"], &mut found);
        assert_eq!(found, [1, 3]);
        // A specification with a step of 0 or a huge index is dropped, not followed.
        let zero_step = Bytes::from_static(
            b"*1\r\n*10\r\n$3\r\nget\r\n:2\r\n*0\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n*1\r\n*4\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:-9223372036854775808\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:0\r\n$5\r\nlimit\r\n:-1\r\n*0\r\n",
        );
        let table = CommandTable::from_reply(&zero_step).unwrap();
        assert!(table.lookup(b"GET", || None).unwrap().keyless());
        assert!(CommandTable::from_reply(&Bytes::from_static(b":1\r\n")).is_err());
    }
}
