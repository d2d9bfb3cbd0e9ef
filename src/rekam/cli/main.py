"""The ``rekam`` command line: set up a network, run the demo, verify, audit, prove, measure."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rekam.crypto import DecryptionError, SignerError
from rekam.ledger._errors import LedgerError
from rekam.service.datadir import DataDir, DataDirError, FolderLock
from rekam.service.errors import ServiceError
from rekam.service.node import NodeError
from rekam.service.ports import StoreError
from rekam.service.workspace import OrgSpec, Workspace

app = typer.Typer(
    help="Rekam: a permissioned ledger for encrypted, consented, audited medical records.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
receipt_app = typer.Typer(help="Export a record's or transaction's receipt, or verify one offline.")
bench_app = typer.Typer(
    help="Measure throughput beside baselines from the same run (JSON with --json)."
)
keys_app = typer.Typer(
    help="Export the network's public keys; rotate a member's or patient's keys."
)
app.add_typer(receipt_app, name="receipt")
app.add_typer(bench_app, name="bench")
app.add_typer(keys_app, name="keys")


def _register_actions() -> None:
    from rekam.cli.actions import consent_app, keys_rotate, member_app, patient_app, record_app
    from rekam.cli.network import bench_network, network_app
    from rekam.cli.serve import register

    app.add_typer(record_app, name="record")
    app.add_typer(consent_app, name="consent")
    app.add_typer(member_app, name="member")
    app.add_typer(patient_app, name="patient")
    keys_app.command("rotate")(keys_rotate)
    register(app, bench_app)
    app.add_typer(network_app, name="network")
    bench_app.command("network")(bench_network)


console = Console()
err = Console(stderr=True)

DataDirOpt = Annotated[Path, typer.Option("--data-dir", "-d", help="The node's data folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


# What a user can cause by bad input; each has a message fit to show as it is.
USER_ERRORS = (DataDirError, ServiceError, StoreError, SignerError, LedgerError, NodeError)


def _open(data_dir: Path, writes: bool) -> tuple[Workspace, Callable[[], None]]:
    """The folder's workspace and how to close it. A command that writes to a network
    node's folder joins the network for its duration (its writes are ordered through etcd
    like the node's own); anything else opens the folder alone, where writes are refused."""
    if not (writes and DataDir(data_dir).in_network):
        ws = Workspace.open(data_dir)
        return ws, ws.close
    from rekam.service.network import NetworkNode

    try:
        with FolderLock(data_dir, wait=False):
            pass  # free: no node process holds the folder
    except DataDirError:
        raise DataDirError(
            "the node is running (its folder is locked): act through its portal or API "
            "(`rekam network run --http`), or stop it and repeat the command"
        ) from None
    net = NetworkNode.open(data_dir, serve=False)
    return net.workspace, net.close


@contextmanager
def _workspace(data_dir: Path, *, writes: bool = False) -> Iterator[Workspace]:
    try:
        ws, close = _open(data_dir, writes)
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    try:
        yield ws
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    except DecryptionError:
        raise _fail("wrong passphrase, or the keystore is damaged") from None
    finally:
        close()


def _progress_bar(label: str, target: Console, disable: bool = False) -> Progress:
    """The bar long commands show while they work (transient: gone when done)."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=target,
        transient=True,
        disable=disable,
    )


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _passphrase(env: str | None, prompt: str) -> str:
    if env:
        value = os.environ.get(env)
        if not value:
            raise _fail(f"environment variable {env} is empty or unset")
        return value
    return str(typer.prompt(prompt, hide_input=True))


# -- init and demo --------------------------------------------------------------------------


@app.command()
def init(
    data_dir: DataDirOpt,
    network: Annotated[str, typer.Option(help="Network name (a lowercase slug).")] = "rekam",
    org: Annotated[
        list[str] | None,
        typer.Option(help="A founding organisation as slug:kind[:label]; repeat for each."),
    ] = None,
    kdf: Annotated[
        str, typer.Option(help="Keystore cost: standard, or fast for tests.")
    ] = "standard",
    store: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in the folder).")
    ] = None,
    sig_processes: Annotated[
        int | None,
        typer.Option(
            min=0, help="Worker processes for signature checks (default: up to 2, by CPU)."
        ),
    ] = None,
) -> None:
    """Create a new network from a genesis in an empty data folder."""
    from rekam.service.workers import worker_count

    specs = []
    for item in org or ["klinik-utama:clinic:Klinik Utama"]:
        parts = item.split(":", 2)
        if len(parts) < 2:
            raise _fail(f"--org {item!r}: expected slug:kind[:label]")
        specs.append(OrgSpec(parts[0], parts[1], parts[2] if len(parts) > 2 else parts[0]))
    try:
        ws = Workspace.create(
            data_dir,
            network,
            specs,
            kdf=kdf,
            store_url=store,
            sig_processes=worker_count(2) if sig_processes is None else sig_processes,
        )
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    with ws:
        console.print(f"network [bold]{network}[/] created: id {ws.node.network_id}")
        console.print(f"data folder: {data_dir.resolve()}")
        for spec in specs:
            console.print(
                f"  organisation {spec.org} ({spec.kind}): "
                "keystore in keys/, its passphrase file in secrets/"
            )


@app.command()
def demo(
    data_dir: DataDirOpt = Path("demo-data"),
    patients: Annotated[
        int, typer.Option(min=2, max=50, help="Synthetic patients to register.")
    ] = 3,
    kdf: Annotated[str, typer.Option(help="Keystore cost: standard, or fast.")] = "standard",
    nodes: Annotated[
        int, typer.Option(help="3: run the story across etcd and three node processes.")
    ] = 1,
    keep_running: Annotated[bool, typer.Option(help="With --nodes: leave it running.")] = False,
) -> None:
    """Build a demo network (2 clinics, a lab, a pharmacy) and play the whole story."""
    from rekam.service.demo import run_demo, total_steps

    if nodes > 1:
        from rekam.cli.network import network_demo

        return network_demo(data_dir, nodes, kdf, keep_running)

    if data_dir.exists() and any(data_dir.iterdir()):
        raise _fail(f"{data_dir} is not empty; pass a new --data-dir or remove it")
    with _progress_bar("{task.description}", console) as progress:
        task = progress.add_task("demo", total=total_steps(patients))

        def step(message: str) -> None:
            progress.update(task, advance=1, description=message[:70])

        try:
            result = run_demo(data_dir, patients=patients, kdf=kdf, step=step)
        except USER_ERRORS as exc:
            raise _fail(str(exc)) from None
    labels = {m["id"]: m["name"] for m in result.members.values()}
    names = {p["id"]: p["name"] for p in result.patients}
    console.print("[bold]Rekam demo network[/] - synthetic data only\n")
    for patient_id, events in result.history.items():
        _print_history(f"Access history of {names[patient_id]} ({patient_id})", events, labels)
    assert result.report is not None
    console.print(f"[bold]verify:[/] {result.report.summary()}")
    console.print(f"receipt of the first diagnosis: {result.receipt_path}")
    console.print(f"\ndata folder: [bold]{data_dir.resolve()}[/]")
    console.print(
        f"demo identities and passphrases: {data_dir.resolve() / 'demo-credentials.json'}"
    )
    console.print(
        f"try: rekam audit -d {data_dir} --patient {result.patients[0]['id']}"
        f"  |  rekam verify -d {data_dir}"
    )
    console.print(
        f"web portal: rekam serve -d {data_dir}, then open http://127.0.0.1:8080/ "
        "and log in as patient-1, dokter-kenanga, apoteker-sentosa or admin-melati"
    )
    if not result.report.ok:
        raise typer.Exit(1)


def _print_history(title: str, events: list[dict[str, Any]], labels: dict[str, str]) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("time", "event", "who", "organisation", "record", "basis", "purpose"):
        table.add_column(column)
    for e in events:
        style = "bold red" if e["emergency"] else ("yellow" if e["allowed"] is False else "")
        basis = e["basis"] or ""
        if e["basis_ref"]:
            basis += f" {e['basis_ref'][:10]}"
        table.add_row(
            _when(e["time"]),
            e["label"],
            labels.get(e["actor"], e["actor_label"]),
            e["actor_org"] or "",
            e["resource_type"] or "",
            basis,
            e["purpose"] or "",
            style=style,
        )
    console.print(table)


# -- verification, audit, rebuild ------------------------------------------------------------


@app.command()
def verify(data_dir: DataDirOpt, as_json: JsonOpt = False) -> None:
    """Check hash chain, Merkle roots, signatures, validity, state tables and blobs."""
    from rekam.service.verify import verify_workspace

    with (
        _workspace(data_dir) as ws,
        _progress_bar(
            "verifying blocks", err, disable=as_json or ws.node.head.height < 200
        ) as progress,
    ):
        task = progress.add_task("verify", total=ws.node.head.height)
        # A network node is checked for the content it holds keys for (docs/network.md).
        report = verify_workspace(ws, lambda height: progress.update(task, completed=height))
    if as_json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "summary": report.summary(),
                    "problem": report.problem,
                    "height": report.height,
                    "txs": report.txs,
                    "seconds": report.seconds,
                }
            )
        )
    else:
        (console if report.ok else err).print(report.summary())
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def audit(
    data_dir: DataDirOpt,
    patient: Annotated[str, typer.Option(help="The patient's pseudonymous id (p-...).")],
    as_json: JsonOpt = False,
) -> None:
    """A patient's access history: who read or changed their data, when, and why."""
    with _workspace(data_dir) as ws:
        entries = ws.audit.history(patient)
        labels = ws.datadir.labels()
    events = [e.to_json() | {"label": e.label} for e in entries]
    if as_json:
        print(json.dumps(events, indent=2))
        return
    _print_history(f"Access history of {patient}", events, labels)


@app.command()
def rebuild(data_dir: DataDirOpt) -> None:
    """Recompute every state table from the blocks and replace the stored state."""
    from rekam.service.verify import VerifyFailure, rebuild_state

    with _workspace(data_dir) as ws:
        try:
            report = rebuild_state(ws.node.store, ws.genesis)
        except VerifyFailure as exc:
            raise _fail(f"cannot rebuild: {exc}") from None
    console.print(
        f"rebuilt {report.state_rows} state rows from {report.height + 1} blocks "
        f"in {report.seconds:.2f}s"
    )


@app.command()
def status(data_dir: DataDirOpt, as_json: JsonOpt = False) -> None:
    """Show the network id, head height and hash, and local organisations."""
    with _workspace(data_dir) as ws:
        head = ws.node.head
        info = {
            "network": ws.node.network_id,
            "name": ws.genesis.doc["name"],
            "height": head.height,
            "head": head.hash,
            "time": _when(head.time),
            "local_orgs": sorted(ws.org_identities),
            "store": ws.datadir.store_url().split("://")[0],
        }
    if as_json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            console.print(f"{key:>11}: {value}")


# -- receipts and keys ---------------------------------------------------------------------


@receipt_app.callback(invoke_without_command=True)
def receipt(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", "-d", help="The node's data folder.")
    ] = None,
    record: Annotated[
        str | None, typer.Option(help="A record id (r-...): prove its version.")
    ] = None,
    version: Annotated[int | None, typer.Option(help="Record version (default: latest).")] = None,
    tx: Annotated[str | None, typer.Option(help="A transaction id instead of a record.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the receipt here (default: stdout).")
    ] = None,
) -> None:
    """Export the inclusion receipt of a record version or transaction (cosigned checkpoint)."""
    if ctx.invoked_subcommand is not None:
        return
    from rekam.service.proofs import ReceiptError, build_receipt, make_checkpoint

    if data_dir is None or (record is None) == (tx is None):
        raise _fail("give --data-dir and exactly one of --record or --tx")
    with _workspace(data_dir) as ws:
        store = ws.node.store
        tx_id = tx
        if record is not None:
            head = store.get("record", record)
            if head is None:
                raise _fail("unknown record")
            row = store.get("record_version", f"{record}@{version or head['version']}")
            if row is None:
                raise _fail("unknown record version")
            tx_id = row["tx"]
        assert tx_id is not None
        checkpoint = make_checkpoint(
            store, ws.node.network_id, {o: i.signer for o, i in ws.org_identities.items()}
        )
        try:
            doc = build_receipt(store, tx_id, checkpoint)
        except ReceiptError as exc:
            raise _fail(str(exc)) from None
    text = json.dumps(doc, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, "utf-8")
        console.print(f"receipt written to {out}")


@receipt_app.command("verify")
def receipt_verify(
    path: Annotated[Path, typer.Argument(help="The receipt JSON file.")],
    keys: Annotated[Path, typer.Option(help="genesis.json or a `rekam keys export` file.")],
    min_cosigners: Annotated[int, typer.Option(help="Checkpoint cosignatures required.")] = 1,
) -> None:
    """Verify a receipt offline with only the receipt and the network's public keys."""
    from rekam.service.proofs import ReceiptError, load_json, verify_receipt

    try:
        check = verify_receipt(
            load_json(path.read_bytes()), load_json(keys.read_bytes()), min_cosigners
        )
    except (ReceiptError, OSError) as exc:
        raise _fail(f"receipt does NOT verify: {exc}") from None
    state = "valid" if check.valid else f"INVALID ({check.code})"
    console.print(
        f"receipt verifies: {check.tx_type} {check.tx_id[:16]} in block {check.height}, {state}; "
        f"checkpoint at height {check.checkpoint_height} cosigned by {', '.join(check.cosigners)}"
    )


@keys_app.command("export")
def keys_export(data_dir: DataDirOpt) -> None:
    """Print the organisations' current public signing keys (for receipt verify)."""
    from rekam.service.proofs import export_keys

    with _workspace(data_dir) as ws:
        doc = export_keys(ws.node.network_id, list(ws.node.store.state_rows("org")))
    print(json.dumps(doc, indent=2))


# -- benchmarks ----------------------------------------------------------------------------


def _bench_out(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        console.print(f"{key:>28}: {value}")


@bench_app.command("commit")
def bench_commit(
    data_dir: DataDirOpt,
    txs: Annotated[
        int, typer.Option(min=1, help="How many signed record writes to commit.")
    ] = 5000,
    as_json: JsonOpt = False,
) -> None:
    """Committed tx/s for already-signed record writes, beside raw Ed25519 and plain SQLite."""
    from rekam.service.bench import bench_commit as run

    _bench_out(run(data_dir, txs), as_json)


@bench_app.command("verify")
def bench_verify(
    data_dir: DataDirOpt,
    txs: Annotated[int, typer.Option(min=1, help="Transactions in the chain to verify.")] = 5000,
    runs: Annotated[
        int,
        typer.Option(min=1, help="Verifications of the chain, each with its baseline; medians."),
    ] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Full-chain verify rate beside the raw Ed25519 verify rate."""
    from rekam.service.bench import bench_verify as run

    _bench_out(run(data_dir, txs, runs), as_json)


@bench_app.command("write")
def bench_write(
    data_dir: DataDirOpt,
    txs: Annotated[int, typer.Option(min=1, help="Records to write end to end.")] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """End-to-end record writes per second (validate, encrypt, wrap keys, sign, commit)."""
    from rekam.service.bench import bench_write as run

    _bench_out(run(data_dir, txs), as_json)


@bench_app.command("proofs")
def bench_proofs(
    data_dir: DataDirOpt,
    txs: Annotated[int, typer.Option(min=1, help="Transactions in the chain.")] = 5000,
    as_json: JsonOpt = False,
) -> None:
    """Inclusion proof generation and verification rates."""
    from rekam.service.bench import bench_proofs as run

    _bench_out(run(data_dir, txs), as_json)


def main() -> None:
    """Entry point."""
    app()


_register_actions()

if __name__ == "__main__":
    main()
