"""A peer the policy tests run as another uid: connects once to the socket
given as argv[1], then sends each JSON line read from stdin as a varlink
call and prints each reply as a JSON line. It keeps the one connection
until stdin ends, so tests can see a connection outlive a policy reload."""

import json
import socket
import sys

conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
print(json.dumps({"connected": True}), flush=True)
buf = b""
for line in sys.stdin:
    conn.sendall(json.dumps(json.loads(line)).encode() + b"\0")
    while b"\0" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            print(json.dumps({"closed": True}), flush=True)
            sys.exit(1)
        buf += chunk
    frame, _, buf = buf.partition(b"\0")
    print(frame.decode(), flush=True)
