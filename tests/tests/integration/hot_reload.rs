//! Hot reload under load: listeners move to a new instance, the old one closes its
//! connections in chunks and exits, and clients only ever see closes they reconnect after.

use redis::RedisError;
use shotover_integration_tests::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Connection closed or reset under the client: it reconnects.
    closed: AtomicU64,
    /// Anything else: refused connections, timeouts, wrong or error replies.
    failed: AtomicU64,
}

fn is_close(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.kind() == redis::ErrorKind::IoError && !e.is_timeout() && !e.is_connection_refusal()
}

/// A client that runs until `stop`: plain SET/GET pairs, or pipelines of 10.
fn client(
    port: u16,
    id: usize,
    pipelined: bool,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut conn: Option<redis::Connection> = None;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let c = match &mut conn {
                Some(c) => c,
                None => match redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                    .and_then(|cl| cl.get_connection_with_timeout(Duration::from_secs(5)))
                {
                    Ok(c) => {
                        c.set_read_timeout(Some(Duration::from_secs(5))).expect("set_read_timeout");
                        conn.insert(c)
                    }
                    // The connection setup is a round trip (redis-rs sends CLIENT SETINFO): an
                    // old instance closing the connection during it is a close like any other.
                    // A refused or timed-out connection is a real failure.
                    Err(e) if is_close(&e) => {
                        tally.closed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) => {
                        eprintln!("client {id}: cannot connect: {e}");
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            i += 1;
            let key = format!("c{id}");
            let result: Result<bool, RedisError> = if pipelined {
                let mut pipe = redis::pipe();
                for j in 0..5 {
                    pipe.cmd("SET").arg(format!("{key}:{j}")).arg(i).ignore();
                }
                for j in 0..5 {
                    pipe.cmd("GET").arg(format!("{key}:{j}"));
                }
                pipe.query::<Vec<u64>>(c).map(|got| got == vec![i; 5])
            } else {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(i)
                    .query::<()>(c)
                    .and_then(|()| redis::cmd("GET").arg(&key).query::<u64>(c))
                    .map(|got| got == i)
            };
            match result {
                Ok(true) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {
                    eprintln!("client {id}: wrong reply");
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if is_close(&e) => {
                    tally.closed.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
                Err(e) => {
                    eprintln!("client {id}: {e}");
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
        }
    })
}

fn instance(topology: &str, socket: &Path, cores: &str, extra: &[&str]) -> Shotover {
    let mut b = Shotover::builder(topology)
        .arg("--hotreload-socket")
        .arg(&socket.display().to_string())
        .arg("--hotreload-gradual-shutdown-seconds")
        .arg("2")
        .arg("--worker-cores")
        .arg(cores);
    for a in extra {
        b = b.arg(a);
    }
    let s = b.start().unwrap();
    assert!(s.wait_for_log("shotover started", Duration::from_secs(15)), "{}", s.output());
    s
}

fn counted_chain(name: &str, valkey: u16) -> String {
    format!("        - QueryCounter:\n            name: \"{name}\"\n{}", sink_single(valkey))
}

fn socket_path(dir: &TempDir) -> PathBuf {
    dir.path("hotreload.sock")
}

#[test]
fn hot_reload_under_load_drops_no_request() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let dir = TempDir::new("hotreload");
    let socket = socket_path(&dir);
    let mut v1 = instance(&valkey_topology(port, &counted_chain("v1", valkey.port)), &socket, "0-1", &[]);
    assert!(wait_until(Duration::from_secs(5), || socket.exists()));

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6).map(|id| client(port, id, id % 2 == 1, tally.clone(), stop.clone())).collect();
    std::thread::sleep(Duration::from_secs(1));
    let before = tally.ok.load(Ordering::Relaxed);
    assert!(before > 0);

    // The new instance has one worker core where the old had two: it must accept from both
    // of the old listening sockets, or connections queued in one would hang.
    let mut v2 = instance(&valkey_topology(port, &counted_chain("v2", valkey.port)), &socket, "0", &[]);
    assert!(v2.wait_for_log("hot reload: took over 2 listening sockets", Duration::from_secs(5)), "{}", v2.output());
    let status = v1.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "{status}\n{}", v1.output());
    let old = v1.output();
    assert!(old.contains("handed 2 listening sockets"), "{old}");
    let chunks = old.matches("gradual shutdown: closed").count();
    assert!(chunks >= 2, "connections are closed in chunks, not at once:\n{old}");
    // The output is read by a thread of its own, which may not have taken the last lines yet.
    let exiting = v1.wait_for_log("every connection is closed; exiting", Duration::from_secs(5));
    assert!(exiting, "{}", v1.output());

    // The new instance creates the socket again once the old one has gone.
    assert!(v2.wait_for_log("hot reload socket ready", Duration::from_secs(5)), "{}", v2.output());
    assert!(socket.exists());
    let at_switch = tally.ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    assert!(tally.ok.load(Ordering::Relaxed) > at_switch, "clients keep working through the new instance");
    let v2_sets = metric_value(&v2.metrics(), "query_count{name=\"v2\",query=\"SET\"}");
    assert!(v2_sets > 0.0, "the new topology is in effect:\n{}", v2.metrics());

    // And the new instance can hand over in turn.
    let v3 = instance(&valkey_topology(port, &counted_chain("v3", valkey.port)), &socket, "0-1", &[]);
    let status = v2.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "{}", v2.output());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let v3_sets = metric_value(&v3.metrics(), "query_count{name=\"v3\",query=\"SET\"}");
    assert!(v3_sets > 0.0, "{}", v3.metrics());
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "failures other than connection closes");
    assert!(tally.closed.load(Ordering::Relaxed) >= 6, "every client was closed once by each old instance");
}

#[test]
fn a_new_instance_that_fails_to_start_leaves_the_old_one_serving() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let dir = TempDir::new("hotreload");
    let socket = socket_path(&dir);
    let v1 = instance(&valkey_topology(port, &sink_single(valkey.port)), &socket, "0", &[]);
    assert!(wait_until(Duration::from_secs(5), || socket.exists()));

    // The new topology adds a source on a port another process holds: it takes the old
    // instance's listeners, then fails to bind and exits.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let topology = format!(
        "{}  - Valkey:\n      name: \"second\"\n      listen_addr: \"127.0.0.1:{held_port}\"\n      chain:\n        - NullSink\n",
        valkey_topology(port, &sink_single(valkey.port))
    );
    let (status, out) = Shotover::builder(&topology)
        .arg("--hotreload-socket")
        .arg(&socket.display().to_string())
        .run_to_exit(Duration::from_secs(15))
        .unwrap();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("cannot listen on"), "{out}");
    assert!(
        v1.wait_for_log("went away before taking over", Duration::from_secs(5)),
        "the old instance notices: {}",
        v1.output()
    );
    let mut c = connect(port);
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG", "the old instance accepts again");
    assert!(socket.exists());
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let dir = TempDir::new("hotreload");
    let socket = socket_path(&dir);
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let mut s = instance(&valkey_topology(port, &sink_single(valkey.port)), &socket, "0", &[]);
    assert!(s.wait_for_log("hot reload socket ready", Duration::from_secs(5)), "{}", s.output());
    assert!(s.output().contains("starting without taking over"), "{}", s.output());
    let pong: String = redis::cmd("PING").query(&mut connect(port)).unwrap();
    assert_eq!(pong, "PONG");
    // SIGTERM removes the socket file.
    assert!(s.terminate(Duration::from_secs(15)).unwrap().success());
    assert!(!socket.exists());
}
