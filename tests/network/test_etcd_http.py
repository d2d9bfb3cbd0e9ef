"""The orderer's HTTP connections to etcd: kept alive, per thread, retried once when stale.

A real HTTP/1.1 server on a loopback port stands in for an etcd member's gateway, so that
what the server sees (connections, requests) can be counted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rekam.ordering._http import TRANSPORT_ERRORS, Connections
from rekam.ordering.etcd import EtcdClient, EtcdUnavailable


class _Gateway(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as etcd's gateway
    connections = 0
    requests = 0

    def setup(self) -> None:
        super().setup()
        type(self).connections += 1

    def do_POST(self) -> None:
        type(self).requests += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/watch":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in (b'{"result":{}}\n', b'{"result":{"events":[1]}}\n'):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.write(b"0\r\n\r\n")
            return
        status = 500 if self.path == "/fail" else 200
        answer = b'{"error":"no leader"}' if status == 500 else b'{"echo":' + body + b"}"
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        if self.path == "/then-close":
            # Close without saying so: the client's kept-alive connection goes stale.
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[str]:
    _Gateway.connections = _Gateway.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_requests_reuse_one_connection_per_thread(gateway: str) -> None:
    conns = Connections(2.0)
    try:
        for i in range(5):
            assert conns.post(gateway, "/x", b'{"n":%d}' % i) == (200, b'{"echo":{"n":%d}}' % i)
        assert _Gateway.connections == 1
        other = threading.Thread(target=conns.post, args=(gateway, "/x", b"{}"))
        other.start()
        other.join()
        assert _Gateway.connections == 2  # threads never share a connection
    finally:
        conns.close()


def test_a_connection_the_server_closed_is_replaced_once(gateway: str) -> None:
    conns = Connections(2.0)
    try:
        assert conns.post(gateway, "/then-close", b"{}")[0] == 200
        assert conns.post(gateway, "/x", b"{}")[0] == 200  # stale: retried on a new one
        assert _Gateway.connections == 2
        assert _Gateway.requests == 2
    finally:
        conns.close()


def test_a_member_that_is_gone_raises_a_transport_error() -> None:
    conns = Connections(0.5)
    with pytest.raises(TRANSPORT_ERRORS):
        conns.post("http://127.0.0.1:9", "/x", b"{}")  # the discard port: nothing listens


def test_stream_yields_lines_as_they_come(gateway: str) -> None:
    conns = Connections(2.0)
    with conns.stream(gateway, "/watch", b"{}") as lines:
        assert list(lines) == [b'{"result":{}}\n', b'{"result":{"events":[1]}}\n']


def test_client_fails_over_and_reports_errors(gateway: str) -> None:
    client = EtcdClient(["http://127.0.0.1:9", gateway])
    try:
        assert client.call("/x", {"k": "v"}) == {"echo": {"k": "v"}}
        with pytest.raises(EtcdUnavailable, match="no leader"):
            client.call("/fail", {}, attempts=1)
    finally:
        client.close()
