"""Block validation: state + block -> per-transaction validity and the state writes.

This is the function every node runs on every block. It is pure apart from reading state
through a ``StateReader``: the block's own time is the only clock, transactions are applied
in block order, and the same bytes give the same result everywhere. Signatures are checked
in parallel first (they need no state), the rules then run one transaction at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from rekam.crypto import verify_many, verify_signature
from rekam.encoding import b64d
from rekam.ledger._errors import InvalidBlockError, MalformedError
from rekam.ledger.block import ZERO_HASH, Block, Genesis, check_header, genesis_block, tx_root
from rekam.ledger.rules import Context, Reject, add_state_keys, apply_rule, authenticate
from rekam.ledger.state import Delta, MemoryState, Overlay, StateReader, is_prefetching
from rekam.ledger.tx import Transaction


@dataclass(frozen=True)
class ChainHead:
    """The last block a node holds: what the next block must link to."""

    height: int
    hash: str
    time: int


class TxResult(NamedTuple):
    """The outcome of one transaction in a block."""

    tx_id: str
    tx_type: str
    valid: bool
    code: str
    # Whether the signatures verified against the signers' keys on record: only then does
    # the transaction take its id (see apply_block), so nodes must agree on this flag too.
    authenticated: bool = True


@dataclass
class BlockResult:
    """What applying a block does: a result per transaction and the rows it writes."""

    results: list[TxResult]
    delta: Delta
    txs: list[Transaction | None] = field(default_factory=list)


def genesis_delta(genesis: Genesis) -> Delta:
    """The state the genesis block creates: the founding organisations."""
    delta = Delta()
    for org in genesis.orgs:
        delta.put(
            "org",
            org["org"],
            {
                "kind": org["kind"],
                "sign_key": org["sign_key"],
                "enc_key": org["enc_key"],
                "active": True,
                "since": 0,
            },
        )
    return delta


def check_block(
    st: StateReader, genesis: Genesis, head: ChainHead, block: Block, *, own_root: bool = False
) -> None:
    """Raise InvalidBlockError unless the block may extend ``head`` (link, root, signature).

    ``own_root``: the caller computed the header's Merkle root from ``block.txs`` itself (it
    cut the block), so the root is not computed a second time. Every other check still runs;
    a block from anywhere else must be checked with the default, False.
    """
    try:
        check_header(block.header)
    except MalformedError as exc:
        raise InvalidBlockError(str(exc)) from None
    if block.header["network"] != genesis.network_id:
        raise InvalidBlockError(f"block {block.height}: wrong network")
    if block.height != head.height + 1:
        raise InvalidBlockError(f"block {block.height}: expected height {head.height + 1}")
    if block.prev != head.hash or block.prev == ZERO_HASH:
        raise InvalidBlockError(f"block {block.height}: previous hash does not match the chain")
    if block.time < head.time:
        raise InvalidBlockError(f"block {block.height}: time goes backwards")
    if block.header["tx_count"] != len(block.txs) or not block.txs:
        raise InvalidBlockError(f"block {block.height}: tx_count does not match")
    if len(block.txs) > genesis.policy["max_block_txs"]:
        raise InvalidBlockError(f"block {block.height}: too many transactions")
    if not own_root and tx_root(block.txs) != block.header["tx_root"]:
        raise InvalidBlockError(f"block {block.height}: Merkle root does not match")
    if block.orderer not in genesis.orderers:
        raise InvalidBlockError(f"block {block.height}: {block.orderer} is not an orderer")
    org = st.get("org", block.orderer)
    if org is None or not org["active"]:
        raise InvalidBlockError(f"block {block.height}: orderer is not active")
    if not verify_signature(b64d(org["sign_key"]), block.signed_message(), block.signature):
        raise InvalidBlockError(f"block {block.height}: orderer signature does not verify")


def decode_all(raw_txs: Sequence[bytes]) -> list[Transaction | None]:
    """Decode each envelope; None where the bytes are malformed."""
    out: list[Transaction | None] = []
    for raw in raw_txs:
        try:
            out.append(Transaction.decode(raw))
        except MalformedError:
            out.append(None)
    return out


def check_signatures(
    txs: Sequence[Transaction | None],
    workers: int | None = None,
    verify: Callable[[Sequence[tuple[bytes, bytes, bytes]]], list[bool]] | None = None,
) -> list[tuple[bool, ...]]:
    """Verify every signature of every transaction; per-transaction tuples.

    In parallel on the shared verification threads, or on ``workers`` threads (1: the
    calling thread only, as a worker process wants), or with ``verify`` (which must apply
    ``verify_signature`` to each (key, message, signature) item, e.g. in worker processes).
    """
    items: list[tuple[bytes, bytes, bytes]] = []
    for tx in txs:
        if tx is not None:
            message = tx.signed_message
            items += [(s.key, message, s.sig) for s in tx.signatures]
    verdicts = verify_many(items, workers) if verify is None else verify(items)
    out: list[tuple[bool, ...]] = []
    done = 0
    for tx in txs:
        count = 0 if tx is None else len(tx.signatures)
        out.append(tuple(verdicts[done : done + count]))
        done += count
    if done != len(verdicts):
        raise ValueError("a verdict for every signature, no more, no fewer")
    return out


def apply_block(
    st: StateReader,
    genesis: Genesis,
    head: ChainHead,
    block: Block,
    org_ids: Iterable[str],
    *,
    txs: Iterable[Transaction | None] | None = None,
    sig_ok: Iterable[tuple[bool, ...]] | None = None,
    own_root: bool = False,
) -> BlockResult:
    """Validate a block against state and return each transaction's result and the writes.

    ``txs`` and ``sig_ok`` may be passed when already computed (a verifier decodes and checks
    signatures of many blocks in parallel); they must be exactly what ``decode_all`` and
    ``check_signatures`` return for this block. They are taken one transaction at a time, so
    they may be iterators that wait for each (a verifier applies the first transactions of a
    block while its workers still check the last). ``own_root`` is ``check_block``'s: only for
    a block the caller cut itself.
    """
    check_block(st, genesis, head, block, own_root=own_root)
    decoded: Iterable[Transaction | None] = txs if txs is not None else []
    sigs: Iterable[tuple[bool, ...]] = sig_ok if sig_ok is not None else []
    if txs is None or sig_ok is None or is_prefetching(st):
        # Checking signatures here, or prefetching state, needs every transaction first.
        listed = decode_all(block.txs) if txs is None else list(txs)
        if sig_ok is None:
            sigs = check_signatures(listed)
        if is_prefetching(st):
            wanted: dict[str, set[str]] = {}
            for tx in listed:
                if tx is not None:
                    add_state_keys(tx, wanted)
            st.prefetch(wanted, [tx.tx_id for tx in listed if tx is not None])
        decoded = listed
    ctx = Context(block.height, block.time, genesis.policy, tuple(genesis.orderers))
    delta = Delta()
    view = Overlay(st, delta)
    orgs = list(org_ids)
    results: list[TxResult] = []
    policy = genesis.policy
    network_id = genesis.network_id
    block_time = block.time
    latest = block_time + policy["max_future_ms"]
    earliest = block_time - policy["max_tx_age_ms"]
    taken: list[Transaction | None] = []
    for raw, tx, ok in zip(block.txs, decoded, sigs, strict=True):
        taken.append(tx)
        if tx is None:
            results.append(TxResult(hashlib.sha256(raw).hexdigest(), "", False, "malformed", False))
            continue
        code = "ok"
        authenticated = False
        try:
            if tx.network != network_id:
                raise Reject("wrong_network")
            if view.tx_seen(tx.tx_id):
                raise Reject("duplicate")
            created = tx.created
            if created > latest:
                raise Reject("from_the_future")
            if created < earliest:
                raise Reject("too_old")
            signers = authenticate(view, tx, ok, block_time)
            authenticated = True
            writes = apply_rule(view, ctx, tx, signers, orgs)
        except Reject as rejected:
            code = rejected.code
            # A refusal for want of co-signatures leaves the id free: the organisations may
            # gather more signatures and submit the same transaction again.
            if code == "quorum":
                authenticated = False
        else:
            for table, key, row in writes:
                delta.put(table, key, row)
                if table == "org" and key not in orgs:
                    orgs.append(key)
        # An authenticated transaction's id is taken even when a rule refused it, so the same
        # signed bytes can never be replayed later. An unauthenticated copy takes nothing:
        # otherwise anyone could burn a genuine transaction's id with a forged signature.
        if authenticated:
            delta.tx_ids.add(tx.tx_id)
        results.append(TxResult(tx.tx_id, tx.type, code == "ok", code, authenticated))
    return BlockResult(results, delta, taken)


def replay(
    genesis: Genesis,
    blocks: Iterable[Block],
    *,
    prepared: Mapping[int, tuple[list[Transaction | None], list[tuple[bool, ...]]]] | None = None,
) -> tuple[MemoryState, ChainHead, list[BlockResult]]:
    """Recompute state from genesis over blocks 1..n; raises InvalidBlockError at a bad block."""
    state = MemoryState()
    g = genesis_block(genesis)
    state.apply(genesis_delta(genesis), [hashlib.sha256(genesis.to_bytes()).hexdigest()])
    head = ChainHead(0, g.hash, g.time)
    results: list[BlockResult] = []
    for block in blocks:
        pre = prepared.get(block.height) if prepared is not None else None
        result = apply_block(
            state,
            genesis,
            head,
            block,
            state.tables["org"].keys(),
            txs=pre[0] if pre else None,
            sig_ok=pre[1] if pre else None,
        )
        state.apply(result.delta, result.delta.tx_ids)
        head = ChainHead(block.height, block.hash, block.time)
        results.append(result)
    return state, head, results


__all__ = [
    "BlockResult",
    "ChainHead",
    "TxResult",
    "apply_block",
    "check_block",
    "check_signatures",
    "decode_all",
    "genesis_delta",
    "replay",
]
