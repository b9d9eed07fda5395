"""Fuzzing the JSON codecs: TF Serving's predict/classify/regress bodies (tfs_json, tfs_codec,
tfs_examples) and KServe V2 inference bodies (v2_json).

Arbitrary bytes, arbitrary JSON and mutated near-valid requests may only raise the project's
own ServingError; valid tensors of every dtype round-trip through encode and decode. Each escape
these tests found is pinned by a regression example (``@example``).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tfmux.errors import ServingError
from tfmux.transports import tfs_json, v2_json
from tfmux.transports.tfs_codec import dumps, json_value, parse_json, to_array
from tfmux.transports.tfs_examples import parse_examples
from tfmux.transports.v2_types import DATATYPE_OF, from_raw, to_raw
from tfmux.types import SignatureSpec, TensorSpec

from .fuzzing import DTYPES, JSON, SHAPES, arrays, fuzz, mutations, only_serving_errors, same

pytestmark = pytest.mark.tf  # tfs_examples builds tf.Example protos


def signature(**dtypes: str) -> SignatureSpec:
    inputs = {name: TensorSpec(name, dtype, None) for name, dtype in dtypes.items()}
    return SignatureSpec("serving_default", inputs, {})


SIGNATURES = st.sampled_from(DTYPES).map(lambda d: signature(x=d)) | st.just(
    signature(x="float32", y="int64", s="string")
)


def _nested(leaf: Any, depth: int) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def _text(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


# -- arbitrary input raises only ServingError ----------------------------------------------------


@fuzz(200)
@given(body=st.binary(max_size=64) | JSON.map(_text), header=st.none() | st.binary(max_size=4))
@example(body=b"[" * 2000, header=None)  # nesting beyond the parser's depth
@example(body=b'{"inputs": ' + b"[" * 900 + b"]" * 900 + b"}", header=None)
def test_arbitrary_bodies_raise_only_serving_errors(body: bytes, header: bytes | None) -> None:
    only_serving_errors(lambda: parse_json(body))
    only_serving_errors(lambda: parse_examples(body))
    only_serving_errors(lambda: v2_json.parse_infer(body, header))
    parsed = only_serving_errors(lambda: tfs_json.parse_predict(body))
    if not isinstance(parsed, ServingError):
        for sig in (signature(x="float32"), signature(x="string"), signature(a="int8", b="bool")):
            only_serving_errors(lambda sig=sig: tfs_json.decode_inputs(parsed, sig))


@fuzz(200)
@given(data=JSON, sig=SIGNATURES, row=st.booleans())
@example(data=[[1] * 2] * 2, sig=signature(x="bool"), row=False)
@example(data=_nested(1, 65), sig=signature(x="float32"), row=False)  # > 64 dims
@example(data=_nested("a", 65), sig=signature(x="string"), row=False)
@example(data=[{"b64": "\u0084"}], sig=signature(x="string"), row=False)  # was ValueError
@example(data=[2**64, -1], sig=signature(x="uint64"), row=False)
def test_predict_values_raise_only_serving_errors(data: Any, sig: SignatureSpec, row: bool) -> None:
    body = _text({"instances": data} if row else {"inputs": data})
    parsed = only_serving_errors(lambda: tfs_json.parse_predict(body))
    if not isinstance(parsed, ServingError):
        only_serving_errors(lambda: tfs_json.decode_inputs(parsed, sig))


@fuzz(100)
@given(examples=st.lists(JSON, max_size=3) | JSON, context=st.none() | JSON)
@example(examples=[{"f": [{"b64": "\u0084"}]}], context=None)  # was ValueError (non-ASCII b64)
@example(examples=[{"f": [1, 2**70]}], context=None)
@example(examples=[{"f": [1.5, 2**1030]}], context=None)
def test_examples_raise_only_serving_errors(examples: Any, context: Any) -> None:
    doc: dict[str, Any] = {"examples": examples}
    if context is not None:
        doc["context"] = context
    only_serving_errors(lambda: parse_examples(_text(doc)))


TENSOR = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "y", ""]) | st.text(max_size=3),
        "datatype": st.sampled_from(sorted(DATATYPE_OF.values())) | st.text(max_size=4),
        "shape": SHAPES | JSON,
    },
    optional={
        "data": JSON,
        "parameters": st.fixed_dictionaries(
            {},
            optional={
                "binary_data_size": st.integers(-2, 40) | JSON,
                "shared_memory_region": st.text(max_size=2),
            },
        )
        | JSON,
    },
)
V2_REQUEST = st.fixed_dictionaries(
    {"inputs": st.lists(TENSOR, max_size=3) | JSON},
    optional={
        "id": JSON,
        "outputs": st.lists(
            st.fixed_dictionaries({"name": JSON}, optional={"parameters": JSON}), max_size=2
        )
        | JSON,
        "parameters": st.fixed_dictionaries(
            {},
            optional={key: JSON for key in ("timeout", "binary_data_output", "signature_name")},
        )
        | JSON,
    },
)


@fuzz(200)
@given(doc=V2_REQUEST, binary=st.binary(max_size=48), header_extra=st.integers(-3, 3))
@example(  # shapes numpy cannot hold (were ValueError / TypeError)
    doc={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1] * 65, "data": [1.0]}]},
    binary=b"",
    header_extra=0,
)
@example(
    doc={"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 2**70], "data": []}]},
    binary=b"",
    header_extra=0,
)
@example(
    doc={"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 2**62], "data": []}]},
    binary=b"",
    header_extra=0,
)
@example(
    doc={
        "inputs": [
            {"name": "x", "datatype": "BYTES", "shape": [0, 2**70], "parameters": {}},
        ]
    },
    binary=b"",
    header_extra=0,
)
def test_v2_requests_raise_only_serving_errors(
    doc: dict[str, Any], binary: bytes, header_extra: int
) -> None:
    """Near-valid V2 bodies, JSON-only and with binary tensor data after the header."""
    header = _text(doc)
    only_serving_errors(lambda: v2_json.parse_infer(header, None))
    length = str(len(header) + header_extra).encode()
    only_serving_errors(lambda: v2_json.parse_infer(header + binary, length))


@fuzz(200)
@given(
    raw=st.binary(max_size=40),
    datatype=st.sampled_from(sorted(DATATYPE_OF.values())) | st.text(max_size=4),
    shape=SHAPES,
)
@example(raw=b"\0" * 4, datatype="FP32", shape=[1] * 65)  # was ValueError
@example(raw=b"", datatype="BYTES", shape=[0, 2**70])  # was ValueError
@example(raw=b"\xff\xff\xff\xff", datatype="BYTES", shape=[1])  # a length past the end
def test_binary_tensor_data_raises_only_serving_errors(
    raw: bytes, datatype: str, shape: list[int]
) -> None:
    """The binary tensor data extension: any bytes, as any datatype and shape."""
    only_serving_errors(lambda: from_raw(raw, datatype, shape, "x"))


@fuzz(150)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), kind=st.sampled_from(["tfs", "v2", "bin"]))
def test_mutated_valid_bodies_raise_only_serving_errors(
    data: st.DataObject, dtype: str, kind: str
) -> None:
    """Valid bodies with a byte flipped, a span dropped or bytes spliced in."""
    array = data.draw(arrays(dtype))
    tensor = {"name": "x", "datatype": DATATYPE_OF[dtype], "shape": list(array.shape)}
    header: bytes | None = None
    if kind == "tfs":
        body = dumps({"inputs": {"x": json_value(array)}})
    elif kind == "v2":
        body = dumps({"inputs": [{**tensor, "data": json_value(array.reshape(-1))}]})
    else:
        raw = to_raw(array)
        head = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]})
        body, header = head + raw, str(len(head)).encode()
    mutated = data.draw(mutations(body))
    parsed = only_serving_errors(lambda: tfs_json.parse_predict(mutated))
    if not isinstance(parsed, ServingError):
        only_serving_errors(lambda: tfs_json.decode_inputs(parsed, signature(x=dtype)))
    only_serving_errors(lambda: v2_json.parse_infer(mutated, header))


# -- valid tensors round-trip ---------------------------------------------------------------------


@fuzz(60)
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_tfs_tensors_round_trip(data: st.DataObject, dtype: str) -> None:
    """A tensor written as TF Serving JSON (columnar and row) reads back identical."""
    array = data.draw(arrays(dtype).filter(lambda a: 0 not in a.shape))
    columnar = dumps({"inputs": {"x": json_value(array)}})
    decoded = tfs_json.decode_inputs(tfs_json.parse_predict(columnar), signature(x=dtype))["x"]
    assert same(decoded, array), (array, decoded)
    if array.ndim:
        row = dumps({"instances": json_value(array)})
        decoded = tfs_json.decode_inputs(tfs_json.parse_predict(row), signature(x=dtype))["x"]
        assert same(decoded, array), (array, decoded)


@fuzz(60)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), binary=st.booleans())
def test_v2_tensors_round_trip(data: st.DataObject, dtype: str, binary: bool) -> None:
    """A tensor sent as V2 JSON data, or as binary tensor data, reads back identical."""
    array = data.draw(arrays(dtype))
    tensor = {"name": "x", "datatype": DATATYPE_OF[dtype], "shape": list(array.shape)}
    if binary:
        raw = to_raw(array)
        header = orjson.dumps(
            {"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]}
        )
        parsed = v2_json.parse_infer(header + raw, str(len(header)).encode())
    else:
        flat = json_value(array.reshape(-1))
        parsed = v2_json.parse_infer(dumps({"inputs": [{**tensor, "data": flat}]}), None)
    decoded = parsed.inputs["x"]
    if dtype != "string":  # V2 decodes to the declared datatype; strings are bytes objects
        decoded = to_array("x", decoded, dtype) if decoded.dtype != array.dtype else decoded
    assert same(decoded, array), (array, decoded)
