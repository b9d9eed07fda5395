"""The session (``tf1``) and TF2 runtimes against tiny real SavedModels, and ``auto``'s choice
between them: the session runtime for every model unless it cannot serve a TF2 one."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfmux import demo
from tfmux.errors import ErrorKind, ServingError
from tfmux.runtimes import AutoRuntime, load_model
from tfmux.types import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD

from . import savedmodels

pytestmark = pytest.mark.tf

ROWS = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-1.5, 0.25, 4.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def runtime_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every test model, built once; maps a model name to its version-1 directory."""
    root = tmp_path_factory.mktemp("runtime_models")
    bases = {
        "binary": savedmodels.binary(root),
        "regression": savedmodels.regression(root),
        "twin2": savedmodels.tf1_twin(root, "twin2", scale=2.0),
        "twin_neg": savedmodels.tf1_twin(root, "twin_neg", scale=-1.0),
        "multi": savedmodels.tf2_multi(root),
        "classify_regress": savedmodels.classify_regress(root),
        "failing": savedmodels.failing(root),
        "keras": savedmodels.keras_export(root),
        "corrupt": savedmodels.corrupt(root),
        "tf2_twin2": savedmodels.tf2_twin(root, "tf2_twin2", scale=2.0),
        "tf2_twin_neg": savedmodels.tf2_twin(root, "tf2_twin_neg", scale=-1.0),
        "lookup": savedmodels.tf2_lookup(root),
        "keras_lookup": savedmodels.keras_lookup(root),
        "keras_tf_saved": savedmodels.keras_tf_saved(root),
        "echo": savedmodels.tf1_echo(root),
    }
    return {name: base / "1" for name, base in bases.items()}


@pytest.fixture
def load(runtime_models: dict[str, Path]) -> Iterator[Any]:
    """``load(name, kind="auto")`` loads a test model; every model is closed afterwards."""
    loaded: list[Any] = []

    def _load(name: str, kind: str = "auto", **options: Any) -> Any:
        model = load_model(runtime_models[name], kind, **options)
        loaded.append(model)
        return model

    yield _load
    for model in loaded:
        model.close()


def direct_tf2(path: Path, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Call a signature with TensorFlow directly: the answer the runtimes must give."""
    import tensorflow as tf

    function = tf.saved_model.load(str(path)).signatures[signature]
    outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def assert_same_answers(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same output names, Python types (numpy scalars for scalars, bytes in object arrays for
    strings), dtypes and values."""
    assert sorted(got) == sorted(want)
    for alias, value in want.items():
        assert type(got[alias]) is type(value), alias
        assert got[alias].dtype == value.dtype, alias
        np.testing.assert_array_equal(got[alias], value)


def test_importing_runtimes_does_not_import_tensorflow() -> None:
    code = "import tfmux.runtimes, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


KINDS = {"binary": "tf2", "regression": "tf1", "twin2": "tf1", "multi": "tf2"}
KINDS |= {"classify_regress": "tf1", "failing": "tf2", "keras": "tf2", "echo": "tf1"}
KINDS |= {"lookup": "tf2", "keras_lookup": "tf2", "keras_tf_saved": "tf2"}


@pytest.mark.parametrize(("name", "kind"), KINDS.items())
def test_meta_graph_kind(runtime_models: dict[str, Path], name: str, kind: str) -> None:
    from tfmux.runtimes.savedmodel import meta_graph_kind, serve_meta_graph

    assert meta_graph_kind(serve_meta_graph(runtime_models[name])) == kind


EXPECTED_SIGNATURES = {
    ("binary", "serving_default", PREDICT_METHOD): [
        "in x float32 (None, 3) serving_default_x:0",
        "out probability float32 (None, 1) StatefulPartitionedCall:0",
    ],
    ("regression", "serving_default", PREDICT_METHOD): [
        "in x float32 (None, 3) input_tensor:0",
        "out y float32 (None, 1) output_tensor:0",
    ],
    ("multi", "serving_default", PREDICT_METHOD): [
        "in a float32 (None, 2) serving_default_a:0",
        "in b int64 (None,) serving_default_b:0",
        "in s string (None,) serving_default_s:0",
        "out b_twice int64 (None,) PartitionedCall:0",
        "out s_len int32 (None,) PartitionedCall:1",
        "out s_upper string (None,) PartitionedCall:2",
        "out sum float32 (None,) PartitionedCall:3",
    ],
    ("classify_regress", "classify", CLASSIFY_METHOD): [
        "in inputs string (None,) tf_example:0",
        "out classes string (None, 2) classes:0",
        "out scores float32 (None, 2) scores:0",
    ],
    ("classify_regress", "regress", REGRESS_METHOD): [
        "in inputs string (None,) tf_example:0",
        "out outputs float32 (None,) regressed:0",
    ],
}


@pytest.mark.parametrize(("name", "signature", "method"), list(EXPECTED_SIGNATURES))
def test_signature_specs(load: Any, name: str, signature: str, method: str) -> None:
    spec = load(name).signatures[signature]
    assert (spec.name, spec.method_name) == (signature, method)
    assert all(alias == t.name for alias, t in [*spec.inputs.items(), *spec.outputs.items()])
    described = [
        f"{direction} {t.name} {t.dtype} {t.shape} {t.tensor_name}"
        for direction, tensors in (("in", spec.inputs), ("out", spec.outputs))
        for t in tensors.values()
    ]
    assert described == EXPECTED_SIGNATURES[name, signature, method]


@pytest.mark.parametrize("kind", ["auto", "tf2"])
def test_tf2_predictions_equal_tensorflow_also_under_concurrency(
    load: Any, runtime_models: dict[str, Path], kind: str
) -> None:
    want = direct_tf2(runtime_models["binary"], "serving_default", x=ROWS)["probability"]
    expected = 1 / (1 + np.exp(-(ROWS @ demo.BINARY_WEIGHTS + demo.BINARY_BIAS)))
    np.testing.assert_allclose(want, expected, rtol=1e-6)
    model = load("binary", kind)
    assert model.runtime == {"auto": "tf1", "tf2": "tf2"}[kind]
    assert list(model.signatures) == ["serving_default"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: model.run("serving_default", {"x": ROWS}), range(100)))
    for result in results:
        np.testing.assert_array_equal(result["probability"], want)


MULTI_INPUTS = {
    "a": np.array([[1.0, 2.0], [0.5, -0.5]], dtype=np.float32),
    "b": np.array([3, -4], dtype=np.int64),
    "s": np.array(["héllo".encode(), b""], dtype=object),
}

WORDS = np.array([b"banana", b"kiwi", b"apple"], dtype=object)
# Every TF2 fixture the session runtime serves: (model, signature, inputs).
TF2_CALLS = [
    ("binary", "serving_default", {"x": ROWS}),
    ("failing", "serving_default", {"x": np.array([[4.0], [0.0]], dtype=np.float32)}),
    ("keras", "serving_default", {"features": np.arange(8, dtype=np.float32).reshape(2, 4)}),
    ("keras_lookup", "serve", {"words": WORDS.reshape(3, 1)}),
    ("keras_lookup", "serving_default", {"words": WORDS.reshape(3, 1)}),
    ("lookup", "serving_default", {"words": WORDS}),
    ("lookup", "scaled", {"x": np.array([2.0, -1.0], dtype=np.float32)}),
    ("multi", "serving_default", MULTI_INPUTS),
    ("tf2_twin2", "serving_default", {"x": ROWS}),
]


@pytest.mark.parametrize(("name", "signature", "inputs"), TF2_CALLS)
def test_auto_serves_tf2_models_through_a_session_with_tensorflows_answers(
    load: Any, runtime_models: dict[str, Path], name: str, signature: str, inputs: Any
) -> None:
    model, via_tf2 = load(name), load(name, "tf2", intra_op_threads=1)
    assert (model.runtime, via_tf2.runtime) == ("tf1", "tf2")
    assert model.signatures == via_tf2.signatures  # both read the SignatureDefs
    want = direct_tf2(runtime_models[name], signature, **inputs)
    assert_same_answers(model.run(signature, inputs), want)
    assert_same_answers(via_tf2.run(signature, inputs), want)
    assert_same_answers(load(name, "tf1", intra_op_threads=1).run(signature, inputs), want)


def test_lookup_tables_assets_and_scalars_through_a_session(load: Any) -> None:
    got = load("lookup").run("serving_default", {"words": WORDS})
    np.testing.assert_array_equal(got["ids"], np.array([1, -1, 0], dtype=np.int64))
    assert got["size"] == np.int64(len(savedmodels.VOCABULARY))  # a numpy scalar, as in TF2
    embedded = load("keras_lookup").run("serve", {"words": WORDS.reshape(3, 1)})["output_0"]
    np.testing.assert_array_equal(embedded, np.array([[2, -2], [0, 0], [1, -1]], np.float32))


def test_auto_falls_back_to_tf2_when_the_session_cannot_restore_variables(
    load: Any, runtime_models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    features = np.arange(8, dtype=np.float32).reshape(2, 4)
    want = direct_tf2(runtime_models["keras_tf_saved"], "serving_default", inputs=features)
    expected = features @ savedmodels.KERAS_KERNEL + savedmodels.KERAS_BIAS
    np.testing.assert_allclose(want["output_0"], expected, rtol=1e-6)
    with caplog.at_level(logging.INFO, logger="tfmux.runtimes"):
        model = load("keras_tf_saved")
    assert model.runtime == "tf2"
    (record,) = [r for r in caplog.records if r.name == "tfmux.runtimes"]
    assert record.levelno == logging.INFO
    assert "not restored: dense/bias, dense/kernel" in record.getMessage()
    assert str(runtime_models["keras_tf_saved"]) in record.getMessage()
    assert_same_answers(model.run("serving_default", {"inputs": features}), want)
    forced = load("keras_tf_saved", "tf1")  # what the fallback avoids: it fails on every call
    assert forced.runtime == "tf1"
    with pytest.raises(ServingError, match="Could not find variable dense/") as info:
        forced.run("serving_default", {"inputs": features})
    assert info.value.kind is ErrorKind.INTERNAL


@pytest.mark.parametrize(
    "twins", [("regression", "twin2", "twin_neg"), ("tf2_twin2", "tf2_twin_neg")]
)
def test_twins_are_isolated_also_under_concurrency(load: Any, twins: tuple[str, ...]) -> None:
    expected = {
        "regression": lambda rows: rows @ demo.REGRESSION_WEIGHTS + demo.REGRESSION_BIAS,
        "twin2": lambda rows: 2.0 * rows.sum(axis=1, keepdims=True),
        "twin_neg": lambda rows: -1.0 * rows.sum(axis=1, keepdims=True),
    }
    expected |= {"tf2_twin2": expected["twin2"], "tf2_twin_neg": expected["twin_neg"]}
    models = {name: load(name) for name in twins}  # same tensor and variable names
    assert {model.runtime for model in models.values()} == {"tf1"}

    def call(i: int) -> tuple[str, np.ndarray, np.ndarray]:
        name, rows = twins[i % len(twins)], ROWS * (i % 7)
        return name, rows, models[name].run("serving_default", {"x": rows})["y"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(300)))
    for name, rows, y in results:
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, expected[name](rows), rtol=1e-6)


def test_session_handles_shared_tensors_and_converts_dtypes(load: Any) -> None:
    model = load("echo")  # x and x_again are one placeholder; echo fetches it
    x = np.array([1.5, -2.0], dtype=np.float32)
    got = model.run("serving_default", {"x": x, "x_again": x})
    assert list(got) == ["double", "echo"]
    np.testing.assert_array_equal(got["echo"], x)
    np.testing.assert_array_equal(got["double"], 2 * x)
    assert model.run("serving_default", {"x": x, "x_again": x}, ["echo"])["echo"] is x
    rows = load("binary").run("serving_default", {"x": ROWS.astype(np.float64).tolist()})
    assert rows["probability"].dtype == np.float32  # converted as Session.run did


def test_strings_and_mixed_dtypes_round_trip(load: Any, runtime_models: dict[str, Path]) -> None:
    got = load("multi").run("serving_default", MULTI_INPUTS)
    want = direct_tf2(runtime_models["multi"], "serving_default", **MULTI_INPUTS)
    assert set(got) == {"sum", "b_twice", "s_upper", "s_len"}
    for alias, value in want.items():
        assert got[alias].dtype == value.dtype
        np.testing.assert_array_equal(got[alias], value)
    assert got["s_upper"].tolist() == ["HéLLO".encode(), b""]  # object array; ASCII-only upper()
    np.testing.assert_array_equal(got["sum"], np.array([6.0, -4.0], dtype=np.float32))
    np.testing.assert_array_equal(got["s_len"], np.array([6, 0], dtype=np.int32))


@pytest.mark.parametrize("kind", ["tf1", "tf2"])
def test_output_filtering_and_unknown_names(load: Any, kind: str) -> None:
    model = load("multi", kind)
    got = model.run("serving_default", MULTI_INPUTS, ["s_len", "b_twice"])
    assert list(got) == ["s_len", "b_twice"]
    np.testing.assert_array_equal(got["b_twice"], np.array([6, -8], dtype=np.int64))
    with pytest.raises(ServingError) as info:
        model.run("serving_default", MULTI_INPUTS, ["nope"])
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    with pytest.raises(ServingError, match='signature key "nope" not found') as info:
        model.run("nope", MULTI_INPUTS)
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT


def test_classify_and_regress(load: Any) -> None:
    model = load("classify_regress")
    assert list(model.signatures) == ["classify", "regress", "serving_default"]
    examples = savedmodels.serialize_examples(ROWS.tolist())
    logits = ROWS @ savedmodels.CLASSIFY_WEIGHTS + savedmodels.CLASSIFY_BIAS
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    classified = model.run("classify", {"inputs": examples})
    assert classified["classes"].tolist() == [list(savedmodels.CLASSES)] * len(ROWS)
    np.testing.assert_allclose(classified["scores"], softmax, rtol=1e-5)
    regressed = model.run("regress", {"inputs": examples}, ["outputs"])["outputs"]
    np.testing.assert_allclose(
        regressed, ROWS @ savedmodels.REGRESS_WEIGHTS + savedmodels.REGRESS_BIAS, rtol=1e-6
    )
    predicted = model.run("serving_default", {"x": ROWS})["scores"]
    np.testing.assert_allclose(predicted, softmax, rtol=1e-5)


@pytest.mark.parametrize("kind", ["auto", "tf1", "tf2"])
def test_failing_model_raises_then_recovers(load: Any, kind: str) -> None:
    model = load("failing", kind)
    assert model.runtime == {"auto": "tf1"}.get(kind, kind)
    message = r"InvalidArgumentError: assertion failed: \[x must be non-negative"
    with pytest.raises(ServingError, match=message) as e:
        model.run("serving_default", {"x": np.array([[4.0], [-1.0]], dtype=np.float32)})
    assert e.value.kind is ErrorKind.INVALID_ARGUMENT  # the graph's own status, as TF Serving
    assert "Graph execution error" not in e.value.message
    got = model.run("serving_default", {"x": np.array([[4.0], [0.0]], dtype=np.float32)})
    np.testing.assert_array_equal(got["y"], np.array([[2.0], [0.0]], dtype=np.float32))


def test_keras_export(load: Any, runtime_models: dict[str, Path]) -> None:
    model = load("keras")
    assert {"serve", "serving_default"} <= set(model.signatures)
    features = np.arange(12, dtype=np.float32).reshape(3, 4) / 3.0
    got = model.run("serving_default", {"features": features})
    assert list(got) == ["output_0"]
    want = direct_tf2(runtime_models["keras"], "serving_default", features=features)
    np.testing.assert_array_equal(got["output_0"], want["output_0"])
    expected = features @ savedmodels.KERAS_KERNEL + savedmodels.KERAS_BIAS
    np.testing.assert_allclose(got["output_0"], expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["regression", "binary"])
def test_run_after_close_raises(load: Any, name: str) -> None:
    model = load(name)
    model.run("serving_default", {"x": ROWS})
    session = getattr(model, "_session", None)
    model.close()
    assert session is None or session._closed  # a TF1 model closes its session
    with pytest.raises(ServingError) as info:
        model.run("serving_default", {"x": ROWS})
    assert info.value.kind is ErrorKind.FAILED_PRECONDITION
    model.close()  # idempotent


def test_versions(tmp_path: Path) -> None:
    base = savedmodels.versions(tmp_path, "versioned", versions=(1, 3))
    x = np.array([1.0, -2.0], dtype=np.float32)
    for version in (1, 3):
        model = load_model(base / str(version))
        np.testing.assert_array_equal(model.run("serving_default", {"x": x})["y"], x * version)
        model.close()


@pytest.mark.parametrize("kind", ["auto", "tf1", "tf2"])
def test_load_errors_are_serving_errors(
    runtime_models: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    with pytest.raises(ServingError) as info:
        load_model(runtime_models["corrupt"], kind)
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    assert str(runtime_models["corrupt"] / "saved_model.pb") in info.value.message
    with pytest.raises(ServingError) as info:
        load_model(tmp_path / "absent" / "1", kind)
    assert info.value.kind is ErrorKind.NOT_FOUND
    assert str(tmp_path / "absent" / "1") in info.value.message
    broken = shutil.copytree(runtime_models["regression"], tmp_path / "1")
    for data in (broken / "variables").glob("variables.data-*"):
        data.unlink()  # TensorFlow's own error, with its status code
    with pytest.raises(ServingError, match=f"Failed to load SavedModel at {broken}: ") as info:
        load_model(broken, kind)
    assert info.value.kind is ErrorKind.NOT_FOUND
    broken = shutil.copytree(runtime_models["tf2_twin2"], tmp_path / "tf2" / "1")
    for data in (broken / "variables").glob("variables.data-*"):
        data.unlink()  # auto tries both runtimes; the error is TensorFlow's in each
    with pytest.raises(ServingError, match=f"Failed to load SavedModel at {broken}: .*data-") as e:
        load_model(broken, kind)
    # The session runtime restores a TF2 graph it can share with RestoreV2 itself (graph_cache):
    # a missing file is NOT_FOUND, as for TF1 models; TensorFlow's restore function says UNKNOWN.
    assert e.value.kind is (ErrorKind.NOT_FOUND if kind == "tf1" else ErrorKind.UNKNOWN)


def test_auto_runtime_and_unknown_kind(runtime_models: dict[str, Path]) -> None:
    model = AutoRuntime(intra_op_threads=1).load(runtime_models["regression"])
    # the session runtime: a graph that only reads its variables gets them fed (runtimes/fed.py)
    assert (AutoRuntime.name, type(model).__name__, model.runtime) == ("auto", "FedModel", "tf1")
    model.close()
    with pytest.raises(ServingError, match="Unknown runtime kind 'onnx'") as info:
        load_model(runtime_models["binary"], "onnx")
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT


def test_write_demo_models_is_idempotent_and_leaves_no_staging(tmp_path: Path) -> None:
    bases = demo.write_demo_models(tmp_path)
    assert bases == {"binary": tmp_path / "binary", "regression": tmp_path / "regression"}
    stamp = (tmp_path / "binary" / "1" / "saved_model.pb").stat().st_mtime_ns
    assert demo.write_demo_models(tmp_path) == bases
    assert (tmp_path / "binary" / "1" / "saved_model.pb").stat().st_mtime_ns == stamp
    for base in bases.values():
        assert sorted(p.name for p in base.iterdir()) == ["1"]
