"""Exercises a CQL proxy with the Python cassandra-driver and prints what it saw.

usage: cql_workload.py HOST PORT PROTOCOL_VERSION [COMPRESSION] [DIRECT_PORT] [REPLICATION]

Creates a keyspace and a table of every native type and collections, inserts and reads them
back, runs prepared statements and a batch, pages through 10 000 rows, and (with
DIRECT_PORT) checks that a schema change made directly on the node reaches this client as a
SCHEMA_CHANGE event through the proxy. REPLICATION (a CQL replication map) creates the keyspace
anew with it, for rings of several data centres. The environment's CQL_USER and
CQL_PASSWORD log in. Prints `key=value` lines for the test to assert on.
"""
import datetime
import os
import decimal
import sys
import time
import uuid

from cassandra.cluster import Cluster
from cassandra.query import BatchStatement, SimpleStatement

host, port, version = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
compression = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "none" else False
direct_port = int(sys.argv[5]) if len(sys.argv) > 5 else None
replication = sys.argv[6] if len(sys.argv) > 6 else None
# CQL_KEYSPACE_SUFFIX keeps apart tests that share a cluster.
ks = "ks_%s_%s%s" % (version, compression or "plain", os.environ.get("CQL_KEYSPACE_SUFFIX", ""))

# CQL_USER and CQL_PASSWORD log in, for clusters with PasswordAuthenticator.
auth = None
if os.environ.get("CQL_USER"):
    from cassandra.auth import PlainTextAuthProvider

    auth = PlainTextAuthProvider(username=os.environ["CQL_USER"], password=os.environ.get("CQL_PASSWORD", ""))
cluster = Cluster(
    [host], port=port, protocol_version=version, compression=compression, connect_timeout=20, auth_provider=auth
)
session = cluster.connect()
session.default_timeout = 30
if replication:
    session.execute("DROP KEYSPACE IF EXISTS %s" % ks)
    session.execute("CREATE KEYSPACE %s WITH replication = %s" % (ks, replication))
else:
    session.execute(
        "CREATE KEYSPACE IF NOT EXISTS %s WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}" % ks
    )
session.set_keyspace(ks)
session.execute(
    """CREATE TABLE IF NOT EXISTS types (
        k int PRIMARY KEY, a ascii, b bigint, bl blob, bo boolean, d decimal, db double, f float,
        i inet, t text, ts timestamp, u uuid, tu timeuuid, vi varint,
        l list<int>, s set<text>, m map<text, int>)"""
)
row = (
    1, "ascii", 2**40, b"\x00\x01\xff", True, decimal.Decimal("3.14"), 2.5, 1.5,
    "127.0.0.1", "text \u00e9", datetime.datetime(2026, 11, 26, 12, 0, 0), uuid.UUID(int=7),
    uuid.uuid1(), 10**30, [1, 2, 3], {"x", "y"}, {"one": 1},
)
session.execute(
    "INSERT INTO types (k, a, b, bl, bo, d, db, f, i, t, ts, u, tu, vi, l, s, m) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
    row,
)
got = session.execute("SELECT * FROM types WHERE k = 1").one()
same = (
    got.a == row[1] and got.b == row[2] and got.bl == row[3] and got.bo is True and got.d == row[5]
    and got.db == row[6] and got.f == row[7] and got.i == row[8] and got.t == row[9] and got.ts == row[10]
    and got.u == row[11] and got.tu == row[12] and got.vi == row[13] and list(got.l) == [1, 2, 3]
    and set(got.s) == {"x", "y"} and dict(got.m) == {"one": 1}
)
print("types_roundtrip=%s" % same)

session.execute("CREATE TABLE IF NOT EXISTS kv (k int PRIMARY KEY, v text)")
insert = session.prepare("INSERT INTO kv (k, v) VALUES (?, ?)")
futures = [session.execute_async(insert, (i, "v%d" % i)) for i in range(10000)]
for f in futures:
    f.result()
batch = BatchStatement()
for i in range(10000, 10010):
    batch.add(insert, (i, "batch%d" % i))
session.execute(batch)
select = session.prepare("SELECT v FROM kv WHERE k = ?")
print("prepared_select=%s" % session.execute(select, (10005,)).one().v)
paged = SimpleStatement("SELECT k FROM kv", fetch_size=500)
result = session.execute(paged)
count = sum(1 for _ in result)
print("paged_rows=%d" % count)

if direct_port:
    # A table created on the node itself: this client can only learn of it from the
    # SCHEMA_CHANGE event its control connection registered for through the proxy.
    direct = Cluster([host], port=direct_port, protocol_version=version, auth_provider=auth).connect()
    direct.execute("CREATE TABLE %s.from_event (k int PRIMARY KEY)" % ks)
    seen = False
    for _ in range(100):
        if "from_event" in cluster.metadata.keyspaces[ks].tables:
            seen = True
            break
        time.sleep(0.1)
    print("schema_event=%s" % seen)

cluster.shutdown()
print("done")
