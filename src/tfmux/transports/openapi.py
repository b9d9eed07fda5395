"""The OpenAPI 3.1 description of tfmux's whole REST surface, served at GET /openapi.json.

TF Serving's /v1 API, the KServe V2 /v2 API (with the binary tensor data and model repository
extensions), health, metrics and this document itself. ``document()`` builds it as data.
"""

from __future__ import annotations

import re
from typing import Any

import tfmux
from tfmux.transports import status_openapi
from tfmux.transports.rest import Handler, Request, Response
from tfmux.transports.tfs_codec import dumps
from tfmux.transports.v2_types import DATATYPE_OF

PATH = "/openapi.json"
Json = dict[str, Any]

ANY: Json = {}
STRING: Json = {"type": "string"}
OBJECT: Json = {"type": "object"}
TEXT_BODY: Json = {"text/plain": {"schema": STRING}}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: Json, required: tuple[str, ...] = (), **extra: Any) -> Json:
    schema: Json = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def _array(items: Json) -> Json:
    return {"type": "array", "items": items}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), 'The error: {"error": message}')
EMPTY_OK: Json = {"description": "OK (empty body)", "content": TEXT_BODY}
HEADER_LENGTH: Json = {
    "description": "Length of the JSON header when binary tensor data follows it",
    "schema": {"type": "integer", "minimum": 0},
}
BINARY_BODY: Json = {
    "schema": {"type": "string", "format": "binary"},
    "description": "JSON header, then raw tensors (little-endian, row-major; BYTES elements "
    "as a 4-byte little-endian length and the bytes)",
}


def _param(name: str, where: str = "path", schema: Json = STRING) -> Json:
    return {"name": name, "in": where, "required": where == "path", "schema": schema}


# Inference: the caller's sticky key for splits, and what answered (the arm, when a split chose).
ROUTING_KEY = _param("X-Routing-Key", "header")
SERVED = {name: {"schema": STRING} for name in ("X-Model-Name", "X-Model-Version", "X-Model-Arm")}


def _served(ok: Json) -> Json:
    return {**ok, "headers": {**ok.get("headers", {}), **SERVED}}


def _item(
    method: str,
    path: str,
    summary: str,
    ok: Json,
    body: Json | None = None,
    responses: Json | None = None,
    headers: tuple[Json, ...] = (),
) -> Json:
    """A path item with one operation; path parameters are read from the template (strings)."""
    operation: Json = {
        "operationId": method + "_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_"),
        "summary": summary,
        "tags": [_tag(path)],
        "parameters": [_param(n) for n in re.findall(r"{(\w+)}", path)] + list(headers),
        "responses": {"200": ok, "4XX": ERROR, "5XX": ERROR, **(responses or {})},
    }
    if body is not None:
        operation["requestBody"] = body
    return {method: operation}


def _tag(path: str) -> str:
    if path.startswith("/v1/"):
        return "TF Serving"
    if path.startswith("/v2") and "/health/" not in path:
        return "KServe V2"
    return "Operations"


def _tfs_paths() -> Json:
    predict = {"required": True, "content": {"application/json": {"schema": _ref("Predict")}}}
    examples = {"required": True, "content": {"application/json": {"schema": _ref("Examples")}}}
    paths: Json = {}
    for prefix in (
        "/v1/models/{model_name}",
        "/v1/models/{model_name}/versions/{version}",
        "/v1/models/{model_name}/labels/{label}",
    ):
        verbs = {
            "": ("get", "Model version status", _json(_ref("ModelStatus"), "Status"), None),
            "/metadata": ("get", "Signature defs", _json(OBJECT, "SignatureDefMap"), None),
            ":predict": ("post", "Predict", _json(_ref("PredictResult"), "Outputs"), predict),
            ":classify": ("post", "Classify", _json(_ref("Results"), "Classes"), examples),
            ":regress": ("post", "Regress", _json(_ref("Results"), "Values"), examples),
        }
        for suffix, (method, summary, ok, body) in verbs.items():
            infers = method == "post"
            paths[prefix + suffix] = _item(
                method,
                prefix + suffix,
                summary,
                _served(ok) if infers else ok,
                body,
                headers=(ROUTING_KEY,) if infers else (),
            )
    return paths


def _v2_paths() -> Json:
    infer_body = {
        "required": True,
        "content": {
            "application/json": {"schema": _ref("InferenceRequest")},
            "application/octet-stream": BINARY_BODY,
        },
    }
    infer_ok = {
        "description": "Outputs; binary ones follow the JSON header",
        "headers": {"Inference-Header-Content-Length": HEADER_LENGTH},
        "content": {
            "application/json": {"schema": _ref("InferenceResponse")},
            "application/octet-stream": BINARY_BODY,
        },
    }
    length = _param("Inference-Header-Content-Length", "header", HEADER_LENGTH["schema"])
    not_ready = {"400": {"description": "Not ready", "content": {"application/json": {}}}}
    paths = {"/v2": _item("get", "/v2", "Server metadata", _json(_ref("Server"), "OK"))}
    for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        ready, infer = prefix + "/ready", prefix + "/infer"
        paths[prefix] = _item("get", prefix, "Model metadata", _json(_ref("ModelMetadata"), "OK"))
        paths[ready] = _item("get", ready, "Model readiness", EMPTY_OK, responses=not_ready)
        paths[infer] = _item(
            "post", infer, "Inference", _served(infer_ok), infer_body, headers=(length, ROUTING_KEY)
        )
    index = "/v2/repository/index"
    index_body = {"content": {"application/json": {"schema": _obj({"ready": {"type": "boolean"}})}}}
    index_ok = _json(_array(_ref("IndexEntry")), "Every configured model version and its state")
    paths[index] = _item("post", index, "Repository index", index_ok, index_body)
    control = {"content": {"application/json": {"schema": _obj({"parameters": OBJECT})}}}
    for action in ("load", "unload"):
        path = f"/v2/repository/models/{{model_name}}/{action}"
        summary = f"{action.capitalize()} a configured model, or a repository folder, by name"
        paths[path] = _item("post", path, summary, EMPTY_OK, control)
        paths[path]["post"]["security"] = [{}, {"adminToken": []}]  # the token, when set
    path = "/v2/repository/models/{model_name}/traffic"  # tfmux's traffic extension
    state = _json(_ref("Traffic"), "Labels, split and shadow (after the change)")
    change = {"required": True, "content": {"application/json": {"schema": _ref("Traffic")}}}
    paths[path] = _item("get", path, "Traffic of a model or alias", state) | _item(
        "post", path, "Move labels, replace the split or shadow, atomically", state, change
    )
    paths[path]["post"]["security"] = [{}, {"adminToken": []}]
    return paths


def _ops_paths() -> Json:
    metrics = {"description": "Prometheus text format", "content": TEXT_BODY}
    not_ready = {"503": {"description": "Not ready", "content": TEXT_BODY}}
    paths = {
        "/v2/health/live": _item("get", "/v2/health/live", "Liveness", EMPTY_OK),
        "/v2/health/ready": _item(
            "get", "/v2/health/ready", "Every eager load has ended", EMPTY_OK, responses=not_ready
        ),
        PATH: _item("get", PATH, "This document", _json(OBJECT, "OpenAPI 3.1")),
    }
    for path in ("/metrics", "/monitoring/prometheus/metrics"):
        paths[path] = _item("get", path, "Prometheus metrics", metrics)
    return paths


def _tensor(*extra: tuple[str, Json]) -> Json:
    base = {
        "name": STRING,
        "datatype": _ref("Datatype"),
        "shape": _array({"type": "integer", "minimum": -1}),
    }
    return _obj(base | dict(extra), ("name", "datatype", "shape"))


def _schemas() -> Json:
    parameters = {"type": "object", "additionalProperties": True}
    data = {"description": "Row-major values, flat or nested lists"}
    return {
        "Error": _obj({"error": STRING}, ("error",)),
        "ModelStatus": _obj(
            {
                "model_version_status": _array(
                    _obj(
                        {
                            "version": STRING,
                            "state": {
                                "enum": [
                                    "UNKNOWN",
                                    "START",
                                    "LOADING",
                                    "AVAILABLE",
                                    "UNLOADING",
                                    "END",
                                ]
                            },
                            "status": _obj({"error_code": STRING, "error_message": STRING}),
                        }
                    )
                )
            }
        ),
        "Predict": _obj(
            {"signature_name": STRING, "instances": _array(ANY), "inputs": ANY},
            oneOf=[{"required": ["instances"]}, {"required": ["inputs"]}],
        ),
        "PredictResult": _obj({"predictions": ANY, "outputs": ANY}),
        "Examples": _obj(
            {"signature_name": STRING, "context": OBJECT, "examples": _array(OBJECT)},
            ("examples",),
        ),
        "Results": _obj({"results": _array(ANY)}, ("results",)),
        "Datatype": {"enum": sorted(DATATYPE_OF.values())},
        "Server": _obj(
            {"name": STRING, "version": STRING, "extensions": _array(STRING)},
            ("name", "version", "extensions"),
        ),
        "ModelMetadata": _obj(
            {
                "name": STRING,
                "versions": _array(STRING),
                "platform": STRING,
                "inputs": _array(_tensor()),
                "outputs": _array(_tensor()),
            },
            ("name", "platform", "inputs", "outputs"),
        ),
        "InferenceRequest": _obj(
            {
                "id": STRING,
                "parameters": parameters,
                "inputs": _array(_tensor(("parameters", parameters), ("data", data))),
                "outputs": _array(_obj({"name": STRING, "parameters": parameters}, ("name",))),
            },
            ("inputs",),
        ),
        "InferenceResponse": _obj(
            {
                "model_name": STRING,
                "model_version": STRING,
                "id": STRING,
                "outputs": _array(_tensor(("parameters", parameters), ("data", data))),
            },
            ("model_name", "outputs"),
        ),
        "Traffic": _obj(
            {
                "labels": {"type": "object", "additionalProperties": {"type": ["integer", "null"]}},
                "split": {"type": "object", "additionalProperties": {"type": "number"}},
                "shadow": {
                    "oneOf": [
                        {"type": "null"},
                        _obj({"target": STRING, "percent": {"type": "number"}}, ("target",)),
                    ]
                },
                "allow_unavailable": {"type": "boolean"},  # in a change only
                "alias": {"type": "boolean"},  # in the state of an alias only
            }
        ),
        "IndexEntry": _obj(
            {
                "name": STRING,
                "version": STRING,
                "state": {"enum": ["READY", "UNAVAILABLE", "LOADING", "UNLOADING", "UNKNOWN"]},
                "reason": STRING,
                "memory_bytes": {"type": "integer", "minimum": 0},  # tfmux's: once loaded
                "memory_measured": {"type": "boolean"},
            },
            ("name", "state"),
        ),
    }


def document() -> Json:
    """The OpenAPI document as plain data."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tfmux",
            "version": tfmux.__version__,
            "description": "Serve many TensorFlow SavedModels: TF Serving REST and KServe V2.",
        },
        "paths": _tfs_paths() | _v2_paths() | _ops_paths() | status_openapi.paths(),
        "components": {
            "schemas": _schemas() | status_openapi.schemas(),
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }


_BODY = dumps(document())


def route(method: str, path: str) -> Handler | None:
    """The REST route for GET /openapi.json."""
    if path != PATH or method != "GET":
        return None
    return _serve


async def _serve(request: Request) -> Response:
    return Response(body=_BODY)
