"""SavedModels shaped like TF Serving's own test models (``half_plus_two``, ``half_plus_three``),
built here from their description in TF Serving's ``saved_model_half_plus_two.py``:

- TF1 (session graph): feature ``x`` ([1] float) of serialized tf.Examples, ``x`` [-1, 1] =
  the parsed feature, ``y = a * x + b`` with a = 0.5, b = 2 (or 3 for half_plus_three).
  Signatures: ``serving_default`` (predict, ``x`` -> ``y``), ``regress_x_to_y`` (regress,
  ``inputs`` serialized examples -> ``outputs``), ``classify_x_to_y`` (classify, ``inputs`` ->
  ``scores``).
- TF2 (``tf.saved_model.save``): the same signatures, all with the predict method name, which
  is what TF2 exports; ``serving_default`` takes ``x`` of shape [1].

Each is written at version 123 in a zero-padded folder (``00000123``), as TF Serving's are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfmux.demo import import_tensorflow

VERSION = 123


def half_plus_two_tf1(root: Path, name: str = "half_plus_two", b: float = 2.0) -> Path:
    return _write(root / name, lambda path: _build_tf1(path, b))


def half_plus_two_tf2(root: Path, name: str = "half_plus_two_tf2") -> Path:
    return _write(root / name, _build_tf2)


def _write(base: Path, build: Any) -> Path:
    target = base / f"{VERSION:08d}"
    if not (target / "saved_model.pb").is_file():
        base.mkdir(parents=True, exist_ok=True)
        build(target)
    return base


def _build_tf1(path: Path, b_value: float) -> None:
    tf = import_tensorflow()
    v1 = tf.compat.v1
    utils = v1.saved_model.signature_def_utils
    spec = {"x": tf.io.FixedLenFeature([1], tf.float32)}
    with tf.Graph().as_default():
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(b_value, name="b")
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        x = tf.identity(tf.io.parse_example(serialized, spec)["x"], name="x")
        y = tf.identity(a * x + b, name="y")
        info = v1.saved_model.utils.build_tensor_info
        signatures = {
            "serving_default": utils.predict_signature_def({"x": x}, {"y": y}),
            "regress_x_to_y": utils.build_signature_def(
                {"inputs": info(serialized)}, {"outputs": info(y)}, "tensorflow/serving/regress"
            ),
            "classify_x_to_y": utils.build_signature_def(
                {"inputs": info(serialized)}, {"scores": info(y)}, "tensorflow/serving/classify"
            ),
        }
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()


def _build_tf2(path: Path) -> None:
    tf = import_tensorflow()
    spec = {"x": tf.io.FixedLenFeature([1], tf.float32)}
    examples = tf.TensorSpec([None], tf.string, name="inputs")

    class HalfPlusTwo(tf.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
        def predict(self, x: Any) -> Any:
            return {"y": self.a * x + self.b}

        @tf.function(input_signature=[examples])
        def regress(self, inputs: Any) -> Any:
            return {"outputs": self.a * tf.io.parse_example(inputs, spec)["x"] + self.b}

        @tf.function(input_signature=[examples])
        def classify(self, inputs: Any) -> Any:
            return {"scores": self.a * tf.io.parse_example(inputs, spec)["x"] + self.b}

    module = HalfPlusTwo()
    signatures = {
        "serving_default": module.predict,
        "regress_x_to_y": module.regress,
        "classify_x_to_y": module.classify,
    }
    tf.saved_model.save(module, str(path), signatures=signatures)
