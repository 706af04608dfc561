import sys
from confluent_kafka import Consumer, TopicPartition
port, mode = sys.argv[1], sys.argv[2]
c = Consumer({'bootstrap.servers': f'127.0.0.1:{port}', 'group.id': 'g2', 'session.timeout.ms': 6000, 'enable.auto.commit': False})
if mode == 'group':
    c.subscribe(['test'])
else:
    c.assign([TopicPartition('test', 0, 5)])
c.poll(3)
print('done')
