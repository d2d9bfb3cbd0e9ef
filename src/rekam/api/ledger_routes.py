"""The ledger API under ``/api``: status, blocks, transactions, checkpoints, receipts, history.

The chain holds pseudonymous ids, codes and hashes only, so blocks and transactions are
shown to any authenticated caller; a patient's access history only to the patient, their
home organisation's staff or a current grantee.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rekam.api.outcome import ApiError, fhir_response
from rekam.ledger.block import Checkpoint
from rekam.ledger.tx import Transaction
from rekam.service.errors import AccessDenied
from rekam.service.proofs import ReceiptError, build_receipt, make_checkpoint

if TYPE_CHECKING:
    from rekam.api.app import ApiContext


def _json(body: Any, status: int = 200) -> Response:
    response = fhir_response(body, status)
    response.headers["content-type"] = "application/json"
    return response


def build_ledger_router(ctx: ApiContext) -> APIRouter:
    """The ``/api`` routes bound to one API context."""
    router = APIRouter(prefix="/api", tags=["ledger"])
    ws = ctx.ws

    @router.get("/status", summary="Network id and chain head")
    async def status() -> Response:
        head = ws.node.head
        return _json(
            {
                "network": ws.node.network_id,
                "name": ws.genesis.doc["name"],
                "height": head.height,
                "head": head.hash,
                "time": head.time,
                "local_orgs": sorted(ws.org_identities),
            }
        )

    @router.get("/blocks/{height}", summary="A block header and its transactions' results")
    async def block(request: Request, height: int) -> Response:
        await ctx.authenticate(request)

        def run() -> dict[str, Any]:
            found = ws.node.store.get_block(height) if 0 <= height <= 2**53 else None
            if found is None:
                raise ApiError(404, "not-found", "no block at this height")
            txs = ws.node.store.block_txs(height)
            return {
                "header": dict(found.header),
                "txs": [
                    {"tx": t.tx_id, "type": t.tx_type, "valid": t.valid, "code": t.code}
                    for t in txs
                ],
            }

        return _json(await ctx.call(run))

    @router.get("/transactions/{tx_id}", summary="A committed transaction")
    async def transaction(request: Request, tx_id: str) -> Response:
        await ctx.authenticate(request)

        def run() -> dict[str, Any]:
            stored = ws.node.store.get_tx(tx_id) if len(tx_id) <= 128 else None
            if stored is None:
                raise ApiError(404, "not-found", "no such transaction")
            tx = Transaction.decode(stored.raw)
            return {
                "tx": stored.tx_id,
                "height": stored.height,
                "index": stored.index,
                "valid": stored.valid,
                "code": stored.code,
                "type": tx.type,
                "signer": tx.signer,
                "created": tx.created,
                "body": dict(tx.body),
            }

        return _json(await ctx.call(run))

    def _checkpoint() -> Checkpoint:
        """The latest checkpoint if it covers the head, else a new one cosigned locally."""
        latest = ws.node.store.latest_checkpoint()
        if latest is not None and int(latest.body["height"]) == ws.node.head.height:
            return latest
        signers = {o: i.signer for o, i in ws.org_identities.items()}
        return make_checkpoint(ws.node.store, ws.node.network_id, signers)

    @router.get("/checkpoints/latest", summary="The latest cosigned checkpoint")
    async def checkpoint(request: Request) -> Response:
        await ctx.authenticate(request)
        latest = await ctx.call(ws.node.store.latest_checkpoint)
        if latest is None:
            raise ApiError(404, "not-found", "no checkpoint yet")
        return _json(latest.to_json())

    @router.post("/checkpoints", summary="Cosign a checkpoint of the head by local orgs")
    async def new_checkpoint(request: Request) -> Response:
        await ctx.authenticate(request)
        made = await ctx.call(_checkpoint)
        return _json(made.to_json(), 201)

    @router.get("/receipts/{tx_id}", summary="Inclusion receipt of a transaction")
    async def receipt(request: Request, tx_id: str) -> Response:
        await ctx.authenticate(request)

        def run() -> dict[str, Any]:
            if len(tx_id) > 128 or ws.node.store.get_tx(tx_id) is None:
                raise ApiError(404, "not-found", "no such transaction")
            try:
                return build_receipt(ws.node.store, tx_id, _checkpoint())
            except ReceiptError:
                raise ApiError(409, "conflict", "no checkpoint covers this transaction") from None

        return _json(await ctx.call(run))

    @router.get("/patients/{patient_id}/access-history", summary="A patient's access history")
    async def access_history(request: Request, patient_id: str) -> Response:
        _, actor = await ctx.authenticate(request)

        def run() -> list[dict[str, Any]]:
            if not ctx.fhir.may_see_patient_metadata(actor, patient_id):
                raise AccessDenied("only the patient, their home organisation or a grantee")
            return [e.to_json() | {"label": e.label} for e in ws.audit.history(patient_id)]

        return _json(await ctx.call(run))

    return router
