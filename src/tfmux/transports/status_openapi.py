"""The OpenAPI description of the status API and the dashboard (merged into /openapi.json)."""

from __future__ import annotations

from typing import Any

from tfmux.core.events import EVENT_KINDS

Json = dict[str, Any]

STRING: Json = {"type": "string"}
INTEGER: Json = {"type": "integer"}
NUMBER: Json = {"type": "number"}
BOOLEAN: Json = {"type": "boolean"}
ERROR = {
    "description": 'The error: {"error": message}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
# Who may read: open on loopback; beyond it the admin token (unless --dashboard).
SECURITY = [{}, {"adminToken": []}]


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Json) -> Json:
    return {"oneOf": [schema, {"type": "null"}]}


def _obj(properties: Json, cluster: Json | None = None) -> Json:
    """Every property required; ``cluster``: more, present only on a cluster gateway."""
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    if cluster:
        schema["properties"] = properties | cluster
    return schema


# The cluster gateway's additions (tfmux serve --ray): replicas, and where versions live.
PLACEMENT = _obj(
    {
        "replica": STRING,
        "node": STRING,
        "state": {"enum": ["LOADING", "AVAILABLE", "UNLOADING"]},
        "memory_bytes": _nullable(INTEGER),
    }
)
REPLICA = _obj(
    {
        "replica": STRING,
        "node": STRING,
        "state": {"enum": ["up", "unreachable"]},
        "message": STRING,
        "memory_used_bytes": INTEGER,
        "memory_budget_bytes": _nullable(INTEGER),
        "models": {"type": "array", "items": STRING},
        "inflight": INTEGER,
        "requests": INTEGER,
        "misses": INTEGER,
        "requests_per_second": NUMBER,
    }
)
HOLDERS = "cluster gateway only: the replicas that hold it"


def _get(operation_id: str, summary: str, schema: Json, parameters: list[Json]) -> Json:
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["Status"],
            "parameters": parameters,
            "security": SECURITY,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
                "4XX": ERROR,
            },
        }
    }


def _query(name: str, schema: Json, description: str) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def paths() -> Json:
    busiest = {"type": "integer", "minimum": 0, "maximum": 50, "default": 5}
    page = {"description": "The dashboard page", "content": {"text/html": {"schema": STRING}}}
    return {
        "/status": _get(
            "get_status", "Every model and version, memory, events", _ref("Status"), []
        ),
        "/status/history": _get(
            "get_status_history",
            "Bounded time series: overall, the busiest models and named ones",
            _ref("History"),
            [
                _query("model", STRING, "a model whose series to include (repeatable, up to 20)"),
                _query("busiest", busiest, "how many of the busiest models to include"),
            ],
        ),
        "/status/events": _get(
            "get_status_events",
            "Recent lifecycle events, oldest first",
            _obj({"events": {"type": "array", "items": _ref("Event")}}),
            [_query("after", {"type": "integer", "minimum": 0}, "only events with a larger id")],
        ),
        "/dashboard": {
            "get": {
                "operationId": "get_dashboard",
                "summary": "The live dashboard (a page over the status API)",
                "tags": ["Status"],
                "parameters": [],
                "responses": {"200": page, "4XX": ERROR},
            }
        },
    }


def schemas() -> Json:
    series = {"type": "array", "items": _nullable(NUMBER)}
    number = _nullable(NUMBER)
    version = _obj(
        {
            "version": INTEGER,
            "state": {"enum": ["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
            "error_code": STRING,
            "error_message": STRING,
            "evicted": BOOLEAN,
            "memory_bytes": _nullable(INTEGER),
            "memory_measured": BOOLEAN,
            "last_used_seconds_ago": number,
            "load_seconds": number,
            "queue_depth": INTEGER,
            "requests_per_second": NUMBER,
            "error_rate": number,
            "p50_ms": number,
            "p99_ms": number,
            "mean_batch_size": number,
        },
        {"replicas": {"type": "array", "items": PLACEMENT, "description": HOLDERS}},
    )
    arm = _obj(
        {
            "arm": STRING,
            "weight": NUMBER,
            "version": _nullable(INTEGER),
            "requests_per_second": NUMBER,
        }
    )
    shadow = _obj(
        {
            "target": STRING,
            "percent": NUMBER,
            "agree": INTEGER,
            "disagree": INTEGER,
            "error": INTEGER,
            "dropped": INTEGER,
        }
    )
    model = _obj(
        {
            "name": STRING,
            "pinned": BOOLEAN,
            "load": {"enum": ["eager", "lazy"]},
            "unloaded": BOOLEAN,
            "problem": _nullable(STRING),
            "labels": {"type": "object", "additionalProperties": INTEGER},
            "arms": {"type": "array", "items": arm},
            "shadow": _nullable(shadow),
            "versions": {"type": "array", "items": version},
        },
        {"replicas": {"type": "array", "items": STRING, "description": HOLDERS}},
    )
    return {
        "Event": _obj(
            {
                "id": INTEGER,
                "time": NUMBER,
                "kind": {"enum": list(EVENT_KINDS)},
                "model": STRING,
                "version": _nullable(INTEGER),
                "message": STRING,
            }
        ),
        "Status": _obj(
            {
                "time": NUMBER,
                "window_seconds": NUMBER,
                "memory_used_bytes": INTEGER,
                "memory_budget_bytes": _nullable(INTEGER),
                "management_enabled": BOOLEAN,
                "admin_token_required": BOOLEAN,
                "models": {"type": "array", "items": model},
                "events": {"type": "array", "items": _ref("Event")},
            },
            {
                "replicas": {
                    "type": "array",
                    "items": _ref("Replica"),
                    "description": "cluster gateway only: every replica",
                }
            },
        ),
        "Replica": REPLICA,
        "History": _obj(
            {
                "resolution_seconds": NUMBER,
                "points": INTEGER,
                "end_time": number,
                "busiest": {"type": "array", "items": STRING},
                "overall": {"type": "object", "additionalProperties": series},
                "models": {
                    "type": "object",
                    "additionalProperties": {"type": "object", "additionalProperties": series},
                },
            }
        ),
    }
