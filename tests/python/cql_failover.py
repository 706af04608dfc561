"""Phases of a failure test against CassandraSinkCluster, each a fresh driver session.

usage: cql_failover.py HOST PORT MODE [ARGS]

- setup: creates keyspace failover (SimpleStrategy, 2 replicas) and table t.
- load SECONDS STARTED_MARKER [verify]: prepared inserts, 32 always in flight, for SECONDS;
  creates STARTED_MARKER once the first 500 are done; prints ok=, server_errors= (the
  proxy's "connection failed before the response" errors), other_errors= and ok_at_end=
  (successes in the last quarter of the run, of all requests then). With verify, each
  key is written once, and every acknowledged one is then read back at consistency ALL:
  prints acked_and_read=READ/ACKED and timed_out= (requests the driver gave up on after
  20 s: none may hang).
- one: connects and runs one query; prints error=<the error text> or ok.
- prepared PREPARED_MARKER RESTARTED_MARKER: prepares an insert and runs it, creates
  PREPARED_MARKER, waits for RESTARTED_MARKER, then runs the same prepared statement until it
  succeeds and 40 times more; prints prepared_ok=N/40.
"""
import os
import sys
import time

from cassandra.cluster import Cluster
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.policies import FallthroughRetryPolicy

host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cluster = Cluster([host], port=port, protocol_version=3, connect_timeout=20)
if mode == "one":
    # With every node down even the handshake gets the proxy's error.
    try:
        session = cluster.connect()
        session.execute("SELECT k FROM failover.t LIMIT 1")
        print("ok")
    except Exception as e:
        print("error=%s" % e)
    sys.exit(0)
session = cluster.connect()
session.default_timeout = 20
# Errors reach this script as they are, without the driver trying again elsewhere.
session.default_retry_policy = FallthroughRetryPolicy()

if mode == "setup":
    session.execute("CREATE KEYSPACE IF NOT EXISTS failover WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 2}")
    session.execute("CREATE TABLE IF NOT EXISTS failover.t (k int PRIMARY KEY, v int)")
    print("setup=ok")
elif mode == "load":
    seconds = float(sys.argv[4])
    insert = session.prepare("INSERT INTO failover.t (k, v) VALUES (?, ?)")
    start = time.time()
    verify = sys.argv[6:7] == ["verify"]
    ok = server_errors = other = end_ok = end_all = i = timed_out = 0
    errors = {}
    acked = []
    while time.time() - start < seconds:
        # 32 requests always in flight, so that a node that dies has some of them.
        keys = [i + j for j in range(500)]
        try:
            results = execute_concurrent_with_args(
                session, insert, [(k, k if verify else j) for j, k in enumerate(keys)], concurrency=32,
                raise_on_first_error=False
            )
        except Exception as e:  # noqa: BLE001
            # The driver's concurrent helper itself fails when hundreds of requests fail at
            # once (no host while it reconnects: "'<' not supported between RecursionError
            # and NoHostAvailable"): the batch counts as failed, none of it acknowledged.
            results = [(False, e)] * len(keys)
            time.sleep(0.2)
        if i == 0:
            open(sys.argv[5], "w").close()
        i += 500
        late = time.time() - start > seconds * 0.75
        for key, (success, result) in zip(keys, results):
            end_all += late
            if success:
                ok += 1
                end_ok += late
                acked.append(key)
            elif "OperationTimedOut" in type(result).__name__:
                timed_out += 1
                other += 1
            elif "the Cassandra node connection failed before the response" in str(result):
                server_errors += 1
            else:
                other += 1
                errors[str(result)[:200]] = errors.get(str(result)[:200], 0) + 1
    print("ok=%d" % ok)
    print("server_errors=%d" % server_errors)
    print("other_errors=%d" % other)
    print("ok_at_end=%d/%d" % (end_ok, end_all))
    for text, n in errors.items():
        print("error %d: %s" % (n, text))
    if verify:
        from cassandra import ConsistencyLevel
        select = session.prepare("SELECT v FROM failover.t WHERE k = ?")
        select.consistency_level = ConsistencyLevel.ALL
        reads = execute_concurrent_with_args(session, select, [(k,) for k in acked], concurrency=32,
                                             raise_on_first_error=False)
        read = sum(1 for k, (success, rows) in zip(acked, reads) if success and [r.v for r in rows] == [k])
        print("acked_and_read=%d/%d" % (read, len(acked)))
        print("timed_out=%d" % timed_out)
elif mode == "prepared":
    # One session across a restart of every node: it prepares before, and runs the same
    # prepared statement after, when the nodes have forgotten it.
    prepared_marker, restarted_marker = sys.argv[4], sys.argv[5]
    insert = session.prepare("INSERT INTO failover.t (k, v) VALUES (?, ?)")
    session.execute(insert, (0, 0))
    open(prepared_marker, "w").close()
    deadline = time.time() + 120
    while not os.path.exists(restarted_marker):
        if time.time() > deadline:
            raise Exception("the nodes were not restarted")
        time.sleep(0.2)
    while True:
        try:
            session.execute(insert, (0, 0))
            break
        except Exception as e:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    n = sum(1 for k in range(40) if session.execute(insert, (k, k)) is not None)
    print("prepared_ok=%d/40" % n)
cluster.shutdown()
