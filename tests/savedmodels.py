"""Tiny real SavedModels for tests, each written as ``<root>/<name>/<version>/``.

Every builder returns the model's base path (``<root>/<name>``), builds in well under a second
and imports TensorFlow only when called. TF1 graphs are built in their own ``tf.Graph``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfmux.demo import (
    build_binary,
    build_regression,
    build_tf1_linear,
    import_tensorflow,
    write_version,
)

# classify_regress: scores = softmax(x @ CLASSIFY_WEIGHTS + CLASSIFY_BIAS) over CLASSES;
# regress outputs = x @ REGRESS_WEIGHTS + REGRESS_BIAS.
CLASSES = (b"neg", b"pos")
CLASSIFY_WEIGHTS = np.array([[1.0, -1.0], [0.5, 0.25], [-0.75, 2.0]], dtype=np.float32)
CLASSIFY_BIAS = np.array([0.1, -0.2], dtype=np.float32)
REGRESS_WEIGHTS = np.array([2.0, -1.0, 0.5], dtype=np.float32)
REGRESS_BIAS = np.float32(0.25)
# keras_export: outputs = x @ KERAS_KERNEL + KERAS_BIAS.
KERAS_KERNEL = (np.arange(8, dtype=np.float32).reshape(4, 2) - 3.0) / 4.0
KERAS_BIAS = np.array([0.5, -0.5], dtype=np.float32)


def binary(root: Path, name: str = "binary", version: int = 1) -> Path:
    """The demo TF2 model: ``x`` float32 [None, 3] -> ``probability`` float32 [None, 1]."""
    return _write(root, name, version, build_binary)


def regression(root: Path, name: str = "regression", version: int = 1) -> Path:
    """The demo TF1 model: ``x`` (input_tensor:0) -> ``y`` (output_tensor:0) = x @ w + b."""
    return _write(root, name, version, build_regression)


def tf1_twin(root: Path, name: str, scale: float, version: int = 1) -> Path:
    """A TF1 model with regression's tensor and variable names: ``y = scale * sum(x)``,
    ``x`` float32 [None, 3] -> ``y`` float32 [None, 1]."""
    weights = np.full((3, 1), scale, dtype=np.float32)
    bias = np.zeros(1, dtype=np.float32)
    return _write(root, name, version, lambda path: build_tf1_linear(path, weights, bias))


def tf2_multi(root: Path, name: str = "multi", version: int = 1) -> Path:
    """TF2, mixed dtypes. Inputs ``a`` float32 [None, 2], ``b`` int64 [None], ``s`` string
    [None]; outputs ``sum`` float32 [None] (row sum of a + b), ``b_twice`` int64 [None],
    ``s_upper`` string [None], ``s_len`` int32 [None]."""

    def build(path: Path) -> None:
        tf = import_tensorflow()

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 2], tf.float32, name="a"),
                tf.TensorSpec([None], tf.int64, name="b"),
                tf.TensorSpec([None], tf.string, name="s"),
            ]
        )
        def serve(a: Any, b: Any, s: Any) -> dict[str, Any]:
            return {
                "sum": tf.reduce_sum(a, axis=1) + tf.cast(b, tf.float32),
                "b_twice": b * 2,
                "s_upper": tf.strings.upper(s),
                "s_len": tf.strings.length(s),
            }

        _save_tf2(path, serve)

    return _write(root, name, version, build)


def classify_regress(root: Path, name: str = "classify_regress", version: int = 1) -> Path:
    """TF1 with three signatures, all over features ``x`` (3 floats):

    - ``classify`` (classify method): ``inputs`` string [None] of serialized tf.Example ->
      ``classes`` string [None, 2] (CLASSES) and ``scores`` float32 [None, 2] (softmax);
    - ``regress`` (regress method): ``inputs`` -> ``outputs`` float32 [None];
    - ``serving_default`` (predict): ``x`` float32 [None, 3] -> ``scores`` float32 [None, 2].
    """
    return _write(root, name, version, _build_classify_regress)


def failing(root: Path, name: str = "failing", version: int = 1) -> Path:
    """TF2: ``x`` float32 [None, 1] -> ``y`` = sqrt(x); a negative ``x`` fails at run time."""

    def build(path: Path) -> None:
        tf = import_tensorflow()

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(x: Any) -> dict[str, Any]:
            tf.debugging.assert_non_negative(x, message="x must be non-negative")
            return {"y": tf.sqrt(x)}

        _save_tf2(path, serve)

    return _write(root, name, version, build)


def keras_export(root: Path, name: str = "keras", version: int = 1) -> Path:
    """Keras 3 ``model.export``: ``features`` float32 [None, 4] -> ``output_0`` float32
    [None, 2] = features @ KERAS_KERNEL + KERAS_BIAS; signatures ``serve`` and
    ``serving_default``."""

    def build(path: Path) -> None:
        import_tensorflow()
        import keras

        inputs = keras.Input(shape=(4,), name="features")
        model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
        model.set_weights([KERAS_KERNEL, KERAS_BIAS])
        model.export(str(path), verbose=False)

    return _write(root, name, version, build)


def tf2_twin(root: Path, name: str, scale: float, version: int = 1) -> Path:
    """TF2 with one variable named ``w`` in every twin: ``x`` float32 [None, 3] -> ``y``
    float32 [None, 1] = x @ w, with w = ``scale`` everywhere."""

    def build(path: Path) -> None:
        tf = import_tensorflow()
        module = tf.Module()
        module.w = tf.Variable(np.full((3, 1), scale, np.float32), name="w")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(x: Any) -> dict[str, Any]:
            return {"y": tf.matmul(x, module.w)}

        _save_tf2(path, serve, module)

    return _write(root, name, version, build)


VOCABULARY = ("apple", "banana", "cherry")


def tf2_lookup(root: Path, name: str = "lookup", version: int = 1) -> Path:
    """TF2 ``tf.Module`` with a vocabulary asset file read into a hash table by the SavedModel's
    init op, a variable, and two signatures (``tf.saved_model.save`` with a dict):

    - ``serving_default``: ``words`` string [None] -> ``ids`` int64 [None] (line of the word
      in VOCABULARY, -1 when absent), ``size`` int64 scalar (vocabulary size);
    - ``scaled``: ``x`` float32 [None] -> ``y`` float32 [None] = x * 1.5 (a variable).
    """

    def build(path: Path) -> None:
        tf = import_tensorflow()
        vocabulary = path.parent / f"{path.name}-vocabulary.txt"
        vocabulary.write_text("".join(f"{word}\n" for word in VOCABULARY))
        module = tf.Module()
        module.asset = tf.saved_model.Asset(str(vocabulary))
        initializer = tf.lookup.TextFileInitializer(
            module.asset,
            tf.string,
            tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER,
        )
        module.table = tf.lookup.StaticHashTable(initializer, default_value=-1)
        module.scale = tf.Variable(1.5, name="scale")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def lookup(words: Any) -> dict[str, Any]:
            return {"ids": module.table.lookup(words), "size": module.table.size()}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def scaled(x: Any) -> dict[str, Any]:
            return {"y": x * module.scale}

        module.lookup, module.scaled = lookup, scaled
        signatures = {"serving_default": lookup, "scaled": scaled}
        tf.saved_model.save(module, str(path), signatures=signatures)
        vocabulary.unlink()  # the SavedModel holds its own copy under assets/

    return _write(root, name, version, build)


def keras_lookup(root: Path, name: str = "keras_lookup", version: int = 1) -> Path:
    """Keras 3 ``model.export`` with a StringLookup and an Embedding: ``words`` string
    [None, 1] -> ``output_0`` float32 [None, 2], the embedding row of the word's index
    (0 for out-of-vocabulary words, then VOCABULARY in order); row i is [i, -i].

    Its graph keeps variable nodes that no signature reads and that the v1 loader leaves
    uninitialized (Keras exports copies of its variables), which the runtimes must ignore.
    """

    def build(path: Path) -> None:
        import_tensorflow()
        import keras

        inputs = keras.Input(shape=(1,), dtype="string", name="words")
        ids = keras.layers.StringLookup(vocabulary=list(VOCABULARY), name="lookup")(inputs)
        embedded = keras.layers.Embedding(len(VOCABULARY) + 1, 2, name="embedding")(ids)
        model = keras.Model(inputs, keras.layers.Flatten(name="flat")(embedded))
        rows = np.arange(len(VOCABULARY) + 1, dtype=np.float32)
        model.get_layer("embedding").set_weights([np.stack([rows, -rows], axis=1)])
        model.export(str(path), verbose=False)

    return _write(root, name, version, build)


def keras_tf_saved(root: Path, name: str = "keras_tf_saved", version: int = 1) -> Path:
    """A Keras 3 model written by ``tf.saved_model.save`` instead of ``model.export``:
    ``inputs`` float32 [None, 4] -> ``output_0`` float32 [None, 2] = inputs @ KERAS_KERNEL +
    KERAS_BIAS.

    Its signature function reads the layer's variables, but its checkpoint holds copies of
    them, so the v1 loader (and TF Serving) restores the copies and leaves the variables the
    signature reads without a value; ``tf.saved_model.load`` restores them by object.
    """

    def build(path: Path) -> None:
        tf = import_tensorflow()
        import keras

        inputs = keras.Input(shape=(4,), name="features")
        model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
        model.set_weights([KERAS_KERNEL, KERAS_BIAS])
        tf.saved_model.save(model, str(path))

    return _write(root, name, version, build)


def tf1_echo(root: Path, name: str = "echo", version: int = 1) -> Path:
    """TF1 whose signature aliases share tensors: inputs ``x`` and ``x_again`` are both the
    placeholder ``x:0`` (float32 [None]); outputs ``echo`` is that placeholder itself and
    ``double`` = 2 * x."""

    def build(path: Path) -> None:
        tf = import_tensorflow()
        v1 = tf.compat.v1
        with tf.Graph().as_default() as graph:
            x = v1.placeholder(tf.float32, [None], name="x")
            double = tf.multiply(x, 2.0, name="double")
            signature = v1.saved_model.signature_def_utils.predict_signature_def(
                {"x": x, "x_again": x}, {"echo": x, "double": double}
            )
            with v1.Session(graph=graph) as session:
                builder = v1.saved_model.Builder(str(path))
                builder.add_meta_graph_and_variables(
                    session,
                    [v1.saved_model.tag_constants.SERVING],
                    signature_def_map={"serving_default": signature},
                )
                builder.save()

    return _write(root, name, version, build)


def versions(root: Path, name: str = "versioned", versions: Iterable[int] = (1, 2)) -> Path:
    """TF2, one directory per version: ``x`` float32 [None] -> ``y`` = x * version."""
    base = Path(root) / name
    for version in versions:
        write_version(base, version, lambda path, v=version: _build_scaled(path, float(v)))
    return base


def corrupt(root: Path, name: str = "corrupt") -> Path:
    """A version directory ``1/`` whose ``saved_model.pb`` is not a protobuf."""
    version_dir = Path(root) / name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "saved_model.pb").write_bytes(b"this is not a SavedModel\n")
    return version_dir.parent


def serialize_examples(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Serialized tf.Example protos with float feature ``x``, as a numpy object array."""
    tf = import_tensorflow()
    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=row))}
            )
        ).SerializeToString()
        for row in rows
    ]
    return np.array(examples, dtype=object)


def _write(root: Path, name: str, version: int, build: Callable[[Path], None]) -> Path:
    base = Path(root) / name
    write_version(base, version, build)
    return base


def _save_tf2(path: Path, serve: Any, module: Any = None) -> None:
    tf = import_tensorflow()
    module = tf.Module() if module is None else module
    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def _build_scaled(path: Path, factor: float) -> None:
    tf = import_tensorflow()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(x: Any) -> dict[str, Any]:
        return {"y": x * factor}

    _save_tf2(path, serve)


def _build_classify_regress(path: Path) -> None:
    tf = import_tensorflow()
    v1 = tf.compat.v1
    utils = v1.saved_model.signature_def_utils
    with tf.Graph().as_default() as graph:
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        parsed = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([3], tf.float32)})
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        w = v1.get_variable("w", initializer=tf.constant(CLASSIFY_WEIGHTS))
        b = v1.get_variable("b", initializer=tf.constant(CLASSIFY_BIAS))
        scores = tf.nn.softmax(tf.matmul(parsed["x"], w) + b, name="scores")
        classes = tf.tile(tf.constant([list(CLASSES)]), [tf.shape(scores)[0], 1], name="classes")
        regressed = tf.add(
            tf.reduce_sum(parsed["x"] * REGRESS_WEIGHTS, axis=1), REGRESS_BIAS, name="regressed"
        )
        predicted = tf.nn.softmax(tf.matmul(x, w) + b, name="predicted_scores")
        signature_defs = {
            "classify": utils.classification_signature_def(serialized, classes, scores),
            "regress": utils.regression_signature_def(serialized, regressed),
            "serving_default": utils.predict_signature_def({"x": x}, {"scores": predicted}),
        }
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(
                session, [v1.saved_model.tag_constants.SERVING], signature_def_map=signature_defs
            )
            builder.save()
