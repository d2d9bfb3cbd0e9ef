"""Ordering through an etcd cluster: etcd's Raft decides the order, every node validates.

Keys live under ``/rekam/<first 16 hex digits of the network id>/``::

    pending/<tx id>        a submitted transaction's envelope bytes, until a block holds it
    head                   {"height", "hash", "time"} of the last block ordered
    block/<height, 12 digits>   a block's transport bytes, zlib-compressed (only a recent
                           window is kept)
    leader                 the organisation cutting blocks now, attached to its lease
    ckpt/<height>/<org>    an organisation's checkpoint signature (see rekam.service.network);
                           only those of the recent window are kept
    nodes/<org>            a node's peer address and head; dropped once the node's head is
                           older than the window (a running node registers again at once)

Safety does not come from the election. A block is written only by an etcd transaction that
compares ``head`` with the value the cutter built on, so exactly one block exists per height
even when two nodes believe they lead (etcd locks are not safe for mutual exclusion: Jepsen,
etcd 3.4.3). The lease-based election only decides who tries, so that a dead cutter is
replaced within about ``lease_ttl`` seconds.

Submitting is idempotent: a transaction is keyed by its id, so a retry after a timeout that
did (or did not) write rewrites the same key with the same bytes. The cutter drops pending
transactions the chain already holds, and the validator refuses duplicate ids anyway.

The client speaks etcd's documented v3 JSON gateway (``/v3/kv/range``, ``/v3/kv/txn``,
``/v3/lease/grant``, ...) over HTTP, which etcd 3.4 serves on its client port.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from rekam.crypto import Signer
from rekam.ledger._errors import LedgerError, MalformedError
from rekam.ledger.block import Block, cut_block
from rekam.ledger.tx import Transaction
from rekam.ordering._http import TRANSPORT_ERRORS, Connections

log = logging.getLogger(__name__)

# etcd refuses requests above 1.5 MiB by default. A block's transport form carries its
# transactions in base64 (4/3 of their size), and its etcd transaction also deletes every
# pending key, so blocks are cut at 768 KiB of transactions: about 1.1 MiB on the wire.
MAX_BLOCK_BYTES = 768 * 1024
# Enough operations for one block's put, the head, the window trim and every pending delete;
# etcd's default (--max-txn-ops 128) is too small and must be raised on every member.
MIN_TXN_OPS = 1100
# How many blocks the cutter may run ahead of its own node's commits.
PIPELINE = 2
# How many blocks the follower hands to its node before it waits for the oldest one: the
# signatures of the next blocks are checked while one is validated and another is written.
DELIVER_DEPTH = 4
# Blocks the follower reads from etcd in one request.
FOLLOW_BATCH = 16
# Pending keys the cutter reads at most in one request when it reads them itself, and the
# most its list keeps from the watch: under a backlog the rest stay in etcd (not in memory)
# and are read, oldest first, once the list has room.
PENDING_READ = 4000
# A block's value in etcd is its transport bytes compressed with zlib behind this marker (a
# block's canonical bytes start with "{", so both forms can be told apart). etcd's JSON
# gateway carries every value in base64, once for the write and once per node reading it;
# compressed, a block of record writes is about a quarter of its transport size or less.
BLOCK_ZLIB = b"z"
# The largest transport form a compressed block may expand to (a block is cut at
# MAX_BLOCK_BYTES of transactions; base64 and the header add about a third).
MAX_BLOCK_TRANSPORT = 4 * MAX_BLOCK_BYTES
# Submissions written together in one etcd transaction.
SUBMIT_BATCH = 256
# The cutter drops checkpoint signatures and node registrations older than the window every
# this many blocks (or every ``window`` blocks when the window is smaller).
TRIM_EVERY = 50
# With nothing to cut, the cutter reads the pending keys itself at most this often (seconds):
# the watch that feeds it may have stalled without a sign, and a read finds what it missed.
PENDING_RESYNC = 1.0


@dataclass(frozen=True)
class _Pending:
    """A pending key as the cutter knows it: decoded when it arrived, not when a block is cut."""

    key: bytes
    created: int  # etcd's create revision: the cutter takes the oldest first
    size: int
    tx: Transaction | None  # None: malformed, or not stored under its own id (never cut)


class EtcdError(Exception):
    """Root of errors talking to etcd."""


class EtcdUnavailable(EtcdError):
    """No etcd member answered in time: the cluster is down or has lost its quorum."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key after every key starting with ``prefix`` (etcd's range_end)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd returns it."""

    key: bytes
    value: bytes
    mod_revision: int
    lease: int


class EtcdClient:
    """A small synchronous client for etcd's v3 JSON gateway, failing over between members."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 2.0, first: int = 0) -> None:
        if not endpoints:
            raise EtcdError("no etcd endpoints given")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        # Where requests go until that member fails; nodes start at different members so that
        # the gateway work (JSON, base64) is spread over the cluster instead of one member.
        self._current = first % len(self.endpoints)
        self.first = self._current
        self._timeout = timeout
        self._http = Connections(timeout)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close connections."""
        self._http.close()

    def call(self, path: str, body: dict[str, Any], *, attempts: int | None = None) -> Any:
        """POST a gateway request, trying each member once; EtcdUnavailable if none answers."""
        tries = attempts or len(self.endpoints)
        last = "no member tried"
        payload = orjson.dumps(body)
        for _ in range(tries):
            with self._lock:
                endpoint = self.endpoints[self._current]
            try:
                status, answer = self._http.post(endpoint, path, payload)
            except TRANSPORT_ERRORS as exc:
                last = type(exc).__name__
            else:
                if status == 200:
                    try:
                        return orjson.loads(answer)
                    except orjson.JSONDecodeError:
                        last = "an answer that is not JSON"
                else:
                    # A member without a leader answers with an error ("no leader", "request
                    # timed out"): another member may still be in the majority.
                    last = f"HTTP {status}: {self._message(answer)}"
            with self._lock:
                if self.endpoints[self._current] == endpoint:
                    self._current = (self._current + 1) % len(self.endpoints)
        raise EtcdUnavailable(f"etcd did not answer ({last})")

    def stream(
        self, endpoint: str, path: str, body: dict[str, Any]
    ) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        """A streamed gateway request (a watch): a context manager over the answer's lines."""
        return self._http.stream(endpoint, path, orjson.dumps(body))

    @staticmethod
    def _message(answer: bytes) -> str:
        try:
            reply = orjson.loads(answer)
        except orjson.JSONDecodeError:
            return ""
        return str(reply.get("error", ""))[:200] if isinstance(reply, dict) else ""

    # -- key-value ------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Write a key; returns the revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        reply = self.call("/v3/kv/put", body)
        return int(reply["header"]["revision"])

    def get(self, key: bytes) -> KeyValue | None:
        """One key, or None."""
        kvs = self.range(key)
        return kvs[0] if kvs else None

    def range(
        self,
        key: bytes,
        end: bytes | None = None,
        *,
        limit: int = 0,
        by_create: bool = False,
        keys_only: bool = False,
        serializable: bool = False,
    ) -> list[KeyValue]:
        """Keys from ``key`` up to (excluding) ``end``; ordered by key or creation."""
        body: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            body["range_end"] = _b64(end)
        if limit:
            body["limit"] = str(limit)
        if by_create:
            body["sort_order"] = "ASCEND"
            body["sort_target"] = "CREATE"
        if keys_only:
            body["keys_only"] = True
        if serializable:
            body["serializable"] = True
        reply = self.call("/v3/kv/range", body)
        return [self._kv(kv) for kv in reply.get("kvs", [])]

    @staticmethod
    def _kv(kv: dict[str, Any]) -> KeyValue:
        return KeyValue(
            _unb64(kv["key"]),
            _unb64(kv.get("value", "")),
            int(kv.get("mod_revision", 0)),
            int(kv.get("lease", 0)),
        )

    def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
    ) -> tuple[bool, list[Any]]:
        """An atomic compare-and-then: (succeeded, responses)."""
        body = {"compare": compare, "success": success, "failure": failure or []}
        reply = self.call("/v3/kv/txn", body, attempts=1)
        return bool(reply.get("succeeded", False)), list(reply.get("responses", []))

    def revision(self) -> int:
        """The cluster's current revision."""
        reply = self.call("/v3/kv/range", {"key": _b64(b"\0"), "limit": "1"})
        return int(reply["header"]["revision"])

    def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (etcd keeps every old version until compacted)."""
        try:
            self.call("/v3/kv/compaction", {"revision": str(revision)}, attempts=1)
        except EtcdUnavailable as exc:
            # Compacting an already compacted revision is an error etcd reports; it is harmless.
            log.debug("compaction skipped: %s", exc)

    # -- leases ---------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        """A new lease that expires ``ttl`` seconds after its last keep-alive."""
        reply = self.call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(reply["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh a lease; returns its remaining TTL (0 when it has expired)."""
        reply = self.call("/v3/lease/keepalive", {"ID": str(lease)}, attempts=1)
        return int(reply.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """Give a lease up now (its keys go with it)."""
        self.call("/v3/lease/revoke", {"ID": str(lease)}, attempts=1)

    # -- cluster --------------------------------------------------------------------------

    def member_status(self) -> list[dict[str, Any]]:
        """Per endpoint: reachable, its raft term/index, whether it leads, db size."""
        out: list[dict[str, Any]] = []
        for endpoint in self.endpoints:
            try:
                status, answer = self._http.post(endpoint, "/v3/maintenance/status", b"{}")
                if status != 200:
                    raise ValueError(f"HTTP {status}")
                reply = orjson.loads(answer)
                out.append(
                    {
                        "endpoint": endpoint,
                        "up": True,
                        "leader": reply.get("leader") == reply["header"].get("member_id"),
                        "raft_index": int(reply.get("raftIndex", 0)),
                        "db_size": int(reply.get("dbSize", 0)),
                        "version": reply.get("version", ""),
                    }
                )
            except (*TRANSPORT_ERRORS, ValueError, KeyError):
                out.append({"endpoint": endpoint, "up": False})
        return out


def cmp_value(key: bytes, value: bytes) -> dict[str, Any]:
    """A txn comparison: the key holds exactly ``value``."""
    return {"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}


def cmp_absent(key: bytes) -> dict[str, Any]:
    """A txn comparison: the key does not exist."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def op_put(key: bytes, value: bytes, lease: int = 0) -> dict[str, Any]:
    """A txn operation writing a key."""
    put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def cmp_mod_revision(key: bytes, revision: int) -> dict[str, Any]:
    """A txn comparison: the key was last written at ``revision``."""
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def op_delete(key: bytes) -> dict[str, Any]:
    """A txn operation deleting a key."""
    return {"request_delete_range": {"key": _b64(key)}}


def op_delete_range(key: bytes, end: bytes) -> dict[str, Any]:
    """A txn operation deleting every key from ``key`` up to (excluding) ``end``."""
    return {"request_delete_range": {"key": _b64(key), "range_end": _b64(end)}}


def block_value(block: Block) -> bytes:
    """The value a block is stored under in etcd: its transport bytes, compressed."""
    return BLOCK_ZLIB + zlib.compress(block.to_bytes(), 1)


def block_from_value(value: bytes) -> Block:
    """The block stored in etcd under a value (compressed or plain transport bytes)."""
    if value.startswith(BLOCK_ZLIB):
        inflate = zlib.decompressobj()
        try:
            raw = inflate.decompress(value[len(BLOCK_ZLIB) :], MAX_BLOCK_TRANSPORT)
        except zlib.error:
            raise MalformedError("a block in etcd is not valid zlib data") from None
        if not inflate.eof or inflate.unconsumed_tail:
            raise MalformedError("a block in etcd is truncated or expands beyond the limit")
        value = raw
    return Block.from_bytes(value)


@dataclass(frozen=True)
class Head:
    """The chain head as recorded in etcd."""

    height: int
    hash: str
    time: int

    def to_bytes(self) -> bytes:
        """The exact bytes stored under ``head`` (compared byte for byte by the cutter)."""
        return json.dumps(
            {"hash": self.hash, "height": self.height, "time": self.time}, sort_keys=True
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Head:
        """Parse the ``head`` value."""
        doc = json.loads(raw)
        return cls(int(doc["height"]), str(doc["hash"]), int(doc["time"]))


class Chain(Protocol):
    """What the etcd orderer needs from the node it serves (implemented in rekam.service)."""

    def committed_head(self) -> Head:
        """The node's last committed block."""
        ...

    def block_hash(self, height: int) -> str | None:
        """The hash of the committed block at a height, or None."""
        ...

    def seen(self, tx_ids: Sequence[str]) -> set[str]:
        """Which of these transactions the committed chain already holds."""
        ...

    def commit(self, block: Block) -> None:
        """Validate and store the next block (raises when it is invalid)."""
        ...

    def deliver(self, block: Block, txs: list[Transaction] | None) -> Future[Any]:
        """Queue the next block for validation and storage without waiting for it.

        ``txs`` are the block's transactions already decoded (by this node's cutter), or None.
        The future resolves once the block is stored, or with the error that refused it.
        """
        ...

    def catch_up(self, height: int, until: int) -> bool:
        """Fetch blocks from ``height`` below ``until`` elsewhere (peers); True on progress."""
        ...

    def alarm(self, kind: str, height: int, detail: str) -> None:
        """Raise a loud alarm (split view, invalid block)."""
        ...


class Keys:
    """The etcd key layout of one network."""

    def __init__(self, network_id: str) -> None:
        self.root = f"/rekam/{network_id[:16]}/".encode()
        self.head = self.root + b"head"
        self.leader = self.root + b"leader"
        self.pending = self.root + b"pending/"
        self.blocks = self.root + b"block/"
        self.nodes = self.root + b"nodes/"
        self.checkpoints = self.root + b"ckpt/"

    def block(self, height: int) -> bytes:
        """The key of a block."""
        return self.blocks + b"%012d" % height

    def tx(self, tx_id: str) -> bytes:
        """The pending key of a transaction."""
        return self.pending + tx_id.encode()

    def checkpoint(self, height: int, org: str = "") -> bytes:
        """The key of an organisation's checkpoint signature (without org: the height's prefix,
        which sorts after every key of a lower height)."""
        return self.checkpoints + b"%012d/" % height + org.encode()


@dataclass
class _Slot:
    """One submission waiting for its batch to be written."""

    tx: Transaction
    done: threading.Event = field(default_factory=threading.Event)
    error: EtcdError | None = None


class EtcdOrderer:
    """Submit to etcd; follow the chain etcd orders; cut blocks while holding the lease."""

    def __init__(
        self,
        client: EtcdClient,
        network_id: str,
        chain: Chain,
        org: str,
        signer: Signer,
        *,
        clock: Callable[[], int],
        max_txs: int = 1000,
        max_wait: float = 0.03,
        window: int = 1000,
        lease_ttl: int = 2,
        poll: float = 0.2,
        submit_deadline: float = 5.0,
        cut_blocks: bool = True,
    ) -> None:
        self.client = client
        self.keys = Keys(network_id)
        self._network = network_id
        self._chain = chain
        self._org = org
        self._signer = signer
        self._clock = clock
        self._max_txs = max_txs
        self._max_wait = max_wait
        self._window = window
        self._ttl = lease_ttl
        self._poll = poll
        self._deadline = submit_deadline
        self._stop = threading.Event()
        self._lease = 0
        self._lease_renewed = 0.0
        self.leading = False
        self.halted: str | None = None  # set when a split view stops this node
        self.etcd_error: str | None = None
        self.blocks_cut = 0
        self._last_cut: Head | None = None
        self._head_checked = 0.0
        self._inflight: dict[int, set[str]] = {}
        # Blocks handed to the node and not stored yet (oldest first), and the last of them.
        self._delivering: deque[tuple[Block, Future[Any]]] = deque()
        self._delivered: Head | None = None
        # Transactions of the blocks this node cut, already decoded, by block hash.
        self._cut_txs: dict[str, list[Transaction]] = {}
        self._submit_queue: list[_Slot] = []
        self._submit_cond = threading.Condition()
        self._new_block = threading.Event()  # wakes the follower
        self._head_moved = threading.Event()  # set by the watch on ``head``
        self._last_read = 0.0
        self._new_pending = threading.Event()
        # The pending transactions as the cutter knows them, by key, decoded as the watch on
        # ``pending/`` reports them (off the cutter's critical path), plus what the cutter's own
        # reads of the pending keys find (at the start of every watch stream, and when it has
        # had nothing to cut for PENDING_RESYNC seconds).
        self._pending: dict[bytes, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._pending_synced = 0.0
        self._pending_overflow = False  # the watch reported keys the list had no room for
        # Wake-ups come from etcd watches. Followers watch ``head`` (rewritten with every
        # block, a few bytes) rather than the blocks, which the gateway would send to every
        # watcher in base64 JSON; only the node cutting blocks watches the pending keys, and
        # not their deletions (the blocks it writes delete them).
        self._threads = [
            threading.Thread(target=self._follow, name="rekam-etcd-follow"),
            threading.Thread(target=self._sender, name="rekam-etcd-submit"),
            threading.Thread(
                target=self._watch,
                args=({"key": _b64(self.keys.head)}, self._on_head_moved, None),
                name="rekam-watch",
            ),
        ]
        if cut_blocks:
            self._threads.append(threading.Thread(target=self._cutter, name="rekam-etcd-cut"))
            self._threads.append(threading.Thread(target=self._watch_pending, name="rekam-watch"))

    def start(self) -> None:
        """Start following (and, when allowed, campaigning to cut blocks).

        Separate from construction so the node can attach its block listeners first.
        """
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    # -- the Orderer port -----------------------------------------------------------------

    def submit(self, tx: Transaction) -> None:
        """Write the transaction under its id, then return; EtcdUnavailable past the deadline.

        Concurrent submissions share one etcd transaction (up to ``SUBMIT_BATCH`` puts), so
        many submitters cost one Raft round trip. A batch that times out is written again:
        the keys are the transactions' ids, so a retry can never make a second copy.
        """
        if self._stop.is_set():
            raise EtcdError("orderer is closed")
        slot = _Slot(tx)
        with self._submit_cond:
            self._submit_queue.append(slot)
            self._submit_cond.notify()
        if not slot.done.wait(self._deadline + 5):
            raise EtcdUnavailable("the ordering service did not answer in time")
        if slot.error is not None:
            raise slot.error

    def _sender(self) -> None:
        while True:
            with self._submit_cond:
                while not self._submit_queue and not self._stop.is_set():
                    self._submit_cond.wait(0.5)
                if not self._submit_queue and self._stop.is_set():
                    return
                batch = self._submit_queue[:SUBMIT_BATCH]
                del self._submit_queue[:SUBMIT_BATCH]
            error: EtcdError | None = None
            deadline = time.monotonic() + self._deadline
            # etcd refuses a transaction that names one key twice.
            unique = {s.tx.tx_id: s.tx.raw for s in batch}
            ops = [op_put(self.keys.tx(t), raw) for t, raw in unique.items()]
            while True:
                try:
                    self.client.txn([], ops)
                    break
                except EtcdUnavailable as exc:
                    if time.monotonic() >= deadline or self._stop.is_set():
                        error = EtcdUnavailable(
                            "the ordering service (etcd) has no reachable quorum; the "
                            "transaction may or may not be queued: submit it again later"
                        )
                        error.__cause__ = exc
                        break
                    time.sleep(0.1)
            for slot in batch:
                slot.error = error
                slot.done.set()

    def close(self) -> None:
        """Stop following and cutting; give the leadership up at once."""
        self._stop.set()
        with self._submit_cond:
            self._submit_cond.notify_all()
        for thread in self._threads:
            # A watch thread may sit in a read without a timeout; it is a daemon and ends
            # with the process or at its next event.
            if thread.is_alive() and thread.name != "rekam-watch":
                thread.join(timeout=10)
        if self._lease:
            with contextlib.suppress(EtcdError):  # it expires by itself anyway
                self.client.revoke(self._lease)
        self.client.close()

    # -- reading the ordered chain --------------------------------------------------------

    def etcd_head(self) -> Head | None:
        """The head recorded in etcd, or None before the first block."""
        kv = self.client.get(self.keys.head)
        return Head.from_bytes(kv.value) if kv else None

    def _follow(self) -> None:
        while not self._stop.is_set():
            # Cleared before reading, so a wake-up during the read is not lost.
            self._new_block.clear()
            try:
                progressed = self._follow_once()
                self.etcd_error = None
            except EtcdError as exc:
                self.etcd_error = str(exc)
                progressed = False
                self._stop.wait(0.2)
            except Exception:
                log.exception("following the chain failed")
                progressed = False
                self._stop.wait(0.2)
            if not progressed:
                self._new_block.wait(self._poll)

    def _on_head_moved(self) -> None:
        self._head_moved.set()
        self._new_block.set()

    def _watch(
        self,
        request: dict[str, Any],
        wake: Callable[[], None],
        active: Callable[[], bool] | None,
    ) -> None:
        """Call ``wake`` whenever a watched key changes (etcd's watch, streamed).

        Only a wake-up signal: the loops still read what changed themselves, and poll at
        ``poll`` seconds when the stream is down, so a lost watch costs latency, not safety.
        While ``active()`` is false no stream is kept open (a node that does not cut blocks
        needs no news of pending transactions).
        """
        index = 0
        body = {"create_request": request}
        while not self._stop.is_set():
            if active is not None and not active():
                self._stop.wait(0.1)
                continue
            try:
                with self._watch_stream(index, body) as lines:
                    for line in lines:
                        if self._stop.is_set():
                            return
                        if b'"events"' in line:
                            wake()
                        if active is not None and not active():
                            break
            except TRANSPORT_ERRORS:
                pass
            index += 1
            wake()  # the stream ended: let the loop read once, in case it missed a change
            if active is None or active():
                self._stop.wait(0.2)

    def _watch_stream(
        self, index: int, body: dict[str, Any]
    ) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        """The lines of a watch stream on the ``index``-th member after this node's first
        (each new stream moves on, so a dead member is left behind)."""
        endpoint = self.client.endpoints[(self.client.first + index) % len(self.client.endpoints)]
        return self.client.stream(endpoint, "/v3/watch", body)

    def _watch_pending(self) -> None:
        """While this node leads, keep the cutter's list of pending transactions current.

        Each stream starts with a read of the pending keys made after etcd created the watch,
        so nothing submitted before or after it is missed; the events then bring each new
        transaction's bytes, decoded here rather than when the cutter cuts a block. Deletions
        are not watched: the cutter drops what it cut, and what another cutter ordered is
        found in the chain before it could be cut again. The cutter reads the pending keys
        itself when it has had nothing to cut for a while, so a stalled stream costs latency,
        never a transaction.
        """
        index = 0
        request = {
            "key": _b64(self.keys.pending),
            "range_end": _b64(prefix_end(self.keys.pending)),
            "filters": ["NODELETE"],
        }
        body = {"create_request": request}
        while not self._stop.is_set():
            if not self.leading:
                with self._pending_lock:
                    self._pending.clear()
                self._stop.wait(0.1)
                continue
            try:
                with self._watch_stream(index, body) as lines:
                    synced = False
                    for line in lines:
                        if self._stop.is_set():
                            return
                        if not self.leading:
                            break
                        message = orjson.loads(line) if line.strip() else {}
                        result = message.get("result", {})
                        if "error" in message or result.get("canceled"):
                            break  # e.g. compacted away: start a new stream and read again
                        if not synced:
                            # The watch exists now: a read from here on misses nothing.
                            self._sync_pending()
                            synced = True
                        events = result.get("events") or []
                        if events:
                            self._add_pending(
                                ((_unb64(e["kv"]["key"]), e["kv"]) for e in events if "kv" in e),
                                room=PENDING_READ,
                            )
                            self._new_pending.set()
            except (*TRANSPORT_ERRORS, EtcdError, ValueError) as exc:
                log.debug("the watch on pending transactions ended: %s", exc)
            index += 1
            self._new_pending.set()
            if self.leading:
                self._stop.wait(0.2)

    def _add_pending(
        self, kvs: Iterable[tuple[bytes, dict[str, Any]]], room: int | None = None
    ) -> None:
        """Decode newly reported pending keys into the cutter's list (known keys are kept).

        With ``room``, keys beyond that many in the list are left in etcd and marked, so the
        cutter reads them once the list has room.
        """
        found: list[_Pending] = []
        with self._pending_lock:
            known = set(self._pending)
        for key, kv in kvs:
            if key in known:
                continue  # a retried submission: the same bytes under the same key
            if room is not None and len(known) + len(found) >= room:
                self._pending_overflow = True
                continue
            raw = _unb64(kv.get("value", ""))
            try:
                tx: Transaction | None = Transaction.decode(raw)
            except LedgerError:
                tx = None  # malformed bytes never reach a block
            if tx is not None and key != self.keys.tx(tx.tx_id):
                tx = None
            found.append(_Pending(key, int(kv.get("create_revision", 0)), len(raw), tx))
        if found:
            with self._pending_lock:
                for entry in found:
                    self._pending.setdefault(entry.key, entry)

    def _sync_pending(self) -> None:
        """Read the oldest pending keys from etcd into the cutter's list."""
        body: dict[str, Any] = {
            "key": _b64(self.keys.pending),
            "range_end": _b64(prefix_end(self.keys.pending)),
            "limit": str(PENDING_READ),
            "sort_order": "ASCEND",
            "sort_target": "CREATE",
            "serializable": True,
        }
        self._pending_synced = time.monotonic()
        self._pending_overflow = False
        reply = self.client.call("/v3/kv/range", body)
        self._add_pending((_unb64(kv["key"]), kv) for kv in reply.get("kvs", []))

    def _follow_once(self) -> bool:
        if self.halted:
            self._drain()
            return False
        if not self._reap(wait=False):
            return False
        local = self._chain.committed_head()
        tip = self._delivered if self._delivering and self._delivered else local
        start = tip.height + 1
        if (
            self._delivering
            and not self._head_moved.is_set()
            and time.monotonic() - self._last_read < self._poll
        ):
            return False  # woken by a stored block only: etcd has nothing new yet
        self._head_moved.clear()
        self._last_read = time.monotonic()
        # One request per poll: the next blocks, read from the member this client talks to
        # (serializable: no Raft round trip; a stale answer only delays, every block is
        # validated anyway).
        kvs = self.client.range(
            self.keys.block(start),
            prefix_end(self.keys.blocks),
            limit=FOLLOW_BATCH,
            serializable=True,
        )
        if kvs and kvs[0].key == self.keys.block(start):
            for kv in kvs:
                block = block_from_value(kv.value)
                if self._delivering and (block.height != tip.height + 1 or block.prev != tip.hash):
                    # Not the next block after those in flight: once they are stored, the
                    # node's head says where to read from. A block that does not follow the
                    # committed head is handed over and refused by validation, which reports it.
                    self._drain()
                    return True
                # Blocks n+1.. are decoded and their signatures checked while block n is
                # validated and written (the node's staged pipeline); wait only when
                # DELIVER_DEPTH blocks are in flight.
                while len(self._delivering) >= DELIVER_DEPTH:
                    if not self._reap(wait=True):
                        return False
                future = self._chain.deliver(block, self._cut_txs.pop(block.hash, None))
                self._delivering.append((block, future))
                tip = Head(block.height, block.hash, block.time)
                self._delivered = tip
                future.add_done_callback(lambda _f: self._new_block.set())
            # Read again at once only if the answer was cut short; otherwise the watch on
            # ``head`` (or a stored block, to take it off the list) wakes the loop.
            return len(kvs) == FOLLOW_BATCH
        if self._delivering:
            return False  # the watch (or a stored block) wakes the loop
        now = time.monotonic()
        if not kvs and now - self._head_checked < 1.0:
            return False
        # Once a second, or when the next block is missing but later ones exist: compare
        # with etcd's head (split view) or fetch what fell out of the window from peers.
        self._head_checked = now
        head = self.etcd_head()
        if head is None or head.height <= local.height:
            if head is not None:
                mine = self._chain.block_hash(head.height)
                if mine is not None and mine != head.hash:
                    self._split(head.height, "etcd's head differs from the block this node holds")
            return False
        oldest = self._oldest_in_window()
        return self._chain.catch_up(start, oldest if oldest is not None else head.height + 1)

    def _reap(self, *, wait: bool) -> bool:
        """Take stored blocks off the in-flight list (waiting for the oldest if ``wait``).

        False when a block was refused: it is reported, everything still in flight (built on
        it) is waited for, and following starts again from the node's committed head.
        """
        while self._delivering and (wait or self._delivering[0][1].done()):
            failed, future = self._delivering.popleft()
            wait = False
            try:
                future.result()
            except LedgerError as exc:
                self._chain.alarm("invalid_block", failed.height, type(exc).__name__)
            except Exception:
                log.exception("block %d was not committed", failed.height)
            else:
                # The cutter may be waiting for its own node to store the blocks it cut.
                self._new_pending.set()
                continue
            self._drain()
            self._stop.wait(0.5)
            return False
        return True

    def _drain(self) -> None:
        """Wait until every block handed to the node is stored or refused; forget them."""
        while self._delivering:
            _, future = self._delivering.popleft()
            with contextlib.suppress(Exception):  # refused blocks were built on a refused one
                future.result()
        self._delivered = None

    def _oldest_in_window(self) -> int | None:
        kvs = self.client.range(
            self.keys.blocks, prefix_end(self.keys.blocks), limit=1, keys_only=True
        )
        return int(kvs[0].key[len(self.keys.blocks) :]) if kvs else None

    def _split(self, height: int, detail: str) -> None:
        self.halted = f"split view at height {height}"
        self._chain.alarm("split_view", height, detail)

    # -- cutting blocks -------------------------------------------------------------------

    def _cutter(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._hold_lease():
                    self._stop.wait(self._ttl / 4)
                    continue
                started = time.monotonic()
                # Cleared before cutting, so news arriving during the cut is not lost.
                self._new_pending.clear()
                cut = self._cut_once()
                if (
                    cut == 0 or (self._pending_overflow and len(self._pending) < PENDING_READ // 2)
                ) and time.monotonic() - self._pending_synced >= PENDING_RESYNC:
                    self._sync_pending()
                    if cut == 0:
                        cut = self._cut_once()
                if cut == 0:
                    self._new_pending.wait(self._poll)
                elif cut < self._max_txs:
                    # A batch timeout, as Fabric's orderers have: under a steady trickle, wait
                    # so that the next block gathers more transactions, since every block costs
                    # each node a durable commit.
                    self._stop.wait(max(0.0, self._max_wait - (time.monotonic() - started)))
            except EtcdError as exc:
                self.leading = False
                self._last_cut = None
                self.etcd_error = str(exc)
                self._stop.wait(0.2)
            except Exception:
                self._last_cut = None
                log.exception("cutting a block failed")
                self._stop.wait(0.2)

    def _hold_lease(self) -> bool:
        """Campaign for, or keep, the cutter's lease; True while this node leads."""
        now = time.monotonic()
        if self.leading:
            if now - self._lease_renewed < self._ttl / 4:
                return True
            ttl = self.client.keepalive(self._lease)
            if ttl > 0:
                self._lease_renewed = now
                return True
            self.leading = False
            self._lease = 0
            self._last_cut = None
        if self.halted:
            return False
        # While another node leads, one read per round is all a campaign costs.
        holder = self.client.get(self.keys.leader)
        if holder is not None and (not self._lease or holder.lease != self._lease):
            return False
        if not self._lease:
            self._lease = self.client.grant(self._ttl)
            self._lease_renewed = now
        elif self.client.keepalive(self._lease) <= 0:
            self._lease = 0
            return False
        else:
            self._lease_renewed = now
        won, _ = self.client.txn(
            [cmp_absent(self.keys.leader)],
            [op_put(self.keys.leader, self._org.encode(), self._lease)],
        )
        if not won:
            # An earlier campaign may have won without this node hearing the answer (a timeout,
            # a member that died): the key is then held by this node's own lease.
            holder = self.client.get(self.keys.leader)
            won = holder is not None and holder.lease == self._lease
        if won:
            self.leading = True
            log.info("this node now cuts blocks")
        return won

    def _cut_once(self) -> int:
        """Cut one block from the oldest pending transactions; how many it holds (0: none)."""
        # After its own successful cut, the cutter knows the head it wrote; if another node
        # has written since, the compare-and-swap below fails and the head is read afresh.
        head = self._last_cut if self._last_cut is not None else self.etcd_head()
        local = self._chain.committed_head()
        if head is None:
            if local.height != 0:
                return 0  # etcd lost its keys but this chain has blocks: never restart it
            base = Head(0, local.hash, local.time)
        else:
            base = head
        # Cut only on top of a head this node has validated itself, or on top of the block it
        # cut last (built from validated parts; its own commit of it may still be running), so
        # that already ordered transactions can be dropped and the block links to a good block.
        own = self._last_cut == base and base.height - local.height <= PIPELINE
        if (local.height != base.height or local.hash != base.hash) and not own:
            return 0
        for height in [h for h in self._inflight if h <= local.height]:
            del self._inflight[height]
        if not own:
            self._inflight.clear()
        in_flight = set().union(*self._inflight.values()) if self._inflight else set()
        with self._pending_lock:
            oldest = sorted(self._pending.values(), key=lambda p: p.created)[: self._max_txs]
        if not oldest:
            return 0
        txs: list[Transaction] = []
        size = 0
        stale: list[bytes] = []
        for entry in oldest:
            if entry.tx is None:
                stale.append(entry.key)
                continue
            if size + entry.size > MAX_BLOCK_BYTES and txs:
                break
            size += entry.size
            txs.append(entry.tx)
        done = self._chain.seen([tx.tx_id for tx in txs]) | {
            tx.tx_id for tx in txs if tx.tx_id in in_flight
        }
        stale.extend(self.keys.tx(t) for t in done)
        fresh = [tx for tx in txs if tx.tx_id not in done]
        ops = [op_delete(k) for k in stale]
        compare = [
            cmp_value(self.keys.head, head.to_bytes()) if head else cmp_absent(self.keys.head)
        ]
        if not fresh:
            if ops:
                self.client.txn(compare, ops)
                self._forget_pending(stale)
            return 0
        block = cut_block(
            self._network,
            base.height + 1,
            base.hash,
            max(self._clock(), base.time),
            fresh,
            self._org,
            self._signer,
        )
        new_head = Head(block.height, block.hash, block.time)
        ops += [op_delete(self.keys.tx(tx.tx_id)) for tx in fresh]
        ops += [
            op_put(self.keys.block(block.height), block_value(block)),
            op_put(self.keys.head, new_head.to_bytes()),
        ]
        if block.height > self._window:
            ops.append(op_delete(self.keys.block(block.height - self._window)))
        try:
            ok, _ = self.client.txn(compare, ops)
        except EtcdError:
            self._last_cut = None  # the outcome is unknown: read the head next time
            raise
        if not ok:
            self._last_cut = None
        if ok:
            self._forget_pending(stale + [self.keys.tx(tx.tx_id) for tx in fresh])
            self.blocks_cut += 1
            self._last_cut = new_head
            # This node's follower hands them to its node with the block: decoded once.
            self._cut_txs[block.hash] = fresh
            for stale_hash in list(self._cut_txs)[: max(0, len(self._cut_txs) - 8)]:
                self._cut_txs.pop(stale_hash, None)  # the follower may have taken it
            self._inflight[block.height] = {tx.tx_id for tx in fresh}
            if block.height % max(1, min(TRIM_EVERY, self._window)) == 0:
                try:
                    self._trim(block.height)
                except EtcdError as exc:
                    log.info("trimming etcd's old keys failed (next time): %s", exc)
            if block.height % 500 == 0:
                # etcd keeps every overwritten value until compacted; keep a margin of history
                # so watchers and slow readers are not cut off.
                self.client.compact(max(1, self.client.revision() - 10_000))
        return len(fresh) if ok else 0

    def _forget_pending(self, keys: Iterable[bytes]) -> None:
        with self._pending_lock:
            for key in keys:
                self._pending.pop(key, None)

    def _trim(self, height: int) -> None:
        """Drop checkpoint signatures and node registrations older than the window.

        etcd is not the archive: nodes store the cosigned checkpoints they checked, and a node
        whose registration goes registers again within a second while it runs (a node down for
        longer than the window drops out of ``rekam network status`` until it is back).
        """
        floor = height - self._window
        if floor <= 0:
            return
        self.client.txn([], [op_delete_range(self.keys.checkpoints, self.keys.checkpoint(floor))])
        for kv in self.client.range(self.keys.nodes, prefix_end(self.keys.nodes)):
            try:
                registered = int(json.loads(kv.value)["height"])
            except (ValueError, KeyError, TypeError):
                registered = -1  # unreadable: it helps no one
            if registered < floor:
                # Only if the node has not registered again since it was read.
                self.client.txn([cmp_mod_revision(kv.key, kv.mod_revision)], [op_delete(kv.key)])
