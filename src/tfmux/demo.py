"""The embedded demo models, generated on the server's first start.

``binary`` is a TF2 SavedModel (3 float features -> sigmoid probability); ``regression`` is a
TF1 SavedModel written with ``tf.compat.v1.saved_model.Builder`` whose graph tensors are named
``input_tensor:0`` and ``output_tensor:0``. Both use fixed weights, so every build gives the
same predictions. TensorFlow is imported only inside the builders.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tfmux.runtimes import quiet_tensorflow

DEMO_VERSION = 1
BINARY_WEIGHTS = np.array([[0.5], [-0.25], [1.0]], dtype=np.float32)
BINARY_BIAS = np.array([0.1], dtype=np.float32)
REGRESSION_WEIGHTS = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
REGRESSION_BIAS = np.array([0.5], dtype=np.float32)


def write_version(base: Path, version: int, build: Callable[[Path], None]) -> Path:
    """Write ``<base>/<version>/`` with ``build(export_dir)`` unless it already holds a model.

    ``build`` must create ``export_dir`` (which does not exist yet). The model is built in a
    hidden temporary directory next to the target and renamed into place, so a crash never
    leaves half a model behind (an interrupted build may leave a hidden ``.<version>-building-*``
    directory, which repositories ignore). Returns the version directory.
    """
    target = base / str(version)
    if (target / "saved_model.pb").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-building-", dir=base))
    try:
        build(staging / "model")
        if target.exists() and not (target / "saved_model.pb").is_file():
            shutil.rmtree(target)  # not a model: left over by something else
        try:
            (staging / "model").rename(target)
        except OSError:
            if not (target / "saved_model.pb").is_file():
                raise  # else a concurrent writer got there first: keep its model
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def import_tensorflow() -> Any:
    """Import TensorFlow with its logging quieted (see ``quiet_tensorflow``)."""
    quiet_tensorflow()
    import tensorflow

    return tensorflow


def build_binary(export_dir: Path) -> None:
    """TF2 module: ``serving_default`` maps ``x`` float32 [None, 3] to ``probability``
    float32 [None, 1] = sigmoid(x @ w + b)."""
    tf = import_tensorflow()
    module = tf.Module()
    module.w = tf.Variable(BINARY_WEIGHTS, name="w")
    module.b = tf.Variable(BINARY_BIAS, name="b")
    module.serve = tf.function(
        lambda x: {"probability": tf.sigmoid(tf.matmul(x, module.w) + module.b)},
        input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")],
    )
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})


def build_regression(export_dir: Path) -> None:
    """TF1 graph: ``serving_default`` maps alias ``x`` (``input_tensor:0``, float32 [None, 3])
    to alias ``y`` (``output_tensor:0``, float32 [None, 1] = x @ w + b)."""
    build_tf1_linear(export_dir, REGRESSION_WEIGHTS, REGRESSION_BIAS)


def build_tf1_linear(export_dir: Path, weights: np.ndarray, bias: np.ndarray) -> None:
    """A TF1 SavedModel computing ``output_tensor = input_tensor @ weights + bias`` with the
    weights held in variables, saved with ``tf.compat.v1.saved_model.Builder``."""
    tf = import_tensorflow()

    v1 = tf.compat.v1
    with tf.Graph().as_default() as graph:
        x = v1.placeholder(tf.float32, [None, weights.shape[0]], name="input_tensor")
        w = v1.get_variable("w", initializer=tf.constant(weights))
        b = v1.get_variable("b", initializer=tf.constant(bias))
        y = tf.add(tf.matmul(x, w), b, name="output_tensor")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(
                session,
                [v1.saved_model.tag_constants.SERVING],
                signature_def_map={
                    "serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y})
                },
            )
            builder.save()


def write_demo_models(root: Path) -> dict[str, Path]:
    """Write the demo models as ``<root>/<name>/1/`` (skipping any already there).

    Returns the base path of each model, keyed by model name.
    """
    builders = {"binary": build_binary, "regression": build_regression}
    bases = {name: Path(root) / name for name in builders}
    for name, build in builders.items():
        write_version(bases[name], DEMO_VERSION, build)
    return bases
