//! ValkeySinkSingle `multiplex`: clients that keep no state on their connection share one
//! upstream connection per worker core; the first stateful command gives a client its own.

use redis::{Commands, Value};
use shotover_integration_tests::*;
use std::time::Duration;

/// A proxy with one worker core in front of `valkey`, `multiplex` as given (absent: default).
fn proxy(valkey: &ValkeyServer, multiplex: Option<bool>) -> (Shotover, u16) {
    let port = free_port();
    let mut chain = sink_single(valkey.port);
    if let Some(on) = multiplex {
        chain.push_str(&format!("            multiplex: {on}\n"));
    }
    let shotover = Shotover::builder(&valkey_topology(port, &chain))
        .arg("--worker-cores")
        .arg("1")
        .wait_for(port)
        .start()
        .expect("shotover did not start");
    (shotover, port)
}

/// The connections Valkey has open, other than the one asking (which is `direct`).
fn upstream_connections(direct: &mut redis::Connection) -> usize {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(direct).expect("CLIENT LIST");
    let lines = list.lines().filter(|l| !l.trim().is_empty()).count();
    lines.saturating_sub(1)
}

/// `clients` connections, each doing SET/GET of its own keys, one by one and pipelined, at
/// the same time. Every reply must be the client's own.
fn concurrent_clients(port: u16, clients: usize) -> Vec<redis::Connection> {
    let connections: Vec<redis::Connection> = (0..clients).map(|_| connect(port)).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = connections
            .into_iter()
            .enumerate()
            .map(|(c, mut conn)| {
                scope.spawn(move || {
                    for i in 0..100 {
                        let key = format!("c{c}:k{i}");
                        let value = format!("v{c}:{i}");
                        let _: () = conn.set(&key, &value).expect("SET");
                        assert_eq!(conn.get::<_, String>(&key).expect("GET"), value);
                        let mut pipe = redis::pipe();
                        for j in 0..10 {
                            pipe.incr(format!("c{c}:n"), 1).get(format!("c{c}:k{j}"));
                        }
                        let replies: Vec<Value> = pipe.query(&mut conn).expect("pipeline");
                        assert_eq!(replies.len(), 20);
                        for (j, pair) in replies.chunks(2).enumerate() {
                            assert_eq!(pair.first(), Some(&Value::Int((i * 10 + j + 1) as i64)), "client {c}");
                            let expected = (j <= i).then(|| Value::BulkString(format!("v{c}:{j}").into_bytes()));
                            assert_eq!(pair.get(1), Some(expected.as_ref().unwrap_or(&Value::Nil)), "client {c}");
                        }
                    }
                    conn
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a client failed")).collect()
    })
}

#[test]
fn stateless_clients_share_one_upstream_connection_and_each_gets_its_own_replies() {
    let valkey = ValkeyServer::start();
    let (_shotover, port) = proxy(&valkey, None);
    let mut clients = concurrent_clients(port, 20);
    let mut direct = valkey.client();
    assert_eq!(upstream_connections(&mut direct), 1, "20 clients, one shared upstream connection");

    // SELECT binds state: that client moves to a connection of its own, before SELECT is
    // sent, and the others stay on database 0.
    let mover = clients.first_mut().expect("20 clients");
    let _: () = redis::cmd("SELECT").arg(1).query(mover).expect("SELECT");
    let _: () = mover.set("where", "db1").expect("SET");
    let stayer = clients.get_mut(1).expect("20 clients");
    let _: () = stayer.set("where", "db0").expect("SET");
    assert_eq!(upstream_connections(&mut direct), 2);
    assert_eq!(direct.get::<_, String>("where").expect("GET"), "db0");
    let _: () = redis::cmd("SELECT").arg(1).query(&mut direct).expect("SELECT");
    assert_eq!(direct.get::<_, String>("where").expect("GET"), "db1");
}

#[test]
fn a_batch_with_a_transaction_runs_on_the_clients_own_connection() {
    let valkey = ValkeyServer::start();
    let (_shotover, port) = proxy(&valkey, None);
    let mut c = connect(port);
    let _: () = c.set("t", 10).expect("SET");
    // One pipeline: a plain command, then a transaction, then a plain command again.
    let replies: Vec<Value> = redis::pipe()
        .get("t")
        .cmd("MULTI")
        .incr("t", 1)
        .incr("t", 1)
        .cmd("EXEC")
        .get("t")
        .query(&mut c)
        .expect("pipeline");
    assert_eq!(
        replies,
        vec![
            Value::BulkString(b"10".to_vec()),
            Value::Okay,
            Value::SimpleString("QUEUED".into()),
            Value::SimpleString("QUEUED".into()),
            Value::Array(vec![Value::Int(11), Value::Int(12)]),
            Value::BulkString(b"12".to_vec()),
        ]
    );
    // CLIENT ID through the proxy names the client's own upstream connection.
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).expect("CLIENT ID");
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut valkey.client()).expect("CLIENT LIST");
    assert!(list.lines().any(|l| l.starts_with(&format!("id={id} "))), "{list}");
}

#[test]
fn with_multiplex_off_every_client_has_its_own_upstream_connection() {
    let valkey = ValkeyServer::start();
    let (_shotover, port) = proxy(&valkey, Some(false));
    let _clients = concurrent_clients(port, 20);
    assert_eq!(upstream_connections(&mut valkey.client()), 20);
}

#[test]
fn a_lost_shared_connection_fails_its_requests_and_the_next_ones_reconnect() {
    let mut valkey = ValkeyServer::start();
    let (shotover, port) = proxy(&valkey, None);
    let mut c = connect(port);
    let _: () = c.set("a", 1).expect("SET");
    valkey.kill();
    let refused = c.get::<_, String>("a").expect_err("the upstream is down");
    // Sent into the connection the server just closed, or refused on reconnecting.
    let upstream = format!("127.0.0.1:{}", valkey.port);
    let detail = refused.detail().unwrap_or_default();
    assert_eq!(refused.code(), Some("ERR"), "{refused}");
    assert!(
        detail == format!("shotover: upstream {upstream}: upstream closed the connection")
            || detail.starts_with(&format!("shotover: cannot connect to upstream {upstream}: ")),
        "{refused}"
    );
    valkey.restart();
    // The same client connection carries on over a new shared connection.
    assert_eq!(c.get::<_, Option<String>>("a").expect("GET after restart"), None);
    assert!(
        wait_until(Duration::from_secs(5), || {
            metric(&shotover.metrics(), "failed_requests{chain=\"valkey\",transform=\"ValkeySinkSingle\"}") == Some(1.0)
        }),
        "{}",
        shotover.metrics()
    );
}
