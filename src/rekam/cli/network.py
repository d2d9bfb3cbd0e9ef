"""``rekam network ...``: create, run, watch and stop an etcd-ordered network of nodes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from rekam.service.workspace import OrgSpec

if TYPE_CHECKING:
    from rekam.service.network import NetworkNode

network_app = typer.Typer(help="Run Rekam as a network of nodes ordered by an etcd cluster.")
console = Console()
err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)


@network_app.command("create")
def create(
    out: Annotated[Path, typer.Option("--out", help="Folder to lay the node folders out in.")],
    org: Annotated[list[str], typer.Option(help="slug:kind[:label] per founding organisation.")],
    etcd: Annotated[list[str], typer.Option(help="etcd client URL; repeat for each member.")],
    listen: Annotated[
        list[str], typer.Option(help="host:port of each node's peer API, in --org order.")
    ],
    network: Annotated[str, typer.Option(help="Network name.")] = "rekam",
    kdf: Annotated[str, typer.Option(help="Keystore cost: standard, or fast.")] = "standard",
    window: Annotated[int, typer.Option(help="Blocks etcd keeps.")] = 1000,
) -> None:
    """Found a network: genesis and one node folder (own keys only) per organisation."""
    from rekam.service.network import create_network

    specs = [_spec(item) for item in org]
    folders = create_network(out, network, specs, etcd, listen, kdf=kdf, window=window)
    for name, folder in folders.items():
        console.print(f"{name}: {folder}  (deliver this folder to {name} securely)")


def _spec(item: str) -> OrgSpec:
    parts = item.split(":", 2)
    if len(parts) < 2:
        raise _fail(f"--org {item!r}: expected slug:kind[:label]")
    return OrgSpec(parts[0], parts[1], parts[2] if len(parts) > 2 else parts[0])


@network_app.command("prepare-join")
def prepare_join(
    out: Annotated[Path, typer.Option("--out", help="The new node folder (empty).")],
    genesis: Annotated[Path, typer.Option(help="The network's genesis.json.")],
    org: Annotated[str, typer.Option(help="The new organisation as slug:kind[:label].")],
    etcd: Annotated[list[str], typer.Option(help="etcd client URL; repeat for each member.")],
    listen: Annotated[str, typer.Option(help="host:port of this node's peer API.")],
    kdf: Annotated[str, typer.Option(help="Keystore cost: standard, or fast.")] = "standard",
) -> None:
    """A new organisation: make its keys and node folder; print its enrolment request."""
    from rekam.service.network import prepare_join as run

    request = run(out, genesis, _spec(org), etcd, listen, kdf=kdf)
    path = out / "enrol-request.json"
    path.write_text(json.dumps(request, indent=2) + "\n", "utf-8")
    console.print(f"node folder {out}; send {path} (public keys only) to the network")


@network_app.command("propose-org")
def propose_org(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d", help="An existing node folder.")],
    request: Annotated[Path, typer.Option(help="The new organisation's enrol-request.json.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the proposal.")],
) -> None:
    """Propose enrolling an organisation: an org.enrol transaction signed by this node's org."""
    from rekam.service.network import propose_org as run

    proposal = run(data_dir, json.loads(request.read_text("utf-8")))
    out.write_text(json.dumps(proposal, indent=2) + "\n", "utf-8")
    console.print(f"proposal written to {out}; other organisations cosign it")


@network_app.command("cosign")
def cosign(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d", help="This org's node folder.")],
    proposal: Annotated[Path, typer.Argument(help="The proposal file (signed in place).")],
) -> None:
    """Add this organisation's signature to a proposal (a majority of orgs must sign)."""
    from rekam.service.network import cosign as run

    doc = json.loads(proposal.read_text("utf-8"))
    console.print_json(json.dumps(doc["tx"]["body"]))
    signed = run(data_dir, doc)
    proposal.write_text(json.dumps(signed, indent=2) + "\n", "utf-8")
    console.print(f"signed by: {', '.join(s['by'] for s in signed['sigs'])}")


@network_app.command("submit")
def submit(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d", help="A node folder.")],
    proposal: Annotated[Path, typer.Argument(help="The cosigned proposal.")],
) -> None:
    """Submit a cosigned proposal to the ordering service (every node then validates it)."""
    from rekam.service.network import submit_proposal

    tx_id = submit_proposal(data_dir, json.loads(proposal.read_text("utf-8")))
    console.print(f"submitted transaction {tx_id}; watch it with rekam network status")


@network_app.command("run")
def run(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d", help="The node folder.")],
    load_rate: Annotated[
        float, typer.Option(help="Testing: submit this many writes per second.")
    ] = 0.0,
    load_log: Annotated[
        Path | None, typer.Option(help="Testing: append acknowledged tx ids here.")
    ] = None,
    cut: Annotated[bool, typer.Option(help="Campaign to cut blocks.")] = True,
    commit_log: Annotated[
        Path | None, typer.Option(help="Benchmarks: log each block's commit time and tx ids.")
    ] = None,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Also serve the web portal (/) and the FHIR and ledger API (/fhir, /api).",
        ),
    ] = None,
) -> None:
    """Run a node until SIGTERM or Ctrl-C: follow etcd, validate, serve peers, cut blocks."""
    from rekam.service.network import CommitLog, LoadGenerator, NetworkNode

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    loads: list[LoadGenerator] = []

    # Testing: SIGUSR1 stops the load so a test can let the network settle; the handler is
    # in place from the start (the default action would kill the process).
    def stop_load(*_: object) -> None:
        for each in loads:
            threading.Thread(target=each.stop).start()

    signal.signal(signal.SIGUSR1, stop_load)
    listen = _host_port(http) if http is not None else None
    net = NetworkNode.open(data_dir, cut_blocks=cut)
    if commit_log is not None:
        net.workspace.node.add_listener(CommitLog(commit_log))
    load = None
    listener = None
    try:
        if listen is not None:
            listener = _HttpListener(net, *listen)
            console.print(f"portal and API on http://{listen[0]}:{listen[1]}/")
        if load_rate > 0:
            load = LoadGenerator(net, load_rate, load_log or data_dir / "acked.log")
            loads.append(load)
            load.start()
        console.print(f"node {net.config.org} serving {net.config.url}; stop with SIGTERM")
        while not stop.wait(0.5):
            pass
    finally:
        if load is not None:
            load.stop()
        if listener is not None:
            listener.stop()
        net.close()


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter("use HOST:PORT, e.g. 127.0.0.1:8080", param_hint="--http")
    return host, int(port)


class _HttpListener:
    """The portal and the API of a network node, served by uvicorn on a thread of the node's
    process (they share its workspace: one store, one folder lock)."""

    def __init__(self, net: NetworkNode, host: str, port: int) -> None:
        import uvicorn

        from rekam.service.network import cluster_view
        from rekam.service.tokens import TokenStore
        from rekam.web.dispatch import node_app

        self.tokens = TokenStore(net.root)
        self.app = node_app(net.workspace, self.tokens, network_view=lambda: cluster_view(net.root))
        # No access log: a query string may hold an identifier (a NIK) being searched for.
        config = uvicorn.Config(
            self.app.asgi, host=host, port=port, access_log=False, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        # uvicorn leaves signals alone off the main thread; the node's handlers stay in charge.
        self.thread = threading.Thread(target=self.server.run, name="rekam-http", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Finish open requests, then close the API's and the portal's resources."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.close()
        self.tokens.close()


@network_app.command("status")
def status(
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d", help="A node folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Peers, heights, hashes and lag as registered in etcd; etcd members' health."""
    from rekam.service.network import cluster_view, read_status

    view = cluster_view(data_dir)
    view["this_node"] = read_status(data_dir)
    if as_json:
        console.print_json(json.dumps(view))
        return
    ordered = view.get("ordered")
    console.print(f"ordered head: {ordered}  cutter: {view.get('cutter')}")
    if "error" in view:
        console.print(f"[bold red]etcd:[/] {view['error']}")
    members = Table(title="etcd members", title_justify="left")
    for column in ("endpoint", "up", "leader", "raft index"):
        members.add_column(column)
    for m in view["members"]:
        members.add_row(
            m["endpoint"], str(m["up"]), str(m.get("leader", "")), str(m.get("raft_index", ""))
        )
    console.print(members)
    nodes = Table(title="nodes", title_justify="left")
    for column in ("org", "url", "height", "hash", "lag"):
        nodes.add_column(column)
    for n in view.get("nodes", []):
        nodes.add_row(n["org"], n["url"], str(n["height"]), n["hash"][:16], str(n.get("lag")))
    console.print(nodes)


@network_app.command("stop")
def stop(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The demo's data folder.")],
) -> None:
    """Stop what ``rekam demo --nodes N --keep-running`` left running in a folder."""
    from rekam.ordering.etcd_local import stop_saved

    stopped = 0
    pids = data_dir / "pids.json"
    if pids.is_file():
        for pid in json.loads(pids.read_text("utf-8")).get("nodes", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
                stopped += 1
        pids.unlink()
    stopped += stop_saved(data_dir / "etcd")
    console.print(f"stopped {stopped} processes")


def network_demo(data_dir: Path, nodes: int, kdf: str, keep_running: bool) -> None:
    """``rekam demo --nodes N``: the story across a loopback etcd cluster and N nodes."""
    from rekam.service.network_demo import run_network_demo

    if nodes != 3:
        raise _fail("the network demo runs exactly 3 nodes")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise _fail(f"{data_dir} is not empty; pass a new --data-dir or remove it")
    result = run_network_demo(
        data_dir, kdf=kdf, keep_running=keep_running, step=lambda m: console.print(f"- {m}")
    )
    console.print("\n[bold]story[/]")
    for line in result.story:
        console.print(f"  {line}")
    console.print("\n[bold]node heads[/]")
    for org, (height, digest) in result.heads.items():
        console.print(f"  {org:<16} height {height:<6} {digest}", soft_wrap=True)
    console.print("all heads equal" if result.agreed else "[bold red]HEADS DIFFER[/]")
    if keep_running:
        console.print("\n[bold]portals[/] (log in with a name from demo-credentials.json)")
        for org, url in result.portals.items():
            console.print(f"  {org:<16} {url}")
        console.print(f"credentials: {data_dir / 'demo-credentials.json'}")
        console.print(f"etcd: {', '.join(result.etcd_endpoints)}")
        console.print(f"status: rekam network status -d {data_dir / 'nodes' / 'klinik-melati'}")
        console.print(f"stop everything: rekam network stop --data-dir {data_dir}")
    if not result.agreed:
        raise typer.Exit(1)


def bench_network(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", "-d", help="Parent of the throw-away network.")
    ] = Path("bench-data"),
    nodes: Annotated[int, typer.Option(min=2, max=3, help="Nodes.")] = 3,
    txs: Annotated[int, typer.Option(min=100, help="Writes in the throughput phase.")] = 6000,
    rate: Annotated[int, typer.Option(min=10, help="Offered writes/s, latency phase.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Committed tx/s at every node, submit-to-commit-at-all-nodes latency, raw etcd puts."""
    from rekam.service.network_bench import bench_network as run

    figures = run(data_dir, nodes, txs, rate)
    if as_json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        console.print(f"{key}: {value}")
