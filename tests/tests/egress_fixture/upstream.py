"""Test upstreams for tests/tests/egress.rs, run inside their own network namespace:
a DNS server (the daemon's upstream resolver), a plain HTTP server and an HTTPS server
(self-signed certificate made by the test) serving one directory (a file, a pip simple
index, a git repository over git's dumb HTTP protocol), and an SSH version line on 22. Usage: upstream.py ADDR WWW CERT KEY"""

import http.server
import socket
import socketserver
import ssl
import struct
import sys
import threading

ADDR, WWW, CERT, KEY = sys.argv[1:5]

# Name -> address the upstream DNS answers (the rest: NXDOMAIN).
NAMES = {
    "web.test": ADDR,
    "other.test": ADDR,
    "alpha.test": ADDR,
    "beta.test": ADDR,
    "rebind.test": "127.0.0.1",
    "meta.test": "169.254.169.254",
}


def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ADDR, 53))
    while True:
        q, peer = s.recvfrom(1500)
        if len(q) < 12:
            continue
        i, labels = 12, []
        while i < len(q) and q[i] != 0:
            n = q[i]
            labels.append(q[i + 1:i + 1 + n].decode("ascii", "replace").lower())
            i += 1 + n
        qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
        question = q[12:i + 5]
        name = ".".join(labels)
        addr = NAMES.get(name)
        if addr is None:
            hdr = q[:2] + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0)
            s.sendto(hdr + question, peer)
            continue
        if qtype != 1:
            s.sendto(q[:2] + struct.pack("!HHHHH", 0x8180, 1, 0, 0, 0) + question, peer)
            continue
        ans = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(addr)
        s.sendto(q[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + question + ans, peer)


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=WWW, **kw)

    def log_message(self, *a):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True


def serve(port, tls):
    httpd = Server((ADDR, port), Handler)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(CERT, KEY)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    httpd.serve_forever()


def ssh_banner():
    """Port 22: an SSH server's version line, then whatever the client sends is read and
    dropped until it closes or sends its own version line (what `ssh -v` shows proves the
    connection reached here)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ADDR, 22))
    s.listen(64)

    def one(c):
        with c:
            c.sendall(b"SSH-2.0-agentd-test-upstream\r\n")
            # A real ssh client (its version line) is answered by a close: this server does
            # no key exchange, and the client would wait for one. Anything else is drained.
            while True:
                b = c.recv(4096)
                if not b or b.startswith(b"SSH-"):
                    return

    while True:
        c, _ = s.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


threading.Thread(target=dns, daemon=True).start()
threading.Thread(target=ssh_banner, daemon=True).start()
threading.Thread(target=serve, args=(443, True), daemon=True).start()
print("ready", flush=True)
serve(80, False)
