"""TF Serving's classify and regress JSON: tf.Example requests and their results."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfmux.errors import invalid_argument
from tfmux.transports.tfs_codec import (
    b64decode,
    dumps,
    is_b64,
    json_type,
    json_value,
    request_object,
    snippet,
)
from tfmux.transports.tfs_results import classifications, regressions

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64 = np.iinfo(np.int64)


def parse_examples(body: bytes) -> tuple[str, np.ndarray]:
    """Parse a classify/regress body into its signature name and serialized tf.Examples.

    ``examples`` is a non-empty list of objects mapping feature name to a value or a list of
    values (ints/bools → int64_list, floats or floats mixed with ints → float_list, strings and
    b64 objects → bytes_list). An optional ``context`` object is merged into every example (its
    serialization prefixes each example's, so the example's features win, as in TF Serving).
    """
    doc, signature_name = request_object(body)
    context = _example(doc["context"], "'context'") if "context" in doc else b""
    if "examples" not in doc:
        raise invalid_argument("Missing 'examples' key: expected a list of example objects")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(f"Expecting 'examples' value to be a list, got {snippet(examples)}")
    if not examples:
        raise invalid_argument("'examples' value is an empty array")
    out = np.empty(len(examples), dtype=object)
    out[:] = [context + _example(e, f"'examples' item {i}") for i, e in enumerate(examples)]
    return signature_name, out


def _example(obj: Any, where: str) -> bytes:
    """One serialized tf.Example from a JSON object of features."""
    from tensorflow.core.example import example_pb2

    if not isinstance(obj, dict):
        raise invalid_argument(
            f"{where}: Example must be JSON object but got JSON {json_type(obj)}"
        )
    example = example_pb2.Example()
    for name, content in obj.items():
        values = content if isinstance(content, list) else [content]
        feature = example.features.feature[name]
        kind = _feature_kind(name, values)
        if kind == "bytes":
            feature.bytes_list.value.extend(_feature_bytes(name, v) for v in values)
        elif kind == "float":
            feature.float_list.value.extend(_feature_float(name, v) for v in values)
        elif kind == "int64":
            feature.int64_list.value.extend(_feature_int(name, v) for v in values)
    serialized: bytes = example.SerializeToString()
    return serialized


def _feature_kind(name: str, values: list[Any]) -> str | None:
    """bytes, float or int64 for a feature's values; None when there are none."""
    kinds: set[str] = set()
    for value in values:
        if isinstance(value, str) or is_b64(value):
            kinds.add("bytes")
        elif isinstance(value, int | float):
            kinds.add("float" if isinstance(value, float) else "int64")
        else:
            raise invalid_argument(
                f"Feature: {name} has element with unexpected JSON type: {json_type(value)}"
            )
    if not kinds:
        return None
    if "bytes" in kinds:
        if len(kinds) > 1:
            raise invalid_argument(f"Feature: {name} mixes strings with numbers")
        return "bytes"
    return "float" if "float" in kinds else "int64"


def _feature_bytes(name: str, value: str | dict[str, str]) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return b64decode(value["b64"], f"Feature: {name}")


def _feature_float(name: str, value: float) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if abs(value) > _FLOAT32_MAX:
        raise invalid_argument(
            f"Feature: {name}: Cannot convert JSON value: {value} to float without loss of "
            "precision."
        )
    return float(value)


def _feature_int(name: str, value: int) -> int:
    if not _INT64.min <= value <= _INT64.max:
        raise invalid_argument(f"Feature: {name} has element {value} outside the int64 range")
    return int(value)


def encode_classify(outputs: Mapping[str, np.ndarray]) -> bytes:
    """``{"results": [[[label, score], ...], ...]}`` from a classify signature's outputs
    (checked by ``tfs_results.classifications``)."""
    labels, scores = classifications(outputs)
    results = [
        [[label, score] for label, score in zip(label_row, score_row, strict=True)]
        for label_row, score_row in zip(labels, json_value(scores), strict=True)
    ]
    return dumps({"results": results})


def encode_regress(outputs: Mapping[str, np.ndarray]) -> bytes:
    """``{"results": [value, ...]}`` from a regress signature's ``outputs`` ([N] or [N, 1]).

    Values print as float32, the type of TF Serving's Regression proto.
    """
    return dumps({"results": json_value(regressions(outputs))})
