import sys
from kafka import KafkaConsumer, TopicPartition
port, mode = sys.argv[1], sys.argv[2]
if mode == 'group':
    c = KafkaConsumer('test', bootstrap_servers=f'127.0.0.1:{port}', group_id='g1', request_timeout_ms=4000, session_timeout_ms=3000, heartbeat_interval_ms=1000)
else:
    c = KafkaConsumer(bootstrap_servers=f'127.0.0.1:{port}', request_timeout_ms=4000)
    tp = TopicPartition('test', 0)
    c.assign([tp]); c.seek(tp, 5)
c.poll(timeout_ms=3000)
c.close(autocommit=False) if mode == 'group' else c.close()
print('done')
