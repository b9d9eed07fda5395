"""Versions with the same graph and other weights share one imported graph (graph_cache), and
stay isolated: real SavedModels, each answering with its own weights, under concurrency and
after the other is unloaded."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tfmux.runtimes import load_model
from tfmux.runtimes.graph_cache import GRAPHS, graph_key
from tfmux.runtimes.savedmodel import serve_meta_graph

from . import savedmodels

ROWS = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], dtype=np.float32)


def reweighted(source: Path, target: Path, scale: float) -> Path:
    """A copy of the tf2_twin version ``source`` whose variable ``w`` is ``scale`` everywhere:
    the same saved_model.pb (a per-customer fine-tune of one export), other weights."""
    import tensorflow as tf

    shutil.copytree(source, target)
    checkpoint = tf.train.Checkpoint(w=tf.Variable(np.full((3, 1), scale, np.float32)))
    checkpoint.write(str(target / "variables" / "variables"))
    return target


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shared")
    first = savedmodels.tf2_twin(root, "a", 2.0) / "1"
    return {
        "a": first,
        "b": reweighted(first, root / "b" / "1", -1.0),
        "c": reweighted(first, root / "c" / "1", 0.5),
    }


def expected(scale: float, rows: np.ndarray) -> np.ndarray:
    return scale * rows.sum(axis=1, keepdims=True)


SCALES = {"a": 2.0, "b": -1.0, "c": 0.5}


def test_same_graph_other_weights_share_the_import_and_answer_with_their_own_weights(
    twins: dict[str, Path],
) -> None:
    keys = {graph_key(serve_meta_graph(path)) for path in twins.values()}
    assert len(keys) == 1
    GRAPHS.clear_idle()
    before = GRAPHS.imports
    models = {name: load_model(path) for name, path in twins.items()}
    try:
        assert GRAPHS.imports == before + 1  # one import for three versions
        assert {m.runtime for m in models.values()} == {"tf1"}

        def call(i: int) -> tuple[str, np.ndarray, np.ndarray]:
            name, rows = "abc"[i % 3], ROWS * (i % 5)
            return name, rows, models[name].run("serving_default", {"x": rows})["y"]

        with ThreadPoolExecutor(max_workers=6) as pool:
            for name, rows, y in pool.map(call, range(120)):
                np.testing.assert_allclose(y, expected(SCALES[name], rows), rtol=1e-6)

        models.pop("a").close()  # unloading one leaves the others as they were
        for name, model in models.items():
            y = model.run("serving_default", {"x": ROWS})["y"]
            np.testing.assert_allclose(y, expected(SCALES[name], ROWS), rtol=1e-6)
        again = load_model(twins["a"])  # the graph is still there: no import
        models["a"] = again
        assert GRAPHS.imports == before + 1
        y = again.run("serving_default", {"x": ROWS})["y"]
        np.testing.assert_allclose(y, expected(2.0, ROWS), rtol=1e-6)
    finally:
        for model in models.values():
            model.close()
    reloaded = load_model(twins["c"])  # all closed: the idle graph is reused
    try:
        assert GRAPHS.imports == before + 1
        y = reloaded.run("serving_default", {"x": ROWS})["y"]
        np.testing.assert_allclose(y, expected(0.5, ROWS), rtol=1e-6)
    finally:
        reloaded.close()


def test_shared_answers_equal_tensorflows_own_loader(twins: dict[str, Path]) -> None:
    import tensorflow as tf

    for path in twins.values():
        model = load_model(path)
        try:
            ours = model.run("serving_default", {"x": ROWS})["y"]
        finally:
            model.close()
        theirs = tf.saved_model.load(str(path)).signatures["serving_default"](x=ROWS)["y"]
        np.testing.assert_array_equal(ours, theirs.numpy())


def test_graphs_with_other_constants_are_not_shared(tmp_path: Path) -> None:
    base = savedmodels.versions(tmp_path, "versioned", versions=(1, 3))  # y = x * version
    paths = [base / "1", base / "3"]
    assert len({graph_key(serve_meta_graph(p)) for p in paths}) == 2
    x = np.array([1.0, -2.0], dtype=np.float32)
    for version, path in zip((1, 3), paths, strict=True):
        model = load_model(path)
        try:
            np.testing.assert_array_equal(model.run("serving_default", {"x": x})["y"], x * version)
        finally:
            model.close()


def test_a_missing_checkpoint_is_a_clear_error_and_the_graph_stays_usable(
    twins: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken" / "1"
    shutil.copytree(twins["a"], broken)
    for file in (broken / "variables").iterdir():
        file.unlink()
    from tfmux.errors import ErrorKind, ServingError

    with pytest.raises(ServingError) as info:
        load_model(broken, "tf1")
    assert info.value.kind is ErrorKind.NOT_FOUND
    assert str(broken) in info.value.message
    model = load_model(twins["b"])
    try:
        y = model.run("serving_default", {"x": ROWS})["y"]
        np.testing.assert_allclose(y, expected(-1.0, ROWS), rtol=1e-6)
    finally:
        model.close()


def test_sharing_can_be_turned_off(twins: dict[str, Path]) -> None:
    from tfmux.runtimes.tf1 import TF1Runtime

    before = GRAPHS.imports
    runtime = TF1Runtime(share_graphs=False)
    models = [runtime.load(path) for path in twins.values()]
    try:
        assert GRAPHS.imports == before
        for model, scale in zip(models, SCALES.values(), strict=True):
            y = model.run("serving_default", {"x": ROWS})["y"]
            np.testing.assert_allclose(y, expected(scale, ROWS), rtol=1e-6)
    finally:
        for model in models:
            model.close()


def test_graphs_dropped_from_the_cache_are_collected(tmp_path: Path) -> None:
    """A ``tf.Graph`` is a web of reference cycles: graphs leaving the cache are collected
    every ``COLLECT_EVERY`` drops instead of piling up until the collector's own turn (with
    the automatic collector off here, only the cache's collections can free them)."""
    import gc
    import weakref

    from tfmux.runtimes.graph_cache import COLLECT_EVERY, GraphCache

    base = savedmodels.versions(tmp_path, "versioned", versions=range(1, COLLECT_EVERY + 1))
    cache = GraphCache(idle_graphs=0)
    graphs = []
    gc.collect()
    gc.disable()
    try:
        for version in range(1, COLLECT_EVERY + 1):
            path = base / str(version)
            shared = cache.acquire(path, serve_meta_graph(path))
            assert shared is not None
            graphs.append(weakref.ref(shared.graph))
            cache.release(shared)
            del shared
            if version == COLLECT_EVERY - 1:
                assert all(graph() is not None for graph in graphs)  # not collected yet
        assert all(graph() is None for graph in graphs[:-1])  # (the last was still in use)
    finally:
        gc.enable()
