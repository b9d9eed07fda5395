"""Traffic management over REST, a tfmux extension beside the V2 model repository API.

``GET /v2/repository/models/{name}/traffic`` answers a model's labels, split and shadow:
``{"labels": {"stable": 1}, "split": {"stable": 90, "canary": 10}, "shadow": null}`` (an alias
answers its split, with ``"alias": true``). ``POST`` takes the same shape, any subset, plus
``allow_unavailable``, and answers the new state:

- ``labels`` are merged into the current ones; ``null`` removes a label;
- ``split`` replaces the split (``{}``: requests that name only the model go to the latest);
- ``shadow`` replaces the shadow (``null``: none); ``percent`` defaults to 100.

The whole change is validated by the service and swapped in atomically: no request sees half
of it. Reading is open to every client, like the repository index; a change needs management
switched on and the admin token when the server has one.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from tfmux.config import LABEL_RE, ShadowConfig, TrafficConfig
from tfmux.core.routing import Shadow
from tfmux.core.service import ServingService
from tfmux.core.traffic import Routing
from tfmux.errors import invalid_argument, not_found, unimplemented
from tfmux.transports.rest import Handler, Request, Response, authorization
from tfmux.transports.tfs_codec import dumps, parse_json, snippet

_PATH = re.compile(r"^/v2/repository/models/(?P<name>[^/]+)/traffic$")
_KEYS = ("labels", "split", "shadow", "allow_unavailable")
Json = dict[str, Any]


class TrafficRest:
    """Answers ``/v2/repository/models/{name}/traffic``; everything else is left alone."""

    def __init__(self, service: ServingService) -> None:
        self._service = service

    def route(self, method: str, path: str) -> Handler | None:
        match = _PATH.match(path)
        if match is None:
            return None
        handler = {"GET": self._get, "POST": self._post}.get(method)
        return None if handler is None else partial(handler, match["name"])  # None: 405

    async def _get(self, name: str, request: Request) -> Response:
        routing = self._service.routing(name)
        if routing is not None:
            return Response(body=dumps(encode(routing)))
        alias = self._service.alias(name)
        if alias is None:
            raise not_found(f"{name} is neither a configured model nor an alias")
        return Response(body=dumps({**encode(Routing(split=alias)), "alias": True}))

    async def _post(self, name: str, request: Request) -> Response:
        token = authorization(request)
        self._service.management.authorize(token)
        current = self._service.routing(name)
        if current is None:
            if self._service.alias(name) is not None:
                raise unimplemented(
                    f"alias {name} is set in the server's config file (aliases:) and cannot "
                    "be changed at run time"
                )
            raise not_found(f"Could not find any versions of model {name}")
        # From reading ``current`` to the update nothing awaits: no other change made through
        # this API can come in between on the event loop, so a merge never loses one.
        doc = _body(request.body)
        labels, config = parse_change(doc, current)
        allow = doc.get("allow_unavailable", False)
        if not isinstance(allow, bool):
            raise invalid_argument(f"'allow_unavailable' must be true or false: {snippet(allow)}")
        routing = self._service.set_traffic(name, labels, config, allow, token)
        return Response(body=dumps(encode(routing)))


def encode(routing: Routing) -> Json:
    """The JSON state of a model's routing."""
    shadow = routing.split.shadow
    return {
        "labels": dict(routing.labels),
        "split": dict(routing.split.weights),
        "shadow": None if shadow is None else {"target": shadow.target, "percent": shadow.percent},
    }


def parse_change(doc: Json, current: Routing) -> tuple[dict[str, int] | None, TrafficConfig | None]:
    """(new labels, new split and shadow) of a POST body; None keeps what is there. Only
    shapes and types are checked here: values (weights, targets, percent, versions) are the
    service's to validate, so every door refuses the same change the same way."""
    labels = None
    if "labels" in doc:
        labels = dict(current.labels)
        for label, version in _object(doc["labels"], "labels").items():
            if not LABEL_RE.match(label):  # also when removing it: the OpenAPI doc says so
                raise invalid_argument(f"label '{label}' must match {LABEL_RE.pattern}")
            if version is None:
                labels.pop(label, None)
            elif isinstance(version, int) and not isinstance(version, bool) and version >= 0:
                labels[label] = version
            else:
                raise invalid_argument(
                    f"label '{label}' must be a version number, or null to remove it, "
                    f"not {snippet(version)}"
                )
    if "split" not in doc and "shadow" not in doc:
        return labels, None
    split = _weights(doc["split"]) if "split" in doc else dict(current.split.weights)
    shadow = _shadow(doc["shadow"]) if "shadow" in doc else _kept(current.split.shadow)
    return labels, TrafficConfig(split=split, shadow=shadow)


def _body(body: bytes) -> Json:
    doc = _object(parse_json(body), "the request body") if body.strip() else {}
    unknown = sorted(set(doc) - set(_KEYS))
    if unknown:
        raise invalid_argument(f"unknown keys {unknown} (allowed: {', '.join(_KEYS)})")
    return doc


def _object(value: Any, what: str) -> Json:
    if not isinstance(value, dict):
        raise invalid_argument(f"{what} must be a JSON object, not {snippet(value)}")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _weights(value: Any) -> dict[str, float]:
    weights = _object(value, "'split'")
    for arm, weight in weights.items():
        if not _number(weight):
            raise invalid_argument(f"weight of '{arm}' must be a number, not {snippet(weight)}")
    return {arm: float(weight) for arm, weight in weights.items()}


def _shadow(value: Any) -> ShadowConfig | None:
    if value is None:
        return None
    doc = _object(value, "'shadow'")
    target, percent = doc.get("target"), doc.get("percent", 100.0)
    if set(doc) - {"target", "percent"} or not isinstance(target, str) or not _number(percent):
        raise invalid_argument(
            f'\'shadow\' must be {{"target": label or version, "percent": number}} or null, '
            f"not {snippet(doc)}"
        )
    # Unvalidated on purpose: the service checks the target and the range of the percent.
    return ShadowConfig.model_construct(target=target, percent=float(percent))


def _kept(shadow: Shadow | None) -> ShadowConfig | None:
    if shadow is None:
        return None
    return ShadowConfig(target=shadow.target, percent=shadow.percent)
