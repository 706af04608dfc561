#!/usr/bin/env python3
"""A fake Kafka broker on 127.0.0.1 that records every request and the response it sends.

Responses are built with kafka-python's schema classes in the version the client asked for.
"""
import json, socket, struct, sys, threading, uuid
from kafka.protocol.metadata import ApiVersionsResponse, MetadataResponse, FindCoordinatorResponse
from kafka.protocol.producer import ProduceRequest, ProduceResponse

PORT = int(sys.argv[1])
OUT = sys.argv[2]
MAX_API_VERSIONS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
lock = threading.Lock()
ADVERTISED = {0: (0, 9), 1: (0, 13), 2: (0, 7), 3: (0, 12), 8: (0, 8), 9: (0, 8), 10: (0, 4),
              11: (0, 9), 12: (0, 4), 13: (0, 5), 14: (0, 5), 18: (0, MAX_API_VERSIONS),
              19: (0, 7), 22: (0, 4)}
if len(sys.argv) > 4 and sys.argv[4] == 'legacy':
    ADVERTISED.update({0: (0, 7), 3: (0, 7), 10: (0, 2), 11: (0, 5), 12: (0, 3)})

def log(conn_id, direction, key, ver, data):
    with lock, open(OUT, 'a') as f:
        f.write(json.dumps({'conn': conn_id, 'dir': direction, 'api_key': key, 'version': ver, 'hex': data.hex()}) + '\n')

def recv_exact(s, n):
    buf = b''
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf

def respond(cls, version, corr, **fields):
    msg = cls(version=version, **fields)
    msg.with_header(correlation_id=corr)
    return bytes(msg.encode(header=True, framed=True))

def handle(s, conn_id):
    while True:
        prefix = recv_exact(s, 4)
        if prefix is None:
            return
        (n,) = struct.unpack('>i', prefix)
        payload = recv_exact(s, n)
        if payload is None:
            return
        key, ver, corr = struct.unpack('>hhi', payload[:8])
        log(conn_id, 'req', key, ver, prefix + payload)
        resp = None
        if key == 18:
            if ver > MAX_API_VERSIONS:
                resp = respond(ApiVersionsResponse, 0, corr, error_code=35, api_keys=[
                    ApiVersionsResponse.ApiVersion(api_key=18, min_version=0, max_version=MAX_API_VERSIONS)])
                ver = 0
            else:
                resp = respond(ApiVersionsResponse, ver, corr, error_code=0, throttle_time_ms=0, api_keys=[
                    ApiVersionsResponse.ApiVersion(api_key=k, min_version=a, max_version=b) for k, (a, b) in sorted(ADVERTISED.items())])
        elif key == 3:
            req_topics = None
            try:
                from kafka.protocol.metadata import MetadataRequest
                req = MetadataRequest.decode(payload, version=ver, header=True)
                if req.topics:
                    req_topics = [t.name for t in req.topics]
            except Exception as e:
                print('metadata decode', e, file=sys.stderr)
            T = MetadataResponse.MetadataResponseTopic
            P = T.MetadataResponsePartition
            topics = [T(error_code=0, name=name, topic_id=uuid.UUID(int=0), is_internal=False,
                        partitions=[P(error_code=0, partition_index=0, leader_id=0, leader_epoch=0,
                                      replica_nodes=[0], isr_nodes=[0], offline_replicas=[])])
                      for name in (req_topics or ['test'])]
            resp = respond(MetadataResponse, ver, corr, throttle_time_ms=0, brokers=[
                MetadataResponse.MetadataResponseBroker(node_id=0, host='127.0.0.1', port=PORT, rack=None)],
                cluster_id='fake-cluster', controller_id=0, topics=topics)
        elif key == 0:
            req = ProduceRequest.decode(payload, version=ver, header=True)
            if req.acks != 0:
                R = ProduceResponse.TopicProduceResponse
                PR = R.PartitionProduceResponse
                resp = respond(ProduceResponse, ver, corr, throttle_time_ms=0, responses=[
                    R(name=t.name, partition_responses=[PR(index=p.index, error_code=0, base_offset=0,
                                                           log_append_time_ms=-1, log_start_offset=0)
                                                        for p in t.partition_data]) for t in req.topic_data])
        elif key == 10:
            from kafka.protocol.metadata import FindCoordinatorRequest
            req = FindCoordinatorRequest.decode(payload, version=ver, header=True)
            if ver >= 4:
                C = FindCoordinatorResponse.Coordinator
                resp = respond(FindCoordinatorResponse, ver, corr, throttle_time_ms=0, coordinators=[
                    C(key=k, node_id=0, host='127.0.0.1', port=PORT, error_code=0, error_message=None)
                    for k in req.coordinator_keys])
            else:
                resp = respond(FindCoordinatorResponse, ver, corr, throttle_time_ms=0, error_code=0,
                               error_message=None, node_id=0, host='127.0.0.1', port=PORT)
        else:
            print('unhandled api key', key, 'v', ver, file=sys.stderr)
        if resp is not None:
            log(conn_id, 'resp', key, ver, resp)
            s.sendall(resp)

def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(('127.0.0.1', PORT))
    srv.listen()
    srv.settimeout(30)
    n = 0
    try:
        while True:
            s, _ = srv.accept()
            n += 1
            threading.Thread(target=handle, args=(s, n), daemon=True).start()
    except socket.timeout:
        pass

main()
