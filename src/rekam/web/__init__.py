"""The web portal (server-rendered pages at ``/``); see docs/portal.md."""

from rekam.web.app import PortalConfig, create_portal

__all__ = ["PortalConfig", "create_portal"]
