"""Drives Protect with the Python cassandra-driver.

usage: cql_protect.py PROXY_PORT DIRECT_PORT KEYSPACE USER:PASSWORD [MODE ARGS...]

KEYSPACE.t has the protected blob column col1. Through the proxy: literal and prepared
INSERTs, an UPDATE, a BATCH mixing both, USE then an unqualified INSERT, and reads (simple,
prepared, 10,000 rows paged by 1000). Directly: the stored col1 values, which must not be the
plaintext. Then a value tampered with directly, and a write the proxy cannot encrypt.
Prints `key=value` lines for the test to assert on.

Other MODEs, for the AWSKms key manager (KMS is moto's server, reached with boto3):
- `outside ENDPOINT ALIAS`: reads the stored col1 values of the 'prep' rows directly and
  decrypts them without the proxy, as docs/transforms.md describes the layout: the DEK with
  KMS Decrypt, the value with ChaCha20-Poly1305. Prints `outside=<decrypted>/<stored>` and
  `kek_id=<the stored KEK ids>`.
- `outage`: through a proxy whose KMS is down, a protected write and a protected read each
  get an error naming the key management service, and the connection still serves.
"""
import struct
import sys

from cassandra import InvalidRequest
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.policies import WhiteListRoundRobinPolicy
from cassandra.query import BatchStatement, SimpleStatement

proxy_port, direct_port, ks = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
user, password = sys.argv[4].split(":", 1)


def connect(port):
    # Only 127.0.0.1: the driver must not find the ring's other nodes and go around the proxy.
    cluster = Cluster(["127.0.0.1"], port=port, protocol_version=4, connect_timeout=20,
                      auth_provider=PlainTextAuthProvider(username=user, password=password),
                      load_balancing_policy=WhiteListRoundRobinPolicy(["127.0.0.1"]))
    session = cluster.connect()
    session.default_timeout = 30
    return session


mode = sys.argv[5] if len(sys.argv) > 5 else "main"
if mode == "outside":
    import boto3
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    def fields(blob):
        """cipher, nonce, enc_dek, kek_id of a stored value (bincode 1's layout)."""
        (n,), at = struct.unpack_from("<Q", blob, 0), 8
        cipher, at = blob[at:at + n], at + n
        nonce, at = blob[at:at + 12], at + 12
        (n,), at = struct.unpack_from("<Q", blob, at), at + 8
        enc_dek, at = blob[at:at + n], at + n
        (n,), at = struct.unpack_from("<Q", blob, at), at + 8
        return cipher, nonce, enc_dek, blob[at:at + n].decode()

    endpoint, alias = sys.argv[6], sys.argv[7]
    kms = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    rows = [r.col1 for r in connect(direct_port).execute("SELECT col1 FROM %s.t WHERE pk = 'prep'" % ks) if r.col1]
    decrypted, kek_ids, deks = 0, set(), {}
    for blob in rows:
        cipher, nonce, enc_dek, kek_id = fields(blob)
        kek_ids.add(kek_id)
        if enc_dek not in deks:
            deks[enc_dek] = kms.decrypt(CiphertextBlob=enc_dek, KeyId=alias)["Plaintext"]
        decrypted += ChaCha20Poly1305(deks[enc_dek]).decrypt(nonce, cipher, None).startswith(b"prepared-")
    print("outside=%d/%d" % (decrypted, len(rows)))
    print("kek_id=%s" % ",".join(sorted(kek_ids)))
    print("done")
    sys.exit(0)
if mode == "outage":
    proxy = connect(proxy_port)
    for name, cql in [("write", "INSERT INTO %s.t (pk, ck, col1, col2) VALUES ('down', 1, 'x', 1)" % ks),
                      ("read", "SELECT col1 FROM %s.t WHERE pk = 'lit' AND ck = 1" % ks)]:
        try:
            proxy.execute(cql)
            print("%s=passed" % name)
        except Exception as e:  # noqa: BLE001 - what the driver raised is the point
            print("%s=%s" % (name, "refused" if "key management service" in str(e) else str(e)))
    row = proxy.execute("SELECT col2 FROM %s.t WHERE pk = 'lit' AND ck = 1" % ks).one()
    print("usable=%s" % (row is not None and row.col2 == 42))
    print("done")
    sys.exit(0)

direct = connect(direct_port)
direct.execute("DROP KEYSPACE IF EXISTS %s" % ks)
direct.execute("CREATE KEYSPACE %s WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 1}" % ks)
direct.execute("CREATE TABLE %s.t (pk text, ck int, col1 blob, col2 int, PRIMARY KEY (pk, ck))" % ks)

proxy = connect(proxy_port)
expected = {}
proxy.execute("INSERT INTO %s.t (pk, ck, col1, col2) VALUES ('lit', 1, 'I am gonna get encrypted!!', 42)" % ks)
expected[("lit", 1)] = b"I am gonna get encrypted!!"
proxy.execute("INSERT INTO %s.t (pk, ck, col1, col2) VALUES ('lit', 2, 0xcafe, 1)" % ks)
expected[("lit", 2)] = b"\xca\xfe"
proxy.execute("INSERT INTO %s.t (pk, ck, col1, col2) VALUES ('lit', 3, null, 1)" % ks)
expected[("lit", 3)] = None
proxy.execute("UPDATE %s.t SET col1 = $$it's updated$$, col2 = 7 WHERE pk = 'lit' AND ck = 4" % ks)
expected[("lit", 4)] = b"it's updated"

insert = proxy.prepare("INSERT INTO %s.t (pk, ck, col1, col2) VALUES (?, ?, ?, ?)" % ks)
rows = [("prep", i, b"prepared-%d-" % i + bytes(range(256))[: i % 256], i) for i in range(10000)]
results = execute_concurrent_with_args(proxy, insert, rows, concurrency=50)
assert all(ok for ok, _ in results), [r for ok, r in results if not ok][:3]
for pk, ck, value, _ in rows:
    expected[(pk, ck)] = value

batch = BatchStatement()
batch.add(insert, ("batch", 1, b"bound in a batch", 1))
batch.add(SimpleStatement("INSERT INTO %s.t (pk, ck, col1, col2) VALUES ('batch', 2, 'literal in a batch', 2)" % ks))
proxy.execute(batch)
expected[("batch", 1)] = b"bound in a batch"
expected[("batch", 2)] = b"literal in a batch"

# Named markers: Cassandra names them by the marker, not the column, in the metadata.
named = proxy.prepare("INSERT INTO %s.t (pk, ck, col1, col2) VALUES (:pk, :ck, :secret, :n)" % ks)
proxy.execute(named, {"pk": "named", "ck": 1, "secret": b"named marker", "n": 1})
expected[("named", 1)] = b"named marker"

# A conditional write that does not apply returns the existing row, decrypted.
existing = proxy.execute("INSERT INTO %s.t (pk, ck, col1, col2) VALUES ('lit', 1, 'other', 0) IF NOT EXISTS" % ks).one()
print("lwt_existing=%s" % (getattr(existing, "col1", None) == expected[("lit", 1)]))
# Schema changes naming the table pass.
proxy.execute("ALTER TABLE %s.t WITH comment = 'protected'" % ks)
print("ddl=passed")

proxy.set_keyspace(ks)
proxy.execute("INSERT INTO t (pk, ck, col1, col2) VALUES ('use', 1, 'after USE', 1)")
expected[("use", 1)] = b"after USE"

# Reads through the proxy: every value as written.
seen = {}
for row in proxy.execute("SELECT pk, ck, col1 FROM %s.t WHERE pk IN ('lit', 'batch', 'use', 'named')" % ks):
    seen[(row.pk, row.ck)] = row.col1
select = proxy.prepare("SELECT pk, ck, col1, col2 FROM %s.t WHERE pk = ?" % ks)
select.fetch_size = 1000
pages = 0
result = proxy.execute(select, ("prep",))
while True:
    pages += 1
    for row in result.current_rows:
        seen[(row.pk, row.ck)] = row.col1
    if not result.has_more_pages:
        break
    result = proxy.execute(select, ("prep",), paging_state=result.paging_state)
print("paged=%s" % (pages >= 10))
print("read_back=%d/%d" % (sum(1 for k, v in expected.items() if seen.get(k) == v), len(expected)))
print("wrong=%s" % sorted(k for k, v in expected.items() if seen.get(k) != v)[:5])

# Directly: nothing stored is the plaintext, and the stored values are larger.
stored = {(r.pk, r.ck): r.col1 for r in direct.execute("SELECT pk, ck, col1 FROM %s.t" % ks)}
plain_stored = sum(1 for k, v in expected.items() if v is not None and stored.get(k) == v)
encrypted = sum(1 for k, v in expected.items() if v is not None and stored.get(k) and len(stored[k]) > len(v) + 40)
print("plaintext_stored=%d encrypted=%d/%d" % (plain_stored, encrypted, sum(1 for v in expected.values() if v)))
print("null_kept=%s" % (stored.get(("lit", 3)) is None))

# A protected column that is not a blob: refused when prepared, an error when read.
direct.execute("CREATE TABLE %s.bad (pk text PRIMARY KEY, col1 text)" % ks)
try:
    proxy.prepare("INSERT INTO %s.bad (pk, col1) VALUES (?, ?)" % ks)
    print("bad_prepare=prepared")
except InvalidRequest as e:
    print("bad_prepare=%s" % ("must be a blob column" in str(e)))
direct.execute("INSERT INTO %s.bad (pk, col1) VALUES ('x', 'plain')" % ks)
try:
    proxy.execute("SELECT col1 FROM %s.bad WHERE pk = 'x'" % ks)
    print("bad_read=read")
except Exception as e:  # noqa: BLE001 - the error's text is the point
    print("bad_read=%s" % ("must be a blob column" in str(e)))

# A value tampered with: an error on that read, and the connection carries on.
direct.execute("UPDATE %s.t SET col1 = 0x00112233 WHERE pk = 'lit' AND ck = 2" % ks)
try:
    proxy.execute("SELECT col1 FROM %s.t WHERE pk = 'lit' AND ck = 2" % ks)
    print("tampered=read")
except Exception as e:
    print("tampered=%s" % ("Protect" in str(e) and "cannot decrypt" in str(e)))
print("after_tamper=%s" % (proxy.execute("SELECT col1 FROM %s.t WHERE pk = 'lit' AND ck = 1" % ks).one().col1
                            == expected[("lit", 1)]))

# Writes the proxy cannot encrypt are refused, not sent.
for name, cql in [("json", "INSERT INTO %s.t JSON '{\"pk\": \"j\", \"ck\": 1, \"col1\": \"0x00\"}'" % ks),
                  ("number", "INSERT INTO %s.t (pk, ck, col1) VALUES ('n', 1, 5)" % ks)]:
    try:
        proxy.execute(cql)
        print("%s=sent" % name)
    except InvalidRequest as e:
        print("%s=%s" % (name, "refused" if "Protect" in str(e) else str(e)))
print("json_row_stored=%s" % (direct.execute("SELECT * FROM %s.t WHERE pk = 'j'" % ks).one() is not None))
print("done")
