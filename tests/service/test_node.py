"""The node's commit pipeline: dependent blocks in flight, refused blocks, failed stores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rekam.encoding import b64e
from rekam.ledger._errors import InvalidBlockError
from rekam.ledger.block import Block, cut_block
from rekam.ledger.tx import Transaction, make_tx, new_id
from rekam.service.node import Node, NotCommittedError
from rekam.service.ports import StoreError
from rekam.service.verify import verify_chain
from rekam.service.workspace import Actor, OrgSpec, Workspace

ORGS = (OrgSpec("klinik-a", "clinic", "Klinik A"), OrgSpec("klinik-b", "clinic", "Klinik B"))


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    # One transaction per block, so dependent transactions land in consecutive blocks that
    # are validated while the ones before them are still being stored.
    workspace = Workspace.create(tmp_path / "node", "node-net", ORGS, kdf="fast", block_max_txs=1)
    try:
        yield workspace
    finally:
        workspace.close()


def _cut(
    node: Node, org: Actor, height: int, prev: str, when: int, txs: list[Transaction]
) -> Block:
    """A block of ``txs`` cut by klinik-a at ``height`` on ``prev``."""
    return cut_block(node.network_id, height, prev, when, txs, "klinik-a", org.identity.signer)


def _enrol_and_register(ws: Workspace) -> list[Transaction]:
    """An enrolment, then a patient registration signed by the member just enrolled."""
    org = ws.actor("klinik-a")
    member_id = new_id("member")
    identity = ws.actor("klinik-b").identity  # any keys will do for this member
    now = ws.node.clock()
    enrol = make_tx(
        ws.node.network_id,
        "member.enrol",
        org.id,
        org.identity.signer,
        {
            "member": member_id,
            "org": "klinik-a",
            "role": "registrar",
            "sign_key": b64e(identity.sign_public),
            "enc_key": b64e(identity.enc_public),
            "valid_from": now - 1000,
            "valid_until": now + 86_400_000,
        },
        now,
    )
    register = make_tx(
        ws.node.network_id,
        "patient.register",
        member_id,
        identity.signer,
        {
            "patient": new_id("patient"),
            "home_org": "klinik-a",
            "sign_key": b64e(identity.sign_public),
            "enc_key": b64e(identity.enc_public),
        },
        now,
    )
    return [enrol, register]


def test_dependent_transactions_in_consecutive_blocks(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, org = ws.node, ws.actor("klinik-a")
    store = node.store
    real_append = store.append_block

    def slow_append(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.3)  # keeps block n in the store stage while block n+1 is validated
        real_append(*args, **kwargs)

    monkeypatch.setattr(store, "append_block", slow_append)
    enrol, register = _enrol_and_register(ws)
    head = node.head
    first = _cut(node, org, head.height + 1, head.hash, node.clock(), [enrol])
    second = _cut(node, org, first.height + 1, first.hash, first.time, [register])
    done = [node.deliver(first, [enrol]), node.deliver(second, [register])]
    results = [f.result(30).results[0] for f in done]
    assert [r.code for r in results] == ["ok", "ok"]
    assert node.head.height == second.height
    assert verify_chain(store, ws.genesis, node.blobs).ok


def test_a_refused_block_is_reported_and_the_node_goes_on(ws: Workspace) -> None:
    node = ws.node
    head = node.head
    org = ws.actor("klinik-a")
    stray = _cut(  # height + 5 does not extend the head
        node, org, head.height + 5, head.hash, node.clock(), _enrol_and_register(ws)[:1]
    )
    with pytest.raises(InvalidBlockError, match="expected height"):
        node.commit(stray, timeout=30)
    assert node.head == head
    results = [f.result(30) for f in node.submit_many(_enrol_and_register(ws))]
    assert all(r.valid for r in results)
    assert verify_chain(node.store, ws.genesis, node.blobs).ok


def test_a_delivered_block_has_its_merkle_root_checked(ws: Workspace) -> None:
    # Only blocks the node cuts itself skip the second root computation; a delivered one
    # (from a network's orderer, say) is checked in full.
    node = ws.node
    head = node.head
    org = ws.actor("klinik-a")
    enrol, register = _enrol_and_register(ws)
    good = _cut(node, org, head.height + 1, head.hash, node.clock(), [enrol])
    swapped = Block(good.header, good.signature, (register.raw,))
    with pytest.raises(InvalidBlockError, match="Merkle root does not match"):
        node.commit(swapped, timeout=30)
    assert node.head == head
    assert node.commit(good, timeout=30).results[0].valid
    assert verify_chain(node.store, ws.genesis, node.blobs).ok


def test_a_block_the_store_refuses_fails_its_waiters_and_later_blocks_recover(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ws.node.store
    real_append = store.append_block
    failures = {"left": 1}

    def flaky_append(*args: Any, **kwargs: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise StoreError("disk full (simulated)")
        real_append(*args, **kwargs)

    monkeypatch.setattr(store, "append_block", flaky_append)
    head = ws.node.head
    first, second = _enrol_and_register(ws)
    with pytest.raises(NotCommittedError):
        ws.node.submit_wait(first, timeout=30)
    assert ws.node.head == head
    # The second depends on the first, which never reached the chain: it is refused by rule
    # (or, if it was already in flight behind the failed block, not committed), never stored
    # on top of a block the store does not hold.
    try:
        outcome = ws.node.submit_wait(second, timeout=30)
    except NotCommittedError:
        outcome = None
    if outcome is not None:
        assert not outcome.valid
    # Submitting the first again works now, and the chain is whole.
    assert ws.node.submit_wait(first, timeout=30).valid
    assert verify_chain(store, ws.genesis, ws.node.blobs).ok


def test_signature_worker_processes_give_the_same_verdicts(tmp_path: Path) -> None:
    from rekam.service.bench import _signed_writes

    with Workspace.create(
        tmp_path / "procs", "procs-net", ORGS, kdf="fast", sig_processes=2
    ) as workspace:
        assert workspace.node.warm_up()
        org = workspace.actor("klinik-a")
        doctor_id = workspace.admin.enrol_member(org, "doctor", "pw-doctor").id
        doctor = workspace.actor(doctor_id, "pw-doctor")
        patient = workspace.admin.register_patient(org, "pw-patient")[0].id
        txs = _signed_writes(workspace, doctor, patient, 200)
        # One write claims the doctor but is signed with the organisation's key.
        forged = make_tx(
            workspace.node.network_id,
            "record.write",
            doctor.id,
            org.identity.signer,
            txs[7].body,
            txs[7].created + 1,
        )
        txs[7] = forged
        results = [f.result(60) for f in workspace.node.submit_many(txs)]
        assert [i for i, r in enumerate(results) if not r.valid] == [7]
        assert not results[7].authenticated
        assert workspace.node.signatures_in_workers >= 64
        assert verify_chain(workspace.node.store, workspace.genesis, workspace.node.blobs).ok
