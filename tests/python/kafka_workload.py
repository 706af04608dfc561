"""Exercises a Kafka proxy with confluent-kafka (librdkafka) and kafka-python.

usage: kafka_workload.py BOOTSTRAP PROXY_PORT [PARTITIONS [REPLICAS]]

Creates a topic (1 partition and replica by default), produces with acks=0, 1 and all, consumes everything with a consumer
group that commits its offsets, and checks that every broker and coordinator the clients
are told about is at the proxy's port. Prints `key=value` lines for the test to assert on.
"""
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, proxy_port = sys.argv[1], int(sys.argv[2])
partitions = int(sys.argv[3]) if len(sys.argv) > 3 else 1
replicas = int(sys.argv[4]) if len(sys.argv) > 4 else 1
topic = "t-" + uuid.uuid4().hex[:8]
common = {"bootstrap.servers": bootstrap, "broker.address.family": "v4"}

admin = AdminClient(common)
for f in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=replicas)]).values():
    f.result(30)
# Every partition has a leader before the producers start.
deadline = time.time() + 30
while time.time() < deadline:
    t = admin.list_topics(topic, timeout=10).topics.get(topic)
    if t is not None and t.error is None and len(t.partitions) == partitions and all(
            p.leader >= 0 for p in t.partitions.values()):
        break
    time.sleep(0.2)
metadata = admin.list_topics(timeout=30)
print("brokers=%s" % sorted("%s:%d" % (b.host, b.port) for b in metadata.brokers.values()))
print("brokers_at_proxy=%s" % all(b.port == proxy_port for b in metadata.brokers.values()))

sent = 0
# acks=0 after acks=1: records sent with acks=0 to a partition whose leader is not ready yet
# are dropped without a word (Kafka promises nothing for them), as a CI run saw once.
for acks in ["1", "0", "all"]:
    producer = Producer(dict(common, **{"acks": acks, "linger.ms": 5}))
    errors = []
    for i in range(100):
        producer.produce(topic, value=b"%s-%d" % (acks.encode(), i), partition=i % partitions,
                         on_delivery=lambda err, msg: errors.append(err) if err else None)
    left = producer.flush(30)
    print("acks_%s_errors=%d left=%d" % (acks, len(errors), left))
    sent += 100

group = "g-" + uuid.uuid4().hex[:8]
consumer = Consumer(dict(common, **{"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}))
consumer.subscribe([topic])
received = []
deadline = time.time() + 60
while len(received) < sent and time.time() < deadline:
    msg = consumer.poll(1.0)
    if msg is None or msg.error():
        continue
    received.append(msg.value())
consumer.commit(asynchronous=False)
committed = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
consumer.close()
print("consumed=%d" % len(received))
print("committed_offset=%d" % sum(tp.offset for tp in committed))

# kafka-python: its own produce and consume, and its own view of the cluster.
from kafka import KafkaConsumer, KafkaProducer

kp = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
for i in range(10):
    kp.send(topic, b"kp-%d" % i)
kp.flush()
print("kafka_python_brokers_at_proxy=%s" % all(b.port == proxy_port for b in kp._metadata.brokers()))
kp.close()
kc = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id="kp-" + uuid.uuid4().hex[:8],
                   auto_offset_reset="earliest", consumer_timeout_ms=10000)
values = [m.value for m in kc]
kc.close()
print("kafka_python_consumed=%d" % len(values))
print("done")
