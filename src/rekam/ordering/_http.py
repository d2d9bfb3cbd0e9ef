"""Keep-alive HTTP/1.1 to etcd's JSON gateway through the standard library's ``http.client``.

Every block, submission and campaign is a request to etcd, several hundred a second under
load. ``httpx`` spent about 600 us of CPU on each small request here (its HTTP/1.1 parser is
pure Python), ``http.client`` about 170 us for the same request and answer (measured on the
development machine with one local member; see docs/benchmarks.md). On a machine that runs
the nodes and the etcd members together, that CPU is the latency of every other write.

Connections are per thread and member: ``http.client`` connections are not thread-safe, and
the orderer's threads (cutter, follower, submitter, status) each keep their own.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

# What a failed exchange raises: refused or reset connections and timeouts are OSErrors,
# malformed or missing answers HTTPExceptions.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)
# A kept-alive connection the member closed while it was idle fails on its next use before
# the member read anything; one retry on a fresh connection then reaches the member.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_HEADERS = {"Content-Type": "application/json"}


def _connect(endpoint: str, timeout: float | None) -> http.client.HTTPConnection:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
    if parts.scheme == "https":
        return http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


class Connections:
    """Keep-alive connections to etcd members, one per calling thread and member."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()  # for close(), from any thread
        self._closed = False

    def post(self, endpoint: str, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` (JSON) and read the whole answer: (status, body).

        Raises one of ``TRANSPORT_ERRORS`` when no answer came.
        """
        mine: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("c", {})
        conn = mine.get(endpoint)
        reused = conn is not None
        if conn is None:
            conn = mine[endpoint] = self._new(endpoint)
        try:
            return self._exchange(conn, path, body)
        except _STALE:
            if not reused:
                self._drop(mine, endpoint, conn)
                raise
        except TRANSPORT_ERRORS:
            self._drop(mine, endpoint, conn)
            raise
        conn.close()  # reconnects on the next request
        try:
            return self._exchange(conn, path, body)
        except TRANSPORT_ERRORS:
            self._drop(mine, endpoint, conn)
            raise

    @contextlib.contextmanager
    def stream(self, endpoint: str, path: str, body: bytes) -> Iterator[Iterator[bytes]]:
        """POST ``body`` and yield the answer's lines as they arrive (a watch stream).

        The connection is its own and is closed afterwards. Connecting and the answer's
        headers are bounded by the timeout; the lines are not (a watch is quiet until
        something changes).
        """
        conn = _connect(endpoint, self._timeout)
        try:
            conn.request("POST", path, body, _HEADERS)
            response = conn.getresponse()
            if response.status != 200:
                raise http.client.HTTPException(f"HTTP {response.status}")
            if conn.sock is not None:
                conn.sock.settimeout(None)
            yield iter(response.readline, b"")
        finally:
            conn.close()

    def close(self) -> None:
        """Close every connection this object opened, on whichever thread."""
        with self._lock:
            self._closed = True
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()

    @staticmethod
    def _exchange(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
        conn.request("POST", path, body, _HEADERS)
        response = conn.getresponse()
        return response.status, response.read()  # read to the end: the connection is reused

    def _new(self, endpoint: str) -> http.client.HTTPConnection:
        conn = _connect(endpoint, self._timeout)
        with self._lock:
            if not self._closed:
                self._open.add(conn)
        return conn

    def _drop(
        self,
        mine: dict[str, http.client.HTTPConnection],
        endpoint: str,
        conn: http.client.HTTPConnection,
    ) -> None:
        conn.close()
        if mine.get(endpoint) is conn:
            del mine[endpoint]
        with self._lock:
            self._open.discard(conn)
