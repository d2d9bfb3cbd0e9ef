"""``rekam bench api``: FHIR create and read requests per second through the API, in process.

The requests go through the whole stack (HTTP routing, token check, FHIR validation,
encryption, signing, commit; for reads the access event's commit and decryption) over an
in-process ASGI transport (httpx), so no socket cost is counted: first from one client, one
request at a time, then from several clients at once (whose transactions share blocks).
The core's commit rate for pre-signed writes is measured in the same run as the baseline.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from rekam.api.app import ApiConfig, create_app
from rekam.service.bench import bench_commit
from rekam.service.tokens import TokenStore
from rekam.service.workspace import OrgSpec, Workspace

_ORGS = (OrgSpec("klinik-bench", "clinic", "Klinik Bench"),)


def _observation(patient: str, i: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2026-01-01T08:00:00+07:00",
        "valueQuantity": {"value": 60 + i % 40, "unit": "/min"},
    }


async def _timed(
    app: Any, headers: dict[str, str], patient: str, n: int, clients: int
) -> tuple[float, float]:
    """Seconds for n creates, then n reads of what was created, with ``clients`` in flight."""
    transport = httpx.ASGITransport(app=app)
    gate = asyncio.Semaphore(clients)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

        async def create(i: int) -> str:
            async with gate:
                r = await client.post(
                    "/fhir/Observation", json=_observation(patient, i), headers=headers
                )
            if r.status_code != 201:
                raise RuntimeError(f"create answered {r.status_code}")
            return str(r.json()["id"])

        async def read(rid: str) -> None:
            async with gate:
                r = await client.get(f"/fhir/Observation/{rid}", headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"read answered {r.status_code}")

        await client.get("/fhir/metadata")
        started = time.perf_counter()
        ids = await asyncio.gather(*(create(i) for i in range(n)))
        create_s = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(*(read(rid) for rid in ids))
        read_s = time.perf_counter() - started
    return create_s, read_s


def bench_api(parent: Path, n: int, clients: int = 16) -> dict[str, Any]:
    """FHIR creates and reads per second through the API (one client, then several)."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-api-", dir=parent))
    try:
        ws = Workspace.create(folder, "rekam-bench", _ORGS, kdf="fast")
        tokens = TokenStore(folder)
        try:
            org = ws.actor("klinik-bench")
            doctor = ws.admin.enrol_member(org, "doctor", "bench-pass").id
            patient = ws.admin.register_patient(org, "bench-pass")[0].id
            token = tokens.issue(
                doctor, "bench-pass", "user/*.*", now=ws.node.clock(), expires_in_ms=3600_000
            )
            app = create_app(ws, tokens, ApiConfig())
            headers = {"Authorization": f"Bearer {token}"}
            serial = asyncio.run(_timed(app, headers, patient, n, 1))
            concurrent = asyncio.run(_timed(app, headers, patient, n, clients))
            app.state.ctx.close()
        finally:
            tokens.close()
            ws.close()
        core = bench_commit(parent, max(n, 1000))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "bench": "api",
        "requests": n,
        "fhir_create_per_s": round(n / serial[0], 1),
        "fhir_read_per_s": round(n / serial[1], 1),
        "clients": clients,
        "fhir_create_per_s_concurrent": round(n / concurrent[0], 1),
        "fhir_read_per_s_concurrent": round(n / concurrent[1], 1),
        "core_commit_tx_per_s": core["tx_per_s"],
        "core_commit_txs": core["txs"],
        "cores": core["cores"],
        "when": core["when"],
    }
