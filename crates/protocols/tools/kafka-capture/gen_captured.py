# Writes ../../src/kafka/captured.rs from the messages capture.sh recorded.
import json
def load(f):
    return [json.loads(l) for l in open(f'captures/{f}.jsonl')]
files = {f: load(f) for f in ['kp1', 'kp2', 'ck1', 'ck2', 'kc', 'cc']}
CLIENT = {'kp1': 'kafka-python 3.0.12 (KafkaProducer)', 'kp2': 'kafka-python 3.0.12 (KafkaProducer, broker advertising older versions)',
          'ck1': 'confluent-kafka 2.16.1 / librdkafka (Producer)', 'ck2': 'confluent-kafka 2.16.1 / librdkafka (Producer, broker advertising older versions)',
          'kc': 'kafka-python 3.0.12 (KafkaConsumer)', 'cc': 'confluent-kafka 2.16.1 / librdkafka (Consumer)'}
def pick(f, conn, d, key, ver, nth=0):
    found = [x for x in files[f] if x['conn'] == conn and x['dir'] == d and x['api_key'] == key and x['version'] == ver]
    return found[nth]['hex']
items = [
 ('API_VERSIONS_V3_REQUEST', 'ck1', 1, 'req', 18, 3, ''),
 ('API_VERSIONS_V3_RESPONSE', 'ck1', 1, 'resp', 18, 3, ''),
 ('API_VERSIONS_V4_REQUEST', 'kp1', 1, 'req', 18, 4, ''),
 ('API_VERSIONS_V0_UNSUPPORTED_RESPONSE', 'kp1', 1, 'resp', 18, 0, ' Answers API_VERSIONS_V4_REQUEST: UNSUPPORTED_VERSION, in v0 as brokers do.'),
 ('API_VERSIONS_V2_REQUEST', 'kp2', 1, 'req', 18, 2, ''),
 ('API_VERSIONS_V2_RESPONSE', 'kp2', 1, 'resp', 18, 2, ''),
 ('API_VERSIONS_V0_REQUEST', 'ck2', 1, 'req', 18, 0, ''),
 ('API_VERSIONS_V0_RESPONSE', 'ck2', 1, 'resp', 18, 0, ''),
 ('METADATA_V12_REQUEST', 'ck1', 1, 'req', 3, 12, ' Asks for topic `test`.'),
 ('METADATA_V12_REQUEST_NO_TOPICS', 'kp1', 1, 'req', 3, 12, ' An empty topic list: brokers only.'),
 ('METADATA_V12_RESPONSE', 'ck1', 1, 'resp', 3, 12, ' One broker, 127.0.0.1:19094.'),
 ('METADATA_V7_REQUEST', 'kp2', 1, 'req', 3, 7, ''),
 ('METADATA_V7_REQUEST_TOPIC', 'ck2', 1, 'req', 3, 7, ' Asks for topic `test`.'),
 ('METADATA_V7_RESPONSE', 'ck2', 1, 'resp', 3, 7, ' One broker, 127.0.0.1:19095.'),
 ('PRODUCE_V9_REQUEST_ACKS_1', 'ck1', 2, 'req', 0, 9, ''),
 ('PRODUCE_V9_REQUEST_ACKS_0', 'ck1', 4, 'req', 0, 9, ''),
 ('PRODUCE_V9_REQUEST_ACKS_1_KAFKA_PYTHON', 'kp1', 2, 'req', 0, 9, ''),
 ('PRODUCE_V9_RESPONSE', 'ck1', 2, 'resp', 0, 9, ''),
 ('PRODUCE_V7_REQUEST_ACKS_ALL', 'ck2', 2, 'req', 0, 7, ''),
 ('PRODUCE_V7_REQUEST_ACKS_0', 'kp2', 4, 'req', 0, 7, ''),
 ('PRODUCE_V7_RESPONSE', 'ck2', 2, 'resp', 0, 7, ''),
 ('FIND_COORDINATOR_V2_REQUEST', 'cc', 1, 'req', 10, 2, ''),
 ('FIND_COORDINATOR_V2_RESPONSE', 'cc', 1, 'resp', 10, 2, ''),
 ('FIND_COORDINATOR_V4_REQUEST', 'kc', 2, 'req', 10, 4, ''),
 ('FIND_COORDINATOR_V4_RESPONSE', 'kc', 2, 'resp', 10, 4, ''),
 ('JOIN_GROUP_V5_REQUEST', 'cc', 3, 'req', 11, 5, ''),
 ('JOIN_GROUP_V7_REQUEST', 'kc', 3, 'req', 11, 7, ''),
 ('FETCH_V12_REQUEST', 'cc', 5, 'req', 1, 12, ''),
 ('FETCH_V12_REQUEST_KAFKA_PYTHON', 'kc', 5, 'req', 1, 12, ''),
]
out = ['//! Messages captured from real clients, for tests.',
       '//!',
       '//! Recorded by a fake broker on 127.0.0.1 (a Python socket server) that logged every',
       '//! message whole, length prefix included. Requests are exactly what the clients sent;',
       '//! responses were built by the fake broker with kafka-python\'s schema classes, in the',
       '//! version each client asked for.',
       '']
for name, f, conn, d, key, ver, note in items:
    h = pick(f, conn, d, key, ver, 1 if name == 'API_VERSIONS_V0_RESPONSE' else 0)
    b = bytes.fromhex(h)
    what = 'request' if d == 'req' else 'response'
    out.append(f'/// {what.capitalize()} v{ver}, {len(b)} bytes, {CLIENT[f]}.{note}')
    out.append(f'pub const {name}: &[u8] = &[')
    for i in range(0, len(b), 16):
        out.append('    ' + ', '.join(f'0x{x:02x}' for x in b[i:i+16]) + ',')
    out.append('];')
    out.append('')
open('../../src/kafka/captured.rs', 'w').write('\n'.join(out))
