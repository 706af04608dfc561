use super::*;

#[test]
fn a_message_stays_small() {
    // Every request and response is moved through the chain's lists: 224 bytes with the
    // frame inline, 112 now.
    assert!(std::mem::size_of::<Message>() <= 112, "{} bytes", std::mem::size_of::<Message>());
}

#[test]
fn the_request_view_is_worked_out_once_and_the_same_every_time() {
    let m =
        Message::from_bytes(Bytes::from_static(b"*2\r\n$3\r\nget\r\n$1\r\nk\r\n"), Protocol::Valkey, Instant::now());
    let first = m.valkey_request().map(|v| (v.name.to_vec(), v.argc));
    assert_eq!(first, Some((b"get".to_vec(), 1)));
    assert_eq!(m.valkey_request().map(|v| (v.name.to_vec(), v.argc)), first, "from the cache");
    let not = Message::from_bytes(Bytes::from_static(b"*1\r\n:1\r\n"), Protocol::Valkey, Instant::now());
    assert!(not.valkey_request().is_none() && not.valkey_request().is_none());
    // A modified message has no view: its bytes no longer say what it is.
    let mut changed = m.clone();
    assert!(changed.frame_mut().is_ok());
    assert!(changed.valkey_request().is_none());
}

#[test]
fn a_request_framed_by_a_source_comes_with_its_view() {
    let raw = b"*2\r\n$3\r\nget\r\n$1\r\nk\r\n";
    let mut scanner = valkey::framing::Scanner::default();
    assert!(scanner.scan_request(raw).is_ok());
    let m = Message::valkey_request_from(Bytes::from_static(raw), scanner.last_shape(), Instant::now());
    assert!(m.valkey_view.get().is_some(), "known without reading the bytes again");
    let view = m.valkey_request().expect("a command");
    assert_eq!((view.name, view.argc, view.special), (&b"get"[..], 1, valkey::command::Special::None));
    assert!(m.is_valkey_command_array());
    // Valkey skips the two bytes after a bulk string unread: not one command as clients
    // send it, so it may not share a connection.
    let odd = b"*1\r\n$4\r\nPINGxx";
    assert!(scanner.scan_request(odd).is_ok());
    let m = Message::valkey_request_from(Bytes::from_static(odd), scanner.last_shape(), Instant::now());
    assert_eq!(m.valkey_request().map(|v| v.name), Some(&b"PING"[..]));
    assert!(!m.is_valkey_command_array());
    let inline = Message::valkey_request_from(Bytes::from_static(b"PING\r\n"), None, Instant::now());
    assert!(inline.valkey_request().is_some() && !inline.is_valkey_command_array());
}

#[test]
fn unmodified_message_is_written_as_received() {
    // Extra spaces in an inline command would be lost by a re-encode.
    let raw = Bytes::from_static(b"PING   \r\n");
    let mut m = Message::from_bytes(raw.clone(), Protocol::Valkey, Instant::now());
    assert!(m.frame().is_ok());
    let mut out = BytesMut::new();
    m.encode_into(&mut out).unwrap();
    assert_eq!(&out[..], &raw[..]);
    assert_eq!(m.valkey_request().unwrap().name, b"PING");
}

#[test]
fn modified_message_is_re_encoded() {
    let mut m = Message::from_bytes(Bytes::from_static(b"$1\r\na\r\n"), Protocol::Valkey, Instant::now());
    *m.frame_mut().unwrap() = Frame::Valkey(valkey::frame::bulk("bb"));
    let mut out = BytesMut::new();
    m.encode_into(&mut out).unwrap();
    assert_eq!(&out[..], b"$2\r\nbb\r\n");
}

#[test]
fn responses_carry_their_request_id() {
    let req = Message::from_bytes(Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"), Protocol::Valkey, Instant::now());
    let resp = Message::valkey_error_to(&req, "ERR no");
    assert_eq!(resp.request_id(), Some(req.id()));
}
