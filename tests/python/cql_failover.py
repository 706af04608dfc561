"""Phases of a failure test against CassandraSinkCluster, each a fresh driver session.

usage: cql_failover.py HOST PORT MODE [ARGS]

- setup: creates keyspace failover (SimpleStrategy, 2 replicas) and table t.
- load SECONDS STARTED_MARKER: prepared inserts, 32 always in flight, for SECONDS; creates
  STARTED_MARKER once the first 500 are done; prints ok=, server_errors= (the
  proxy's "connection failed before the response" errors), other_errors= and ok_at_end=
  (successes in the last quarter of the run, of all requests then).
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
    ok = server_errors = other = end_ok = end_all = i = 0
    errors = {}
    while time.time() - start < seconds:
        # 32 requests always in flight, so that a node that dies has some of them.
        results = execute_concurrent_with_args(
            session, insert, [(i + j, j) for j in range(500)], concurrency=32, raise_on_first_error=False
        )
        if i == 0:
            open(sys.argv[5], "w").close()
        i += 500
        late = time.time() - start > seconds * 0.75
        for success, result in results:
            end_all += late
            if success:
                ok += 1
                end_ok += late
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
