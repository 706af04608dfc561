//! Entry points for coverage-guided fuzzing: each takes arbitrary bytes and runs every
//! decoder a client or server can reach for one protocol, the way the proxy calls them. A
//! panic (or an allocation or loop that input can blow up) is a bug.
//!
//! The `fuzz/` crate (cargo-fuzz, libFuzzer, nightly) drives these; the unit tests below
//! replay the committed corpora (`fuzz/corpus/<target>/`) on every test run, so a crash once
//! found stays fixed. See `docs/testing.md`.

use crate::cassandra::compression::Compression;
use crate::cassandra::{framing as cql_framing, segment, statement, CassandraFrame};
use crate::kafka::{framing as kafka_framing, header as kafka_header, walk, KafkaFrame};
use crate::valkey::{command, frame as valkey_frame, framing as valkey_framing};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;

/// A fuzz target: arbitrary bytes in, nothing out but panics.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name: the `fuzz/` binaries and corpus folders carry these names.
pub const TARGETS: [(&str, Target); 5] =
    [("valkey", valkey), ("cql", cql), ("cql_statement", cql_statement), ("kafka", kafka), ("websocket", websocket)];

/// Valkey requests and replies, RESP2/RESP3 and inline: framing (both scanners), parsing,
/// encoding back, and the cheap request views.
pub fn valkey(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    let mut scanner = valkey_framing::Scanner::default();
    // Requests, as a source cuts them.
    cut(
        &bytes,
        "request_len",
        |rest| match valkey_framing::request_len(rest) {
            Ok(Some(valkey_framing::Request::Nothing(len))) => Some((len, false)),
            Ok(Some(valkey_framing::Request::Command(len))) => Some((len, true)),
            _ => None,
        },
        |message| {
            let _ = command::RequestView::new(message);
            let _ = command::request_args(message);
            let _ = command::is_command_array(message);
            parse_and_encode(message);
        },
    );
    // What framing notes about a request is what reading it again finds.
    if let Ok(Some(valkey_framing::Request::Command(len))) = scanner.scan_request(data) {
        if let (Some(shape), Some(raw)) = (scanner.last_shape(), data.get(..len)) {
            let view = command::RequestView::new(raw).map(|v| (v.name, v.argc));
            let (at, name_len) = (shape.name.0 as usize, shape.name.1 as usize);
            let name = raw.get(at..at + name_len);
            assert_eq!(view, name.map(|name| (name, shape.argc as usize)), "request shape");
            assert_eq!(shape.strict, command::is_command_array(raw), "request shape");
        }
    }
    // Replies, as a sink cuts them.
    cut(
        &bytes,
        "message_len",
        |rest| valkey_framing::message_len(rest).ok().flatten().map(|len| (len, true)),
        |message| {
            let _ = command::array_strings(message);
            parse_and_encode(message);
        },
    );
    let _ = scanner.scan(data);
}

/// Cuts `bytes` into messages with `len_of` (a length, and whether it is a message to look
/// at) and gives each to `each`, until a length is missing or zero.
fn cut(bytes: &Bytes, what: &str, len_of: impl Fn(&[u8]) -> Option<(usize, bool)>, mut each: impl FnMut(&Bytes)) {
    let mut at = 0;
    while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
        let Some((len, message)) = len_of(rest).filter(|(len, _)| *len > 0) else { break };
        assert!(len <= rest.len(), "{what} said {len} of {} bytes", rest.len());
        if message {
            each(&bytes.slice(at..at + len));
        }
        at += len;
    }
}

fn parse_and_encode(message: &Bytes) {
    if let Ok((frame, version)) = valkey_frame::parse(message) {
        let mut out = BytesMut::new();
        let _ = valkey_frame::encode(&frame, version, &mut out);
    }
}

/// CQL frames v3-v5 (the first byte picks the connection's compression), v5 segments, and
/// re-encoding what parses.
pub fn cql(data: &[u8]) {
    let Some((&choice, data)) = data.split_first() else { return };
    let compression = match choice % 3 {
        0 => Compression::None,
        1 => Compression::Lz4,
        _ => Compression::Snappy,
    };
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(Some(len)) = cql_framing::frame_len(data) {
        assert!(len <= data.len(), "frame_len said {len} of {} bytes", data.len());
        if let Ok(parsed) = CassandraFrame::parse(&bytes.slice(..len), compression) {
            let _ = parsed.encode();
        }
    }
    // The same bytes as v5 segments.
    let mut decoder = segment::SegmentDecoder::new();
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    let _ = decoder.decode(&mut buf, compression, &mut frames);
    for frame in frames {
        if let Ok(parsed) = CassandraFrame::parse(&frame, Compression::None) {
            let _ = parsed.encode();
        }
    }
}

/// CQL statement text (as UTF-8, lossily): the parser and the cheap classifiers.
pub fn cql_statement(data: &[u8]) {
    let cql = String::from_utf8_lossy(data);
    let _ = statement::parse(&cql);
    let _ = statement::marker_count(&cql);
    let _ = statement::first_word(&cql);
    let _ = crate::cassandra::classify(&cql);
}

/// Kafka messages: the first byte says request (even) or response (odd); a response's
/// next four bytes pick the api key and version it answers, and the rest is the response. Framing, the header reads, the walks, and full parsing (and
/// re-encoding) of what the proxy parses: the walked requests and responses (others are
/// never parsed in full: kafka-protocol reserves arrays from their counts on the wire, see
/// `kafka`, "Untrusted input"). A parsed response must encode back to bytes that walk, and
/// the broker rewrite and error-code reads run on it.
pub fn kafka(data: &[u8]) {
    let Some((&choice, data)) = data.split_first() else { return };
    let _ = kafka_framing::message_len(data);
    if choice % 2 == 0 {
        let _ = kafka_header::request_ids(data);
        let _ = walk::check_request(data);
        let _ = crate::kafka::produce::expects_response(data);
        let walked = kafka_header::request_ids(data).ok().and_then(|ids| ApiKey::try_from(ids.api_key).ok());
        if walked.is_some_and(walk::is_walked) {
            if let Ok(frame) = KafkaFrame::parse_request(&Bytes::copy_from_slice(data)) {
                let _ = frame.to_bytes();
            }
        }
        let _ = crate::kafka::safe_error::safe_error_response(data, 35);
    } else {
        let Some((ids, body)) = data.split_first_chunk::<4>() else { return };
        let api_key = i16::from_be_bytes([ids[0], ids[1]]);
        let version = i16::from_be_bytes([ids[2], ids[3]]);
        let Ok(api_key) = ApiKey::try_from(api_key) else { return };
        let _ = kafka_framing::response_correlation_id(body);
        let _ = kafka_header::response_body_offset(body, api_key, version);
        kafka_response(body, api_key, version);
    }
}

/// One broker response as the sinks take it: `whole` with its length prefix made right
/// (the framing above checks prefixes; the fuzzer need not find them to get further).
fn kafka_response(whole: &[u8], api_key: ApiKey, version: i16) {
    let Some(rest) = whole.get(4..) else { return };
    let Ok(len) = i32::try_from(rest.len()) else { return };
    let mut msg = BytesMut::with_capacity(whole.len());
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(rest);
    let msg = msg.freeze();
    // parse_response walks the message before it decodes it.
    if let Ok(frame) = KafkaFrame::parse_response(&msg, api_key, version) {
        if let KafkaFrame::Response { body, api_version, .. } = &frame {
            let _ = crate::kafka::api::top_level_error_code(body);
            let _ = crate::kafka::api::throttle_time_ms(body);
            if let Ok(out) = frame.to_bytes() {
                // What the proxy sends on must be what it would accept.
                assert_eq!(walk::check_response(&out, api_key, *api_version), Ok(()), "re-encoded {api_key:?}");
            }
        }
    }
    let _ = crate::kafka::rewrite::rewrite_brokers(&msg, api_key, version, "proxy", 9192);
    let _ = crate::kafka::rewrite::rewrite_brokers(&msg, api_key, version, "", 9192);
}

/// A CQL WebSocket client's bytes as the source reads them with tungstenite (the proxy's
/// `websocket` module drives the same library the same way): the HTTP upgrade request, and
/// frames after an upgrade (masked or not, fragmented, control frames, close), with the
/// smallest message limit a source may have (`max_request_bytes: 65536`). The first byte
/// picks which; the rest is the client's bytes.
pub fn websocket(data: &[u8]) {
    use tungstenite::protocol::{Role, WebSocketConfig};
    let Some((&choice, data)) = data.split_first() else { return };
    let config = WebSocketConfig::default().max_message_size(Some(65_536)).max_frame_size(Some(65_536));
    if choice % 2 == 0 {
        let _ = tungstenite::accept_with_config(FuzzIo::new(data), Some(config));
    } else {
        let mut ws = tungstenite::WebSocket::from_raw_socket(FuzzIo::new(data), Role::Server, Some(config));
        // Each read consumes input or fails; the bound only keeps a bug from looping forever.
        for _ in 0..data.len() + 2 {
            if ws.read().is_err() {
                break;
            }
        }
    }
}

/// A client's bytes to read, and a sink for what the server side writes back.
struct FuzzIo<'a> {
    input: &'a [u8],
}

impl<'a> FuzzIo<'a> {
    fn new(input: &'a [u8]) -> Self {
        FuzzIo { input }
    }
}

impl std::io::Read for FuzzIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.input.len());
        let (now, rest) = self.input.split_at(n);
        buf[..n].copy_from_slice(now);
        self.input = rest;
        Ok(n)
    }
}

impl std::io::Write for FuzzIo<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn corpus(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
    }

    /// Every committed corpus input, through its target: what fuzzing found stays fixed.
    #[test]
    fn the_fuzz_corpora_replay_without_panics() {
        for (name, target) in TARGETS {
            let dir = corpus(name);
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut count = 0;
            for entry in entries {
                let path = entry.expect("a corpus entry").path();
                let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                target(&data);
                count += 1;
            }
            assert!(count > 0, "the {name} corpus is empty");
        }
    }

    /// Writes the seed corpora from captured client and server traffic (run by hand:
    /// `cargo test -p shotover-protocols write_seed_corpora -- --ignored`).
    #[test]
    #[ignore]
    fn write_seed_corpora() {
        use crate::cassandra::captures;
        use crate::kafka::captured;
        let write = |target: &str, name: &str, data: &[u8]| {
            let dir = corpus(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        };
        for (name, hex) in [
            ("options_dse_v2", captures::OPTIONS_DSE_V2),
            ("startup_v5_lz4", captures::STARTUP_V5_LZ4),
            ("startup_v4_lz4", captures::STARTUP_V4_LZ4),
            ("startup_v3", captures::STARTUP_V3),
            ("register_v3", captures::REGISTER_V3),
            ("register_v4_lz4", captures::REGISTER_V4_LZ4),
            ("register_v5_segment", captures::REGISTER_V5_SEGMENT),
            ("register_v5_lz4_segment", captures::REGISTER_V5_LZ4_SEGMENT),
            ("query_v3_1", captures::QUERY_V3_1),
            ("query_v4_1", captures::QUERY_V4_1),
            ("query_v5_1", captures::QUERY_V5_1),
            ("query_v3_2", captures::QUERY_V3_2),
            ("query_v4_2", captures::QUERY_V4_2),
            ("query_v5_2", captures::QUERY_V5_2),
            ("query_v3_3", captures::QUERY_V3_3),
            ("query_v4_3", captures::QUERY_V4_3),
            ("query_v5_3", captures::QUERY_V5_3),
            ("query_v5_4", captures::QUERY_V5_4),
            ("prepare_v3_1", captures::PREPARE_V3_1),
            ("prepare_v4_1", captures::PREPARE_V4_1),
            ("prepare_v5_1", captures::PREPARE_V5_1),
            ("prepare_v5_2", captures::PREPARE_V5_2),
            ("execute_v3_1", captures::EXECUTE_V3_1),
            ("execute_v4_1", captures::EXECUTE_V4_1),
            ("execute_v5_1", captures::EXECUTE_V5_1),
            ("batch_v3_1", captures::BATCH_V3_1),
            ("batch_v4_1", captures::BATCH_V4_1),
            ("batch_v5_1", captures::BATCH_V5_1),
            ("query_v4_lz4_1", captures::QUERY_V4_LZ4_1),
            ("segment_v5_none_1", captures::SEGMENT_V5_NONE_1),
            ("segment_v5_lz4_1", captures::SEGMENT_V5_LZ4_1),
        ] {
            let bytes = captures::hex(hex);
            for compression in 0..3u8 {
                let mut data = vec![compression];
                data.extend_from_slice(&bytes);
                write("cql", &format!("{name}-{compression}"), &data);
            }
        }
        let request = |msg: &[u8]| [&[0u8][..], msg].concat();
        let response =
            |api: i16, version: i16, msg: &[u8]| [&[1u8][..], &api.to_be_bytes(), &version.to_be_bytes(), msg].concat();
        for (name, data) in [
            ("api_versions_v3_request", request(captured::API_VERSIONS_V3_REQUEST)),
            ("api_versions_v3_response", response(18, 3, captured::API_VERSIONS_V3_RESPONSE)),
            ("api_versions_v4_request", request(captured::API_VERSIONS_V4_REQUEST)),
            ("api_versions_v0_unsupported_response", response(18, 3, captured::API_VERSIONS_V0_UNSUPPORTED_RESPONSE)),
            ("api_versions_v2_request", request(captured::API_VERSIONS_V2_REQUEST)),
            ("api_versions_v2_response", response(18, 2, captured::API_VERSIONS_V2_RESPONSE)),
            ("api_versions_v0_request", request(captured::API_VERSIONS_V0_REQUEST)),
            ("api_versions_v0_response", response(18, 0, captured::API_VERSIONS_V0_RESPONSE)),
            ("metadata_v12_request", request(captured::METADATA_V12_REQUEST)),
            ("metadata_v12_request_no_topics", request(captured::METADATA_V12_REQUEST_NO_TOPICS)),
            ("metadata_v12_response", response(3, 12, captured::METADATA_V12_RESPONSE)),
            ("metadata_v7_request", request(captured::METADATA_V7_REQUEST)),
            ("metadata_v7_request_topic", request(captured::METADATA_V7_REQUEST_TOPIC)),
            ("metadata_v7_response", response(3, 7, captured::METADATA_V7_RESPONSE)),
            ("produce_v9_request_acks_1", request(captured::PRODUCE_V9_REQUEST_ACKS_1)),
            ("produce_v9_request_acks_0", request(captured::PRODUCE_V9_REQUEST_ACKS_0)),
            ("produce_v9_request_acks_1_kafka_python", request(captured::PRODUCE_V9_REQUEST_ACKS_1_KAFKA_PYTHON)),
            ("produce_v9_response", response(0, 9, captured::PRODUCE_V9_RESPONSE)),
            ("produce_v7_request_acks_all", request(captured::PRODUCE_V7_REQUEST_ACKS_ALL)),
            ("produce_v7_request_acks_0", request(captured::PRODUCE_V7_REQUEST_ACKS_0)),
            ("produce_v7_response", response(0, 7, captured::PRODUCE_V7_RESPONSE)),
            ("find_coordinator_v2_request", request(captured::FIND_COORDINATOR_V2_REQUEST)),
            ("find_coordinator_v2_response", response(10, 2, captured::FIND_COORDINATOR_V2_RESPONSE)),
            ("find_coordinator_v4_request", request(captured::FIND_COORDINATOR_V4_REQUEST)),
            ("find_coordinator_v4_response", response(10, 4, captured::FIND_COORDINATOR_V4_RESPONSE)),
            ("join_group_v5_request", request(captured::JOIN_GROUP_V5_REQUEST)),
            ("join_group_v7_request", request(captured::JOIN_GROUP_V7_REQUEST)),
            ("fetch_v12_request", request(captured::FETCH_V12_REQUEST)),
            ("fetch_v12_request_kafka_python", request(captured::FETCH_V12_REQUEST_KAFKA_PYTHON)),
        ] {
            write("kafka", name, &data);
        }
        // Every walked response kind and version, with all its arrays holding elements.
        for api_key in crate::kafka::walk::response_samples::WALKED {
            let versions = api_key.valid_versions();
            for v in versions.min..=versions.max {
                let msg = crate::kafka::walk::response_samples::encoded(api_key, v);
                write("kafka", &format!("{api_key:?}_v{v}_response"), &response(api_key as i16, v, &msg));
            }
        }
        let valkey: [(&str, &[u8]); 8] = [
            ("set", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"),
            ("inline", b"SET k \"a b\"\r\nGET k\r\n"),
            ("pipeline", b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
            ("reply_resp2", b"*2\r\n$1\r\na\r\n*1\r\n:5\r\n"),
            ("reply_resp3_map", b"%1\r\n+k\r\n,1.5\r\n"),
            ("reply_push", b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"),
            ("reply_errors", b"-ERR x\r\n!3\r\nERR\r\n_\r\n#t\r\n"),
            ("reply_attribute", b"|1\r\n+a\r\n:1\r\n$-1\r\n=7\r\ntxt:abc\r\n(123\r\n"),
        ];
        for (name, data) in valkey {
            write("valkey", name, data);
        }
        let upgrade = b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: cql\r\n\r\n";
        // Client frames are masked: FIN + opcode, MASK + length, the key, the masked payload.
        let frame = |opcode: u8, fin: bool, payload: &[u8]| {
            let key = [1u8, 2, 3, 4];
            let mut f = vec![opcode | if fin { 0x80 } else { 0 }, 0x80 | payload.len() as u8];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            f
        };
        let options = captures::hex("040000000500000000");
        let frames: [(&str, Vec<u8>); 5] = [
            ("binary_options", frame(2, true, &options)),
            ("fragmented", [frame(2, false, &options[..4]), frame(0, true, &options[4..])].concat()),
            ("ping_then_binary", [frame(9, true, b"hi"), frame(2, true, &options)].concat()),
            ("text", frame(1, true, b"SELECT")),
            ("close", frame(8, true, &[0x03, 0xe8])),
        ];
        write("websocket", "upgrade", &[&[0u8][..], upgrade].concat());
        for (name, bytes) in frames {
            write("websocket", name, &[&[1u8][..], &bytes].concat());
        }
        let statements = [
            "SELECT a, b AS c FROM ks.t WHERE pk = ? AND ck IN (1, 2) LIMIT 10",
            "INSERT INTO t (pk, ck, v) VALUES ('a''b', 0xcafe, $$x$$) USING TTL 5 IF NOT EXISTS",
            "UPDATE ks.\"T\" SET v = v + {1: 2}, w[0] = :w WHERE pk = 123e4567-e89b-12d3-a456-426614174000",
            "BEGIN UNLOGGED BATCH DELETE FROM t WHERE pk = 1; INSERT INTO t JSON '{}' APPLY BATCH",
            "USE \"Ks\" -- comment",
            "SELECT * FROM t WHERE v LIKE :p AND token(pk) > -5 /* c */ ALLOW FILTERING",
        ];
        for (i, s) in statements.iter().enumerate() {
            write("cql_statement", &i.to_string(), s.as_bytes());
        }
    }
}
