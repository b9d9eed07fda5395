"""Shadow traffic on the cluster gateway (fake runtime, no Ray): the gateway's ClusterService
mirrors requests to the shadow version through the same forwarding path as primary requests
(a stand-in for the Serve handle that hands each call to a real replica core), compares the
answers with the single-process code and shows the agreement in its status; mirrors are
bounded, and one that hangs or fails never touches the primary's answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from ray.serve.exceptions import RayServeException

from tfmux.cluster import status as cluster_status
from tfmux.cluster.placement import ReplicaSnapshot
from tfmux.cluster.replica import Forwarded, ReplicaCore
from tfmux.cluster.service import SERVED_BY, ClusterService
from tfmux.config import ModelConfig, ServerConfig, ShadowConfig, TrafficConfig
from tfmux.core.service import Management
from tfmux.core.shadow import Shadowing
from tfmux.metrics import Metrics
from tfmux.transports import status_openapi
from tfmux.transports.tfs_codec import dumps
from tfmux.types import ModelRef

from .fakes import FakeLoader, FakeModel, make_repository

X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)


def same_everywhere(config: ModelConfig, path: Path) -> FakeModel:
    """Model "same" answers alike in every version; the others scale by the version."""
    return FakeModel(factor=1.0 if config.name == "same" else float(path.name))


class Response:
    """What ``handle.method.remote(...)`` returns: awaitable once, cancellable."""

    def __init__(self, work: Awaitable[Any], log: list[Response]) -> None:
        self.task = asyncio.ensure_future(work)
        self.cancelled = False
        self._request_metadata = SimpleNamespace(internal_request_id=f"req-{len(log)}")
        log.append(self)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.task.__await__()

    def cancel(self) -> None:
        self.cancelled = True
        self.task.cancel()


class Handle:
    """The Serve handle and router in one: every call goes to the replica core "r1"; infer
    calls for a version in ``hang`` never answer, those for one in ``fail`` fail as a replica
    Ray cannot reach does."""

    def __init__(self, core: ReplicaCore) -> None:
        self.core = core
        self.hang: set[int] = set()
        self.fail: set[int] = set()
        self.forwarded: list[Forwarded] = []
        self.responses: list[Response] = []
        self.suspected: list[str] = []

    def __getattr__(self, method: str) -> SimpleNamespace:
        def remote(*args: Any, **_: Any) -> Response:
            return Response(self._run(method, args), self.responses)

        return SimpleNamespace(remote=remote)

    async def _run(self, method: str, args: tuple[Any, ...]) -> Any:
        if method == "infer":
            request = args[0]
            self.forwarded.append(request)
            if request.version in self.hang:
                await asyncio.sleep(3600)
            if request.version in self.fail:
                raise RayServeException("replica r1 died")
        call: Callable[..., Awaitable[Any]] = getattr(self.core, method)
        return await call(*args)

    # -- the router's part -----------------------------------------------------------------

    def snapshots(self) -> list[ReplicaSnapshot]:
        return [ReplicaSnapshot.from_wire(self.core.snapshot())]

    def observe(self, snapshot: dict[str, Any]) -> None:
        return None

    def inflight(self) -> dict[str, int]:
        return {}

    def replica_ids(self) -> list[str]:
        return ["r1"]

    def suspect_request(self, request_id: str) -> None:
        self.suspected.append(request_id)


class Gateway:
    """A ClusterService over one replica core: models "m" and "same" (versions 1 and 2),
    requests to version 1, every one mirrored to version 2."""

    def __init__(self, root: Path) -> None:
        make_repository(root, {"m": [1, 2], "same": [1, 2]})
        traffic = TrafficConfig(split={"1": 100.0}, shadow=ShadowConfig(target="2"))
        self.configs = [
            ModelConfig(
                name=n, base_path=root / n, load="lazy", version_policy="all", traffic=traffic
            )
            for n in ("m", "same")
        ]
        config = ServerConfig(models=self.configs)
        self.loader = FakeLoader(same_everywhere)
        self.handle = Handle(ReplicaCore(config, "r1", "node-1", self.loader))
        router: Any = self.handle
        self.metrics = Metrics()
        self.service = ClusterService(self.handle, router, Management(), self.metrics)
        for model in self.configs:
            self.service.manager.add_model(model)

    async def ask(self, name: str) -> int:
        """One request that names only the model; the version that answered."""
        result = await self.service.infer(ModelRef(name), {"x": X})
        np.testing.assert_array_equal(result.outputs["y"], X)  # version 1's answer: x * 1
        return result.version

    def mirrors(self) -> list[Forwarded]:
        return [f for f in self.handle.forwarded if f.method == "shadow"]

    async def settled(self, name: str, mirrored: int) -> Shadowing:
        """The model's shadow counts once ``mirrored`` mirrors have ended (bounded wait)."""
        for _ in range(500):
            counts = self.service.shadows.counts(name)
            if counts.agree + counts.disagree + counts.error + counts.dropped >= mirrored:
                return counts
            await asyncio.sleep(0.01)
        raise AssertionError(f"{name}: {self.service.shadows.counts(name)}")


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Generator[Gateway, None, None]:
    monkeypatch.setattr(cluster_status, "CACHE_SECONDS", 0.0)  # each overview read afresh
    made = Gateway(tmp_path)
    yield made
    made.handle.core.close()


def test_mirrors_compare_and_show_agreement_in_the_status(gateway: Gateway) -> None:
    async def scenario() -> None:
        served_by: list[str] = []
        SERVED_BY.set(served_by)
        for sent in (1, 2, 3):  # each mirror ends before the next request (none dropped)
            assert await gateway.ask("m") == 1
            assert await gateway.settled("m", sent) == Shadowing(disagree=sent)  # x*2 != x*1
        for sent in (1, 2):
            assert await gateway.ask("same") == 1
            assert await gateway.settled("same", sent) == Shadowing(agree=sent)
        assert served_by == ["r1"] * 5  # the primaries only

        mirrors = gateway.mirrors()
        assert sorted((f.name, f.version) for f in mirrors) == [("m", 2)] * 3 + [("same", 2)] * 2
        for mirror in mirrors:  # the primary's inputs, signature and outputs
            np.testing.assert_array_equal(mirror.inputs["x"], X)
            assert mirror.signature_name == "serving_default" and mirror.output_names == ["y"]

        overview = await gateway.service.overview()
        rows = {m.name: m.shadow for m in overview.models}
        assert rows["m"] is not None and rows["same"] is not None
        assert (rows["m"].target, rows["m"].percent) == ("2", 100.0)
        assert (rows["m"].agree, rows["m"].disagree, rows["m"].error) == (0, 3, 0)
        assert (rows["same"].agree, rows["same"].disagree) == (2, 0)
        metrics = gateway.metrics.render().decode()  # the gateway's /metrics, as in one process
        labels = 'model="m",outcome="disagree",shadow_version="2",version="1"'
        assert f"tfmux_shadow_requests_total{{{labels}}} 3.0" in metrics
        assert 'tfmux_shadow_mean_abs_diff_sum{model="m",output="y"' in metrics
        jsonschema = pytest.importorskip("jsonschema")
        schema = {
            "$ref": "#/components/schemas/Status",
            "components": {"schemas": status_openapi.schemas()},
        }
        jsonschema.Draft202012Validator(schema).validate(orjson.loads(dumps(overview)))

        # A split without a shadow: nothing mirrored, no shadow row.
        gateway.service.set_traffic("m", traffic=TrafficConfig(split={"1": 100.0}))
        await gateway.ask("m")
        await asyncio.sleep(0.05)
        assert len(gateway.mirrors()) == 5
        overview = await gateway.service.overview()
        assert {m.name: m.shadow for m in overview.models}["m"] is None
        await gateway.service.stop_shadows()

    asyncio.run(scenario())


def test_hung_and_failing_shadows_never_touch_the_primary(gateway: Gateway) -> None:
    async def scenario() -> None:
        gateway.handle.hang.add(2)
        # Two mirrors hang, holding the whole in-flight budget: the next ones are dropped,
        # and every primary is answered by version 1 as if nothing was mirrored.
        assert [await gateway.ask("m") for _ in range(5)] == [1] * 5
        assert gateway.service.shadows.counts("m") == Shadowing(dropped=3)
        hung = [r for r in gateway.handle.responses if not r.task.done()]
        assert len(hung) == 2 and len(gateway.mirrors()) == 2

        # Stopping ends them: the forwarded calls are cancelled, nothing is left running.
        await gateway.service.stop_shadows()
        assert all(r.cancelled for r in hung)

        # A shadow whose replica cannot be reached is an error for the shadow only.
        gateway.handle.hang.clear()
        gateway.handle.fail.add(2)
        assert [await gateway.ask("m") for _ in range(2)] == [1, 1]
        assert await gateway.settled("m", 5) == Shadowing(error=2, dropped=3)

        # A shadow version that fails to load answers a Failure from the replica: an error.
        gateway.handle.fail.clear()
        gateway.loader.errors[2] = RuntimeError("bad weights")
        assert await gateway.ask("m") == 1
        assert await gateway.settled("m", 6) == Shadowing(error=3, dropped=3)
        await gateway.service.stop_shadows()

    asyncio.run(scenario())
