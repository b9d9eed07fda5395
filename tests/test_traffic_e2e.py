"""End to end over real sockets: weighted splits, shadows and live traffic changes against real
SavedModels, read back from the responses and from /metrics.

Version N of ``versioned`` answers ``y = x * N``, so every response names the version that
served it.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tfmux.config import ModelConfig, ServerConfig, ShadowConfig, TrafficConfig, VersionPolicy
from tfmux.demo import import_tensorflow, write_version

from .harness import BackgroundServer

pytestmark = pytest.mark.tf

LABELS = {"stable": 1, "canary": 2}
REQUESTS = 2_000
NEGATIVE = [[-1.0], [-2.5]]  # the shadow (sqrt with a check) fails on these


def _column_identity(path: Path) -> None:
    """TF2: ``x`` float32 [None, 1] -> ``y`` = x (the primary the failing shadow mirrors)."""
    tf = import_tensorflow()

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve(x: Any) -> dict[str, Any]:
        return {"y": tf.identity(x)}

    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def _copy_versions(base: Path, sources: dict[int, Path]) -> Path:
    for version, source in sources.items():
        shutil.copytree(source, base / str(version))
    return base


def mirrored(base: Path) -> ModelConfig:
    """Everything to version 1, mirrored in full to version 2."""
    return ModelConfig(
        name=base.name,
        base_path=base,
        version_policy=VersionPolicy(kind="all"),
        traffic=TrafficConfig(split={"1": 1}, shadow=ShadowConfig(target="2", percent=100)),
    )


def split_model(name: str, root: Path) -> ModelConfig:
    return ModelConfig(
        name=name,
        base_path=root / "versioned",
        version_policy=VersionPolicy(kind="all"),
        labels=LABELS,
        traffic=TrafficConfig(split={"stable": 90, "canary": 10}),
    )


@pytest.fixture(scope="module")
def server(
    model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundServer]:
    root = tmp_path_factory.mktemp("traffic")
    agree = _copy_versions(
        root / "mirror_agree", {1: model_root / "versioned/1", 2: model_root / "versioned/1"}
    )
    fail = root / "mirror_fail"
    write_version(fail, 1, _column_identity)
    _copy_versions(fail, {2: model_root / "failing/1"})
    config = ServerConfig(
        models=[
            split_model("split", model_root),
            split_model("moving", model_root),
            mirrored(agree),
            mirrored(fail),
        ]
    )
    with BackgroundServer(config) as background:
        yield background


@pytest.fixture(scope="module")
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def predict(http: httpx.Client, model: str, instances: list[Any]) -> list[Any]:
    r = http.post(f"/v1/models/{model}:predict", content=json.dumps({"instances": instances}))
    assert r.status_code == 200, r.text
    predictions: list[Any] = r.json()["predictions"]
    return predictions


def served_by(http: httpx.Client, model: str) -> int:
    """The version that answered: ``[1, 2] * version``."""
    y = predict(http, model, [1.0, 2.0])
    assert y[1] == 2 * y[0] and y[0] in (1.0, 2.0, 3.0), y
    return int(y[0])


Labels = dict[str, str]


def metric(http: httpx.Client, name: str, **match: str) -> list[tuple[Labels, float]]:
    """The samples of ``name`` (with their labels) whose labels include ``match``."""
    r = http.get("/metrics")
    assert r.status_code == 200
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
        if sample.name == name and match.items() <= sample.labels.items()
    ]


def shadow_outcomes(http: httpx.Client, model: str) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    for labels, value in metric(http, "tfmux_shadow_requests_total", model=model):
        outcomes[labels["outcome"]] += int(value)
    return outcomes


def wait_shadows(http: httpx.Client, model: str, count: int, timeout: float = 20) -> None:
    """Until ``count`` mirrors of ``model`` have ended (each lands in one outcome)."""
    deadline = time.monotonic() + timeout
    while sum(shadow_outcomes(http, model).values()) < count:
        assert time.monotonic() < deadline, f"timed out waiting for {count} shadows of {model}"
        time.sleep(0.005)


def in_parallel(
    server: BackgroundServer, count: int, work: Callable[[httpx.Client], int], threads: int = 8
) -> list[int]:
    """``work`` run ``count`` times over ``threads`` threads, each with its own client."""

    def chunk(n: int) -> list[int]:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            return [work(client) for _ in range(n)]

    with ThreadPoolExecutor(threads) as pool:
        chunks = pool.map(chunk, [count // threads + (i < count % threads) for i in range(threads)])
        return [result for part in chunks for result in part]


# -- a 90/10 split over two real versions -------------------------------------------------------


def test_split_90_10_over_2000_requests(server: BackgroundServer, http: httpx.Client) -> None:
    versions = Counter(in_parallel(server, REQUESTS, lambda c: served_by(c, "split")))
    assert set(versions) == {1, 2}
    sd = math.sqrt(REQUESTS * 0.1 * 0.9)
    assert abs(versions[2] - REQUESTS * 0.1) <= 4 * sd, versions
    routed = metric(http, "tfmux_routed_requests_total", model="split")
    arms = {(labels["arm"], labels["version"]): value for labels, value in routed}
    assert arms == {("stable", "1"): versions[1], ("canary", "2"): versions[2]}


# -- shadows -------------------------------------------------------------------------------------


def test_a_failing_shadow_never_changes_a_callers_response(http: httpx.Client) -> None:
    for i in range(30):
        assert predict(http, "mirror_fail", NEGATIVE) == NEGATIVE
        wait_shadows(http, "mirror_fail", i + 1)
    assert shadow_outcomes(http, "mirror_fail") == {"error": 30}
    assert predict(http, "mirror_fail", [[4.0]]) == [[4.0]]


def test_an_agreeing_shadow_reports_agreement_and_no_difference(http: httpx.Client) -> None:
    for i in range(20):
        assert predict(http, "mirror_agree", [1.5, -2.0]) == [1.5, -2.0]
        wait_shadows(http, "mirror_agree", i + 1)
    assert shadow_outcomes(http, "mirror_agree") == {"agree": 20}
    pair = {"model": "mirror_agree", "version": "1", "shadow_version": "2", "output": "y"}
    assert metric(http, "tfmux_shadow_mean_abs_diff_count", **pair) == [(pair, 20.0)]
    assert metric(http, "tfmux_shadow_mean_abs_diff_sum", **pair) == [(pair, 0.0)]


# -- live changes under load ---------------------------------------------------------------------

CHANGES = [
    ({"stable": 1, "canary": 2}, TrafficConfig(split={"stable": 90, "canary": 10})),
    ({"stable": 2, "canary": 3}, TrafficConfig(split={"stable": 50, "canary": 50})),
    ({"stable": 3}, TrafficConfig(split={"stable": 1})),
    ({"stable": 1, "canary": 3}, TrafficConfig(split={"canary": 1, "3": 1})),
]


def test_labels_and_weights_change_under_load_without_a_failed_request(
    server: BackgroundServer, http: httpx.Client
) -> None:
    done = threading.Event()
    swaps = 0

    def change() -> None:
        nonlocal swaps
        while not done.is_set():
            server.server.service.set_traffic("moving", *CHANGES[swaps % len(CHANGES)])
            swaps += 1
            time.sleep(0.001)

    changer = threading.Thread(target=change)
    changer.start()
    try:
        versions = Counter(in_parallel(server, 800, lambda c: served_by(c, "moving"), threads=4))
    finally:
        done.set()
        changer.join(10)
    assert sum(versions.values()) == 800 and set(versions) <= {1, 2, 3}
    assert swaps > 20, swaps
    assert served_by(http, "moving") in (1, 2, 3)
