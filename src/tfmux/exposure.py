"""Who can reach the server, and what that means for the features that change it.

A server listening on loopback only is reachable from this machine alone; anything else
(``0.0.0.0``, ``::``, a LAN address, a hostname that resolves beyond loopback) may be reached
by anyone on the network. Features that change the server (model management) or show its
internals (the dashboard) are on by default only when that is safe: on loopback, or when an
admin token guards them. Listening beyond loopback without a token turns them off unless the
operator opts in explicitly (for instance because an authenticating proxy fronts the server).

``gate`` is the one decision, shared by every such feature so they behave alike.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """True when listening on ``host`` accepts connections from this machine only.

    ``127.0.0.0/8``, ``::1`` and ``localhost`` are loopback; the wildcards (``0.0.0.0``,
    ``::``, an empty host) and every other address are not. A hostname counts as loopback
    only when every address it resolves to is (one that does not resolve is not).
    """
    name = host.strip().strip("[]").lower()
    if not name:
        return False
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {str(info[4][0]) for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


@dataclass(frozen=True)
class Gate:
    """Whether a feature is on, what a refused caller is told, and what to log at startup."""

    enabled: bool
    denial: str  # the answer to a call while the feature is off
    warning: str | None = None  # logged once at startup when the choice deserves attention


def gate(
    feature: str,
    setting: bool | None,
    host: str,
    admin_token: str | None,
    switch: str,
) -> Gate:
    """Decide whether ``feature`` is on for a server listening on ``host``.

    ``setting`` is the operator's choice: True (on, whoever can reach the port), False (off)
    or None (automatic: on at loopback or with an admin token, off otherwise). ``switch`` is
    the option name without its dashes (``management``), used in the messages.
    """
    if setting is False:
        return Gate(False, f"{feature} is disabled on this server (--no-{switch})")
    if setting is None and admin_token is None and not is_loopback(host):
        denial = (
            f"{feature} is off because the server listens on {host}, beyond loopback, without "
            f"an admin token: start it with --admin-token TOKEN (or $TFMUX_ADMIN_TOKEN) to "
            f"require 'Authorization: Bearer TOKEN', or with --{switch} to allow it without "
            "a token (behind your own authentication)"
        )
        return Gate(False, denial, denial)
    warning = None
    if admin_token is None and not is_loopback(host):
        warning = (
            f"{feature} is open to anyone who can reach {host} without a token (--{switch} "
            "without --admin-token): make sure something in front of the server authenticates"
        )
    return Gate(True, "", warning)
