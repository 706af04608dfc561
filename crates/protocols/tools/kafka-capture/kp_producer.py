import sys
from kafka import KafkaProducer
port, acks = sys.argv[1], int(sys.argv[2])
p = KafkaProducer(bootstrap_servers=f'127.0.0.1:{port}', acks=acks, enable_idempotence=False, request_timeout_ms=5000, max_block_ms=5000)
p.send('test', b'hello').get(timeout=5) if acks else p.send('test', b'hello')
p.flush(timeout=5)
p.close(timeout=2)
print('done')
