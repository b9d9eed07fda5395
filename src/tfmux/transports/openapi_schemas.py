"""The component schemas of the OpenAPI document (``openapi.py``), and the building blocks of
its operations: request bodies, responses, headers.

Each states what the server's parsers enforce, no more and no less: a value the server treats
as absent when it is ``null`` is nullable here; keys the server refuses are forbidden here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfmux.config import LABEL_RE
from tfmux.transports.v2_json import SHARED_MEMORY
from tfmux.transports.v2_types import DATATYPE_OF

Json = dict[str, Any]

ANY: Json = {}
STRING: Json = {"type": "string"}
OBJECT: Json = {"type": "object"}
COUNT: Json = {"type": "integer", "minimum": 0}
_INT64 = np.iinfo(np.int64)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Standard base64, padding optional (what tfs_codec.b64decode accepts).
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}(?:==?)?|[A-Za-z0-9+/]{3}=?)?$"


def ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: Json, required: tuple[str, ...] = (), **extra: Any) -> Json:
    schema: Json = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def array(items: Json, **extra: Any) -> Json:
    return {"type": "array", "items": items, **extra}


def nullable(kind: str, **extra: Any) -> Json:
    """A value of JSON type ``kind`` or null (which the server reads as absent)."""
    return {"type": [kind, "null"], **extra}


def nullable_obj(properties: Json, **extra: Any) -> Json:
    """An object (extra keys allowed) or null, which the server reads as an empty object."""
    return obj(properties, additionalProperties=True, **extra) | {"type": ["object", "null"]}


def without(*keys: str) -> Json:
    """An object that has none of ``keys``."""
    return {"not": {"anyOf": [{"required": [key]} for key in keys]}}


# -- building blocks of paths and responses (openapi.py) -------------------------------------

TEXT_BODY: Json = {"text/plain": {"schema": STRING}}


def json_response(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def body(schema: Json, required: bool = True, description: str = "") -> Json:
    request: Json = {"required": required, "content": {"application/json": {"schema": schema}}}
    return request | ({"description": description} if description else {})


ERROR = json_response(ref("Error"), 'The error: {"error": message}')
EMPTY_OK: Json = {"description": "OK (empty body)", "content": TEXT_BODY}
HEADER_LENGTH: Json = {
    "description": "Length of the JSON header when binary tensor data follows it",
    "schema": {"type": "integer", "minimum": 0},
}
UNAVAILABLE = json_response(
    ref("Error"), "The model is unavailable: it failed to load, or was unloaded"
)
BINARY_BODY: Json = {
    "schema": {"type": "string", "format": "binary"},
    "description": "JSON header, then raw tensors (little-endian, row-major; BYTES elements "
    "as a 4-byte little-endian length and the bytes)",
}
# Inference: the caller's sticky key for splits, and what answered (the arm, when a split chose).
SERVED = {name: {"schema": STRING} for name in ("X-Model-Name", "X-Model-Version", "X-Model-Arm")}


def tag(path: str) -> str:
    """The operation's group in the document."""
    if path.startswith("/v1/"):
        return "TF Serving"
    if path.startswith("/v2/repository"):
        return "Management"
    if path.startswith("/v2") and "/health/" not in path:
        return "KServe V2"
    return "Operations"


def served(ok: Json) -> Json:
    """An inference answer, with the headers naming what answered."""
    return {**ok, "headers": {**ok.get("headers", {}), **SERVED}}


# -- component schemas ------------------------------------------------------------------------


def _features() -> Json:
    """A tf.Example as JSON: feature name -> value or list of values, all bytes (strings or
    {"b64": ...}) or all numbers (ints and booleans -> int64, floats -> float)."""
    text = {"anyOf": [STRING, obj({"b64": {"type": "string", "pattern": BASE64}}, ("b64",))]}
    text["anyOf"][1]["additionalProperties"] = False
    number = {
        "anyOf": [
            {"type": "integer", "minimum": int(_INT64.min), "maximum": int(_INT64.max)},
            {"type": "number", "minimum": -_FLOAT32_MAX, "maximum": _FLOAT32_MAX},
            {"type": "boolean"},
        ]
    }
    value = {"anyOf": [text, number, array(text), array(number)]}
    return {"type": "object", "additionalProperties": value}


def _input_tensor() -> Json:
    """A V2 input: values in ``data`` or, with the binary extension, binary_data_size bytes."""
    params = nullable_obj({"binary_data_size": COUNT}) | without(*SHARED_MEMORY)
    binary = {
        "required": ["parameters"],
        "properties": {"parameters": {"required": ["binary_data_size"]}},
    }
    return obj(
        {
            "name": {"type": "string", "minLength": 1},
            "datatype": ref("Datatype"),
            "shape": array(COUNT),
            "parameters": params,
            "data": {"description": "Row-major values, flat or nested lists", **ANY},
        },
        ("name", "datatype", "shape"),
        oneOf=[{"required": ["data"]} | without_binary(), binary | without("data")],
    )


def without_binary() -> Json:
    return {
        "properties": {"parameters": {"anyOf": [{"type": "null"}, without("binary_data_size")]}}
    }


def schemas() -> Json:
    parameters = {"type": "object", "additionalProperties": True}
    request_parameters = nullable_obj(
        {
            "signature_name": nullable("string"),
            "binary_data_output": nullable("boolean"),
            "timeout": nullable("integer", minimum=0, description="microseconds"),
            "version_label": nullable("string"),
            "routing_key": nullable("string"),
        }
    )
    output_parameters = nullable_obj({"binary_data": nullable("boolean")}) | without(
        "classification", *SHARED_MEMORY
    )
    tensor = {"name": STRING, "datatype": ref("Datatype"), "shape": array(COUNT)}
    return {
        "Error": obj({"error": STRING}, ("error",)),
        "ModelStatus": obj(
            {
                "model_version_status": array(
                    obj(
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
                            "status": obj({"error_code": STRING, "error_message": STRING}),
                        }
                    )
                )
            }
        ),
        "Predict": obj(
            {"signature_name": STRING, "instances": array(ANY, minItems=1), "inputs": ANY},
            oneOf=[{"required": ["instances"]}, {"required": ["inputs"]}],
        ),
        "PredictResult": obj({"predictions": ANY, "outputs": ANY}),
        "Examples": obj(
            {
                "signature_name": STRING,
                "context": _features(),
                "examples": array(_features(), minItems=1),
            },
            ("examples",),
        ),
        "Results": obj({"results": array(ANY)}, ("results",)),
        "Datatype": {"type": "string", "enum": sorted(DATATYPE_OF.values())},
        "Server": obj(
            {"name": STRING, "version": STRING, "extensions": array(STRING)},
            ("name", "version", "extensions"),
        ),
        "ModelMetadata": obj(
            {
                "name": STRING,
                "versions": array(STRING),
                "platform": STRING,
                "inputs": array(obj(tensor | {"shape": array({"type": "integer", "minimum": -1})})),
                "outputs": array(
                    obj(tensor | {"shape": array({"type": "integer", "minimum": -1})})
                ),
            },
            ("name", "platform", "inputs", "outputs"),
        ),
        "InferenceRequest": obj(
            {
                "id": nullable("string"),
                "parameters": request_parameters,
                "inputs": array(_input_tensor(), description="input names are unique"),
                "outputs": array(
                    obj(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "parameters": output_parameters,
                        },
                        ("name",),
                    ),
                    description="output names are unique",
                )
                | {"type": ["array", "null"]},
            },
            ("inputs",),
        ),
        "InferenceResponse": obj(
            {
                "model_name": STRING,
                "model_version": STRING,
                "id": STRING,
                "outputs": array(
                    obj(
                        tensor | {"parameters": parameters, "data": ANY},
                        ("name", "datatype", "shape"),
                    )
                ),
            },
            ("model_name", "outputs"),
        ),
        "Traffic": obj(
            {
                "labels": {"type": "object", "additionalProperties": COUNT},
                "split": {"type": "object", "additionalProperties": {"type": "number"}},
                "shadow": {"anyOf": [{"type": "null"}, _shadow()]},
                "alias": {"type": "boolean"},  # in the state of an alias only
            }
        ),
        "TrafficChange": obj(
            {
                "labels": {
                    "type": "object",
                    "propertyNames": {"pattern": LABEL_RE.pattern},
                    "additionalProperties": nullable("integer", minimum=0),
                    "description": "merged into the current labels; null removes one",
                },
                "split": {
                    "type": "object",
                    "additionalProperties": {"type": "number", "minimum": 0},
                    "description": "replaces the split; weights must sum to more than 0",
                },
                "shadow": {"anyOf": [{"type": "null"}, _shadow()]},
                "allow_unavailable": {"type": "boolean"},
            },
            additionalProperties=False,
        ),
        "IndexEntry": obj(
            {
                "name": STRING,
                "version": STRING,
                "state": {"enum": ["READY", "UNAVAILABLE", "LOADING", "UNLOADING", "UNKNOWN"]},
                "reason": STRING,
                "memory_bytes": COUNT,  # tfmux's: once loaded
                "memory_measured": {"type": "boolean"},
            },
            ("name", "state"),
        ),
    }


def _shadow() -> Json:
    percent = {"type": "number", "minimum": 0, "maximum": 100, "default": 100}
    return obj({"target": STRING, "percent": percent}, ("target",), additionalProperties=False)
