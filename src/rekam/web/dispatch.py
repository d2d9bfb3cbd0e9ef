"""One ASGI entry point for a node: API paths go to the API app, everything else to the portal.

Mounting the portal at ``/`` inside the API app would let it answer unknown API paths (and
wrong methods on known ones) with HTML pages; dispatching on the path prefix first keeps the
API's own 404 and 405 answers (FHIR OperationOutcome) exactly as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from rekam.api import create_app
from rekam.service.tokens import TokenStore
from rekam.service.workspace import Workspace
from rekam.web.app import PortalConfig, create_portal

API_PREFIXES = ("/fhir", "/api", "/docs", "/redoc", "/openapi.json")


class PathDispatcher:
    """Route each request by path prefix to the API app or the portal."""

    def __init__(
        self, api: ASGIApp, portal: ASGIApp, prefixes: tuple[str, ...] = API_PREFIXES
    ) -> None:
        self.api = api
        self.portal = portal
        self.prefixes = prefixes

    def _is_api(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward lifespan events to the API app; requests to whichever app owns the path."""
        if scope["type"] == "lifespan":
            await self.api(scope, receive, send)
            return
        target = self.api if self._is_api(str(scope.get("path", ""))) else self.portal
        await target(scope, receive, send)


@dataclass
class NodeApp:
    """A node's HTTP application (API and portal over one workspace) and how to close it."""

    asgi: PathDispatcher
    close: Callable[[], None]


def node_app(
    ws: Workspace,
    tokens: TokenStore,
    *,
    network_view: Callable[[], Mapping[str, Any]] | None = None,
) -> NodeApp:
    """The FHIR and ledger API and the portal of a node, as served by ``rekam serve`` and by
    a network node's ``--http`` listener; ``network_view`` gives the portal the cluster's
    status on a network node."""
    api = create_app(ws, tokens)
    ctx = api.state.ctx
    # The portal and the API share one lock, so a verification runs with no write between.
    portal = create_portal(ws, lock=ctx.lock, config=PortalConfig(network_view=network_view))
    return NodeApp(PathDispatcher(api, portal), ctx.close)
