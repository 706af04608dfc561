"""Drives CassandraSinkCluster with the Python cassandra-driver's token-aware policy and
proves, with query tracing, where each request was coordinated.

usage: cql_cluster.py PROXY_HOST PROXY_PORT DIRECT_HOST DIRECT_PORT PROTOCOL_VERSION LOCAL_DC KEYSPACE RF_SPEC [AUTH]

RF_SPEC is the NetworkTopologyStrategy factors, e.g. "dc1:1,dc2:1". A second driver connects
straight to the ring to learn each partition's real replicas (the proxy hides them). The
script creates KEYSPACE, inserts 40 rows with a prepared statement and tracing on, and for
each insert compares the coordinator (system_traces, read through the proxy) with the
replicas. AUTH is "user:password". Prints `key=value` lines for the test to assert on.
"""
import sys
import time

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy, WhiteListRoundRobinPolicy

(proxy_host, proxy_port, direct_host, direct_port, version, local_dc, ks, rf_spec) = sys.argv[1:9]
auth = None
if len(sys.argv) > 9:
    user, password = sys.argv[9].split(":", 1)
    auth = PlainTextAuthProvider(username=user, password=password)
version = int(version)


def cluster(host, port):
    return Cluster(
        [host],
        port=int(port),
        protocol_version=version,
        auth_provider=auth,
        connect_timeout=20,
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc)),
    )


proxy = cluster(proxy_host, proxy_port)
session = proxy.connect()
session.default_timeout = 30
hosts = sorted("%s:%s/%s/%s" % (h.endpoint.address, h.endpoint.port, h.datacenter, h.rack) for h in proxy.metadata.all_hosts())
print("hosts=" + ",".join(hosts))
# The system tables as the contact proxy itself answers them (the session spreads queries
# over every proxy).
only_contact = Cluster(
    [proxy_host], port=int(proxy_port), protocol_version=version, auth_provider=auth, connect_timeout=20,
    load_balancing_policy=WhiteListRoundRobinPolicy([proxy_host]),
)
contact = only_contact.connect()
local = contact.execute("SELECT data_center, rack, host_id, tokens FROM system.local").one()
print("local=%s/%s/%s tokens=%d" % (local.data_center, local.rack, local.host_id, len(local.tokens or [])))
peers = sorted("%s/%s/%s" % (p.peer, p.data_center, p.rack) for p in contact.execute("SELECT peer, data_center, rack FROM system.peers"))
print("peers=" + ",".join(peers))
only_contact.shutdown()

factors = ", ".join("'%s': %s" % tuple(f.split(":")) for f in rf_spec.split(","))
session.execute("DROP KEYSPACE IF EXISTS %s" % ks)
session.execute("CREATE KEYSPACE %s WITH replication = {'class': 'NetworkTopologyStrategy', %s}" % (ks, factors))
session.execute("CREATE TABLE %s.t (k int, c text, v text, PRIMARY KEY ((k, c)))" % ks)
# The proxy learns of the new keyspace from a schema event; give it a moment to read it.
time.sleep(2)

direct = Cluster([direct_host], port=int(direct_port), protocol_version=version, auth_provider=auth, connect_timeout=20)
direct_session = direct.connect()
direct.refresh_schema_metadata()

insert = session.prepare("INSERT INTO %s.t (k, c, v) VALUES (?, ?, ?)" % ks)
on_replica = in_rack_or_only = 0
coordinators = {}
n = 40
for i in range(n):
    bound = insert.bind((i, "c%d" % i, "v%d" % i))
    rs = session.execute(bound, trace=True)
    coordinator = str(rs.get_query_trace(20).coordinator)
    coordinators[coordinator] = coordinators.get(coordinator, 0) + 1
    replicas = direct.metadata.get_replicas(ks, bound.routing_key)
    local_replicas = [r for r in replicas if r.datacenter == local_dc]
    if coordinator in [r.address for r in local_replicas]:
        on_replica += 1
    # The proxy prefers its own rack: a local replica there, when there is one, coordinates.
    proxy_rack = local.rack
    in_rack = [r.address for r in local_replicas if r.rack == proxy_rack]
    if (in_rack and coordinator in in_rack) or (not in_rack and coordinator in [r.address for r in local_replicas]):
        in_rack_or_only += 1
print("on_local_replica=%d/%d" % (on_replica, n))
print("rack_preferred=%d/%d" % (in_rack_or_only, n))
print("coordinators=" + ",".join("%s:%d" % kv for kv in sorted(coordinators.items())))

select = session.prepare("SELECT v FROM %s.t WHERE k = ? AND c = ?" % ks)
reads = sum(1 for i in range(n) if session.execute(select, (i, "c%d" % i)).one().v == "v%d" % i)
print("reads=%d/%d" % (reads, n))
direct.shutdown()
proxy.shutdown()
print("done")
