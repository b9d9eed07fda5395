"""Where the gateway finds the request router Serve built in its process.

Ray Serve pickles a router class *by value* (its whole module), so the router module keeps
no state of its own; routers register here, a module pickled by reference.
"""

from __future__ import annotations

import threading
from typing import Any

_ROUTERS: dict[str, Any] = {}
_CREATED = threading.Condition()


def register(deployment: str, router: Any) -> None:
    with _CREATED:
        _ROUTERS[deployment] = router
        _CREATED.notify_all()


def router_for(deployment: str, timeout: float = 60.0) -> Any:
    """The router for ``deployment`` (``app#name``), once Serve has built it."""
    with _CREATED:
        if not _CREATED.wait_for(lambda: deployment in _ROUTERS, timeout):
            raise TimeoutError(f"no request router was created for {deployment}")
        return _ROUTERS[deployment]
