"""The command line as a user meets it: real ``rekam`` processes on a demo data folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REKAM = [sys.executable, "-m", "rekam.cli.main"]
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}

COMMANDS = [
    [],
    ["init"],
    ["demo"],
    ["verify"],
    ["audit"],
    ["rebuild"],
    ["status"],
    ["receipt"],
    ["receipt", "verify"],
    ["keys", "export"],
    ["bench", "commit"],
    ["bench", "verify"],
    ["bench", "write"],
    ["bench", "proofs"],
    ["record", "write"],
    ["record", "read"],
    ["record", "list"],
    ["record", "erase"],
    ["record", "dispense"],
    ["consent", "grant"],
    ["consent", "revoke"],
    ["consent", "list"],
    ["consent", "emergency"],
    ["member", "enrol"],
    ["member", "revoke"],
    ["patient", "register"],
    ["keys", "rotate"],
    ["serve"],
    ["token"],
    ["token", "revoke"],
    ["token", "list"],
    ["bench", "api"],
]


def rekam(
    *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*REKAM, *args],
        check=False,
        capture_output=True,
        text=True,
        env=ENV,
        input=stdin,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"rekam {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "demo"
    out = rekam("demo", "--data-dir", str(folder), "--kdf", "fast")
    assert "verify:" in out.stdout and "OK" in out.stdout
    return folder


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "rekam")
def test_every_command_has_help(command: list[str]) -> None:
    out = rekam(*command, "--help")
    assert "Usage" in out.stdout


def test_demo_prints_history_and_writes_credentials(demo_dir: Path) -> None:
    creds = json.loads((demo_dir / "demo-credentials.json").read_text())
    assert {"dokter-melati", "dokter-kenanga", "apoteker-sentosa", "analis-prima"} <= set(
        creds["members"]
    )
    assert all(p["name"].split()[-1].startswith(("Contoh", "Fiktif")) for p in creds["patients"])
    assert (demo_dir / "demo-credentials.json").stat().st_mode & 0o077 == 0


def test_verify_status_and_audit(demo_dir: Path) -> None:
    assert rekam("verify", "-d", str(demo_dir)).stdout.startswith("OK")
    # The outcome is recorded for the portal's status pages: time, verdict, summary only.
    last = json.loads((demo_dir / "last-verify.json").read_text("utf-8"))
    assert (
        last["ok"] is True
        and last["summary"].startswith("OK")
        and set(last)
        == {
            "ok",
            "summary",
            "time",
        }
    )
    status = json.loads(rekam("status", "-d", str(demo_dir), "--json").stdout)
    assert status["height"] > 10 and len(status["local_orgs"]) == 4
    patient = json.loads((demo_dir / "demo-credentials.json").read_text())["patients"][0]["id"]
    events = json.loads(rekam("audit", "-d", str(demo_dir), "--patient", patient, "--json").stdout)
    kinds = {e["event"] for e in events}
    assert {"access.read", "consent.grant", "prescription.dispense"} <= kinds
    assert any(e["allowed"] is False for e in events)


def test_receipt_export_and_offline_verify(demo_dir: Path, tmp_path: Path) -> None:
    creds = json.loads((demo_dir / "demo-credentials.json").read_text())
    receipt = tmp_path / "receipt.json"
    rekam(
        "receipt",
        "-d",
        str(demo_dir),
        "--record",
        creds["records"]["condition"],
        "--out",
        str(receipt),
    )
    keys = tmp_path / "genesis.json"
    shutil.copy(demo_dir / "genesis.json", keys)
    ok = rekam("receipt", "verify", str(receipt), "--keys", str(keys), "--min-cosigners", "4")
    assert "receipt verifies" in ok.stdout
    doc = json.loads(receipt.read_text())
    doc["code"] = "no_basis"
    receipt.write_text(json.dumps(doc))
    bad = rekam("receipt", "verify", str(receipt), "--keys", str(keys), check=False)
    assert bad.returncode == 1 and "does NOT verify" in bad.stderr


def test_key_rotation_keeps_records_readable(demo_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "rotate"
    shutil.copytree(demo_dir, folder)
    condition = json.loads((folder / "demo-credentials.json").read_text())["records"]["condition"]
    env_var = "REKAM_TEST_NEW_PASSPHRASE"
    ENV[env_var] = "a brand new passphrase"
    try:
        out = rekam(
            "keys",
            "rotate",
            "-d",
            str(folder),
            "--as",
            "patient-1",
            "--new-passphrase-env",
            env_var,
        )
    finally:
        del ENV[env_var]
    assert "rotated in tx" in out.stdout
    creds = json.loads((folder / "demo-credentials.json").read_text())
    assert creds["patients"][0]["passphrase"] == "a brand new passphrase"
    own = rekam("record", "read", "-d", str(folder), "--as", "patient-1", condition)
    assert "basis: own" in own.stderr
    assert rekam("verify", "-d", str(folder)).stdout.startswith("OK")


def test_act_as_members_and_patients(demo_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(demo_dir, folder)
    creds = json.loads((folder / "demo-credentials.json").read_text())
    patient = creds["patients"][0]["id"]
    condition = creds["records"]["condition"]
    read = rekam("record", "read", "-d", str(folder), "--as", "dokter-kenanga", condition)
    assert json.loads(read.stdout)["resourceType"] == "Condition"
    own = rekam("record", "read", "-d", str(folder), "--as", "patient-1", condition)
    assert "basis: own" in own.stderr
    denied = rekam(
        "record", "read", "-d", str(folder), "--as", "analis-prima", condition, check=False
    )
    assert denied.returncode == 1 and "no basis" in denied.stderr
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {
            "value": 61,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
    }
    wrote = rekam(
        "record",
        "write",
        "-d",
        str(folder),
        "--as",
        "dokter-melati",
        "--patient",
        patient,
        "-",
        stdin=json.dumps(resource),
    )
    assert "version 1 committed" in wrote.stdout
    invalid = rekam(
        "record",
        "write",
        "-d",
        str(folder),
        "--as",
        "dokter-melati",
        "--patient",
        patient,
        "-",
        stdin='{"resourceType": "Observation"}',
        check=False,
    )
    assert invalid.returncode == 1 and "invalid FHIR" in invalid.stderr
    listing = rekam("consent", "list", "-d", str(folder), "--patient", patient).stdout
    consent = listing.split()[0]
    rekam("consent", "revoke", "-d", str(folder), "--as", "patient-1", consent)
    assert rekam("verify", "-d", str(folder)).stdout.startswith("OK")


def test_init_refuses_bad_input(tmp_path: Path) -> None:
    bad = rekam("init", "-d", str(tmp_path / "n"), "--org", "Not A Slug:clinic", check=False)
    assert bad.returncode == 1 and "lowercase slug" in bad.stderr
    kind = rekam("init", "-d", str(tmp_path / "m"), "--org", "klinik-x:spaceship", check=False)
    assert kind.returncode == 1 and "kind must be one of" in kind.stderr
    good = rekam(
        "init", "-d", str(tmp_path / "ok"), "--org", "klinik-x:clinic:Klinik X", "--kdf", "fast"
    )
    assert "created" in good.stdout
    again = rekam("init", "-d", str(tmp_path / "ok"), "--org", "klinik-x:clinic", check=False)
    assert again.returncode == 1 and "not empty" in again.stderr


def test_missing_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    out = rekam("verify", "-d", str(tmp_path / "nowhere"), check=False)
    assert out.returncode == 1 and "not a Rekam data folder" in out.stderr
    assert "Traceback" not in out.stderr
