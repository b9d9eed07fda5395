"""KServe V2 / Open Inference Protocol REST (/v2): server and model metadata, model readiness,
inference (JSON and binary tensors), and the model repository extension.

Health (/v2/health/*) is answered by ``ops_rest``; this route leaves those paths alone.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import tfmux
from tfmux.core.service import LoadFailed, ServingService
from tfmux.errors import failed_precondition, invalid_argument, not_found
from tfmux.transports import v2_json
from tfmux.transports.rest import (
    Handler,
    Request,
    Response,
    authorization,
    routing_key,
    served_by,
)
from tfmux.transports.tfs_codec import dumps, parse_json, snippet
from tfmux.transports.tfs_json import encode_error
from tfmux.transports.v2_types import (
    IndexEntry,
    deadline_after,
    model_metadata,
    model_ref,
    refuse_model_files,
    repository_index,
)
from tfmux.types import DEFAULT_SIGNATURE, ModelRef, VersionStatus

EXTENSIONS = ("binary_tensor_data", "model_repository")
TEXT = b"text/plain; charset=utf-8"
OCTET_STREAM = b"application/octet-stream"
_HEADER_LENGTH = v2_json.HEADER_LENGTH.lower().encode()
_MODEL = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<verb>/ready|/infer)?$"
)
_CONTROL = re.compile(r"^/v2/repository/models/(?P<name>[^/]+)/(?P<action>load|unload)$")


class KServeRest:
    """Answers /v2 paths other than health; everything else is left to other routes."""

    def __init__(self, service: ServingService) -> None:
        self._service = service
        self._server_metadata = dumps(
            {"name": "tfmux", "version": tfmux.__version__, "extensions": list(EXTENSIONS)}
        )

    def route(self, method: str, path: str) -> Handler | None:
        endpoint = self._endpoint(path)
        if endpoint is None:
            return None
        allowed, handler = endpoint
        return handler if method == allowed else None  # the app answers 405

    def _endpoint(self, path: str) -> tuple[str, Handler] | None:
        if path == "/v2":
            return "GET", self._server
        if path == "/v2/repository/index":
            return "POST", self._index
        control = _CONTROL.match(path)
        if control is not None:
            action = self._load if control["action"] == "load" else self._unload
            return "POST", partial(action, control["name"])
        model = _MODEL.match(path)
        if model is None:
            return None
        verb = model["verb"]
        handler = {None: self._metadata, "/ready": self._ready, "/infer": self._infer}[verb]
        return ("POST" if verb == "/infer" else "GET"), partial(
            handler, model["name"], model["version"]
        )

    async def _server(self, request: Request) -> Response:
        return Response(body=self._server_metadata)

    async def _metadata(self, name: str, version: str | None, request: Request) -> Response:
        meta = await self._service.metadata(_model_ref(name, version))
        signature = meta.signatures.get(DEFAULT_SIGNATURE)
        if signature is None:
            raise failed_precondition(
                f"model {meta.name} version {meta.version} has no '{DEFAULT_SIGNATURE}' "
                f"signature to describe (it has: {', '.join(sorted(meta.signatures)) or 'none'})"
            )
        statuses = self._service.status(meta.name)  # the concrete model, for MODEL@LABEL
        available = [s.version for s in statuses if s.state == "AVAILABLE"]
        versions = sorted({*available, meta.version})
        return Response(body=dumps(model_metadata(meta.name, meta.version, versions, signature)))

    async def _ready(self, name: str, version: str | None, request: Request) -> Response:
        """200 when the named version (or any, for the latest) is AVAILABLE; 400 otherwise,
        as Triton answers; 404 for a model that is not configured (or an unknown label)."""
        ref = _model_ref(name, version)
        number = ref.version
        if ref.label is not None:
            number = self._service.resolve_version(ref)
        statuses = [s for s in self._statuses(ref.name) if number is None or s.version == number]
        if any(s.state == "AVAILABLE" for s in statuses):
            return Response(200, b"", TEXT)
        which = f"model {ref.name}" + ("" if number is None else f" version {number}")
        states = ", ".join(f"{s.version}: {s.state}" for s in statuses) or "no such version"
        return Response(400, encode_error(f"{which} is not ready ({states})"))

    async def _infer(self, name: str, version: str | None, request: Request) -> Response:
        encoding = request.headers.get(b"content-encoding", b"identity").decode("latin-1")
        if encoding.strip().lower() != "identity":
            return Response(415, encode_error(f"Content-Encoding '{encoding}' is not supported"))
        parsed = v2_json.parse_infer(request.body, request.headers.get(_HEADER_LENGTH))
        key = parsed.routing_key if parsed.routing_key is not None else routing_key(request)
        result = await self._service.infer(
            _model_ref(name, version, parsed.version_label, key),
            parsed.inputs,
            signature_name=parsed.signature_name,
            output_names=parsed.output_names(),
            method="infer",
            deadline=deadline_after(parsed.timeout_us),
            gone=request.gone,
        )
        body, header_length = v2_json.encode_infer(parsed, result)
        if header_length is None:
            return Response(body=body, headers=served_by(result))
        header = (_HEADER_LENGTH, str(header_length).encode())
        return Response(body=body, content_type=OCTET_STREAM, headers=[header, *served_by(result)])

    # -- model repository extension ----------------------------------------------------------

    async def _index(self, request: Request) -> Response:
        ready_only = _flag(_body_object(request.body), "ready") or False
        return Response(
            body=dumps([_entry_json(e) for e in repository_index(self._service, ready_only)])
        )

    async def _load(self, name: str, request: Request) -> Response:
        refuse_model_files(_control_parameters(request.body))
        try:
            await self._service.load_model(name, authorization(request))
        except LoadFailed as exc:  # Triton answers 400 for a load that fails
            raise invalid_argument(exc.message) from exc
        return Response(200, b"", TEXT)

    async def _unload(self, name: str, request: Request) -> Response:
        params = _control_parameters(request.body)
        _flag(params, "unload_dependents")  # tfmux models have no dependents
        await self._service.unload_model(name, authorization(request))
        return Response(200, b"", TEXT)

    def _statuses(self, name: str) -> list[VersionStatus]:
        """Statuses of a configured model's versions; NOT_FOUND if it is not configured."""
        entries = [status for model, status in self._service.repository_index() if model == name]
        if not entries:
            raise not_found(f"Could not find any versions of model {name}")
        return [s for s in entries if s is not None]


def _model_ref(
    name: str, version: str | None, label: str | None = None, key: str | None = None
) -> ModelRef:
    """The model (``MODEL@LABEL`` too), version, label and routing key a path and body name."""
    if version is not None and not (version.isascii() and version.isdigit()):
        raise invalid_argument(f"version must be a non-negative integer, not '{version}'")
    return model_ref(name, int(version) if version is not None else None, label, key)


def _body_object(body: bytes) -> dict[str, Any]:
    """A management request's JSON object; an empty body is an empty object."""
    if not body.strip():
        return {}
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise invalid_argument(f"the request body must be a JSON object, not {snippet(doc)}")
    return doc


def _control_parameters(body: bytes) -> dict[str, Any]:
    """The ``parameters`` object of a load or unload request (empty when absent)."""
    params = _body_object(body).get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise invalid_argument(f"'parameters' must be an object, not {snippet(params)}")
    return params


def _flag(doc: dict[str, Any], key: str) -> bool | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, bool):
        raise invalid_argument(f"'{key}' must be true or false, not {snippet(value)}")
    return value


def _entry_json(entry: IndexEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": entry.name}
    if entry.version is not None:
        doc["version"] = entry.version
    doc |= {"state": entry.state, "reason": entry.reason}
    if entry.memory_bytes is not None:  # tfmux's own keys: what the version costs
        doc |= {"memory_bytes": entry.memory_bytes, "memory_measured": entry.memory_measured}
    return doc
