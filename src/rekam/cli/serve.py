"""CLI commands of the HTTP API: ``rekam serve``, ``rekam token`` and ``rekam bench api``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from rekam.cli.actions import resolve_principal

token_app = typer.Typer(
    help="Issue a bearer token for the API (a member, patient or local organisation); "
    "`rekam token revoke` and `rekam token list` manage them."
)

DataDirOpt = Annotated[Path, typer.Option("--data-dir", "-d", help="The node's data folder.")]
_DURATION = re.compile(r"(\d{1,7})([smhd])")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def _duration_ms(text: str) -> int:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter("use a number with s, m, h or d, e.g. 8h or 30d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


@token_app.callback(invoke_without_command=True)
def token(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", "-d", help="The node's data folder.")
    ] = None,
    who: Annotated[
        str | None, typer.Option("--as", help="An id or a demo name (demo-credentials.json).")
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option(help="SMART-style scopes, e.g. 'user/*.read user/Observation.write'."),
    ] = None,
    expires: Annotated[str, typer.Option(help="Lifetime: e.g. 30m, 8h, 7d.")] = "8h",
    label: Annotated[str, typer.Option(help="A note for `rekam token list`.")] = "",
    patient: Annotated[
        str | None,
        typer.Option(help="The patient in context for patient/ scopes (p-...; patients: self)."),
    ] = None,
    passphrase_env: Annotated[
        str | None,
        typer.Option("--passphrase-env", help="Environment variable holding the passphrase."),
    ] = None,
) -> None:
    """Print a bearer token for a member, patient or local organisation."""
    if ctx.invoked_subcommand is not None:
        return
    if data_dir is None or who is None:
        raise typer.BadParameter("--data-dir and --as are required")
    from rekam.crypto import CryptoError
    from rekam.service.datadir import DataDirError
    from rekam.service.node import now_ms
    from rekam.service.tokens import ScopeError, TokenError, TokenStore, default_scopes

    principal, passphrase = resolve_principal(data_dir, who, passphrase_env)
    try:
        store = TokenStore(data_dir)
        try:
            issued = store.issue(
                principal,
                passphrase,
                scope or default_scopes(principal),
                now=now_ms(),
                expires_in_ms=_duration_ms(expires),
                label=label,
                patient=patient,
            )
        finally:
            store.close()
    except (ScopeError, TokenError, DataDirError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except CryptoError:
        typer.echo("error: wrong passphrase, or the keystore is damaged", err=True)
        raise typer.Exit(1) from None
    typer.echo(issued)


@token_app.command("revoke")
def revoke(
    data_dir: DataDirOpt,
    token_id: Annotated[str, typer.Argument(help="The token id (t-...) or the whole token.")],
) -> None:
    """Revoke a token: it stops working at once and its sealed passphrase is destroyed."""
    from rekam.service.tokens import TokenStore

    store = TokenStore(data_dir)
    try:
        found = store.revoke(token_id.split(".", 1)[0])
    finally:
        store.close()
    if not found:
        typer.echo("error: no such token", err=True)
        raise typer.Exit(1)
    typer.echo("revoked")


@token_app.command("list")
def list_tokens(data_dir: DataDirOpt) -> None:
    """List tokens (ids, principals, scopes, expiry; never secrets)."""
    from rekam.service.tokens import TokenStore, scopes_text

    store = TokenStore(data_dir)
    try:
        for info in store.list():
            state = "revoked" if info.revoked else f"expires {info.expires}"
            typer.echo(
                f"{info.token_id} {info.principal} [{scopes_text(info.scopes)}] {state}"
                f" {info.label}".rstrip()
            )
    finally:
        store.close()


def serve(
    data_dir: DataDirOpt,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
) -> None:
    """Serve the web portal (/), the FHIR R4 API (/fhir), the ledger API (/api) and docs."""
    import uvicorn

    from rekam.service.datadir import DataDirError
    from rekam.service.tokens import TokenStore
    from rekam.service.workspace import Workspace
    from rekam.web.dispatch import node_app

    try:
        ws = Workspace.open(data_dir, wait_for_lock=False)
    except DataDirError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    tokens = TokenStore(data_dir)
    try:
        app = node_app(ws, tokens)
        typer.echo(
            f"serving {ws.node.network_id} on http://{host}:{port} (portal at /, FHIR at /fhir)"
        )
        # No access log: a query string may hold an identifier (a NIK) being searched for.
        uvicorn.run(app.asgi, host=host, port=port, access_log=False, log_level="warning")
        app.close()
    finally:
        tokens.close()
        ws.close()


def bench_api(
    data_dir: DataDirOpt,
    requests: Annotated[int, typer.Option(min=1, help="Creates, then as many reads.")] = 300,
    clients: Annotated[int, typer.Option(min=1, max=256, help="Concurrent clients.")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """FHIR create and read requests per second through the API, beside the core commit rate."""
    from rekam.api.bench import bench_api as run

    result = run(data_dir, requests, clients)
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        typer.echo(f"{key:>30}: {value}")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add serve, token and bench api to the main command line."""
    app.command("serve")(serve)
    app.add_typer(token_app, name="token")
    bench_app.command("api")(bench_api)
