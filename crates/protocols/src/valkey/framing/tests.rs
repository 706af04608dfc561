use super::*;
use ValkeyCodecError as E;

fn len(b: &[u8]) -> Result<Option<usize>, ValkeyCodecError> {
    message_len(b)
}

fn req(b: &[u8]) -> Result<Option<Request>, ValkeyCodecError> {
    request_len(b)
}

#[test]
fn get_from_valkey_cli_v2_1() {
    let msg = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    assert_eq!(len(msg), Ok(Some(msg.len())));
    assert_eq!(req(msg), Ok(Some(Request::Command(msg.len()))));
    for cut in 0..msg.len() {
        assert_eq!(len(&msg[..cut]), Ok(None), "cut at {cut}");
        assert_eq!(req(&msg[..cut]), Ok(None), "cut at {cut}");
    }
}

#[test]
fn pipeline_takes_only_the_first() {
    let msg = b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
    assert_eq!(len(msg), Ok(Some(14)));
    assert_eq!(req(msg), Ok(Some(Request::Command(14))));
}

#[test]
fn nulls_and_nested() {
    assert_eq!(len(b"$-1\r\n"), Ok(Some(5)));
    assert_eq!(len(b"*-1\r\n"), Ok(Some(5)));
    let mget = b"*3\r\n$1\r\na\r\n$-1\r\n*2\r\n:1\r\n:2\r\n";
    assert_eq!(len(mget), Ok(Some(mget.len())));
}

#[test]
fn resp3_types_v3_1() {
    let hello = b"%2\r\n+server\r\n+valkey\r\n+proto\r\n:3\r\n";
    assert_eq!(len(hello), Ok(Some(hello.len())));
    let push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
    assert_eq!(len(push), Ok(Some(push.len())));
    let attr = b"|1\r\n+ttl\r\n:3\r\n+OK\r\n";
    assert_eq!(len(attr), Ok(Some(attr.len())));
    assert_eq!(len(b"_\r\n,1.5\r\n#t\r\n"), Ok(Some(3)));
    assert_eq!(len(b"=8\r\ntxt:abcd\r\n"), Ok(Some(14)));
}

#[test]
fn malformed_replies() {
    assert_eq!(len(b"PING\r\n"), Err(E::InvalidType('P')));
    assert!(len(b"*x\r\n").is_err());
    assert!(len(b"$3\r\nabcde\r\n").is_err());
    assert!(len(b"$-5\r\n").is_err());
    assert!(len(b"*?\r\n").is_err());
    assert!(len(b"*1\n").is_err());
    assert!(len(b"$99999999999999999999\r\n").is_err());
    let long = vec![b'+'; MAX_LINE_LEN + 10];
    assert!(len(&long).is_err());
}

#[test]
fn scanner_resumes_where_it_stopped() {
    let msg = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n*1\r\n$4\r\nPING\r\n";
    let whole = 31;
    let mut scanner = Scanner::default();
    let mut requests = Scanner::default();
    for cut in 1..whole {
        assert_eq!(scanner.scan(&msg[..cut]), Ok(None), "cut at {cut}");
        assert_eq!(requests.scan_request(&msg[..cut]), Ok(None), "cut at {cut}");
    }
    assert_eq!(scanner.scan(msg), Ok(Some(whole)));
    assert_eq!(requests.scan_request(msg), Ok(Some(Request::Command(whole))));
    // It starts afresh for the next message.
    assert_eq!(scanner.scan(&msg[whole..]), Ok(Some(14)));
    assert_eq!(requests.scan_request(&msg[whole..]), Ok(Some(Request::Command(14))));
}

#[test]
fn huge_counts_do_not_overflow_or_panic() {
    assert_eq!(len(b"*999999999999999999\r\n"), Ok(None));
    assert_eq!(len(b"%999999999999999999\r\n"), Ok(None));
    assert_eq!(req(b"*2147483647\r\n"), Ok(None));
    assert_eq!(req(b"*2147483648\r\n"), Err(E::InvalidMultibulkLength));
    assert_eq!(req(b"*99999999999999999999\r\n"), Err(E::InvalidMultibulkLength));
    assert_eq!(req(b"*1\r\n$536870912\r\n"), Ok(None));
    assert_eq!(req(b"*1\r\n$99999999999999999999\r\n"), Err(E::InvalidBulkLength));
    // Nested map headers whose counts add up past u64 are refused, not wrapped around.
    let nested = b"%999999999999999999\r\n".repeat(12);
    assert!(matches!(len(&nested), Err(E::InvalidLength(_))), "{:?}", len(&nested));
}

// The cases below were each tried against valkey-server 8.0.1 over a raw socket; the
// comments give its answer.

#[test]
fn inline_requests() {
    assert_eq!(req(b"PING\r\n"), Ok(Some(Request::Command(6))));
    assert_eq!(req(b"PING"), Ok(None));
    // A bare LF ends a line too.
    assert_eq!(req(b"PING\nPING\r\n"), Ok(Some(Request::Command(5))));
    // Only `*` starts a multibulk: `$4` and `+PING` are inline commands (unknown ones).
    assert_eq!(req(b"$4\r\nPING\r\n"), Ok(Some(Request::Command(4))));
    assert_eq!(req(b"+PING\r\n"), Ok(Some(Request::Command(7))));
    // Quotes are Valkey's: unbalanced ones refuse the request.
    assert_eq!(req(b"SET k \"a b\"\r\n"), Ok(Some(Request::Command(13))));
    assert_eq!(req(b"SET \"k\r\nPING\r\n"), Err(E::UnbalancedQuotes));
    assert_eq!(req(b"SET 'k\r\n"), Err(E::UnbalancedQuotes));
    assert_eq!(req(b"ECHO \"a\"b\r\n"), Err(E::UnbalancedQuotes));
    // An unbalanced quote is only judged once the line is whole.
    assert_eq!(req(b"SET \"k"), Ok(None));
}

#[test]
fn what_valkey_skips() {
    // Empty and blank lines: nothing runs, nothing is answered.
    assert_eq!(req(b"\r\nPING\r\n"), Ok(Some(Request::Nothing(2))));
    assert_eq!(req(b"\nPING\r\n"), Ok(Some(Request::Nothing(1))));
    assert_eq!(req(b"   \t \r\nPING\r\n"), Ok(Some(Request::Nothing(7))));
    assert_eq!(req(b"\r"), Ok(None));
    // Multibulk counts of zero or less.
    assert_eq!(req(b"*0\r\nPING\r\n"), Ok(Some(Request::Nothing(4))));
    assert_eq!(req(b"*-1\r\nPING\r\n"), Ok(Some(Request::Nothing(5))));
    assert_eq!(req(b"*-10\r\nPING\r\n"), Ok(Some(Request::Nothing(6))));
}

#[test]
fn multibulk_count_errors() {
    // `string2ll`: no leading zeros, no `+`, no `-0`, no blanks, not empty.
    for bad in [&b"*-0\r\n"[..], b"*01\r\n", b"*+1\r\n", b"*x\r\n", b"*\r\n", b"*1 \r\n"] {
        assert_eq!(req(bad), Err(E::InvalidMultibulkLength), "{:?}", String::from_utf8_lossy(bad));
    }
    // The count line ends at its CR; the byte after it is not checked.
    assert_eq!(req(b"*1\rX$4\r\nPING\r\n"), Ok(Some(Request::Command(14))));
    assert_eq!(req(b"*1\r"), Ok(None));
}

#[test]
fn element_errors() {
    assert_eq!(req(b"*1\r\nfoo\r\nPING\r\n"), Err(E::ExpectedDollar(b'f')));
    assert_eq!(req(b"*1\r\n:1\r\n"), Err(E::ExpectedDollar(b':')));
    assert_eq!(req(b"*1\r\n\xff\r\n"), Err(E::ExpectedDollar(0xff)));
    assert_eq!(req(b"*1\r\n\r\nPING\r\n"), Err(E::ExpectedDollar(b'\r')));
    assert_eq!(req(b"*1\r\n*1\r\n$4\r\nPING\r\n"), Err(E::ExpectedDollar(b'*')));
    // The element's type is judged once its line is whole.
    assert_eq!(req(b"*1\r\nfoo"), Ok(None));
    for bad in [
        &b"*1\r\n$-1\r\n"[..],
        b"*1\r\n$x\r\n",
        b"*1\r\n$\r\n",
        b"*1\r\n$536870913\r\n",
        b"*1\r\n$-0\r\n",
        b"*1\r\n$01\r\n",
    ] {
        assert_eq!(req(bad), Err(E::InvalidBulkLength), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn bulk_data_is_followed_by_two_unchecked_bytes() {
    // Valkey answers PONG twice.
    assert_eq!(req(b"*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n"), Ok(Some(Request::Command(14))));
    // `PIN`, then the inline lines `x*1` and `$4`, then `PING`.
    assert_eq!(req(b"*1\r\n$3\r\nPINGxx*1\r\n"), Ok(Some(Request::Command(13))));
    assert_eq!(req(b"*1\r\n$4\r\nPING\r"), Ok(None));
}

#[test]
fn nul_bytes_hide_line_ends() {
    // Valkey waits: its strchr stops at the NUL.
    assert_eq!(req(b"PI\0NG\r\nPING\r\n"), Ok(None));
    assert_eq!(req(b"\0PING\r\n"), Ok(None));
    assert_eq!(req(b"*1\0\r\n$4\r\nPING\r\n"), Ok(None));
    assert_eq!(req(b"*1\r\n$4\0\r\nPING\r\n"), Ok(None));
    // A NUL inside bulk data is data.
    assert_eq!(req(b"*1\r\n$3\r\na\0b\r\n"), Ok(Some(Request::Command(13))));
    // ... until the line is too big.
    let mut long = b"PING\0\r\n".to_vec();
    long.resize(MAX_LINE_LEN + 1, b'a');
    assert_eq!(req(&long), Err(E::TooBigInlineRequest));
}

#[test]
fn too_big_lines() {
    let mut inline = vec![b'a'; MAX_LINE_LEN];
    assert_eq!(req(&inline), Ok(None));
    inline.push(b'a');
    assert_eq!(req(&inline), Err(E::TooBigInlineRequest));

    let mut count = b"*".to_vec();
    count.resize(MAX_LINE_LEN, b'1');
    assert_eq!(req(&count), Ok(None));
    count.push(b'1');
    assert_eq!(req(&count), Err(E::TooBigMbulkCount));

    // Counted from the element's own line, and before its `$` is checked.
    for fill in [b'1', b'X'] {
        let mut bulk = b"*1\r\n$".to_vec();
        bulk.truncate(if fill == b'X' { 4 } else { 5 });
        bulk.resize(4 + MAX_LINE_LEN, fill);
        assert_eq!(req(&bulk), Ok(None));
        bulk.push(fill);
        assert_eq!(req(&bulk), Err(E::TooBigBulkCount));
    }
    // A CR in time ends the line, whatever its length.
    let mut count = b"*".to_vec();
    count.resize(MAX_LINE_LEN + 10, b'1');
    count.push(b'\r');
    assert_eq!(req(&count), Ok(None));
}

#[test]
fn string2ll_is_valkeys() {
    assert_eq!(string2ll(b"0"), Some(0));
    assert_eq!(string2ll(b"-10"), Some(-10));
    assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
    for bad in [&b""[..], b"-", b"-0", b"00", b"01", b"+1", b" 1", b"1 ", b"9223372036854775808", b"1x"] {
        assert_eq!(string2ll(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn a_request_over_the_limit_is_refused_as_soon_as_its_lengths_show_it() {
    let max = 1000;
    let scan = |buf: &[u8]| Scanner::default().scan_request_max(buf, max);
    // A bulk promising more than the limit: refused at its header, before any data.
    assert_eq!(scan(b"*2\r\n$3\r\nSET\r\n$2000\r\n"), Err(E::TooLarge { len: 20 + 2000 + 2, max }));
    // Bulks each under the limit but together over it: refused at the bulk that passes it.
    let mut two = b"*3\r\n$3\r\nSET\r\n$600\r\n".to_vec();
    two.resize(two.len() + 600, b'a');
    two.extend_from_slice(b"\r\n$600\r\n");
    assert!(matches!(scan(&two), Err(E::TooLarge { max: 1000, .. })));
    // Exactly at the limit is accepted, whole or arriving.
    let mut at = b"*1\r\n$".to_vec();
    let header = format!("{}\r\n", max - 4 - 6 - 2);
    at.extend_from_slice(header.as_bytes());
    at.resize(max - 2, b'x');
    at.extend_from_slice(b"\r\n");
    assert_eq!(at.len(), max);
    assert_eq!(scan(&at), Ok(Some(Request::Command(max))));
    let mut scanner = Scanner::default();
    assert_eq!(scanner.scan_request_max(&at[..500], max), Ok(None));
    assert_eq!(scanner.scan_request_max(&at, max), Ok(Some(Request::Command(max))));
    // Inline requests stay under their own 64 KiB line limit, below any sensible max.
    assert_eq!(scan(b"PING\r\n"), Ok(Some(Request::Command(6))));
}

/// The shape framing notes is what reading the framed request again finds: its name and
/// argument count ([`RequestView`](crate::valkey::command::RequestView)) and whether it is one
/// command as clients send it (`is_command_array`), whole or arriving a byte at a time.
#[test]
fn a_framed_requests_shape_is_what_reading_it_again_finds() {
    use crate::valkey::command::{is_command_array, RequestView};
    let requests: [&[u8]; 8] = [
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"*3\r\n$3\r\nset\r\n$3\r\nkey\r\n$0\r\n\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"*1\r\n$0\r\n\r\n",
        b"*1\r\n$4\r\nPINGxx",
        b"*2\r\n$4\r\nECHO\r\n$2\r\nabxy",
        b"*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n",
        b"PING\r\n",
    ];
    for raw in requests {
        let expected = RequestView::new(raw)
            .filter(|_| raw.first() == Some(&b'*'))
            .map(|v| (v.name.to_vec(), v.argc, is_command_array(raw)));
        let shape_of = |s: &Scanner| {
            s.last_shape().map(|shape| {
                let (at, len) = (shape.name.0 as usize, shape.name.1 as usize);
                (raw[at..at + len].to_vec(), shape.argc as usize, shape.strict)
            })
        };
        let mut scanner = Scanner::default();
        assert_eq!(scanner.scan_request(raw), Ok(Some(Request::Command(raw.len()))), "{raw:?}");
        assert_eq!(shape_of(&scanner), expected, "{raw:?}");
        let mut scanner = Scanner::default();
        for cut in 1..raw.len() {
            assert_eq!(scanner.scan_request(&raw[..cut]), Ok(None));
            assert_eq!(scanner.last_shape(), None, "no shape while the request is incomplete");
        }
        assert_eq!(scanner.scan_request(raw), Ok(Some(Request::Command(raw.len()))));
        assert_eq!(shape_of(&scanner), expected, "{raw:?} arriving a byte at a time");
    }
    // Consumed without a command: no shape is left from the request before.
    let mut scanner = Scanner::default();
    assert!(scanner.scan_request(b"*1\r\n$4\r\nPING\r\n").is_ok());
    assert_eq!(scanner.scan_request(b"*0\r\n"), Ok(Some(Request::Nothing(4))));
    assert_eq!(scanner.last_shape(), None);
}
