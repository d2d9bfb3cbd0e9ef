"""CLI commands that act as a member or patient: records, consent, emergency, enrolment.

The acting principal is named with ``--as`` (an id, or a demo name from
``demo-credentials.json`` such as ``dokter-kenanga`` or ``patient-1``); the passphrase comes
from ``--passphrase-env VAR``, from the demo credentials file when the folder is a demo,
or from a prompt. Passphrases are never taken on the command line (shell history, ps).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rekam.ledger.tx import id_kind
from rekam.service.workspace import Actor, Workspace

record_app = typer.Typer(
    help="Write and read records as a member or patient (every read is audited)."
)
consent_app = typer.Typer(help="Grant and revoke consent, and break the glass in an emergency.")
member_app = typer.Typer(help="Enrol and revoke members of an organisation.")
patient_app = typer.Typer(help="Register patients under a pseudonymous id.")

AsOpt = Annotated[
    str, typer.Option("--as", help="Who acts: an id or a demo name (see demo-credentials.json).")
]
PassEnv = Annotated[
    str | None,
    typer.Option("--passphrase-env", help="Environment variable holding the passphrase."),
]


def _demo_credentials(root: Path) -> dict[str, Any]:
    path = root / "demo-credentials.json"
    if not path.is_file():
        return {}
    creds: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return creds


def resolve_principal(root: Path, who: str, passphrase_env: str | None) -> tuple[str, str | None]:
    """A principal id and its passphrase, from an id or a demo name of the folder at ``root``.

    The passphrase comes from ``passphrase_env`` when given, else from the demo credentials,
    else from a prompt; organisations (whose keys the node holds) need none.
    """
    creds = _demo_credentials(root)
    principal, passphrase = who, None
    members = creds.get("members", {})
    patients = creds.get("patients", [])
    if who in members:
        principal, passphrase = members[who]["id"], members[who]["passphrase"]
    elif who.startswith("patient-") and who[8:].isdigit() and 0 < int(who[8:]) <= len(patients):
        entry = patients[int(who[8:]) - 1]
        principal, passphrase = entry["id"], entry["passphrase"]
    else:
        for entry in [*members.values(), *patients]:
            if entry["id"] == who:
                passphrase = entry["passphrase"]
    if id_kind(principal) not in ("member", "patient"):
        return principal, None
    if passphrase_env:
        passphrase = os.environ.get(passphrase_env) or None
        if passphrase is None:
            raise typer.BadParameter(f"environment variable {passphrase_env} is empty or unset")
    if passphrase is None:
        passphrase = str(typer.prompt(f"passphrase for {principal}", hide_input=True))
    return principal, passphrase


def resolve_actor(ws: Workspace, who: str, passphrase_env: str | None) -> Actor:
    """Unlock the acting principal from an id or a demo name."""
    principal, passphrase = resolve_principal(ws.datadir.root, who, passphrase_env)
    if principal in ws.org_identities:
        return ws.actor(principal)
    return ws.actor(principal, passphrase)


def _load_resource(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    return path.read_bytes()


# -- records -----------------------------------------------------------------------------------


@record_app.command("write")
def record_write(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    who: AsOpt,
    patient: Annotated[str, typer.Option(help="The patient's id (p-...).")],
    resource: Annotated[Path, typer.Argument(help="A FHIR R4 resource JSON file, or - for stdin.")],
    record: Annotated[str | None, typer.Option(help="Write a new version of this record.")] = None,
    passphrase_env: PassEnv = None,
) -> None:
    """Validate, encrypt and commit a FHIR resource as a new record or a new version."""
    from rekam.cli.main import _workspace, console

    data = _load_resource(resource)
    with _workspace(data_dir, writes=True) as ws:
        actor = resolve_actor(ws, who, passphrase_env)
        result = ws.records.write(actor, data, patient=patient, record=record)
    console.print(f"record {result.record} version {result.version} committed in tx {result.tx_id}")


@record_app.command("read")
def record_read(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    who: AsOpt,
    record: Annotated[str, typer.Argument(help="The record id (r-...).")],
    version: Annotated[int | None, typer.Option(help="A version (default: latest).")] = None,
    purpose: Annotated[
        str, typer.Option(help="treatment, dispensing, referral, emergency, own.")
    ] = "treatment",
    passphrase_env: PassEnv = None,
) -> None:
    """Read a record: the access is checked and committed to the chain before content is shown."""
    from rekam.cli.main import _workspace, err

    with _workspace(data_dir, writes=True) as ws:
        actor = resolve_actor(ws, who, passphrase_env)
        if actor.kind == "patient" and purpose == "treatment":
            purpose = "own"
        result = ws.records.read(actor, record, version, purpose)
    err.print(f"access recorded in tx {result.access_tx} (basis: {result.basis.kind})")
    print(json.dumps(result.resource, indent=2, ensure_ascii=False))


@record_app.command("list")
def record_list(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    patient: Annotated[str, typer.Option(help="The patient's id (p-...).")],
) -> None:
    """List a patient's records (metadata only; no content, no audit event)."""
    from rekam.cli.main import _when, _workspace, console

    with _workspace(data_dir, writes=True) as ws:
        rows = ws.records.for_patient(patient)
    for key, row in rows:
        state = "erased" if row["erased"] else f"v{row['version']}"
        console.print(
            f"{key}  {row['resource_type']:<18} {state:<7} "
            f"by {row['author_org']}  {_when(row['updated'])}"
        )


@record_app.command("erase")
def record_erase(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    who: AsOpt,
    record: Annotated[str, typer.Argument(help="The record id (r-...).")],
    reason: Annotated[
        str, typer.Option(help="patient_request, legal_order, entered_in_error.")
    ] = "patient_request",
    passphrase_env: PassEnv = None,
) -> None:
    """Erase a record: its content and keys are destroyed; the chain keeps a tombstone."""
    from rekam.cli.main import _workspace, console

    with _workspace(data_dir, writes=True) as ws:
        result = ws.records.erase(resolve_actor(ws, who, passphrase_env), record, reason)
    console.print(f"record {record} erased in tx {result.tx_id}")


@record_app.command("dispense")
def record_dispense(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    who: AsOpt,
    prescription: Annotated[str, typer.Argument(help="The MedicationRequest record id (r-...).")],
    passphrase_env: PassEnv = None,
) -> None:
    """A pharmacist dispenses a prescription the patient shared with the pharmacy."""
    from rekam.cli.main import _workspace, console

    with _workspace(data_dir, writes=True) as ws:
        result, _ = ws.records.dispense(resolve_actor(ws, who, passphrase_env), prescription)
    console.print(f"prescription {prescription} dispensed in tx {result.tx_id}")


# -- consent -----------------------------------------------------------------------------------


@consent_app.command("grant")
def consent_grant(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    who: AsOpt,
    patient: Annotated[str, typer.Option(help="The patient's id (p-...).")],
    grantee: Annotated[str, typer.Option(help="A member id (m-...) or an organisation slug.")],
    types: Annotated[str, typer.Option(help="Comma-separated FHIR resource types, or *.")] = "*",
    purpose: Annotated[
        str, typer.Option(help="treatment, dispensing, referral, research, insurance.")
    ] = "treatment",
    days: Annotated[int, typer.Option(min=1, help="How long the consent lasts.")] = 30,
    passphrase_env: PassEnv = None,
) -> None:
    """Grant a member or organisation access to a patient's records (patient or home clinic)."""
    from rekam.cli.main import _workspace, console

    with _workspace(data_dir, writes=True) as ws:
        actor = resolve_actor(ws, who, passphrase_env)
        grant = ws.consent.grant(
            actor,
            patient,
            grantee,
            resource_types=[t.strip() for t in types.split(",")],
            purpose=purpose,
            days=days,
        )
    console.print(f"consent {grant.consent} granted in tx {grant.tx_id}")


@consent_app.command("revoke")
def consent_revoke(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    who: AsOpt,
    consent: Annotated[str, typer.Argument(help="The consent id (c-...).")],
    passphrase_env: PassEnv = None,
) -> None:
    """Revoke a consent: future reads stop and the grantee's keys are deleted."""
    from rekam.cli.main import _workspace, console

    with _workspace(data_dir, writes=True) as ws:
        result = ws.consent.revoke(resolve_actor(ws, who, passphrase_env), consent)
    console.print(f"consent {consent} revoked in tx {result.tx_id}")


@consent_app.command("list")
def consent_list(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    patient: Annotated[str, typer.Option(help="The patient's id (p-...).")],
) -> None:
    """A patient's active consents."""
    from rekam.cli.main import _when, _workspace, console

    with _workspace(data_dir, writes=True) as ws:
        rows = ws.consent.active_for_patient(patient)
    for key, row in rows:
        types = ",".join(row["resource_types"])
        console.print(
            f"{key}  to {row['grantee']}  {types}  for {row['purpose']}  until {_when(row['end'])}"
        )


@consent_app.command("emergency")
def consent_emergency(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    who: AsOpt,
    patient: Annotated[str, typer.Option(help="The patient's id (p-...).")],
    reason: Annotated[
        str, typer.Option(help="unconscious, life_threatening, unable_to_consent, urgent_transfer.")
    ],
    minutes: Annotated[int, typer.Option(min=1, max=1440)] = 60,
    passphrase_env: PassEnv = None,
) -> None:
    """Break the glass: time-limited emergency access, audited and visible to the patient."""
    from rekam.cli.main import _workspace, console

    with _workspace(data_dir, writes=True) as ws:
        access, result = ws.consent.emergency(
            resolve_actor(ws, who, passphrase_env), patient, reason, minutes
        )
    console.print(
        f"[bold red]EMERGENCY ACCESS[/] {access} opened for {minutes} min in tx {result.tx_id}"
    )


# -- members and patients --------------------------------------------------------------------------


@member_app.command("enrol")
def member_enrol(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    who: AsOpt,
    role: Annotated[
        str, typer.Option(help="admin, doctor, nurse, pharmacist, lab_analyst, registrar, auditor.")
    ],
    name: Annotated[
        str, typer.Option(help="Display name kept in this node's directory only.")
    ] = "",
    passphrase_env: PassEnv = None,
    new_passphrase_env: Annotated[
        str | None, typer.Option(help="Environment variable with the new member's passphrase.")
    ] = None,
) -> None:
    """Enrol a member of the acting organisation (org key or an admin) with new keys."""
    from rekam.cli.main import _workspace, console

    with _workspace(data_dir, writes=True) as ws:
        actor = resolve_actor(ws, who, passphrase_env)
        secret = os.environ.get(new_passphrase_env or "") or str(
            typer.prompt("passphrase for the new member", hide_input=True, confirmation_prompt=True)
        )
        member = ws.admin.enrol_member(actor, role, secret, label=name)
    console.print(f"member {member.id} enrolled as {role} in tx {member.tx_id}")


@member_app.command("revoke")
def member_revoke(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    who: AsOpt,
    member: Annotated[str, typer.Argument(help="The member id (m-...).")],
    passphrase_env: PassEnv = None,
) -> None:
    """Revoke a member: from now on their signatures and accesses are refused."""
    from rekam.cli.main import _workspace, console

    with _workspace(data_dir, writes=True) as ws:
        result = ws.admin.revoke_member(resolve_actor(ws, who, passphrase_env), member)
    console.print(f"member {member} revoked in tx {result.tx_id}")


@patient_app.command("register")
def patient_register(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    who: AsOpt,
    demographics: Annotated[
        Path | None,
        typer.Option(help="A FHIR Patient resource (name, NIK, contact), stored encrypted."),
    ] = None,
    passphrase_env: PassEnv = None,
    new_passphrase_env: Annotated[
        str | None, typer.Option(help="Environment variable with the patient's passphrase.")
    ] = None,
) -> None:
    """Register a patient at the acting organisation under a random pseudonymous id."""
    from rekam.cli.main import _workspace, console

    with _workspace(data_dir, writes=True) as ws:
        actor = resolve_actor(ws, who, passphrase_env)
        secret = os.environ.get(new_passphrase_env or "") or str(
            typer.prompt("passphrase for the patient", hide_input=True, confirmation_prompt=True)
        )
        resource = json.loads(demographics.read_bytes()) if demographics is not None else None
        registered, _ = ws.admin.register_patient(actor, secret, demographics=resource)
    console.print(f"patient {registered.id} registered in tx {registered.tx_id}")


def keys_rotate(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d")],
    who: AsOpt,
    passphrase_env: PassEnv = None,
    new_passphrase_env: Annotated[
        str | None, typer.Option(help="Environment variable with the passphrase for the new keys.")
    ] = None,
) -> None:
    """Give a member or patient new keys; content keys held here are re-wrapped to them."""
    from rekam.cli.main import _workspace, console

    with _workspace(data_dir, writes=True) as ws:
        actor = resolve_actor(ws, who, passphrase_env)
        secret = os.environ.get(new_passphrase_env or "") or str(
            typer.prompt("passphrase for the new keys", hide_input=True, confirmation_prompt=True)
        )
        result = ws.admin.rotate_keys(actor, secret)
        _update_demo_passphrase(ws.datadir.root, actor.id, secret)
    console.print(f"keys of {actor.id} rotated in tx {result.tx_id}")


def _update_demo_passphrase(root: Path, principal: str, passphrase: str) -> None:
    """Keep a demo folder's credentials file usable after a rotation (it names passphrases)."""
    creds = _demo_credentials(root)
    entries = [*creds.get("members", {}).values(), *creds.get("patients", [])]
    changed = False
    for entry in entries:
        if entry.get("id") == principal:
            entry["passphrase"] = passphrase
            changed = True
    if changed:
        path = root / "demo-credentials.json"
        path.write_text(json.dumps(creds, indent=2) + "\n", "utf-8")
