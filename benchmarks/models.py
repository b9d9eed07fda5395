"""The benchmark models, written in TF Serving's layout (``<root>/<name>/1/saved_model.pb``).

``mlp``: float32 ``x`` [None, 256] -> 1024 relu -> 1024 relu -> 10 softmax ``probabilities``.
``tiny``: float32 ``x`` [None, 3] -> sigmoid ``probability`` [None, 1].

Both are TF2 SavedModels (``tf.Module`` + ``tf.function``) with fixed random weights drawn
from a seeded generator, so every build computes the same function. A model already on disk
with the same build stamp is kept.

    python -m benchmarks.models DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20240611
MLP_LAYERS = (256, 1024, 1024, 10)
TINY_FEATURES = 3
STAMP = "benchmark-model.json"
BUILD_ID = 1  # bump when a model's definition changes


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def mlp_weights(seed: int = SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel, bias) per layer, He-scaled so activations stay in a sane range."""
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in itertools.pairwise(MLP_LAYERS):
        kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), (fan_in, fan_out)).astype(np.float32)
        bias = rng.normal(0.0, 0.01, (fan_out,)).astype(np.float32)
        layers.append((kernel, bias))
    return layers


def build_mlp(export_dir: Path) -> None:
    tf = _tf()
    module = tf.Module()
    module.layers = [
        (tf.Variable(k, name=f"kernel_{i}"), tf.Variable(b, name=f"bias_{i}"))
        for i, (k, b) in enumerate(mlp_weights())
    ]

    @tf.function(  # type: ignore[untyped-decorator]
        input_signature=[tf.TensorSpec([None, MLP_LAYERS[0]], tf.float32, name="x")]
    )
    def serve(x: Any) -> dict[str, Any]:
        h = x
        last = len(module.layers) - 1
        for i, (kernel, bias) in enumerate(module.layers):
            h = tf.matmul(h, kernel) + bias
            h = tf.nn.softmax(h) if i == last else tf.nn.relu(h)
        return {"probabilities": h}

    module.serve = serve
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": serve})


def build_tiny(export_dir: Path) -> None:
    tf = _tf()
    rng = np.random.default_rng(SEED + 1)
    module = tf.Module()
    module.w = tf.Variable(rng.normal(size=(TINY_FEATURES, 1)).astype(np.float32), name="w")
    module.b = tf.Variable(np.array([0.1], dtype=np.float32), name="b")

    @tf.function(  # type: ignore[untyped-decorator]
        input_signature=[tf.TensorSpec([None, TINY_FEATURES], tf.float32, name="x")]
    )
    def serve(x: Any) -> dict[str, Any]:
        return {"probability": tf.sigmoid(tf.matmul(x, module.w) + module.b)}

    module.serve = serve
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": serve})


BUILDERS: dict[str, Callable[[Path], None]] = {"mlp": build_mlp, "tiny": build_tiny}
FEATURES = {"mlp": MLP_LAYERS[0], "tiny": TINY_FEATURES}
OUTPUTS = {"mlp": "probabilities", "tiny": "probability"}


def sample_row(name: str, seed: int = SEED + 7) -> list[float]:
    """The one input row every request of the benchmark sends to model ``name``."""
    rng = np.random.default_rng(seed)
    return [round(float(v), 4) for v in rng.uniform(-1, 1, FEATURES[name])]


def build_all(root: Path) -> dict[str, Path]:
    """Write every benchmark model under ``root`` (kept when already built); version dirs."""
    built = {}
    for name, build in BUILDERS.items():
        version_dir = root / name / "1"
        stamp = version_dir / STAMP
        wanted = {"build": BUILD_ID, "seed": SEED}
        if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
            built[name] = version_dir
            continue
        shutil.rmtree(root / name, ignore_errors=True)
        staging = root / f".{name}-building"
        shutil.rmtree(staging, ignore_errors=True)
        build(staging)
        (staging / STAMP).write_text(json.dumps(wanted))
        version_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(version_dir)
        built[name] = version_dir
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    for name, path in build_all(args.root).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
