"""Drives KafkaSinkCluster with confluent-kafka (librdkafka) and kafka-python.

usage: kafka_cluster.py MODE PROXY_BOOTSTRAP DIRECT_BOOTSTRAP [EXTRA...]

Modes (each prints `key=value` lines for the test to assert on):
  workload      a 6-partition topic of replication 3 made through the proxy; 600 records
                produced to every partition with acks=all, consumed by a group that commits;
                kafka-python produces and consumes too; the records are then read directly
                from the brokers, partition by partition, to check where they landed.
  groups        a consumer group of two that rebalances when one leaves, and a
                transactional producer read by a read_committed consumer.
  metadata      the brokers and partition leaders as seen through the proxy and directly.
  sasl USER PW  SASL PLAIN through the proxy as USER (produce, consume), then SCRAM.
  scram USER PW ALLOWED DENIED PHASE
                SCRAM-SHA-256 and -512 through the proxy as USER, who may use only the topic
                ALLOWED (and groups scram-g*): phase 1 makes both topics and the ACLs; every
                phase produces to and consumes ALLOWED; phase 1 also checks that DENIED is
                out of reach, and logs in by hand over a socket with a wrong password and
                with the right one (what the proxy answers, and whether it then closes).
  keep-going S  produces and consumes for S seconds (a broker is killed meanwhile): every
                acknowledged record must be read back.
"""
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

mode, proxy, direct = sys.argv[1], sys.argv[2], sys.argv[3]
extra = sys.argv[4:]
common = {"bootstrap.servers": proxy, "broker.address.family": "v4"}
direct_common = {"bootstrap.servers": direct, "broker.address.family": "v4"}


def new_topic(config, partitions=6, replication=3, topic=None):
    topic = topic or "t-" + uuid.uuid4().hex[:8]
    admin = AdminClient(config)
    for f in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=replication)]).values():
        f.result(30)
    # Every broker knows the topic before it is used.
    deadline = time.time() + 30
    while time.time() < deadline:
        t = admin.list_topics(topic, timeout=10).topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions and all(
            p.leader >= 0 for p in t.partitions.values()
        ):
            break
        time.sleep(0.2)
    return topic


def consume(config, topic, want, group=None, seconds=60, extra_config=None):
    c = Consumer(dict(config, **{
        "group.id": group or "g-" + uuid.uuid4().hex[:8],
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }, **(extra_config or {})))
    c.subscribe([topic])
    got = []
    deadline = time.time() + seconds
    while len(got) < want and time.time() < deadline:
        msg = c.poll(0.5)
        if msg is None or msg.error():
            continue
        got.append((msg.partition(), msg.value()))
    return c, got


def by_partition(config, topic, partitions):
    """Every record of each partition, read directly with assign (no group)."""
    c = Consumer(dict(config, **{"group.id": "direct-" + uuid.uuid4().hex[:8], "enable.auto.commit": False}))
    out = {}
    for p in range(partitions):
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        c.assign([TopicPartition(topic, p, low)])
        values = []
        deadline = time.time() + 20
        while len(values) < high - low and time.time() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                values.append(msg.value())
        out[p] = values
    c.close()
    return out


if mode == "workload":
    topic = new_topic(common)
    producer = Producer(dict(common, **{"acks": "all", "linger.ms": 20}))
    errors = []
    for i in range(600):
        producer.produce(topic, value=b"v-%d-%d" % (i % 6, i), partition=i % 6,
                         on_delivery=lambda err, msg: errors.append(err) if err else None)
    left = producer.flush(30)
    print("produce_errors=%d left=%d" % (len(errors), left))
    # acks=0: no responses at all, between requests that get one.
    fire = Producer(dict(common, **{"acks": "0", "linger.ms": 20}))
    for i in range(60):
        fire.produce(topic, value=b"v-%d-a0-%d" % (i % 6, i), partition=i % 6)
    print("acks0_left=%d" % fire.flush(30))
    group = "g-" + uuid.uuid4().hex[:8]
    c, got = consume(common, topic, 660, group)
    c.commit(asynchronous=False)
    committed = c.committed([TopicPartition(topic, p) for p in range(6)], timeout=30)
    c.close()
    print("consumed=%d" % len(got))
    print("consumed_in_their_partition=%s" % all(v.startswith(b"v-%d-" % p) for p, v in got))
    print("committed=%d" % sum(tp.offset for tp in committed))

    from kafka import KafkaConsumer, KafkaProducer
    kp = KafkaProducer(bootstrap_servers=proxy, acks="all")
    for i in range(60):
        kp.send(topic, b"v-%d-kp%d" % (i % 6, i), partition=i % 6)
    kp.flush()
    print("kafka_python_brokers=%s" % sorted("%s:%d" % (b.host, b.port) for b in kp._metadata.brokers()))
    kp.close()
    kc = KafkaConsumer(topic, bootstrap_servers=proxy, group_id="kp-" + uuid.uuid4().hex[:8],
                       auto_offset_reset="earliest", consumer_timeout_ms=15000)
    values = [m.value for m in kc]
    kc.close()
    print("kafka_python_consumed=%d" % len(values))

    stored = by_partition(direct_common, topic, 6)
    print("direct_total=%d" % sum(len(v) for v in stored.values()))
    print("direct_in_their_partition=%s" % all(
        all(v.startswith(b"v-%d-" % p) for v in values) for p, values in stored.items()))
    print("done")

elif mode == "metadata":
    topic = new_topic(direct_common)
    seen = AdminClient(common).list_topics(topic, timeout=30)
    real = AdminClient(direct_common).list_topics(topic, timeout=30)
    print("brokers=%s" % sorted("%d@%s:%d" % (b.id, b.host, b.port) for b in seen.brokers.values()))
    # The real leader of each partition, and the node the proxy shows as its leader.
    for p in sorted(real.topics[topic].partitions):
        print("partition=%d real_leader=%d shown_leader=%d" % (
            p, real.topics[topic].partitions[p].leader, seen.topics[topic].partitions[p].leader))
    print("done")

elif mode == "groups":
    topic = new_topic(common)
    producer = Producer(dict(common, **{"acks": "all"}))
    for i in range(60):
        producer.produce(topic, value=b"%d" % i, partition=i % 6)
    producer.flush(30)
    group = "g-" + uuid.uuid4().hex[:8]

    def assigned(consumers, want_sizes, seconds=60):
        deadline = time.time() + seconds
        while time.time() < deadline:
            for c in consumers:
                c.poll(0.2)
            sizes = sorted(len(c.assignment()) for c in consumers)
            if sizes == want_sizes:
                return sizes
        return sorted(len(c.assignment()) for c in consumers)

    config = dict(common, **{"group.id": group, "auto.offset.reset": "earliest",
                             "session.timeout.ms": 10000, "heartbeat.interval.ms": 500})
    a = Consumer(config)
    a.subscribe([topic])
    print("alone=%s" % assigned([a], [6]))
    b = Consumer(config)
    b.subscribe([topic])
    print("two=%s" % assigned([a, b], [3, 3]))
    b.close()
    print("after_leave=%s" % assigned([a], [6]))
    a.close()

    tx_topic = new_topic(common, partitions=3)
    tp = Producer(dict(common, **{"transactional.id": "tx-" + uuid.uuid4().hex[:8]}))
    tp.init_transactions(30)
    tp.begin_transaction()
    for i in range(10):
        tp.produce(tx_topic, value=b"committed-%d" % i, partition=i % 3)
    tp.commit_transaction(30)
    tp.begin_transaction()
    for i in range(5):
        tp.produce(tx_topic, value=b"aborted-%d" % i, partition=i % 3)
    tp.flush(30)
    tp.abort_transaction(30)
    tp.begin_transaction()
    tp.produce(tx_topic, value=b"committed-last", partition=0)
    tp.commit_transaction(30)
    c, got = consume(common, tx_topic, 11, extra_config={"isolation.level": "read_committed"}, seconds=30)
    # Nothing more comes: the aborted records stay hidden.
    deadline = time.time() + 3
    while time.time() < deadline:
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            got.append((msg.partition(), msg.value()))
    c.close()
    print("read_committed=%d aborted_seen=%d" % (len(got), sum(1 for _, v in got if v.startswith(b"aborted"))))
    print("done")

elif mode == "sasl":
    user, password = extra[0], extra[1]
    plain = dict(common, **{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                            "sasl.username": user, "sasl.password": password})
    topic = new_topic(plain)
    producer = Producer(dict(plain, **{"acks": "all"}))
    errors = []
    for i in range(60):
        producer.produce(topic, value=b"%d" % i, partition=i % 6,
                         on_delivery=lambda err, msg: errors.append(err) if err else None)
    left = producer.flush(30)
    print("plain_produce_errors=%d left=%d" % (len(errors), left))
    c, got = consume(plain, topic, 60)
    c.close()
    print("plain_consumed=%d" % len(got))
    wrong = dict(plain, **{"sasl.password": "wrong"})
    failures = []
    a = AdminClient(dict(wrong, **{"error_cb": lambda e: failures.append(e.code())}))
    try:
        a.list_topics(timeout=5)
        print("wrong_password=accepted")
    except Exception:
        a.poll(1)  # serves error_cb
        print("wrong_password=refused authentication_failure=%s" % (KafkaError._AUTHENTICATION in failures))
    scram_errors = []
    scram = dict(common, **{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256",
                            "sasl.username": user, "sasl.password": password,
                            "error_cb": lambda e: scram_errors.append(str(e))})
    scram_admin = AdminClient(scram)
    try:
        scram_admin.list_topics(timeout=5)
        print("scram=accepted")
    except Exception:
        print("scram=refused")
    scram_admin.poll(1)
    # librdkafka: "SASL SCRAM-SHA-256 mechanism handshake failed: Broker: Unsupported SASL mechanism"
    print("scram_error=%s" % any("Unsupported SASL mechanism" in e for e in scram_errors))
    print("done")

elif mode == "scram":
    import base64
    import hashlib
    import hmac
    import os
    import socket
    import struct

    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, ResourcePatternType,
                                       ResourceType)

    user, password, allowed, denied, phase = extra[:5]
    if phase == "1":
        for t in (allowed, denied):
            new_topic(direct_common, topic=t)
        principal = "User:" + user
        acls = [AclBinding(ResourceType.TOPIC, allowed, ResourcePatternType.LITERAL, principal, "*",
                           AclOperation.ALL, AclPermissionType.ALLOW),
                AclBinding(ResourceType.GROUP, "scram-g", ResourcePatternType.PREFIXED, principal, "*",
                           AclOperation.ALL, AclPermissionType.ALLOW)]
        acl_admin = AdminClient(direct_common)  # kept alive until the results come
        for f in acl_admin.create_acls(acls).values():
            f.result(30)
        time.sleep(2)  # the ACLs reach every broker

    for k, mechanism in enumerate(("SCRAM-SHA-256", "SCRAM-SHA-512")):
        scram = dict(common, **{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
                                "sasl.username": user, "sasl.password": password})
        producer = Producer(dict(scram, **{"acks": "all"}))
        errors = []
        for i in range(60):
            producer.produce(allowed, value=b"%s-%d" % (mechanism.encode(), i), partition=i % 6,
                             on_delivery=lambda err, msg: errors.append(err) if err else None)
        left = producer.flush(30)
        print("%s_produce_errors=%d left=%d" % (mechanism, len(errors), left))
        want = 60 * (2 * (int(phase) - 1) + k + 1)
        c, got = consume(scram, allowed, want, group="scram-g-" + uuid.uuid4().hex[:8])
        c.close()
        print("%s_consumed_all=%s" % (mechanism, len(got) == want))

    if phase == "1":
        scram = dict(common, **{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256",
                                "sasl.username": user, "sasl.password": password})
        topics = AdminClient(scram).list_topics(timeout=30).topics
        print("sees_allowed=%s sees_denied=%s" % (allowed in topics, denied in topics))
        producer = Producer(dict(scram, **{"acks": "all", "message.timeout.ms": 10000}))
        outcome = []
        producer.produce(denied, value=b"no", partition=0,
                         on_delivery=lambda err, msg: outcome.append(err.name() if err else "delivered"))
        producer.flush(20)
        print("denied_produce=%s" % outcome)
        c = Consumer(dict(scram, **{"group.id": "scram-g-" + uuid.uuid4().hex[:8]}))
        c.subscribe([denied])
        fetch = "nothing"
        deadline = time.time() + 20
        while fetch == "nothing" and time.time() < deadline:
            msg = c.poll(0.5)
            if msg is not None:
                fetch = msg.error().name() if msg.error() else "record"
        c.close()
        print("denied_fetch=%s" % fetch)

        def request(api_key, version, correlation, body):
            message = struct.pack(">hhih", api_key, version, correlation, 10) + b"scram-test" + body
            return struct.pack(">i", len(message)) + message

        def response(sock):
            size = sock.recv(4, socket.MSG_WAITALL)
            if len(size) < 4:
                return None
            return sock.recv(struct.unpack(">i", size)[0], socket.MSG_WAITALL)

        def after_login(s):
            """Whether a Metadata request (v1, every topic) gets an answer, or the connection closes."""
            try:
                s.sendall(request(3, 1, 4, struct.pack(">i", -1)))
                after = "answered" if response(s) is not None else "closed"
            except (ConnectionResetError, BrokenPipeError):
                after = "closed"
            except socket.timeout:
                after = "timeout"
            s.close()
            return after

        def raw_login(secret, extensions=""):
            """SCRAM-SHA-256 by hand (SaslHandshake v1, SaslAuthenticate v1); then Metadata."""
            host, port = proxy.split(":")
            s = socket.create_connection((host, int(port)), timeout=15)
            s.sendall(request(17, 1, 1, struct.pack(">h", 13) + b"SCRAM-SHA-256"))
            r = response(s)
            nonce = base64.b64encode(os.urandom(18)).decode()
            first_bare = "n=%s,r=%s%s" % (user, nonce, extensions)
            first = ("n,," + first_bare).encode()
            s.sendall(request(36, 1, 2, struct.pack(">i", len(first)) + first))
            r = response(s)
            error = struct.unpack(">h", r[4:6])[0]
            if error:
                return error, after_login(s)
            (message_len,) = struct.unpack(">h", r[6:8])
            at = 8 + max(message_len, 0)
            (server_len,) = struct.unpack(">i", r[at:at + 4])
            server_first = r[at + 4:at + 4 + server_len].decode()
            fields = dict(f.split("=", 1) for f in server_first.split(","))
            salted = hashlib.pbkdf2_hmac("sha256", secret.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
            client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
            final_bare = "c=biws,r=" + fields["r"]
            auth = ",".join([first_bare, server_first, final_bare]).encode()
            signature = hmac.new(hashlib.sha256(client_key).digest(), auth, hashlib.sha256).digest()
            proof = bytes(a ^ b for a, b in zip(client_key, signature))
            final = (final_bare + ",p=" + base64.b64encode(proof).decode()).encode()
            s.sendall(request(36, 1, 3, struct.pack(">i", len(final)) + final))
            r = response(s)
            return struct.unpack(">h", r[4:6])[0], after_login(s)

        print("raw_right_password=%d,%s" % raw_login(password))
        print("raw_wrong_password=%d,%s" % raw_login("wrong-" + password))
        # A login that says it uses a delegation token (in any case): the proxy could not
        # know whose tokens to make, so it refuses it itself.
        print("raw_token_login=%d,%s" % raw_login(password, ",tokenauth=TRUE"))
    print("done")

elif mode == "keep-going":
    seconds = float(extra[0])
    # The topic is made directly: a CreateTopics on a loaded cluster can outlast the short
    # read_timeout the fault tests give the proxy, and making it is not what they test.
    topic = new_topic(direct_common)
    acked = set()
    errors = []

    def delivered(err, msg):
        if err:
            errors.append(err.name())
        else:
            acked.add(msg.value())

    producer = Producer(dict(common, **{"acks": "all", "linger.ms": 5, "message.timeout.ms": 60000}))
    if len(extra) > 1:
        with open(extra[1], "w") as f:  # the load has started, on this topic
            f.write(topic)
    end = time.time() + seconds
    i = 0
    while time.time() < end:
        producer.produce(topic, value=b"r-%d" % i, partition=i % 6, on_delivery=delivered)
        producer.poll(0)
        i += 1
        time.sleep(0.005)
    left = producer.flush(60)
    print("sent=%d acked=%d left=%d produce_errors=%d" % (i, len(acked), left, len(errors)))
    print("produce_error_names=%s" % sorted(set(errors)))
    # Retried produce requests may have written a record twice: count distinct records.
    c = Consumer(dict(common, **{"group.id": "g-" + uuid.uuid4().hex[:8], "auto.offset.reset": "earliest"}))
    c.subscribe([topic])
    read = set()
    deadline = time.time() + 90
    while not acked <= read and time.time() < deadline:
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            read.add(msg.value())
    c.close()
    print("acked_and_read=%d/%d" % (len(acked & read), len(acked)))
    print("done")
