"""Session fixtures: real SavedModels built once, and one real server reused where safe."""

from __future__ import annotations

import os

# As `tfmux serve` does, before anything imports TensorFlow: oneDNN off, so freed model memory
# goes back to the OS and the memory the tests see is what production sees.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from collections.abc import Iterator
from pathlib import Path

import pytest

from tfmux.config import ModelConfig, ServerConfig, VersionPolicy

from .harness import BackgroundServer


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of small real SavedModels, built once per test session."""
    from . import savedmodels as sm

    root = tmp_path_factory.mktemp("models")
    sm.binary(root)
    sm.regression(root)
    sm.tf1_twin(root, "twin_a", 2.0)
    sm.tf1_twin(root, "twin_b", 3.0)
    sm.tf2_multi(root, "multi")
    sm.classify_regress(root, "cr")
    sm.failing(root, "failing")
    sm.keras_export(root, "keras")
    sm.versions(root, "versioned", (1, 2, 3))
    sm.corrupt(root, "corrupt")
    return root


def e2e_config(root: Path) -> ServerConfig:
    """The models the shared end-to-end server serves."""

    def model(name: str, **kw: object) -> ModelConfig:
        return ModelConfig(name=name, base_path=root / str(kw.pop("dir", name)), **kw)  # type: ignore[arg-type]

    return ServerConfig(
        max_body_bytes=1024 * 1024,
        models=[
            model("binary"),
            model("regression"),
            model("twin_a"),
            model("twin_b"),
            model("multi"),
            model("cr"),
            model("failing"),
            model("keras"),
            model(
                "versioned",
                version_policy=VersionPolicy(kind="all"),
                labels={"stable": 1, "canary": 3},
            ),
            model("corrupt"),
            model("missing", dir="does-not-exist"),
            model("lazy_binary", dir="binary", load="lazy"),
            model("lazy_corrupt", dir="corrupt", load="lazy"),
        ],
    )


@pytest.fixture(scope="session")
def e2e_server(model_root: Path) -> Iterator[BackgroundServer]:
    """One real server on 127.0.0.1:0 shared by the end-to-end tests (they only read)."""
    with BackgroundServer(e2e_config(model_root)) as server:
        yield server
