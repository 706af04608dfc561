import sys
from confluent_kafka import Producer
port, acks = sys.argv[1], sys.argv[2]
p = Producer({'bootstrap.servers': f'127.0.0.1:{port}', 'acks': acks, 'message.timeout.ms': 5000, 'enable.idempotence': False, 'api.version.request': True})
p.produce('test', b'hello')
print('left', p.flush(8))
