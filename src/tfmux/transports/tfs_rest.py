"""TF Serving's REST API (/v1/models/...): status, metadata, predict, classify, regress."""

from __future__ import annotations

import re

from tfmux.core.service import ServingService
from tfmux.errors import invalid_argument
from tfmux.transports import tfs_json
from tfmux.transports.rest import Handler, Request, Response, routing_key, served_by
from tfmux.transports.tfs_results import examples_input
from tfmux.types import CLASSIFY_METHOD, REGRESS_METHOD, ModelRef

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+))?"
    r"(?:/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>/metadata|:predict|:classify|:regress)?$"
)


class TfServingRest:
    """Answers /v1 paths; everything else is left to other routes."""

    def __init__(self, service: ServingService) -> None:
        self._service = service

    def route(self, method: str, path: str) -> Handler | None:
        match = _PATH.match(path)
        if match is None:
            return None
        verb = match["verb"] or ""
        wanted = "GET" if verb in ("", "/metadata") else "POST"
        if method != wanted:
            return None  # the app answers 405
        handler = {
            "": self._status,
            "/metadata": self._metadata,
            ":predict": self._predict,
            ":classify": self._classify,
            ":regress": self._regress,
        }[verb]
        ref = match["name"], match["version"], match["label"]

        async def call(request: Request) -> Response:
            return await handler(_model_ref(*ref, routing_key(request)), request)

        return call

    async def _status(self, ref: ModelRef, request: Request) -> Response:
        if ref.label is not None:
            ref = ModelRef(ref.name, self._service.resolve_version(ref))
        return Response(body=tfs_json.encode_status(self._service.status(ref.name, ref.version)))

    async def _metadata(self, ref: ModelRef, request: Request) -> Response:
        meta = await self._service.metadata(ref)
        return Response(body=tfs_json.encode_metadata(meta.name, meta.version, meta.signatures))

    async def _predict(self, ref: ModelRef, request: Request) -> Response:
        parsed = tfs_json.parse_predict(request.body)
        result = await self._service.infer(
            ref,
            lambda signature: tfs_json.decode_inputs(parsed, signature),
            signature_name=parsed.signature_name,
            gone=request.gone,
        )
        body = tfs_json.encode_predict(result.outputs, parsed.format)
        return Response(body=body, headers=served_by(result))

    async def _classify(self, ref: ModelRef, request: Request) -> Response:
        return await self._examples(ref, request, "classify", CLASSIFY_METHOD)

    async def _regress(self, ref: ModelRef, request: Request) -> Response:
        return await self._examples(ref, request, "regress", REGRESS_METHOD)

    async def _examples(
        self, ref: ModelRef, request: Request, method: str, method_name: str
    ) -> Response:
        """Classify or regress: tf.Examples into the signature's one input."""
        signature_name, examples = tfs_json.parse_examples(request.body)
        result = await self._service.infer(
            ref,
            lambda signature: {examples_input(signature, method_name): examples},
            signature_name=signature_name,
            method=method,
            gone=request.gone,
        )
        encode = tfs_json.encode_classify if method == "classify" else tfs_json.encode_regress
        return Response(body=encode(result.outputs), headers=served_by(result))


def _model_ref(name: str, version: str | None, label: str | None, key: str | None) -> ModelRef:
    if version is not None and label is not None:
        raise invalid_argument("a request may name a version or a label, not both")
    if version is not None and not (version.isascii() and version.isdigit()):
        raise invalid_argument(f"version must be a non-negative integer, not '{version}'")
    return ModelRef(name, int(version) if version is not None else None, label, key)
