use super::*;
use anyhow::Context as _;
use std::io;

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)")
}

#[test]
fn constructors_say_the_side_and_start_retry_unsafe_and_open() {
    for (e, side) in [
        (ChainError::client("c"), Side::Client),
        (ChainError::upstream("u"), Side::Upstream),
        (ChainError::proxy("p"), Side::Proxy),
        (ChainError::new(Side::Upstream, String::from("n")), Side::Upstream),
    ] {
        assert_eq!(e.side(), side);
        assert_eq!(e.retry(), Retry::Unsafe);
        assert!(!e.is_retry_safe() && !e.closes_connection());
    }
    let e = ChainError::upstream("u").retry_safe().close_connection();
    assert!(e.is_retry_safe() && e.closes_connection());
    assert_eq!(e.with_retry(Retry::Unsafe).retry(), Retry::Unsafe);
    assert_eq!([Side::Client, Side::Upstream, Side::Proxy].map(|s| s.to_string()), ["client", "upstream", "proxy"]);
}

#[test]
fn display_is_the_message_then_every_cause_as_anyhow_alternate_gives() {
    let e = ChainError::upstream("cannot connect to upstream 127.0.0.1:1").caused_by(refused());
    assert_eq!(e.to_string(), "cannot connect to upstream 127.0.0.1:1: Connection refused (os error 111)");
    // The same text anyhow gave for the same chain.
    let old = Err::<(), _>(refused()).context("cannot connect to upstream 127.0.0.1:1").unwrap_err();
    assert_eq!(e.to_string(), format!("{old:#}"));
    assert_eq!(ChainError::proxy("Intentional fail").to_string(), "Intentional fail");
}

#[test]
fn the_cause_is_kept_as_source() {
    let e = ChainError::upstream("upstream read failed").caused_by(refused());
    let source = e.source().expect("a source");
    assert_eq!(source.downcast_ref::<io::Error>().map(io::Error::kind), Some(io::ErrorKind::ConnectionRefused));
    assert!(ChainError::proxy("alone").source().is_none());
    // A converted error is shown as itself, and its source is the converted error's own.
    let converted = ChainError::from(refused());
    assert_eq!(converted.to_string(), "Connection refused (os error 111)");
    assert!(converted.source().is_none());
}

#[test]
fn context_goes_in_front_and_keeps_side_and_flags() {
    let inner = ChainError::upstream("no response").caused_by(refused()).close_connection();
    let e = inner.context("Tee sub-chain");
    assert_eq!(e.to_string(), "Tee sub-chain: no response: Connection refused (os error 111)");
    assert_eq!((e.side(), e.retry(), e.closes_connection()), (Side::Upstream, Retry::Unsafe, true));
    assert!(e.source().and_then(|s| s.downcast_ref::<ChainError>()).is_some());
    let twice = e.context("outer");
    assert_eq!(twice.to_string(), "outer: Tee sub-chain: no response: Connection refused (os error 111)");
}

#[test]
fn caused_by_on_a_conversion_keeps_its_text_in_front() {
    let e = ChainError::from(refused()).caused_by(io::Error::other("deeper"));
    assert_eq!(e.to_string(), "Connection refused (os error 111): deeper");
}

#[test]
fn io_errors_are_upstream_and_retry_unsafe() {
    let e: ChainError = refused().into();
    assert_eq!((e.side(), e.retry(), e.closes_connection()), (Side::Upstream, Retry::Unsafe, false));
}

#[test]
fn anyhow_errors_are_the_proxys_and_keep_their_text() {
    let old = anyhow::anyhow!("bad state").context("while doing x").context("in y");
    let text = format!("{old:#}");
    let e = ChainError::from(old);
    assert_eq!(e.to_string(), text);
    assert_eq!(e.to_string(), "in y: while doing x: bad state");
    assert_eq!((e.side(), e.retry()), (Side::Proxy, Retry::Unsafe));
    assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("while doing x"));
}

#[test]
fn question_mark_converts() {
    fn io_step() -> ChainResult<()> {
        Err(refused())?;
        Ok(())
    }
    fn anyhow_step() -> ChainResult<()> {
        Err(anyhow::anyhow!("the configuration was not validated before it was built"))?;
        Ok(())
    }
    fn codec_step() -> ChainResult<()> {
        Err(CodecError::Other("message has no frame".into()))?;
        Ok(())
    }
    assert_eq!(io_step().unwrap_err().side(), Side::Upstream);
    assert_eq!(anyhow_step().unwrap_err().side(), Side::Proxy);
    let codec = codec_step().unwrap_err();
    assert_eq!((codec.side(), codec.to_string().as_str()), (Side::Proxy, "message has no frame"));
}

#[test]
fn a_chain_error_through_anyhow_comes_back_whole() {
    let original = ChainError::upstream("gone").caused_by(refused()).retry_safe().close_connection();
    let back = ChainError::from(anyhow::Error::from(original));
    assert_eq!(back.to_string(), "gone: Connection refused (os error 111)");
    assert_eq!((back.side(), back.retry(), back.closes_connection()), (Side::Upstream, Retry::Safe, true));
    // Under anyhow context: the context's text stays, and so do the side and flags.
    let wrapped = anyhow::Error::from(ChainError::client("refused").close_connection()).context("step");
    let back = ChainError::from(wrapped);
    assert_eq!(back.to_string(), "step: refused");
    assert_eq!((back.side(), back.closes_connection()), (Side::Client, true));
}

#[test]
fn debug_shows_the_flags_and_the_text() {
    let e = ChainError::upstream("gone").retry_safe();
    assert_eq!(format!("{e:?}"), r#"ChainError { side: Upstream, retry: Safe, close: false, error: "gone" }"#);
}

#[test]
fn chain_errors_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<ChainError>();
}
