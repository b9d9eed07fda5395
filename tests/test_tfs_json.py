"""TF Serving REST JSON <-> numpy (tfmux.transports.tfs_json): no server, no models."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfmux.errors import ErrorKind, ServingError
from tfmux.transports import tfs_json as tj
from tfmux.types import (
    CLASSIFY_METHOD,
    PREDICT_METHOD,
    SignatureSpec,
    TensorSpec,
    VersionStatus,
)


def sig(name: str = "serving_default", **inputs: str) -> SignatureSpec:
    """A signature whose inputs are ``alias=dtype``, each of unknown shape."""
    specs = {alias: TensorSpec(alias, dtype, None) for alias, dtype in inputs.items()}
    return SignatureSpec(name, specs, {})


def decode(body: Any, signature: SignatureSpec) -> dict[str, np.ndarray]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return tj.decode_inputs(tj.parse_predict(raw), signature)


def rejects(call: Any, *needles: str, kind: ErrorKind = ErrorKind.INVALID_ARGUMENT) -> str:
    """Assert ``call()`` raises a ServingError of ``kind`` whose message has every needle."""
    with pytest.raises(ServingError) as info:
        call()
    assert info.value.kind == kind
    for needle in needles:
        assert needle in info.value.message, info.value.message
    return info.value.message


def loads(body: bytes) -> Any:
    return tj.parse_json(body)


# --- parse_json ---------------------------------------------------------------------------


def test_parse_json_plain_and_non_finite_literals() -> None:
    assert loads(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    value = loads(b'{"a": [NaN, Infinity, -Infinity, 1]}')["a"]
    assert np.isnan(value[0]) and value[1:] == [float("inf"), float("-inf"), 1]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "The document is empty"),
        (b"  \n", "The document is empty"),
        (b"instances = [1, 2]", "line 1 column 1"),
        (b'{"a": [1, 2,]}', "line 1 column 12"),
        (b'{"a": [NaN, 1,]}', "line 1 column 15"),
        (b'{"a": nan}', "JSON Parse error"),
        (b'{"a": "\xff"}', "JSON Parse error"),
    ],
)
def test_parse_json_malformed(body: bytes, needle: str) -> None:
    rejects(lambda: loads(body), "JSON Parse error", needle)


# --- parse_predict ------------------------------------------------------------------------


def test_parse_predict_formats_and_signature() -> None:
    row = tj.parse_predict(b'{"instances": [1, 2]}')
    assert (row.signature_name, row.format, row.data) == ("serving_default", "row", [1, 2])
    col = tj.parse_predict(b'{"signature_name": "s", "inputs": {"a": 1}}')
    assert (col.signature_name, col.format, col.data) == ("s", "columnar", {"a": 1})
    assert tj.parse_predict(b'{"signature_name": "", "inputs": 1}').signature_name == (
        "serving_default"
    )


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        (b"[1, 2]", ("Is not object",)),
        (b'{"signature_name": 3, "inputs": 1}', ("'signature_name' key must be a string",)),
        (b'{"instances": [1], "inputs": [1]}', ("exactly one of", "not both")),
        (b'{"examples": [1]}', ("Missing 'inputs' or 'instances' key",)),
        (b'{"instances": {"a": 1}}', ("'instances' to be a list",)),
        (b'{"instances": []}', ("No values in 'instances' array",)),
    ],
)
def test_parse_predict_rejects(body: bytes, needles: tuple[str, ...]) -> None:
    rejects(lambda: tj.parse_predict(body), *needles)


# --- decode_inputs: row format ------------------------------------------------------------


def test_row_bare_values_single_input() -> None:
    out = decode({"instances": [[1, 2.5], [3, 4]]}, sig(x="float32"))
    assert out["x"].dtype == np.float32 and out["x"].shape == (2, 2)
    np.testing.assert_array_equal(out["x"], [[1, 2.5], [3, 4]])


def test_row_objects_multi_input_share_dimension_zero() -> None:
    body = {"instances": [{"a": [1, 2], "s": "x"}, {"a": [3, 4], "s": {"b64": "/w=="}}]}
    out = decode(body, sig(a="int64", s="string"))
    assert out["a"].dtype == np.int64 and out["a"].shape == (2, 2)
    assert out["s"].dtype == object and out["s"].tolist() == [b"x", b"\xff"]


def test_row_objects_for_a_single_input() -> None:
    out = decode({"instances": [{"x": 1.5}, {"x": 2}]}, sig(x="float64"))
    np.testing.assert_array_equal(out["x"], np.array([1.5, 2.0]))


def test_row_b64_values_are_bare_values_not_objects() -> None:
    out = decode({"instances": [{"b64": "aGk="}, {"b64": "eW8"}]}, sig(img_bytes="string"))
    assert out["img_bytes"].tolist() == [b"hi", b"yo"]


@pytest.mark.parametrize(
    ("instances", "needles"),
    [
        (
            [{"a": 1, "b": 2}, {"a": 1, "c": 2}],
            ("item 1 has keys ['a', 'c']", "item 0 has keys ['a', 'b']"),
        ),
        ([{"a": 1, "b": 2}, {"a": 1}], ("item 1 has keys ['a']",)),
        ([{"a": 1, "b": 2, "z": 3}], ("Unknown named input(s) ['z']", "has inputs ['a', 'b']")),
        ([{"a": 1}], ("Missing named input(s) ['b']", "has inputs ['a', 'b']")),
        ([[1, 2]], ("'instances' is a plain list", "has 2 inputs ['a', 'b']")),
        ([{"a": 1, "b": 2}, [1, 2]], ("Expecting object but got Array at item 1",)),
    ],
)
def test_row_rejects_multi_input(instances: list[Any], needles: tuple[str, ...]) -> None:
    rejects(lambda: decode({"instances": instances}, sig(a="float32", b="float32")), *needles)


def test_row_rejects_object_after_values() -> None:
    rejects(
        lambda: decode({"instances": [1, {"x": 2}]}, sig(x="float32")),
        "Expecting value/list but got object at item 1",
    )


def test_row_ragged_instances_name_the_input_and_position() -> None:
    rejects(
        lambda: decode({"instances": [[1, 2], [3]]}, sig(x="float32")),
        "input 'x' is ragged",
        "at [1]",
        "shape [2, 2]",
    )


# --- decode_inputs: columnar format -------------------------------------------------------


def test_columnar_bare_value_and_object() -> None:
    assert decode({"inputs": [[1, 2]]}, sig(x="int32"))["x"].shape == (1, 2)
    out = decode({"inputs": {"a": [1.0, 2.0], "b": [[True], [False]]}}, sig(a="float32", b="bool"))
    assert out["a"].dtype == np.float32 and out["b"].dtype == np.bool_
    assert out["b"].shape == (2, 1)


def test_columnar_scalars_are_rank_zero() -> None:
    assert decode({"inputs": 7}, sig(x="int64"))["x"].shape == ()
    out = decode({"inputs": {"b64": "aGk="}}, sig(x="string"))["x"]
    assert out.shape == () and out.dtype == object and out[()] == b"hi"


def test_columnar_inputs_keep_their_own_first_dimension() -> None:
    out = decode({"inputs": {"a": [1, 2, 3], "b": [[1]]}}, sig(a="int32", b="int32"))
    assert out["a"].shape == (3,) and out["b"].shape == (1, 1)


@pytest.mark.parametrize(
    ("inputs", "needles"),
    [
        (
            {"a": 1, "b": 2, "c": 3},
            ("Unknown named input(s) ['c']", "'inputs' object", "['a', 'b']"),
        ),
        ({"a": 1}, ("Missing named input(s) ['b']",)),
        ([1, 2], ("'inputs' is a plain value/list", "has 2 inputs")),
    ],
)
def test_columnar_rejects(inputs: Any, needles: tuple[str, ...]) -> None:
    rejects(lambda: decode({"inputs": inputs}, sig(a="float32", b="float32")), *needles)


# --- decode_inputs: dtypes and values -----------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        ("int8", [-128, 127]),
        ("uint8", [0, 255]),
        ("int32", [-(2**31), 2**31 - 1]),
        ("uint32", [0, 2**32 - 1]),
        ("int64", [-(2**63), 2**63 - 1]),
        ("uint64", [0, 2**64 - 1]),
    ],
)
def test_int_dtypes_accept_their_whole_range(dtype: str, values: list[int]) -> None:
    out = decode({"inputs": values}, sig(x=dtype))["x"]
    assert out.dtype == np.dtype(dtype) and out.tolist() == values


@pytest.mark.parametrize(
    ("dtype", "value", "needles"),
    [
        ("int8", [1, 300], ("300", "at [1]", "out of range for int8 [-128, 127]")),
        ("uint8", [-1], ("out of range for uint8",)),
        ("int64", [2**63], ("out of range for int64",)),
        ("uint64", [2**64], ("is not of expected type: uint64",)),  # parsed as a float
        ("uint64", [-1, 2**63], ("-1", "out of range for uint64")),
        ("int32", [1, 2.5], ("2.5", "is not of expected type: int32")),
        ("int32", [1.0], ("is not of expected type: int32",)),
        ("int32", [True], ("Type: True is not of expected type: int32",)),
        ("bool", [1, 0], ("Type: Number is not of expected type: bool",)),
        ("float32", [1, "2"], ('"2"', "Type: String is not of expected type: float32")),
        ("float32", [[1.5], ["abc"]], ("at [1, 0]", "String")),
        ("float32", [None], ("Type: Null",)),
        ("float32", [{"b64": "AA=="}], ("Type: Object",)),
        ("float32", [False], ("Type: False",)),
        ("float32", [1e39], ("out of range for float32",)),
        ("float16", [70000.5], ("out of range for float16",)),
        ("float32", [2**24], ("16777216", "without loss of precision")),
        ("float64", [2**53], ("without loss of precision",)),
        ("string", ["a", 1], ("at [1]", "Type: Number is not of expected type: string")),
        ("string", [{"b64": "a", "x": 1}], ("Type: Object",)),
        ("string", [{"b64": "!!!"}], ("input 'x' at [0]", "Unable to base64 decode")),
        ("float32", [[1], 2], ("ragged", "expected a list of 1 at [1]")),
        ("float32", [1, [2]], ("ragged", "expected a scalar at [1]")),
        ("string", [["a"], ["b", "c"]], ("ragged", "at [1]")),
    ],
)
def test_bad_values_name_input_dtype_and_problem(
    dtype: str, value: Any, needles: tuple[str, ...]
) -> None:
    rejects(lambda: decode({"inputs": {"x": value}}, sig(x=dtype)), "input 'x'", *needles)


def test_float_dtypes() -> None:
    assert decode({"inputs": [2**24 - 1]}, sig(x="float32"))["x"].tolist() == [2**24 - 1]
    assert decode({"inputs": [2**53 - 1]}, sig(x="float64"))["x"].dtype == np.float64
    half = decode({"inputs": [0.5, 1]}, sig(x="float16"))["x"]
    assert half.dtype == np.float16 and half.tolist() == [0.5, 1.0]
    brain = decode({"inputs": [0.5, -2]}, sig(x="bfloat16"))["x"]
    assert brain.dtype.name == "bfloat16" and brain.astype(np.float32).tolist() == [0.5, -2.0]


def test_non_finite_literals_into_floats() -> None:
    out = decode(b'{"inputs": [NaN, Infinity, -Infinity, 1e300]}', sig(x="float64"))["x"]
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == -np.inf
    out32 = decode(b'{"inputs": [NaN, -Infinity]}', sig(x="float32"))["x"]
    assert out32.dtype == np.float32 and np.isnan(out32[0]) and out32[1] == -np.inf


def test_empty_lists_take_the_dtype() -> None:
    assert decode({"inputs": []}, sig(x="int32"))["x"].dtype == np.int32
    empty = decode({"inputs": [[], []]}, sig(x="bool"))["x"]
    assert empty.shape == (2, 0) and empty.dtype == np.bool_
    strings = decode({"inputs": [[]]}, sig(x="string"))["x"]
    assert strings.shape == (1, 0) and strings.dtype == object


def test_strings_become_utf8_bytes_in_object_arrays() -> None:
    out = decode({"inputs": [["é", "b"], [{"b64": "AAE="}, ""]]}, sig(x="string"))["x"]
    assert out.dtype == object and out.shape == (2, 2)
    assert out.tolist() == [["é".encode(), b"b"], [b"\x00\x01", b""]]


def test_row_values_are_stacked_into_the_signature_dtype() -> None:
    out = decode(
        {"instances": [{"a": 1, "b": [1, 2]}, {"a": 2, "b": [3, 4]}]}, sig(a="uint8", b="int16")
    )
    assert out["a"].dtype == np.uint8 and out["a"].tolist() == [1, 2]
    assert out["b"].dtype == np.int16 and out["b"].shape == (2, 2)


# --- encode_predict -----------------------------------------------------------------------


def test_predict_single_output_omits_the_name() -> None:
    y = np.array([[0.3], [0.9]], dtype=np.float32)
    assert tj.encode_predict({"y": y}, "row") == b'{"predictions":[[0.3],[0.9]]}'
    assert tj.encode_predict({"y": y}, "columnar") == b'{"outputs":[[0.3],[0.9]]}'


def test_predict_several_outputs() -> None:
    outputs = {
        "p": np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float32),
        "k": np.array([1, 2], dtype=np.int64),
        "ok": np.array([True, False]),
    }
    assert loads(tj.encode_predict(outputs, "row")) == {
        "predictions": [
            {"p": [0.1, 0.2], "k": 1, "ok": True},
            {"p": [0.3, 0.4], "k": 2, "ok": False},
        ]
    }
    assert loads(tj.encode_predict(outputs, "columnar")) == {
        "outputs": {"p": [[0.1, 0.2], [0.3, 0.4]], "k": [1, 2], "ok": [True, False]}
    }


def test_predict_row_needs_a_shared_batch_dimension() -> None:
    outputs = {"a": np.zeros((2, 3)), "b": np.zeros(3)}
    rejects(lambda: tj.encode_predict(outputs, "row"), "b", "inconsistent batch size: 3", "2")
    rejects(lambda: tj.encode_predict({"s": np.array(1.0)}, "row"), "no shape")
    assert tj.encode_predict({"s": np.array(2.5, np.float32)}, "columnar") == b'{"outputs":2.5}'
    rejects(lambda: tj.encode_predict({}, "row"), "empty tensor map")


def test_predict_strings_text_bytes_and_invalid_utf8() -> None:
    outputs = {
        "label": np.array([b"cat", "dög".encode()], dtype=object),
        "img_bytes": np.array([b"\x00\x01", b"ok"], dtype=object),
        "raw": np.array([b"ok", b"\xff"], dtype=object),
    }
    assert loads(tj.encode_predict(outputs, "columnar"))["outputs"] == {
        "label": ["cat", "dög"],
        "img_bytes": [{"b64": "AAE="}, {"b64": "b2s="}],
        "raw": [{"b64": "b2s="}, {"b64": "/w=="}],
    }
    row = loads(tj.encode_predict(outputs, "row"))["predictions"]
    assert row[1] == {"label": "dög", "img_bytes": {"b64": "b2s="}, "raw": {"b64": "/w=="}}


def test_predict_numpy_bytes_and_unicode_arrays() -> None:
    body = tj.encode_predict({"a": np.array([[b"x"]]), "b": np.array([["y"]])}, "columnar")
    assert loads(body) == {"outputs": {"a": [["x"]], "b": [["y"]]}}


def test_predict_non_finite_floats_are_literals() -> None:
    y = np.array([[0.1, np.nan], [np.inf, -np.inf]], dtype=np.float32)
    assert tj.encode_predict({"y": y}, "row") == b'{"predictions":[[0.1,NaN],[Infinity,-Infinity]]}'
    both = tj.encode_predict({"y": y, "k": np.array([1, 2])}, "row")
    assert both == b'{"predictions":[{"y":[0.1,NaN],"k":1},{"y":[Infinity,-Infinity],"k":2}]}'
    scalar = tj.encode_predict({"y": np.array(np.nan)}, "columnar")
    assert scalar == b'{"outputs":NaN}'


def test_predict_float32_prints_shortest_round_trip_text() -> None:
    y = np.array([0.1, 1.0, 1e-45, 3.4028235e38, 16777216.0, 0.12345679], dtype=np.float32)
    body = tj.encode_predict({"y": y}, "columnar")
    assert body == b'{"outputs":[0.1,1.0,1e-45,3.4028235e+38,16777216.0,0.12345679]}'
    assert tj.encode_predict({"y": np.array([0.1])}, "columnar") == b'{"outputs":[0.1]}'


def test_predict_half_floats_print_their_exact_value() -> None:
    import ml_dtypes

    half = np.array([0.5, 0.1], dtype=np.float16)
    assert loads(tj.encode_predict({"y": half}, "columnar"))["outputs"] == [0.5, 0.099975586]
    brain = np.array([1.5, np.nan], dtype=ml_dtypes.bfloat16)
    assert tj.encode_predict({"y": brain}, "columnar") == b'{"outputs":[1.5,NaN]}'


def test_predict_integer_dtypes_and_non_contiguous_arrays() -> None:
    big = np.array([2**64 - 1, 0], dtype=np.uint64)
    assert tj.encode_predict({"y": big}, "columnar") == b'{"outputs":[18446744073709551615,0]}'
    transposed = np.arange(6, dtype=np.int8).reshape(2, 3).T
    assert loads(tj.encode_predict({"y": transposed}, "row")) == {
        "predictions": [[0, 3], [1, 4], [2, 5]]
    }


def test_predict_rejects_unwritable_dtypes() -> None:
    rejects(lambda: tj.encode_predict({"y": np.array([1j])}, "columnar"), "complex128")


@settings(max_examples=60, deadline=None, database=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4),
        elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
    )
)
def test_float32_round_trip_encode_parse_decode(array: np.ndarray) -> None:
    body = tj.encode_predict({"y": array}, "columnar")
    back = np.asarray(loads(body)["outputs"], dtype=np.float32).reshape(array.shape)
    np.testing.assert_array_equal(back, array)
    request = b'{"inputs": ' + body[len(b'{"outputs":') : -1] + b"}"
    decoded = decode(request, sig(y="float32"))["y"]
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded.reshape(array.shape), array)


@settings(max_examples=40, deadline=None, database=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=5))
def test_bytes_round_trip_through_b64(values: list[bytes]) -> None:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    body = tj.encode_predict({"x_bytes": array}, "row")
    payload = body[len(b'{"predictions":') : -1]
    decoded = decode(b'{"instances": ' + payload + b"}", sig(x="string"))["x"]
    assert decoded.tolist() == values


# --- classify / regress -------------------------------------------------------------------


def test_classify_classes_and_scores() -> None:
    outputs = {
        "classes": np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object),
        "scores": np.array([[0.1, 0.9], [np.nan, 0.5]], dtype=np.float32),
    }
    body = tj.encode_classify(outputs)
    assert body == b'{"results":[[["a",0.1],["b",0.9]],[["c",NaN],["d",0.5]]]}'


def test_classify_only_scores_gives_empty_labels() -> None:
    body = tj.encode_classify({"scores": np.array([[12.0]], dtype=np.float64)})
    assert body == b'{"results":[[["",12.0]]]}'


def test_classify_only_classes_gives_zero_scores() -> None:
    body = tj.encode_classify({"classes": np.array([["x", "y"]]), "other": np.zeros(3)})
    assert body == b'{"results":[[["x",0.0],["y",0.0]]]}'


@pytest.mark.parametrize(
    ("outputs", "needles", "kind"),
    [
        ({"probabilities": np.zeros((1, 2))}, ('"classes"', '"scores"'), "FAILED_PRECONDITION"),
        ({"scores": np.zeros(2)}, ("[batch_size num_classes]", "[2]"), "INVALID_ARGUMENT"),
        (
            {"scores": np.zeros((1, 2), np.int32)},
            ("scores Tensor of DT_FLOAT", "DT_INT32"),
            "INVALID_ARGUMENT",
        ),
        (
            {"classes": np.zeros((1, 2))},
            ("classes Tensor of DT_STRING", "DT_DOUBLE"),
            "INVALID_ARGUMENT",
        ),
        (
            {"classes": np.array([["a"]], dtype=object), "scores": np.zeros((1, 2))},
            ("should match", "[1, 1] vs. [1, 2]"),
            "INVALID_ARGUMENT",
        ),
    ],
)
def test_classify_rejects(
    outputs: dict[str, np.ndarray], needles: tuple[str, ...], kind: str
) -> None:
    rejects(lambda: tj.encode_classify(outputs), *needles, kind=ErrorKind(kind))


def test_regress_accepts_n_and_n_by_1() -> None:
    assert (
        tj.encode_regress({"outputs": np.array([42.0, 0.1], np.float32)})
        == b'{"results":[42.0,0.1]}'
    )
    column = np.array([[0.1], [np.inf]], dtype=np.float64)
    assert tj.encode_regress({"outputs": column}) == b'{"results":[0.1,Infinity]}'


@pytest.mark.parametrize(
    ("outputs", "needle"),
    [
        ({"scores": np.zeros(2)}, "Could not find output tensor 'outputs'"),
        ({"outputs": np.zeros((2, 2))}, "[batch_size] or [batch_size, 1] but got [2, 2]"),
        ({"outputs": np.zeros(())}, "but got []"),
        ({"outputs": np.array([1, 2])}, "DT_FLOAT. Got: DT_INT64"),
    ],
)
def test_regress_rejects(outputs: dict[str, np.ndarray], needle: str) -> None:
    rejects(lambda: tj.encode_regress(outputs), needle)


# --- parse_examples -----------------------------------------------------------------------


def features(serialized: bytes) -> dict[str, tuple[str | None, list[Any]]]:
    """The features of a serialized tf.Example as name -> (kind, values)."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(serialized)
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[name] = (kind, list(getattr(feature, kind).value) if kind else [])
    return out


def test_examples_feature_kinds() -> None:
    body = {
        "examples": [
            {
                "i": 3,
                "f": [1.5, 2.5],
                "mixed": [1, 2.5],
                "flag": True,
                "s": "héllo",
                "b": {"b64": "AAE="},
                "ss": ["a", {"b64": "Yg=="}],
                "none": [],
            }
        ]
    }
    name, examples = tj.parse_examples(json.dumps(body).encode())
    assert name == "serving_default" and examples.dtype == object and examples.shape == (1,)
    assert features(examples[0]) == {
        "i": ("int64_list", [3]),
        "f": ("float_list", [1.5, 2.5]),
        "mixed": ("float_list", [1.0, 2.5]),
        "flag": ("int64_list", [1]),
        "s": ("bytes_list", ["héllo".encode()]),
        "b": ("bytes_list", [b"\x00\x01"]),
        "ss": ("bytes_list", [b"a", b"b"]),
        "none": (None, []),
    }


def test_examples_context_is_merged_and_examples_win() -> None:
    body = b"""{"signature_name": "classify_x", "context": {"c": 1, "x": 0.5},
                "examples": [{"x": 2.0}, {"y": "v"}]}"""
    name, examples = tj.parse_examples(body)
    assert name == "classify_x" and len(examples) == 2
    assert features(examples[0]) == {"c": ("int64_list", [1]), "x": ("float_list", [2.0])}
    assert features(examples[1]) == {
        "c": ("int64_list", [1]),
        "x": ("float_list", [0.5]),
        "y": ("bytes_list", [b"v"]),
    }


def test_examples_accept_non_finite_floats() -> None:
    _, examples = tj.parse_examples(b'{"examples": [{"x": [NaN, -Infinity]}]}')
    kind, values = features(examples[0])["x"]
    assert kind == "float_list" and np.isnan(values[0]) and values[1] == -np.inf


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ({"instances": [1]}, ("Missing 'examples' key",)),
        ({"examples": {"x": 1}}, ("'examples' value to be a list",)),
        ({"examples": []}, ("'examples' value is an empty array",)),
        ({"examples": [[1]]}, ("'examples' item 0", "must be JSON object", "Array")),
        ({"examples": [{"x": 1}], "context": [1]}, ("'context'", "must be JSON object")),
        ({"examples": [{"x": None}]}, ("Feature: x", "unexpected JSON type: Null")),
        ({"examples": [{"x": [[1]]}]}, ("Feature: x", "unexpected JSON type: Array")),
        ({"examples": [{"x": {"a": 1}}]}, ("Feature: x", "unexpected JSON type: Object")),
        ({"examples": [{"x": [1, "a"]}]}, ("Feature: x mixes strings with numbers",)),
        ({"examples": [{"x": {"b64": "%%"}}]}, ("Feature: x", "Unable to base64 decode")),
        ({"examples": [{"x": 2**63}]}, ("Feature: x", "outside the int64 range")),
        ({"examples": [{"x": 1e39}]}, ("Feature: x", "to float without loss of precision")),
        ({"signature_name": 1, "examples": [{}]}, ("'signature_name' key must be a string",)),
    ],
)
def test_examples_reject(body: dict[str, Any], needles: tuple[str, ...]) -> None:
    rejects(lambda: tj.parse_examples(json.dumps(body).encode()), *needles)


# --- status, metadata, errors -------------------------------------------------------------


def test_status_shape() -> None:
    statuses = [
        VersionStatus(2, "AVAILABLE"),
        VersionStatus(1, "END", "NOT_FOUND", "no such file"),
    ]
    assert loads(tj.encode_status(statuses)) == {
        "model_version_status": [
            {
                "version": "2",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            },
            {
                "version": "1",
                "state": "END",
                "status": {"error_code": "NOT_FOUND", "error_message": "no such file"},
            },
        ]
    }
    assert loads(tj.encode_status([])) == {"model_version_status": []}


def test_metadata_shape() -> None:
    predict = SignatureSpec(
        "serving_default",
        {"x": TensorSpec("x", "float32", (None, 3), "x:0")},
        {
            "y": TensorSpec("y", "string", None, "y:0"),
            "n": TensorSpec("n", "int64", (), "n:0"),
        },
    )
    classify = SignatureSpec(
        "classify",
        {"inputs": TensorSpec("inputs", "string", (None,), "tf_example:0")},
        {"scores": TensorSpec("scores", "float32", (None, 2), "s:0")},
        CLASSIFY_METHOD,
    )
    doc = loads(tj.encode_metadata("m", 2, {"serving_default": predict, "classify": classify}))
    defs = doc["metadata"]["signature_def"]["signature_def"]
    assert doc["model_spec"] == {"name": "m", "signature_name": "", "version": "2"}
    assert list(doc) == ["model_spec", "metadata"] and list(defs) == ["serving_default", "classify"]
    assert defs["serving_default"] == {
        "inputs": {
            "x": {
                "dtype": "DT_FLOAT",
                "tensor_shape": {
                    "dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}],
                    "unknown_rank": False,
                },
                "name": "x:0",
            }
        },
        "outputs": {
            "y": {
                "dtype": "DT_STRING",
                "tensor_shape": {"dim": [], "unknown_rank": True},
                "name": "y:0",
            },
            "n": {
                "dtype": "DT_INT64",
                "tensor_shape": {"dim": [], "unknown_rank": False},
                "name": "n:0",
            },
        },
        "method_name": PREDICT_METHOD,
        "defaults": {},
    }
    assert defs["classify"]["method_name"] == "tensorflow/serving/classify"
    assert defs["classify"]["inputs"]["inputs"]["tensor_shape"]["dim"] == [
        {"size": "-1", "name": ""}
    ]


def test_error_body() -> None:
    assert tj.encode_error('bad "x"') == b'{"error":"bad \\"x\\""}'
    assert orjson.loads(tj.encode_error("é")) == {"error": "é"}
