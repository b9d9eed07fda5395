"""The live dashboard: who may see it, and its static assets (package data, served by tfmux
itself: no CDN, no build step)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from tfmux.exposure import gate, is_loopback

ASSETS = {
    "index.html": b"text/html; charset=utf-8",
    "app.js": b"text/javascript; charset=utf-8",
    "app.css": b"text/css; charset=utf-8",
}


@dataclass(frozen=True)
class DashboardAccess:
    """``enabled``: the page and status API are served; ``token``: reading the status API
    then needs ``Authorization: Bearer <token>``; ``reason``: why, in words (for logs)."""

    enabled: bool
    token: str | None
    reason: str


def dashboard_access(host: str, dashboard: bool | None, admin_token: str | None) -> DashboardAccess:
    """The exposure rule: like management, on by default on loopback; beyond loopback the
    status API needs the admin token unless the dashboard was turned on explicitly."""
    decided = gate("the dashboard", dashboard, host, admin_token, "dashboard")
    if not decided.enabled:
        if dashboard is False:
            return DashboardAccess(False, None, "off (--no-dashboard)")
        return DashboardAccess(
            False,
            None,
            f"off: listening on {host} beyond loopback without an admin token "
            "(--admin-token protects it; --dashboard opens it to everyone)",
        )
    if dashboard is True:
        return DashboardAccess(True, None, "on for every client (--dashboard)")
    if is_loopback(host):
        return DashboardAccess(True, None, "on (listening on loopback only)")
    # Automatic beyond loopback, enabled by the admin token: the status API then needs it.
    return DashboardAccess(True, admin_token, "on; its status API needs the admin token")


def asset(name: str) -> bytes:
    """One static file of the page, read from the installed package."""
    return resources.files(__package__).joinpath(name).read_bytes()
