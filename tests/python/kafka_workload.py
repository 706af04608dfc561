"""Exercises a Kafka proxy with confluent-kafka (librdkafka) and kafka-python.

usage: kafka_workload.py BOOTSTRAP PROXY_PORT

Creates a topic, produces with acks=0, 1 and all, consumes everything with a consumer
group that commits its offsets, and checks that every broker and coordinator the clients
are told about is at the proxy's port. Prints `key=value` lines for the test to assert on.
"""
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, proxy_port = sys.argv[1], int(sys.argv[2])
topic = "t-" + uuid.uuid4().hex[:8]
common = {"bootstrap.servers": bootstrap, "broker.address.family": "v4"}

admin = AdminClient(common)
for f in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
    f.result(30)
metadata = admin.list_topics(timeout=30)
print("brokers=%s" % sorted("%s:%d" % (b.host, b.port) for b in metadata.brokers.values()))
print("brokers_at_proxy=%s" % all(b.port == proxy_port for b in metadata.brokers.values()))

sent = 0
for acks in ["0", "1", "all"]:
    producer = Producer(dict(common, **{"acks": acks, "linger.ms": 5}))
    errors = []
    for i in range(100):
        producer.produce(topic, value=b"%s-%d" % (acks.encode(), i),
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
committed = consumer.committed([TopicPartition(topic, 0)], timeout=30)
consumer.close()
print("consumed=%d" % len(received))
print("committed_offset=%d" % committed[0].offset)

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
