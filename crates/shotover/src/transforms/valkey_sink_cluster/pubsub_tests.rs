//! Where pub/sub requests go, and the confirmations the proxy makes or recounts.

use super::super::fixtures::{request, routes, three_masters, A, B, C, D};
use super::*;

/// A connection's follower after the server confirmed `confirmations`.
fn follower(confirmations: &[&[u8]], resp3: bool) -> Follower {
    let mut f = Follower::default();
    for raw in confirmations {
        f.observe(raw);
    }
    f.resp3 = resp3;
    f
}

const SUBSCRIBED_NEWS: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n";
const SSUBSCRIBED_FOO: &[u8] = b"*3\r\n$10\r\nssubscribe\r\n$3\r\nfoo\r\n:1\r\n";
const SSUBSCRIBED_C: &[u8] = b"*3\r\n$10\r\nssubscribe\r\n$1\r\nc\r\n:1\r\n";

#[test]
fn the_subscribe_family_and_monitor_need_a_pubsub_connection() {
    for parts in [&[&b"SUBSCRIBE"[..], b"a"][..], &[b"psubscribe", b"p*"], &[b"SSUBSCRIBE", b"s"], &[b"MONITOR"]] {
        assert!(is_pubsub_command(&request(parts)), "{parts:?}");
    }
    for parts in [&[&b"sunsubscribe"[..]][..], &[b"UNSUBSCRIBE", b"a"], &[b"PUNSUBSCRIBE"]] {
        assert!(is_pubsub_command(&request(parts)), "{parts:?}");
    }
    for parts in [&[&b"PUBLISH"[..], b"a", b"m"][..], &[b"SPUBLISH", b"s", b"m"], &[b"PING"], &[b"GET", b"a"]] {
        assert!(!is_pubsub_command(&request(parts)), "{parts:?}");
    }
}

#[test]
fn before_any_subscription_each_command_goes_to_its_node_and_others_go_the_usual_way() {
    let map = three_masters();
    let at = |parts: &[&[u8]]| route(&[], None, &request(parts), &routes(&map));
    // SUBSCRIBE and MONITOR: the first master; shard channels: their slot's master.
    assert_eq!(at(&[b"SUBSCRIBE", b"foo", b"hello"]), Some(Route::Node(A)));
    assert_eq!(at(&[b"MONITOR"]), Some(Route::Node(A)));
    assert_eq!(at(&[b"SSUBSCRIBE", b"foo", b"{foo}x"]), Some(Route::Node(C)));
    assert_eq!(at(&[b"ssubscribe", b"c"]), Some(Route::Node(B)));
    // Not subscribed: each unsubscribe reaches a node that answers as it does then (-NOSUB).
    assert_eq!(at(&[b"UNSUBSCRIBE", b"foo", b"bar"]), Some(Route::Node(A)));
    assert_eq!(at(&[b"SUNSUBSCRIBE"]), Some(Route::Node(A)));
    assert_eq!(at(&[b"SUNSUBSCRIBE", b"foo"]), Some(Route::Node(C)));
    // Without channels the node answers the arity error.
    assert_eq!(at(&[b"SSUBSCRIBE"]), Some(Route::Node(A)));
    for parts in [&[&b"PING"[..]][..], &[b"GET", b"foo"], &[b"PUBLISH", b"foo", b"m"], &[b"RESET"]] {
        assert_eq!(at(parts), None, "{parts:?}");
    }
    // With direct_connection, SUBSCRIBE goes there.
    let direct = Routes { map: &map, commands: super::super::fixtures::table(), direct: Some(D), contact: &[] };
    assert_eq!(route(&[], None, &request(&[b"PSUBSCRIBE", b"p*"]), &direct), Some(Route::Node(D)));
}

#[test]
fn subscribed_in_resp2_the_subscribed_connection_answers_other_commands() {
    let map = three_masters();
    let news = follower(&[SUBSCRIBED_NEWS], false);
    let conns = [(A, &news)];
    let at = |parts: &[&[u8]]| route(&conns, Some(A), &request(parts), &routes(&map));
    assert_eq!(at(&[b"PING"]), Some(Route::Context(A)));
    assert_eq!(at(&[b"GET", b"foo"]), Some(Route::Context(A)));
    assert_eq!(at(&[b"QUIT"]), None);
    assert_eq!(at(&[b"RESET"]), None);
    assert_eq!(at(&[b"UNSUBSCRIBE"]), Some(Route::Node(A)));
    // No shard channel: the subscribed connection says so (`sunsubscribe` nil 0).
    assert_eq!(at(&[b"SUNSUBSCRIBE"]), Some(Route::Node(A)));
    // A shard channel of another node: the node would confirm with the unchanged count.
    assert_eq!(
        at(&[b"SUNSUBSCRIBE", b"foo", b"{foo}x"]),
        Some(Route::Answer(vec![
            Bytes::from_static(b"*3\r\n$12\r\nsunsubscribe\r\n$3\r\nfoo\r\n:0\r\n"),
            Bytes::from_static(b"*3\r\n$12\r\nsunsubscribe\r\n$6\r\n{foo}x\r\n:0\r\n"),
        ]))
    );
    assert_eq!(
        at(&[b"SUNSUBSCRIBE", b"foo", b"hello"]),
        Some(Route::Answer(vec![Bytes::from_static(b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")]))
    );
}

#[test]
fn subscribed_in_resp3_other_commands_go_the_usual_way() {
    let map = three_masters();
    let news = follower(&[SUBSCRIBED_NEWS], true);
    let conns = [(A, &news)];
    let at = |parts: &[&[u8]]| route(&conns, Some(A), &request(parts), &routes(&map));
    assert_eq!(at(&[b"GET", b"foo"]), None);
    assert_eq!(at(&[b"PING"]), None);
    assert_eq!(
        at(&[b"SUNSUBSCRIBE", b"c"]),
        Some(Route::Answer(vec![Bytes::from_static(b">3\r\n$12\r\nsunsubscribe\r\n$1\r\nc\r\n:0\r\n")]))
    );
}

#[test]
fn shard_channels_on_two_nodes() {
    let map = three_masters();
    let (on_c, on_b) = (follower(&[SSUBSCRIBED_FOO], false), follower(&[SSUBSCRIBED_C], false));
    let conns = [(C, &on_c), (B, &on_b)];
    let at = |parts: &[&[u8]]| route(&conns, None, &request(parts), &routes(&map));
    assert_eq!(at(&[b"SUNSUBSCRIBE"]), Some(Route::Each(vec![C, B])));
    assert_eq!(at(&[b"SUNSUBSCRIBE", b"c"]), Some(Route::Node(B)));
    // Channels elsewhere: answered with the client's total of shard channels.
    assert_eq!(
        at(&[b"SUNSUBSCRIBE", b"hello"]),
        Some(Route::Answer(vec![Bytes::from_static(b"*3\r\n$12\r\nsunsubscribe\r\n$5\r\nhello\r\n:2\r\n")]))
    );
    // No channel or pattern anywhere: a subscribed connection answers as subscribed.
    assert_eq!(at(&[b"UNSUBSCRIBE"]), Some(Route::Node(C)));
    assert_eq!(at(&[b"SUBSCRIBE", b"x"]), Some(Route::Node(A)));
    assert_eq!(at(&[b"GET", b"foo"]), Some(Route::Context(C)));
}

#[test]
fn confirmations_carry_the_clients_total() {
    let raw = Bytes::from_static(b"*3\r\n$10\r\nssubscribe\r\n$2\r\na:\r\n:1\r\n");
    assert_eq!(add_to_count(raw, 2), Bytes::from_static(b"*3\r\n$10\r\nssubscribe\r\n$2\r\na:\r\n:3\r\n"));
    let push = Bytes::from_static(b">3\r\n$12\r\nsunsubscribe\r\n$1\r\ns\r\n:0\r\n");
    assert_eq!(add_to_count(push, 12), Bytes::from_static(b">3\r\n$12\r\nsunsubscribe\r\n$1\r\ns\r\n:12\r\n"));
    // Shard counts and channel counts are apart, as Valkey counts them.
    let (news, shard) = (follower(&[SUBSCRIBED_NEWS], false), follower(&[SSUBSCRIBED_FOO, SSUBSCRIBED_C], false));
    assert_eq!((count(&news, Kind::Pattern), count(&news, Kind::Shard)), (1, 0));
    assert_eq!((count(&shard, Kind::Channel), count(&shard, Kind::Shard)), (0, 2));
}

#[test]
fn redirections_name_the_slot_and_node() {
    assert_eq!(redirection(b"-MOVED 12182 10.0.0.3:7000\r\n"), Some((true, 12182, C)));
    assert_eq!(redirection(b"-ASK 866 10.0.0.1:7000\r\n"), Some((false, 866, A)));
    assert_eq!(redirection(b"-ERR MOVED 1 10.0.0.1:7000\r\n"), None);
    assert_eq!(redirection(b"*3\r\n"), None);
}
