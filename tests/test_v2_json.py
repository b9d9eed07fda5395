"""KServe V2 JSON and binary bodies <-> numpy (tfmux.transports.v2_json): no server, no models.

Byte layouts are checked against hand-built bytes and against tritonclient, the reference
client, which builds the requests and reads the responses in the round-trip properties.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfmux.errors import ErrorKind, ServingError
from tfmux.transports import v2_json
from tfmux.types import InferenceResult, SignatureSpec

# Every V2 datatype and the numpy dtype tritonclient uses for it.
NUMPY_OF: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BF16": ml_dtypes.bfloat16,
    "BYTES": np.object_,
}
HEADER = b"inference-header-content-length"


def rejects(call: Any, *needles: str, kind: ErrorKind = ErrorKind.INVALID_ARGUMENT) -> str:
    with pytest.raises(ServingError) as info:
        call()
    assert info.value.kind == kind
    for needle in needles:
        assert needle in info.value.message, info.value.message
    return info.value.message


def parse(doc: Any, binary: bytes | None = None) -> v2_json.InferRequest:
    header = json.dumps(doc).encode()
    if binary is None:
        return v2_json.parse_infer(header, None)
    return v2_json.parse_infer(header + binary, str(len(header)).encode())


def tensor(name: str, datatype: str, shape: list[int], data: Any = None, **params: Any) -> Any:
    item: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if data is not None:
        item["data"] = data
    if params:
        item["parameters"] = params
    return item


def triton_body(array: np.ndarray, datatype: str, binary: bool) -> tuple[bytes, int | None]:
    """The request tritonclient sends for one input ``x``."""
    infer_input = triton.InferInput("x", list(array.shape), datatype)
    infer_input.set_data_from_numpy(array, binary_data=binary)
    return triton.InferenceServerClient.generate_request_body([infer_input])


def triton_read(body: bytes, header_length: int | None, name: str) -> np.ndarray:
    """An output as tritonclient reads it from a response."""
    result = triton.InferResult.from_response_body(body, header_length=header_length)
    return result.as_numpy(name)


def respond(
    outputs: dict[str, np.ndarray], request: v2_json.InferRequest | None = None
) -> tuple[bytes, int | None]:
    request = request or v2_json.InferRequest(None, "serving_default", {})
    signature = SignatureSpec("serving_default", {}, {})
    return v2_json.encode_infer(request, InferenceResult("m", 7, signature, outputs))


def same(got: np.ndarray, want: np.ndarray) -> None:
    """Equal dtype, shape and values (bit for bit, so NaNs compare too)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == object:
        assert [bytes(v) for v in got.ravel()] == [bytes(v) for v in want.ravel()]
    else:
        assert got.tobytes() == want.tobytes()


# --- hypothesis strategies --------------------------------------------------------------------

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4)


@st.composite
def arrays_of(draw: st.DrawFn, datatype: str) -> np.ndarray:
    shape = draw(shapes)
    if datatype == "BYTES":
        count = int(np.prod(shape))
        items = draw(st.lists(st.binary(max_size=12), min_size=count, max_size=count))
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    if datatype == "BF16":  # any bit pattern is a bfloat16
        return draw(hnp.arrays(np.uint16, shape)).view(ml_dtypes.bfloat16)
    return draw(hnp.arrays(NUMPY_OF[datatype], shape))


@pytest.mark.parametrize("datatype", sorted(NUMPY_OF))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_binary_input_layout_round_trips_from_tritonclient(datatype: str, data: Any) -> None:
    array = data.draw(arrays_of(datatype))
    body, header_length = triton_body(array, datatype, binary=True)
    parsed = v2_json.parse_infer(body, str(header_length).encode())
    same(parsed.inputs["x"], array.astype(NUMPY_OF[datatype]))


@pytest.mark.parametrize("datatype", sorted(NUMPY_OF))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_binary_output_layout_round_trips_to_tritonclient(datatype: str, data: Any) -> None:
    array = data.draw(arrays_of(datatype))
    body, header_length = respond({"y": array}, v2_json.InferRequest(None, "s", {}, (), True))
    assert header_length is not None
    same(triton_read(body, header_length, "y"), array)


@pytest.mark.parametrize("datatype", sorted(set(NUMPY_OF) - {"BF16", "BYTES"}))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_json_numbers_round_trip_exactly(datatype: str, data: Any) -> None:
    array = data.draw(arrays_of(datatype))
    if array.dtype.kind == "f":  # tritonclient cannot write non-finite JSON
        array = np.nan_to_num(array, nan=0.5, posinf=1.0, neginf=-1.0)
    body, header_length = triton_body(array, datatype, binary=False)
    assert header_length is None
    parsed = v2_json.parse_infer(body, None)
    same(parsed.inputs["x"], array)
    body, header_length = respond({"y": array})
    assert header_length is None and json.loads(body)["outputs"][0]["datatype"] == datatype
    same(triton_read(body, None, "y"), array)


# --- requests: JSON data ----------------------------------------------------------------------


def test_json_data_flat_or_nested_takes_the_declared_datatype_and_shape() -> None:
    flat = parse({"inputs": [tensor("a", "FP32", [2, 2], [1, 2, 3.5, 4])]}).inputs["a"]
    nested = parse({"inputs": [tensor("a", "FP32", [2, 2], [[1, 2], [3.5, 4]])]}).inputs["a"]
    same(flat, np.array([[1, 2], [3.5, 4]], np.float32))
    same(nested, flat)
    strings = parse({"inputs": [tensor("s", "BYTES", [2], ["ab", "é"])]}).inputs["s"]
    same(strings, np.array([b"ab", "é".encode()], object))
    flags = parse({"inputs": [tensor("f", "BOOL", [1, 2], [True, False])]}).inputs["f"]
    same(flags, np.array([[True, False]]))
    half = parse({"inputs": [tensor("h", "FP16", [1], [0.5])]}).inputs["h"]
    same(half, np.array([0.5], np.float16))


def test_request_fields_id_signature_outputs_and_binary_flags() -> None:
    request = parse(
        {
            "id": "req-1",
            "parameters": {"signature_name": "other", "binary_data_output": True, "x": 1},
            "inputs": [tensor("a", "INT64", [1], [5])],
            "outputs": [{"name": "y"}, {"name": "z", "parameters": {"binary_data": False}}],
        }
    )
    assert request.id == "req-1" and request.signature_name == "other"
    assert request.binary_output is True
    assert request.outputs == (v2_json.RequestedOutput("y"), v2_json.RequestedOutput("z", False))
    assert request.output_names() == ["y", "z"]
    plain = parse({"inputs": []})
    assert plain.id is None and plain.signature_name == "serving_default"
    assert plain.output_names() is None and plain.binary_output is False


# --- requests: the binary extension -----------------------------------------------------------


def test_binary_layout_is_little_endian_row_major_with_bytes_length_prefixes() -> None:
    raw_int = struct.pack("<3i", 1, -2, 300)
    raw_bool = bytes([1, 0])
    raw_text = struct.pack("<I", 2) + b"hi" + struct.pack("<I", 0)
    doc = {
        "inputs": [
            tensor("i", "INT32", [3], binary_data_size=len(raw_int)),
            tensor("j", "FP64", [1], [2.5]),
            tensor("b", "BOOL", [2], binary_data_size=2),
            tensor("s", "BYTES", [2], binary_data_size=len(raw_text)),
        ]
    }
    inputs = parse(doc, raw_int + raw_bool + raw_text).inputs
    same(inputs["i"], np.array([1, -2, 300], np.int32))
    same(inputs["j"], np.array([2.5]))
    same(inputs["b"], np.array([True, False]))
    same(inputs["s"], np.array([b"hi", b""], object))


def test_binary_output_layout_and_header_length() -> None:
    outputs = {"n": np.array([[1, 2]], np.int16), "t": np.array([b"xyz"], object)}
    body, length = respond(outputs, v2_json.InferRequest("q", "s", {}, (), True))
    assert length is not None
    header = json.loads(body[:length])
    assert (header["model_name"], header["model_version"], header["id"]) == ("m", "7", "q")
    assert [(o["name"], o["datatype"], o["shape"], o["parameters"]) for o in header["outputs"]] == [
        ("n", "INT16", [1, 2], {"binary_data_size": 4}),
        ("t", "BYTES", [1], {"binary_data_size": 7}),
    ]
    assert body[length:] == struct.pack("<2h", 1, 2) + struct.pack("<I", 3) + b"xyz"


# --- responses --------------------------------------------------------------------------------


def test_outputs_keep_their_dtype_order_and_binary_choice() -> None:
    outputs = {
        "f": np.array([0.1, 1e-8], np.float32),
        "d": np.array([0.1], np.float64),
        "i": np.array([[2**40]], np.int64),
    }
    request = v2_json.InferRequest(
        None,
        "s",
        {},
        (v2_json.RequestedOutput("i"), v2_json.RequestedOutput("f", binary=True)),
        binary_output=False,
    )
    body, length = respond(outputs, request)
    assert length is not None
    header = json.loads(body[:length])
    assert "id" not in header
    assert [(o["name"], o["datatype"]) for o in header["outputs"]] == [
        ("i", "INT64"),
        ("f", "FP32"),
    ]
    assert header["outputs"][0]["data"] == [2**40]
    same(triton_read(body, length, "f"), outputs["f"])
    body, length = respond(outputs)  # all outputs, JSON, sorted by name
    assert length is None
    doc = json.loads(body)
    assert [o["name"] for o in doc["outputs"]] == ["d", "f", "i"]
    assert np.array(doc["outputs"][1]["data"], np.float32).tobytes() == outputs["f"].tobytes()


def test_non_finite_floats_are_written_as_json_literals() -> None:
    body, _ = respond({"y": np.array([np.nan, np.inf, -np.inf, 1.5], np.float32)})
    same(triton_read(body, None, "y"), np.array([np.nan, np.inf, -np.inf, 1.5], np.float32))


def test_bytes_output_that_is_not_utf8_is_sent_binary() -> None:
    array = np.array([b"ok", b"\xff\xfe"], object)
    body, length = respond({"t": array})
    assert length is not None
    same(triton_read(body, length, "t"), array)
    body, length = respond({"t": np.array([b"ok", "é".encode()], object)})
    assert length is None and json.loads(body)["outputs"][0]["data"] == ["ok", "é"]


def test_output_dtype_v2_cannot_carry_is_an_internal_error() -> None:
    rejects(
        lambda: respond({"c": np.array([1j], np.complex64)}),
        "'c'",
        "complex64",
        kind=ErrorKind.INTERNAL,
    )


# --- bad requests -----------------------------------------------------------------------------

A = tensor("a", "FP32", [2], [1.0, 2.0])


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        ([1, 2], ("JSON object",)),
        ({"inputs": {"a": 1}}, ("'inputs' must be a list",)),
        ({}, ("'inputs' must be a list",)),
        ({"inputs": [1]}, ("inputs[0] must be an object",)),
        ({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}, ("'name'",)),
        ({"inputs": [tensor("a", "FLOAT32", [1], [1.0])]}, ("unknown datatype 'FLOAT32'", "FP32")),
        ({"inputs": [tensor("a", 5, [1], [1.0])]}, ("'datatype' string",)),
        ({"inputs": [tensor("a", "FP32", [2, 2], [1.0, 2.0, 3.0])]}, ("3 values", "needs 4")),
        ({"inputs": [tensor("a", "FP32", [-1], [1.0])]}, ("non-negative integers",)),
        ({"inputs": [tensor("a", "FP32", "2", [1.0])]}, ("'shape'",)),
        ({"inputs": [tensor("a", "FP32", [True], [1.0])]}, ("'shape'",)),
        ({"inputs": [tensor("a", "FP32", [1])]}, ("neither 'data' nor binary_data_size",)),
        ({"inputs": [A, A]}, ("'a' is given more than once",)),
        ({"inputs": [tensor("a", "INT8", [1], [300])]}, ("'a'", "out of range")),
        ({"inputs": [tensor("a", "INT64", [1], [1.5])]}, ("'a'", "int64")),
        ({"inputs": [tensor("a", "BOOL", [1], [1])]}, ("'a'", "bool")),
        ({"inputs": [tensor("a", "BYTES", [1], [7])]}, ("'a'", "string")),
        ({"inputs": [tensor("a", "FP32", [2], [[1.0], 2.0])]}, ("'a'", "ragged")),
        ({"id": 5, "inputs": [A]}, ("'id' must be a string",)),
        ({"parameters": [], "inputs": [A]}, ("'parameters'", "object")),
        ({"parameters": {"binary_data_output": "yes"}, "inputs": [A]}, ("binary_data_output",)),
        ({"parameters": {"signature_name": 3}, "inputs": [A]}, ("signature_name",)),
        ({"inputs": [A], "outputs": "y"}, ("'outputs' must be a list",)),
        ({"inputs": [A], "outputs": [{}]}, ("outputs[0]",)),
        ({"inputs": [A], "outputs": [{"name": "y"}, {"name": "y"}]}, ("more than once",)),
        (
            {"inputs": [A], "outputs": [{"name": "y", "parameters": {"classification": 2}}]},
            ("classification extension is not supported",),
        ),
        (
            {"inputs": [tensor("a", "FP32", [1], shared_memory_region="r")]},
            ("shared memory", "not supported"),
        ),
        (
            {"inputs": [tensor("a", "FP32", [1], binary_data_size=-4)]},
            ("binary_data_size must be a non-negative integer",),
        ),
        (
            {"inputs": [tensor("a", "FP32", [1], binary_data_size=4)]},
            ("no inference-header-content-length",),
        ),
    ],
)
def test_bad_json_requests_are_clear_errors(doc: Any, needles: tuple[str, ...]) -> None:
    message = rejects(lambda: parse(doc))
    for needle in needles:
        assert needle.lower() in message.lower(), message


@pytest.mark.parametrize(
    ("inputs", "binary", "needles"),
    [
        ([tensor("a", "FP32", [2], binary_data_size=8)], b"\0" * 4, ("add up to 8", "4 bytes")),
        ([tensor("a", "FP32", [1], binary_data_size=4)], b"\0" * 8, ("add up to 4", "8 bytes")),
        ([tensor("a", "FP32", [2], binary_data_size=4)], b"\0" * 4, ("needs exactly 8",)),
        ([tensor("a", "BOOL", [1], binary_data_size=1)], b"\x02", ("'a'", "BOOL", "0")),
        (
            [tensor("s", "BYTES", [1], binary_data_size=6)],
            struct.pack("<I", 9) + b"ab",
            ("runs past",),
        ),
        ([tensor("s", "BYTES", [1], binary_data_size=2)], b"ab", ("at least 4",)),
        (
            [tensor("s", "BYTES", [2], binary_data_size=6)],
            struct.pack("<I", 2) + b"ab",
            ("at least 8",),
        ),
        (
            [tensor("s", "BYTES", [1], binary_data_size=12)],
            (struct.pack("<I", 2) + b"ab") * 2,
            ("2 BYTES elements",),
        ),
        (
            [tensor("a", "FP32", [2**40, 2**40], binary_data_size=4)],
            b"\0" * 4,
            ("more than the 2147483647 a tensor may have",),
        ),
        (
            [{**tensor("a", "FP32", [1], binary_data_size=4), "data": [1.0]}],
            b"\0" * 4,
            ("both 'data' and binary",),
        ),
    ],
)
def test_bad_binary_requests_are_clear_errors(
    inputs: list[Any], binary: bytes, needles: tuple[str, ...]
) -> None:
    message = rejects(lambda: parse({"inputs": inputs}, binary))
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    ("length", "needle"),
    [(b"999", "has only"), (b"-1", "non-negative integer"), (b"12x", "non-negative integer")],
)
def test_bad_header_length_is_a_clear_error(length: bytes, needle: str) -> None:
    rejects(lambda: v2_json.parse_infer(b'{"inputs": []}', length), needle)


def test_header_length_splits_exactly() -> None:
    assert v2_json.split_body(b'{"a":1}xyz', b"7") == (b'{"a":1}', b"xyz")
    assert v2_json.split_body(b'{"a":1}', None) == (b'{"a":1}', b"")
    rejects(lambda: parse({"inputs": []}, b"junk"), "add up to 0", "4 bytes")
