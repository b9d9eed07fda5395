"""Fed graphs (runtimes/fed.py): versions of one architecture share one session and feed their
own weights. Real SavedModels, TF2 and TF1: each version answers with its own weights,
concurrently, batched and unbatched through a server, and unloading one never touches another;
graphs with other state (tables, assignments) are not fed and still serve."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tfmux.config import BatchingConfig, ModelConfig, ServerConfig
from tfmux.errors import ErrorKind, ServingError
from tfmux.runtimes import load_model
from tfmux.runtimes.fed import FedModel
from tfmux.runtimes.fed_graph import fed_graph
from tfmux.runtimes.graph_cache import GRAPHS
from tfmux.runtimes.savedmodel import serve_meta_graph

from . import savedmodels
from .harness import BackgroundServer
from .savedmodels import import_tensorflow

ROWS = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], dtype=np.float32)
SCALES = {"a": 2.0, "b": -1.0, "c": 0.5}


def expected(scale: float, rows: np.ndarray) -> np.ndarray:
    return scale * rows.sum(axis=1, keepdims=True)


def reweighted(source: Path, target: Path, scale: float) -> Path:
    """The tf2_twin export at ``source`` with ``w`` = ``scale``: same graph, other weights."""
    tf = import_tensorflow()
    shutil.copytree(source, target)
    checkpoint = tf.train.Checkpoint(w=tf.Variable(np.full((3, 1), scale, np.float32)))
    checkpoint.write(str(target / "variables" / "variables"))
    return target


def tf1_fine_tune(path: Path, scale: float) -> Path:
    """A TF1 SavedModel ``y = x @ w`` whose graph does not depend on ``scale`` (w's value is
    loaded into the session, not built into the graph): per-customer weights of one export."""
    tf = import_tensorflow()
    v1 = tf.compat.v1
    with tf.Graph().as_default(), v1.Session() as session:
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        w = v1.get_variable("w", [3, 1], initializer=v1.zeros_initializer())
        y = tf.matmul(x, w, name="y")
        session.run(v1.global_variables_initializer())
        w.load(np.full((3, 1), scale, np.float32), session)
        signature = v1.saved_model.predict_signature_def({"x": x}, {"y": y})
        builder = v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(
            session, ["serve"], signature_def_map={"serving_default": signature}
        )
        builder.save()
    return path


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model base paths: a, b, c (TF2, one graph), t1, t2 (TF1, one graph)."""
    root = tmp_path_factory.mktemp("fed")
    first = savedmodels.tf2_twin(root, "a", SCALES["a"]) / "1"
    for name in ("b", "c"):
        reweighted(first, root / name / "1", SCALES[name])
    tf1_fine_tune(root / "t1" / "1", 3.0)
    tf1_fine_tune(root / "t2" / "1", -2.0)
    return {name: root / name for name in ("a", "b", "c", "t1", "t2")}


def test_versions_of_one_graph_share_a_session_and_answer_with_their_own_weights(
    farm: dict[str, Path],
) -> None:
    GRAPHS.clear_idle()
    models = {name: load_model(farm[name] / "1") for name in ("a", "b", "c", "t1", "t2")}
    try:
        assert all(isinstance(m, FedModel) for m in models.values())
        scales = {**SCALES, "t1": 3.0, "t2": -2.0}

        def call(i: int) -> tuple[str, np.ndarray, np.ndarray]:
            name, rows = list(scales)[i % 5], ROWS * (i % 7)
            return name, rows, models[name].run("serving_default", {"x": rows})["y"]

        with ThreadPoolExecutor(max_workers=8) as pool:
            for name, rows, y in pool.map(call, range(200)):
                np.testing.assert_allclose(y, expected(scales[name], rows), rtol=1e-6)
        models.pop("a").close()  # unloading one: the others keep their answers
        models.pop("t1").close()
        for name, model in models.items():
            y = model.run("serving_default", {"x": ROWS})["y"]
            np.testing.assert_allclose(y, expected(scales[name], ROWS), rtol=1e-6)
    finally:
        for model in models.values():
            model.close()


def test_a_closed_version_refuses_calls_and_weights_are_aligned_for_zero_copy_feeds(
    farm: dict[str, Path],
) -> None:
    model = load_model(farm["b"] / "1")
    assert isinstance(model, FedModel)
    assert all(w.ctypes.data % 64 == 0 for w in model._weights or ())
    model.close()
    with pytest.raises(ServingError) as info:
        model.run("serving_default", {"x": ROWS})
    assert info.value.kind is ErrorKind.FAILED_PRECONDITION


def test_a_checkpoint_of_another_shape_is_a_clear_error(
    farm: dict[str, Path], tmp_path: Path
) -> None:
    tf = import_tensorflow()
    wrong = tmp_path / "wrong" / "1"
    shutil.copytree(farm["a"] / "1", wrong)
    tf.train.Checkpoint(w=tf.Variable(np.ones((4, 1), np.float32))).write(
        str(wrong / "variables" / "variables")
    )
    with pytest.raises(ServingError) as info:
        load_model(wrong, "tf1")
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "[4, 1]" in info.value.message and str(wrong) in info.value.message
    good = load_model(farm["c"] / "1")  # the graph still serves
    try:
        y = good.run("serving_default", {"x": ROWS})["y"]
        np.testing.assert_allclose(y, expected(SCALES["c"], ROWS), rtol=1e-6)
    finally:
        good.close()


def test_a_corrupt_checkpoint_is_refused_by_its_checksum(
    farm: dict[str, Path], tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt" / "1"
    shutil.copytree(farm["b"] / "1", corrupt)
    data = next((corrupt / "variables").glob("variables.data-*"))
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF  # w's 12 bytes are first or last (after the object graph)
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ServingError) as info:
        load_model(corrupt, "tf1")
    assert "checksum" in info.value.message and str(corrupt) in info.value.message
    good = load_model(farm["b"] / "1")
    try:
        y = good.run("serving_default", {"x": ROWS})["y"]
        np.testing.assert_allclose(y, expected(SCALES["b"], ROWS), rtol=1e-6)
    finally:
        good.close()


def counter(path: Path) -> Path:
    """A TF2 signature that assigns its variable: state per version, so not fed."""
    tf = import_tensorflow()
    module = tf.Module()
    module.calls = tf.Variable(0.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(x: Any) -> dict[str, Any]:
        module.calls.assign_add(1.0)
        return {"y": x + module.calls}

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
    return path


def test_graphs_with_state_beyond_read_variables_are_not_fed_and_still_serve(
    tmp_path: Path,
) -> None:
    stateful = {
        "counter": counter(tmp_path / "counter" / "1"),
        "lookup": savedmodels.tf2_lookup(tmp_path) / "1",
    }
    for name, path in stateful.items():
        meta_graph = serve_meta_graph(path)
        names = [n for n in meta_graph.signature_def if not n.startswith("__")]
        assert fed_graph(meta_graph, {}, names) is None, name
    model = load_model(stateful["counter"])
    try:
        assert not isinstance(model, FedModel)
        x = np.array([1.0], np.float32)
        assert [float(model.run("serving_default", {"x": x})["y"][0]) for _ in "ab"] == [2, 3]
    finally:
        model.close()


def test_through_a_server_batched_and_unbatched_and_after_an_unload(
    farm: dict[str, Path],
) -> None:
    batched = BatchingConfig(max_batch_size=16, batch_timeout_micros=20_000)
    models = [
        ModelConfig(name="a", base_path=farm["a"], batching=batched),
        ModelConfig(name="b", base_path=farm["b"], batching=batched),
        ModelConfig(name="c", base_path=farm["c"], batching=BatchingConfig(enabled=False)),
    ]
    with BackgroundServer(ServerConfig(models=models)) as server, httpx.Client() as client:

        def call(i: int) -> tuple[str, np.ndarray, Any]:
            name, rows = "abc"[i % 3], ROWS * (i % 4 + 1)
            url = f"{server.url}/v1/models/{name}:predict"
            response = client.post(url, json={"instances": rows.tolist()}, timeout=60)
            return name, rows, response

        with ThreadPoolExecutor(max_workers=12) as pool:
            for name, rows, response in pool.map(call, range(90)):
                assert response.status_code == 200, response.text
                got = np.array(response.json()["predictions"], np.float32)
                np.testing.assert_allclose(got, expected(SCALES[name], rows), rtol=1e-6)
        unload = client.post(f"{server.url}/v2/repository/models/a/unload", timeout=60)
        assert unload.status_code == 200, unload.text
        for name in "bc":
            url = f"{server.url}/v1/models/{name}:predict"
            response = client.post(url, json={"instances": ROWS.tolist()}, timeout=60)
            got = np.array(response.json()["predictions"], np.float32)
            np.testing.assert_allclose(got, expected(SCALES[name], ROWS), rtol=1e-6)
