"""Drives ValkeyCache with the Python cassandra-driver.

usage: cql_cache.py PHASE PROXY_PORT DIRECT_PORT KEYSPACE USER:PASSWORD [V]

The proxy caches KEYSPACE.kv (partition key k) and KEYSPACE.t (partition key id, range key
c). A write made directly to Cassandra, around the proxy, is how a read shows where its
answer came from: a read that still returns the old value was answered by the cache.

PHASE is one of:
- main: hits, misses and invalidation by every kind of write, prepared and simple
  statements, USE, BATCH, TRUNCATE, paging over 10,000 rows, and reads racing writes;
- prime V: caches kv 'o' = V (and shows it is cached);
- outage V: with Valkey down or stalled, writes kv 'o' = V and reads it back;
- after V: with Valkey back (with its old data), reads kv 'o' for 3 s: only ever V;
- spread V: reads kv 'o' once on each of 12 new connections, so that every core of the
  proxy (the kernel places each connection by a hash) serves one with high likelihood.
Prints `key=value` lines for the test to assert on.
"""
import random
import sys
import threading
import time

from cassandra import Unauthorized
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.policies import WhiteListRoundRobinPolicy
from cassandra.query import BatchStatement, SimpleStatement

phase = sys.argv[1]
proxy_port, direct_port, ks = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
user, password = sys.argv[5].split(":", 1)
value = int(sys.argv[6]) if len(sys.argv) > 6 else 0


def connect(port, keyspace=None, login=None):
    # Only 127.0.0.1: the driver must not find the ring's other nodes and go around the proxy.
    name, secret = login or (user, password)
    cluster = Cluster(["127.0.0.1"], port=port, protocol_version=4, connect_timeout=20,
                      auth_provider=PlainTextAuthProvider(username=name, password=secret),
                      load_balancing_policy=WhiteListRoundRobinPolicy(["127.0.0.1"]))
    session = cluster.connect(keyspace)
    session.default_timeout = 30
    return session


def one(session, statement, args=None):
    row = session.execute(statement, args).one()
    return None if row is None else row[0]


direct = connect(direct_port)
proxy = connect(proxy_port)
if phase != "main":
    get_kv = proxy.prepare("SELECT v FROM %s.kv WHERE k = ?" % ks)

if phase == "main":
    direct.execute("DROP KEYSPACE IF EXISTS %s" % ks)
    direct.execute("CREATE KEYSPACE %s WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 1}" % ks)
    direct.execute("CREATE TABLE %s.kv (k text PRIMARY KEY, v int)" % ks)
    direct.execute("CREATE TABLE %s.t (id int, c int, v text, PRIMARY KEY (id, c))" % ks)
    get_kv = proxy.prepare("SELECT v FROM %s.kv WHERE k = ?" % ks)
    set_kv = proxy.prepare("UPDATE %s.kv SET v = ? WHERE k = ?" % ks)

    # A prepared read: a miss, then a hit that a direct write cannot change, until a write
    # through the proxy invalidates it.
    proxy.execute("INSERT INTO %s.kv (k, v) VALUES ('a', 1)" % ks)
    first = one(proxy, get_kv, ("a",))
    direct.execute("UPDATE %s.kv SET v = 99 WHERE k = 'a'" % ks)
    print("prepared_hit=%s" % (first == 1 and one(proxy, get_kv, ("a",)) == 1))
    proxy.execute(set_kv, (2, "a"))
    print("update_invalidated=%s" % (one(proxy, get_kv, ("a",)) == 2))

    # A simple statement with a literal: cached too (the column's type is known from the
    # prepared statement above).
    literal = "SELECT v FROM %s.kv WHERE k = 'b'" % ks
    proxy.execute("INSERT INTO %s.kv (k, v) VALUES ('b', 1)" % ks)
    first = one(proxy, literal)
    direct.execute("UPDATE %s.kv SET v = 99 WHERE k = 'b'" % ks)
    print("literal_hit=%s" % (first == 1 and one(proxy, literal) == 1))
    proxy.execute("INSERT INTO %s.kv (k, v) VALUES ('b', 3)" % ks)
    print("insert_invalidated=%s" % (one(proxy, literal) == 3 and one(proxy, get_kv, ("b",)) == 3))

    # A BATCH of a prepared and a simple statement invalidates both partitions.
    one(proxy, get_kv, ("a",))
    one(proxy, get_kv, ("c",))
    batch = BatchStatement()
    batch.add(set_kv, (4, "a"))
    batch.add(SimpleStatement("INSERT INTO %s.kv (k, v) VALUES ('c', 4)" % ks))
    proxy.execute(batch)
    print("batch_invalidated=%s" % (one(proxy, get_kv, ("a",)) == 4 and one(proxy, get_kv, ("c",)) == 4))

    # DELETE, then TRUNCATE (the whole table).
    proxy.execute("DELETE FROM %s.kv WHERE k = 'a'" % ks)
    print("delete_invalidated=%s" % (one(proxy, get_kv, ("a",)) is None))
    one(proxy, get_kv, ("b",))
    proxy.execute("TRUNCATE %s.kv" % ks)
    print("truncate_invalidated=%s" % (one(proxy, get_kv, ("b",)) is None and one(proxy, literal) is None))

    # USE, then unqualified statements.
    used = connect(proxy_port, ks)
    get_used = used.prepare("SELECT v FROM kv WHERE k = ?")
    used.execute("INSERT INTO kv (k, v) VALUES ('u', 1)")
    first = one(used, get_used, ("u",))
    direct.execute("UPDATE %s.kv SET v = 99 WHERE k = 'u'" % ks)
    cached = first == 1 and one(used, get_used, ("u",)) == 1
    used.execute("UPDATE kv SET v = 2 WHERE k = 'u'")
    print("use_keyspace=%s" % (cached and one(used, get_used, ("u",)) == 2 and one(proxy, get_kv, ("u",)) == 2))

    # A range key: only reads naming it are cached; a write invalidates the partition.
    get_row = proxy.prepare("SELECT v FROM %s.t WHERE id = ? AND c = ?" % ks)
    get_partition = proxy.prepare("SELECT v FROM %s.t WHERE id = ?" % ks)
    proxy.execute("INSERT INTO %s.t (id, c, v) VALUES (1, 1, 'x')" % ks)
    proxy.execute("INSERT INTO %s.t (id, c, v) VALUES (1, 2, 'y')" % ks)
    first = one(proxy, get_row, (1, 1))
    direct.execute("UPDATE %s.t SET v = 'direct' WHERE id = 1 AND c = 1" % ks)
    print("range_hit=%s" % (first == "x" and one(proxy, get_row, (1, 1)) == "x"))
    print("partition_read_not_cached=%s" % (one(proxy, get_partition, (1,)) == "direct"))
    proxy.execute("UPDATE %s.t SET v = 'z' WHERE id = 1 AND c = 2" % ks)
    print("partition_invalidated=%s" % (one(proxy, get_row, (1, 1)) == "direct"))

    # 10,000 rows of one partition, inserted through the proxy and read back by pages.
    insert_row = proxy.prepare("INSERT INTO %s.t (id, c, v) VALUES (2, ?, ?)" % ks)
    results = execute_concurrent_with_args(proxy, insert_row, [(i, "r%d" % i) for i in range(10000)], concurrency=50)
    assert all(ok for ok, _ in results)
    rows = list(proxy.execute(SimpleStatement("SELECT c, v FROM %s.t WHERE id = 2" % ks, fetch_size=500)))
    print("paged_rows=%d" % sum(1 for r in rows if r.v == "r%d" % r.c))
    print("row_5=%s" % (one(proxy, get_row, (2, 5)) == "r5" and one(proxy, get_row, (2, 5)) == "r5"))

    # Another role, allowed to log in but not to read: a cached answer is not its to read.
    direct.execute("CREATE ROLE IF NOT EXISTS cache_nobody WITH PASSWORD = 'nobody' AND LOGIN = true")
    proxy.execute("INSERT INTO %s.kv (k, v) VALUES ('secret', 7)" % ks)
    one(proxy, get_kv, ("secret",))
    cached = one(proxy, get_kv, ("secret",)) == 7
    nobody = connect(proxy_port, login=("cache_nobody", "nobody"))
    try:
        one(nobody, nobody.prepare("SELECT v FROM %s.kv WHERE k = ?" % ks), ("secret",))
        print("other_role=read")
    except Unauthorized:
        print("other_role=%s" % ("unauthorized" if cached else "not cached"))

    # Reads racing writes: each writer owns a key and, once a write is acknowledged, reads
    # it back through another connection; readers keep reading (and filling) those keys.
    keys = ["race%d" % i for i in range(4)]
    for k in keys:
        proxy.execute(set_kv, (0, k))
    writers, readers = connect(proxy_port), connect(proxy_port)
    w_set = writers.prepare("UPDATE %s.kv SET v = ? WHERE k = ?" % ks)
    r_get = readers.prepare("SELECT v FROM %s.kv WHERE k = ?" % ks)
    stop = threading.Event()
    stale, checked, errors = [0], [0], []

    def write(k):
        try:
            for i in range(1, 301):
                writers.execute(w_set, (i, k))
                seen = one(readers, r_get, (k,))
                checked[0] += 1
                if seen != i:
                    stale[0] += 1
                    print("stale: %s wrote %d, read %s" % (k, i, seen), file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    def read():
        while not stop.is_set():
            try:
                one(readers, r_get, (random.choice(keys),))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
                return

    threads = [threading.Thread(target=read) for _ in range(4)]
    threads += [threading.Thread(target=write, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads[4:]:
        t.join()
    stop.set()
    for t in threads[:4]:
        t.join()
    print("race_errors=%s" % errors[:3])
    print("race stale=%d checked=%d" % (stale[0], checked[0]))

elif phase == "prime":
    proxy.execute("INSERT INTO %s.kv (k, v) VALUES ('o', %d)" % (ks, value))
    first = one(proxy, get_kv, ("o",))
    direct.execute("UPDATE %s.kv SET v = 50 WHERE k = 'o'" % ks)
    cached = first == value and one(proxy, get_kv, ("o",)) == value
    direct.execute("UPDATE %s.kv SET v = %d WHERE k = 'o'" % (ks, value))
    print("primed=%s" % cached)

elif phase == "outage":
    start = time.time()
    proxy.execute("UPDATE %s.kv SET v = %d WHERE k = 'o'" % (ks, value))
    reads = [one(proxy, get_kv, ("o",)) for _ in range(20)]
    print("outage_reads=%s" % (reads == [value] * 20))
    print("outage_seconds=%.1f" % (time.time() - start), file=sys.stderr)

elif phase == "after":
    seen = set()
    deadline = time.time() + 3
    while time.time() < deadline:
        seen.add(one(proxy, get_kv, ("o",)))
        time.sleep(0.02)
    print("after_outage=%s" % sorted(seen))

elif phase == "spread":
    seen = set()
    for _ in range(12):
        session = connect(proxy_port)
        seen.add(one(session, "SELECT v FROM %s.kv WHERE k = 'o'" % ks))
        session.cluster.shutdown()
    print("spread=%s" % sorted(seen))

print("done")
