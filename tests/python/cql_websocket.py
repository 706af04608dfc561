"""Drives a Cassandra source whose transport is WebSocket, with the `websockets` client.

usage: cql_websocket.py raw PORT [CA_FILE]
       cql_websocket.py bridge PORT WORKLOAD_PY

raw:    hand-made CQL v3 frames over one WebSocket (wss:// with CA_FILE): the upgrade with
        the "cql" subprotocol, OPTIONS, STARTUP, queries, two frames in one message, a frame
        split over two messages, ping/pong, whole frames in every response message, a text
        message closing the connection with 1003, a refused subprotocol and a plain HTTP
        request. Prints `key=value` lines for the test to assert on.
bridge: a local TCP listener that carries each cassandra-driver connection over its own
        WebSocket to the proxy, so that cql_workload.py runs unchanged over the WebSocket
        transport. Prints the workload's output.
"""
import asyncio
import socket
import ssl
import struct
import subprocess
import sys
import threading

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as connect_sync

OPTIONS, STARTUP, READY, SUPPORTED, QUERY, RESULT, ERROR = 0x05, 0x01, 0x02, 0x06, 0x07, 0x08, 0x00


def frame(stream, opcode, body):
    return struct.pack(">BBhBI", 0x03, 0, stream, opcode, len(body)) + body


def string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def query(stream, cql):
    b = cql.encode()
    return frame(stream, QUERY, struct.pack(">I", len(b)) + b + struct.pack(">HB", 0x0001, 0))


def frames_of(message):
    """Splits one WebSocket message into whole CQL frames; fails on a partial frame."""
    out = []
    at = 0
    while at < len(message):
        assert len(message) - at >= 9, "partial frame header in a message"
        _version, _flags, stream, opcode, length = struct.unpack(">BBhBI", message[at:at + 9])
        assert len(message) - at - 9 >= length, "partial frame body in a message"
        out.append((stream, opcode, message[at + 9:at + 9 + length]))
        at += 9 + length
    return out


def first_text_cell(body):
    """The first cell of a Rows result of one varchar column, as text."""
    kind, flags, columns = struct.unpack(">iii", body[:12])
    assert kind == 2 and columns == 1, (kind, columns)
    at = 12
    if flags & 0x0001:  # global table spec: keyspace and table
        for _ in range(2):
            (n,) = struct.unpack(">H", body[at:at + 2])
            at += 2 + n
    (n,) = struct.unpack(">H", body[at:at + 2])  # column name
    at += 2 + n + 2  # and its type id (varchar)
    (rows,) = struct.unpack(">i", body[at:at + 4])
    assert rows >= 1
    (n,) = struct.unpack(">i", body[at + 4:at + 8])
    return body[at + 8:at + 8 + n].decode()


async def raw(port, ca):
    """The raw test runs on asyncio's client, which keeps a connection on one thread.

    The sync client of `websockets` reads in a thread of its own while the caller writes,
    and under TLS both enter one OpenSSL session at once, which OpenSSL does not allow: the
    TLS 1.3 session ticket the server sends after the handshake is read while the upgrade
    request is written, and about 1 upgrade in 1,000 is then never sent, or fails with
    "[SSL] internal error" (docs/testing.md, "WebSocket over TLS: a client-side race").
    """
    scheme = "wss" if ca else "ws"
    tls = ssl.create_default_context(cafile=ca) if ca else None
    url = "%s://127.0.0.1:%d/" % (scheme, port)

    def open_ws(subprotocols=("cql",), **options):
        return connect(url, subprotocols=list(subprotocols), ssl=tls, open_timeout=12, **options)

    ws = await open_ws(max_size=None)
    print("subprotocol=%s" % ws.subprotocol)
    responses = {}
    whole = True

    async def receive(streams):
        nonlocal whole
        while not streams.issubset(responses):
            message = await asyncio.wait_for(ws.recv(), 20)
            try:
                for stream, opcode, body in frames_of(message):
                    responses[stream] = (opcode, body)
            except AssertionError:
                whole = False
                raise

    await ws.send(frame(1, OPTIONS, b""))
    await receive({1})
    print("options=%s" % ("SUPPORTED" if responses[1][0] == SUPPORTED else responses[1][0]))
    await ws.send(frame(2, STARTUP, struct.pack(">H", 1) + string("CQL_VERSION") + string("3.0.0")))
    await receive({2})
    print("startup=%s" % ("READY" if responses[2][0] == READY else responses[2][0]))
    # Two frames in one message.
    await ws.send(
        query(3, "SELECT release_version FROM system.local") + query(4, "SELECT cluster_name FROM system.local")
    )
    await receive({3, 4})
    print("release_version=%s" % first_text_cell(responses[3][1]))
    print("two_in_one=%s" % (responses[4][0] == RESULT))
    # One frame over two messages.
    split = query(5, "SELECT release_version FROM system.local")
    await ws.send(split[:5])
    await ws.send(split[5:])
    await receive({5})
    print("split=%s" % (responses[5][0] == RESULT))
    # A CQL error comes back as a CQL ERROR frame, and the connection stays up.
    await ws.send(query(6, "SELECT * FROM no_such_keyspace.t"))
    await receive({6})
    print("cql_error=%s" % (responses[6][0] == ERROR))
    pong = await ws.ping(b"are you there")
    await asyncio.wait_for(pong, 10)
    print("pong=True")
    print("whole_frames=%s" % whole)
    # Text is not CQL: the proxy closes with 1003.
    await ws.send("SELECT 1")
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except ConnectionClosed as closed:
        print("text_close_code=%s" % (closed.rcvd.code if closed.rcvd else None))

    # A client that closes gets the closing handshake completed (code 1000, not 1006).
    polite = await open_ws()
    await polite.send(frame(1, OPTIONS, b""))
    await asyncio.wait_for(polite.recv(), 20)
    await polite.close()
    print("client_close_code=%s" % polite.close_code)

    # A client that wants some other subprotocol is refused at the upgrade.
    try:
        await open_ws(subprotocols=["chat"])
        print("other_subprotocol=accepted")
    except InvalidStatus as refused:
        print("other_subprotocol=%d" % refused.response.status_code)

    # A plain HTTP request that is no upgrade gets 400 (one thread: no race here).
    sock = socket.create_connection(("127.0.0.1", port), timeout=12)
    if tls:
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = sock.recv(4096)
    sock.close()
    print("plain_http=%s" % answer.split(b"\r\n")[0].decode())
    print("done")


def pump_tcp_to_ws(sock, ws):
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            ws.send(data)
    except (OSError, ConnectionClosed):
        pass
    ws.close()


def pump_ws_to_tcp(ws, sock):
    try:
        for message in ws:
            sock.sendall(message)
    except (OSError, ConnectionClosed):
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def bridge(port, workload):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    bridge_port = listener.getsockname()[1]

    def serve():
        while True:
            sock, _ = listener.accept()
            # Plain ws:// only: without TLS the sync client's reader thread and writer share no session.
            ws = connect_sync("ws://127.0.0.1:%d/" % port, subprotocols=["cql"], open_timeout=30, max_size=None)
            threading.Thread(target=pump_tcp_to_ws, args=(sock, ws), daemon=True).start()
            threading.Thread(target=pump_ws_to_tcp, args=(ws, sock), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    run = subprocess.run(
        [sys.executable, workload, "127.0.0.1", str(bridge_port), "3", "none"],
        capture_output=True, text=True, timeout=600,
    )
    sys.stdout.write(run.stdout)
    sys.stderr.write(run.stderr)
    sys.exit(run.returncode)


if sys.argv[1] == "raw":
    asyncio.run(raw(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
else:
    bridge(int(sys.argv[2]), sys.argv[3])
