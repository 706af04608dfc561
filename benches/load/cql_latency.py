"""Latency of one CQL connection, one request at a time: prepared INSERTs, then SELECTs.

usage: cql_latency.py HOST PORT N

HOST is the one node (or proxy) every request goes to, or `all` for the Python driver's
round robin over every node it discovers from PORT on 127.0.0.1. Prints the mean, median and
99th percentile in microseconds of each kind, leaving out the first tenth as warm-up.
Used in docs/performance.md to tell a proxy's own latency from the ring's.
"""
import sys
import time

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import RoundRobinPolicy, WhiteListRoundRobinPolicy

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
policy = RoundRobinPolicy() if host == "all" else WhiteListRoundRobinPolicy([host])
contact = "127.0.0.1" if host == "all" else host
profile = ExecutionProfile(load_balancing_policy=policy)
cluster = Cluster([contact], port=port, protocol_version=3, execution_profiles={EXEC_PROFILE_DEFAULT: profile})
session = cluster.connect()
session.execute(
    "CREATE KEYSPACE IF NOT EXISTS latency WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}"
)
session.execute("CREATE TABLE IF NOT EXISTS latency.t (k text PRIMARY KEY, v blob)")
insert = session.prepare("INSERT INTO latency.t (k, v) VALUES (?, ?)")
select = session.prepare("SELECT v FROM latency.t WHERE k = ?")
for label, statement, values in (
    ("insert", insert, lambda i: ("k%d" % i, b"x" * 100)),
    ("select", select, lambda i: ("k%d" % i,)),
):
    took = []
    for i in range(n):
        start = time.perf_counter()
        session.execute(statement, values(i))
        took.append((time.perf_counter() - start) * 1e6)
    took = sorted(took[n // 10:])
    print("%s %s mean=%.0f p50=%.0f p99=%.0f" % (
        host, label, sum(took) / len(took), took[len(took) // 2], took[int(len(took) * 0.99)]))
cluster.shutdown()
