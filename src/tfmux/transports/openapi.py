"""The OpenAPI 3.1 description of tfmux's whole REST surface, served at GET /openapi.json.

The document is the contract: every constraint the server enforces on a path, header or body
is stated here, and the server rejects what the document forbids (tests/test_openapi_contract.py
runs schemathesis with every check against a live server). What no schema can state is named in
the descriptions: an inference body's tensors must fit the model's signature and their shapes.

Paths come in areas, each a dict of path items built by its own function (``AREAS``): TF
Serving's /v1, the KServe V2 /v2 inference API, model management (the V2 repository extension
and tfmux's traffic extension, behind the admin token), and operations (health, metrics, this
document). ``document()`` builds it as data for one server: its model names as examples, and
the admin token required when the server has one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import tfmux
from tfmux.config import LABEL_RE, MODEL_NAME_RE
from tfmux.core.service import ServingService
from tfmux.transports import status_openapi
from tfmux.transports.openapi_schemas import (
    BINARY_BODY,
    EMPTY_OK,
    ERROR,
    HEADER_LENGTH,
    OBJECT,
    STRING,
    TEXT_BODY,
    UNAVAILABLE,
    Json,
    array,
    nullable,
    nullable_obj,
    obj,
    ref,
    schemas,
    served,
    tag,
)
from tfmux.transports.openapi_schemas import (
    body as _body,
)
from tfmux.transports.openapi_schemas import (
    json_response as _json,
)
from tfmux.transports.rest import Handler, Request, Response
from tfmux.transports.tfs_codec import dumps

PATH = "/openapi.json"

MODEL_NAME: Json = {"type": "string", "pattern": MODEL_NAME_RE.pattern}
LABEL: Json = {"type": "string", "pattern": LABEL_RE.pattern}
# V2 names a label in the model name too: MODEL@LABEL.
MODEL_OR_ALIAS: Json = {
    "type": "string",
    "pattern": MODEL_NAME_RE.pattern[:-1] + "(@" + LABEL_RE.pattern[1:-1] + ")?$",
}
VERSION: Json = {"type": "integer", "minimum": 0}


class Doc:
    """What one server's document says beyond the fixed surface: examples of its model names,
    and whether management calls need the admin token."""

    def __init__(
        self, models: Iterable[str] = (), labels: Iterable[str] = (), admin_token: bool = False
    ) -> None:
        self.examples = {"model_name": sorted(set(models)), "label": sorted(set(labels))}
        self.admin_token = admin_token

    def param(self, name: str, schema: Json = STRING, where: str = "path") -> Json:
        """A parameter; model names and labels have the server's as examples."""
        param: Json = {"name": name, "in": where, "required": where == "path", "schema": schema}
        if self.examples.get(name):
            param["examples"] = {value: {"value": value} for value in self.examples[name]}
        return param

    def item(
        self,
        method: str,
        path: str,
        summary: str,
        ok: Json,
        body: Json | None = None,
        params: Json | None = None,
        headers: tuple[Json, ...] = (),
        responses: Json | None = None,
    ) -> Json:
        """A path item with one operation; its path parameters are read from the template and
        typed by ``params`` (strings otherwise)."""
        names = re.findall(r"{(\w+)}", path)
        operation: Json = {
            "operationId": method + "_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_"),
            "summary": summary,
            "tags": [tag(path)],
            "parameters": [self.param(n, (params or {}).get(n, STRING)) for n in names]
            + list(headers),
            "responses": {"200": ok, "4XX": ERROR, "5XX": ERROR}
            | ({"503": UNAVAILABLE} if "model_name" in names else {})
            | (responses or {}),
        }
        if body is not None:
            operation["requestBody"] = body
        return {method: operation}

    def managed(self, item: Json) -> Json:
        """A management operation: the bearer admin token, when the server has one."""
        for operation in item.values():
            operation["security"] = [{"adminToken": []}] if self.admin_token else [{}]
        return item


def tfs_paths(doc: Doc) -> Json:
    """TF Serving's REST API: status, metadata, predict, classify, regress."""
    model = "An inference body's values must fit the model's signature."
    predict = _body(ref("Predict"), description=model)
    examples = _body(ref("Examples"), description=model)
    params = {"model_name": MODEL_NAME, "version": VERSION, "label": LABEL}
    key = doc.param("X-Routing-Key", where="header")
    paths: Json = {}
    for prefix in (
        "/v1/models/{model_name}",
        "/v1/models/{model_name}/versions/{version}",
        "/v1/models/{model_name}/labels/{label}",
    ):
        verbs = {
            "": ("get", "Model version status", _json(ref("ModelStatus"), "Status"), None),
            "/metadata": ("get", "Signature defs", _json(OBJECT, "SignatureDefMap"), None),
            ":predict": ("post", "Predict", _json(ref("PredictResult"), "Outputs"), predict),
            ":classify": ("post", "Classify", _json(ref("Results"), "Classes"), examples),
            ":regress": ("post", "Regress", _json(ref("Results"), "Values"), examples),
        }
        for suffix, (method, summary, ok, body) in verbs.items():
            infers = method == "post"
            paths[prefix + suffix] = doc.item(
                method,
                prefix + suffix,
                summary,
                served(ok) if infers else ok,
                body,
                params,
                headers=(key,) if infers else (),
            )
    return paths


def v2_paths(doc: Doc) -> Json:
    """KServe V2 inference: server and model metadata, readiness, inference."""
    infer_body = _body(
        ref("InferenceRequest"),
        description="The inputs must fit the model's signature and each its shape. With the "
        "binary tensor data extension the body is this JSON header followed by the raw "
        "tensors, and Inference-Header-Content-Length gives the header's length.",
    )
    infer_ok = {
        "description": "Outputs; binary ones follow the JSON header",
        "headers": {"Inference-Header-Content-Length": HEADER_LENGTH},
        "content": {
            "application/json": {"schema": ref("InferenceResponse")},
            "application/octet-stream": BINARY_BODY,
        },
    }
    headers = (
        doc.param("Inference-Header-Content-Length", HEADER_LENGTH["schema"], "header"),
        doc.param("X-Routing-Key", where="header"),
    )
    not_ready = {"400": {"description": "Not ready", "content": {"application/json": {}}}}
    paths = {"/v2": doc.item("get", "/v2", "Server metadata", _json(ref("Server"), "OK"))}
    for prefix, params in (
        ("/v2/models/{model_name}", {"model_name": MODEL_OR_ALIAS}),
        (
            "/v2/models/{model_name}/versions/{model_version}",
            {"model_name": MODEL_NAME, "model_version": VERSION},
        ),
    ):
        ready, infer = prefix + "/ready", prefix + "/infer"
        meta = _json(ref("ModelMetadata"), "OK")
        paths[prefix] = doc.item("get", prefix, "Model metadata", meta, params=params)
        paths[ready] = doc.item(
            "get", ready, "Model readiness", EMPTY_OK, params=params, responses=not_ready
        )
        paths[infer] = doc.item(
            "post", infer, "Inference", served(infer_ok), infer_body, params, headers
        )
    return paths


def management_paths(doc: Doc) -> Json:
    """The V2 model repository extension and tfmux's traffic extension. Reading is open;
    changes need management on and, when the server has one, the admin token."""
    index = "/v2/repository/index"
    index_body = _body(obj({"ready": nullable("boolean")}), required=False)
    index_ok = _json(array(ref("IndexEntry")), "Every configured model version and its state")
    paths = {index: doc.item("post", index, "Repository index", index_ok, index_body)}
    params = {"model_name": MODEL_NAME}
    # A load never brings a model config or files: only the configured repositories.
    no_files = {"propertyNames": {"not": {"anyOf": [{"const": "config"}, {"pattern": "^file:"}]}}}
    bodies = {
        "load": obj({"parameters": nullable_obj({}) | no_files}),
        "unload": obj({"parameters": nullable_obj({"unload_dependents": nullable("boolean")})}),
    }
    for action, schema in bodies.items():
        path = f"/v2/repository/models/{{model_name}}/{action}"
        summary = f"{action.capitalize()} a configured model, or a repository folder, by name"
        body = _body(schema, required=False)
        paths[path] = doc.managed(doc.item("post", path, summary, EMPTY_OK, body, params))
    path = "/v2/repository/models/{model_name}/traffic"
    traffic = {"model_name": {"type": "string", "pattern": "^[^/]+$"}}  # a model or an alias
    state = _json(ref("Traffic"), "Labels, split and shadow (after the change)")
    change = _body(
        ref("TrafficChange"),
        required=False,  # an empty body changes nothing and answers the state
        description="Labels must name served versions, and split arms and the shadow target "
        "labels or versions of the model",
    )
    paths[path] = doc.item("get", path, "Traffic of a model or alias", state, params=traffic)
    paths[path] |= doc.managed(
        doc.item(
            "post",
            path,
            "Move labels, replace the split or shadow, atomically",
            state,
            change,
            traffic,
        )
    )
    return paths


def ops_paths(doc: Doc) -> Json:
    """Health, Prometheus metrics and this document."""
    metrics = {"description": "Prometheus text format", "content": TEXT_BODY}
    not_ready = {"503": {"description": "Not ready", "content": TEXT_BODY}}
    paths = {
        "/v2/health/live": doc.item("get", "/v2/health/live", "Liveness", EMPTY_OK),
        "/v2/health/ready": doc.item(
            "get", "/v2/health/ready", "Every eager load has ended", EMPTY_OK, responses=not_ready
        ),
        PATH: doc.item("get", PATH, "This document", _json(OBJECT, "OpenAPI 3.1")),
    }
    for path in ("/metrics", "/monitoring/prometheus/metrics"):
        paths[path] = doc.item("get", path, "Prometheus metrics", metrics)
    return paths


# Every area of the REST surface; a new area adds its function here.
AREAS: tuple[Callable[[Doc], Json], ...] = (
    tfs_paths,
    v2_paths,
    management_paths,
    ops_paths,
    lambda _doc: status_openapi.paths(),
)


def document(
    models: Iterable[str] = (), labels: Iterable[str] = (), admin_token: bool = False
) -> Json:
    """The OpenAPI document as plain data, for a server with ``models`` and ``labels``
    (examples of path parameters) that does or does not want an admin token for management."""
    doc = Doc(models, labels, admin_token)
    paths: Json = {}
    for area in AREAS:
        paths |= area(doc)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tfmux",
            "version": tfmux.__version__,
            "description": "Serve many TensorFlow SavedModels: TF Serving REST and KServe V2.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas() | status_openapi.schemas(),
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The server's --admin-token, for management calls",
                }
            },
        },
    }


class OpenApiRest:
    """GET /openapi.json: the document for the models and labels the server knows when asked."""

    def __init__(self, service: ServingService, admin_token: bool) -> None:
        self._service = service
        self._admin_token = admin_token

    def route(self, method: str, path: str) -> Handler | None:
        return self._serve if method == "GET" and path == PATH else None

    async def _serve(self, request: Request) -> Response:
        models = sorted({name for name, _ in self._service.repository_index()})
        routing = self._service.routing
        labels = {label for m in models for label in getattr(routing(m), "labels", ())}
        return Response(body=dumps(document(models, labels, self._admin_token)))
