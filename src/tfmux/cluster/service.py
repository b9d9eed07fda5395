"""The gateway's service: the methods the transports call on ServingService, answered by
forwarding decoded tensors to replicas through a Ray Serve handle, routed by residency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, cast

from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import RayServeException

from tfmux.cluster.overview import ClusterOverview, Gateway
from tfmux.cluster.placement import ReplicaSnapshot
from tfmux.cluster.replica import Answer, Done, Failure, Forwarded
from tfmux.cluster.router import ResidencyRouter
from tfmux.cluster.status import ClusterStatus
from tfmux.cluster.views import ClusterModels
from tfmux.config import ModelConfig, TrafficConfig
from tfmux.core.batching import Gone
from tfmux.core.events import Event
from tfmux.core.observer import NullObserver, Observer, Observers
from tfmux.core.service import InputDecoder, Inputs, Management, ModelMetadata
from tfmux.core.service_reads import ServiceReads
from tfmux.core.shadow import ShadowRunner, ShadowTally
from tfmux.core.status import HistoryReport
from tfmux.core.traffic import Routing, available
from tfmux.errors import ErrorKind, ServingError, internal, not_found, unavailable
from tfmux.types import InferenceResult, ModelRef, VersionStatus

# The replica that answered the current request: the front ends put a list here before
# calling the service and name the replica in a header / trailing metadata after.
SERVED_BY: ContextVar[list[str] | None] = ContextVar("tfmux_served_by", default=None)
LATEST_SIGNATURES_SECONDS = 5.0  # how long "latest" keeps its cached signatures
CONTROL_TIMEOUT = 120.0  # status and management calls to one replica
SHADOW_TIMEOUT = 30.0  # a mirrored request's bound (and the request timeout's, if shorter)


class ClusterService(ServiceReads):
    """Duck-types ServingService for the transports. Runs on the gateway's event loop. The
    transports' reads (ServiceReads) are answered by ClusterModels, the gateway's table."""

    def __init__(
        self,
        handle: Any,  # ray.serve.handle.DeploymentHandle of the replica deployment
        router: ResidencyRouter,
        management: Management,
        observer: Observer | None = None,
        request_timeout: float | None = None,
    ) -> None:
        self._handle = handle
        self.router = router
        self.management = management
        self._observer = observer or NullObserver()
        self._request_timeout = request_timeout
        self.manager: ClusterModels = ClusterModels(router.snapshots)
        self._signatures: dict[tuple[str, int | None], tuple[float, ModelMetadata]] = {}
        self._fetching: dict[tuple[str, int | None], asyncio.Future[ModelMetadata]] = {}
        self.served: dict[tuple[str, bool], int] = {}  # (replica, hit) -> requests
        self.cluster_status = ClusterStatus(self._ask, router.snapshots, router.observe)
        # Shadows as in single-process tfmux (core/shadow.py), forwarded like any request.
        self.shadows = ShadowTally()
        observers = cast(Observer, Observers(self._observer, self.shadows))
        self._shadows = ShadowRunner(self._shadow_call, observers)

    # -- traffic -----------------------------------------------------------------------------

    async def infer(
        self,
        ref: ModelRef,
        inputs: Inputs | InputDecoder,
        *,
        signature_name: str = "",
        output_names: Sequence[str] | None = None,
        method: str = "predict",
        method_name: str | None = None,
        deadline: float | None = None,
        gone: Gone | None = None,
    ) -> InferenceResult:
        started = time.perf_counter()
        if self._request_timeout is not None:
            default = time.monotonic() + self._request_timeout
            deadline = default if deadline is None else min(deadline, default)
        route = self.manager.traffic.route(ref)
        target = self._concrete(route.ref)
        version, error = "", None
        try:
            if callable(inputs):
                meta = await self.metadata(target)
                signature = meta.signatures.get(signature_name or "serving_default")
                if signature is None:  # the replica words this error
                    tensors: dict[str, Any] = {}
                else:
                    tensors = dict(inputs(signature))
            else:
                tensors = dict(inputs)
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            request = Forwarded(
                target.name,
                target.version,
                tensors,
                signature_name,
                list(output_names) if output_names else None,
                method,
                method_name,
                timeout,
            )
            answer = await self._call("infer", request, model=target, timeout=timeout)
            assert isinstance(answer, Answer)
            self._served(answer.replica, answer.hit)
            if answer.snapshot is not None:
                self.router.observe(answer.snapshot)
            result = answer.result
            result.inputs = tensors
            version = str(result.version)
            route.settle(ref.name, result, self._observer)
            if route.shadow is not None:
                self._shadows.submit(route.shadow, result)
            return result
        except ServingError as exc:
            error = exc.kind.value
            raise
        except asyncio.CancelledError:
            error = ErrorKind.CANCELLED.value
            raise
        finally:
            seconds = time.perf_counter() - started
            self._observer.request_done(target.name, version, method, seconds, error)

    async def _shadow_call(self, ref: ModelRef, primary: InferenceResult) -> InferenceResult:
        """The mirrored request: the primary's inputs, signature and outputs, its version
        chosen here (``latest`` too, as the single-process shadow leases it) and forwarded
        like any request, so residency places it. Replicas count it under method "shadow".
        Not counted in ``served`` nor named in the primary's served-by header."""
        target = ref if ref.version is not None else ModelRef(ref.name, self.resolve_version(ref))
        timeout = min(SHADOW_TIMEOUT, self._request_timeout or SHADOW_TIMEOUT)
        outputs = list(primary.outputs)
        request = Forwarded(
            target.name, target.version, primary.inputs, primary.signature.name, outputs,
            "shadow", None, timeout,
        )  # fmt: skip
        answer = await self._call("infer", request, model=target, timeout=timeout)
        assert isinstance(answer, Answer)
        if answer.snapshot is not None:
            self.router.observe(answer.snapshot)
        return answer.result

    def _concrete(self, ref: ModelRef) -> ModelRef:
        """Labels resolved here, from the gateway's table: every replica then gets the same
        version, and a label moved meanwhile cannot send it elsewhere."""
        if ref.label is None:
            return ref
        return ModelRef(ref.name, self.resolve_version(ref))

    def _served(self, replica: str, hit: bool) -> None:
        self.served[replica, hit] = self.served.get((replica, hit), 0) + 1
        holder = SERVED_BY.get()
        if holder is not None:
            holder.append(replica)

    async def metadata(self, ref: ModelRef) -> ModelMetadata:
        target = self._concrete(self.manager.traffic.route(ref).ref)
        key = (target.name, target.version)
        cached = self._signatures.get(key)
        if cached is not None and (target.version is not None or cached[0] > time.monotonic()):
            return cached[1]
        pending = self._fetching.get(key)
        if pending is None:  # one fetch per model version however many requests wait
            pending = asyncio.ensure_future(self._fetch_metadata(target))
            self._fetching[key] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(key, None))
        return await asyncio.shield(pending)

    async def _fetch_metadata(self, target: ModelRef) -> ModelMetadata:
        done = await self._call("metadata", target.name, target.version, model=target)
        meta = done.extra
        assert isinstance(meta, ModelMetadata)
        self._signatures[target.name, target.version] = (
            time.monotonic() + LATEST_SIGNATURES_SECONDS,
            meta,
        )
        self._signatures[meta.name, meta.version] = (0.0, meta)
        return meta

    async def _call(
        self,
        method: str,
        *args: Any,
        model: ModelRef | None = None,
        replica: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One call through the Serve handle: routed by ``model`` or sent to ``replica``.
        A replica that dies or cannot be reached is UNAVAILABLE; the next request goes to a
        live one."""
        if model is not None:
            kwargs: dict[str, Any] = {"tfmux_model": model.name, "tfmux_version": model.version}
        else:
            kwargs = {"tfmux_replica": replica}
        response = getattr(self._handle, method).remote(*args, **kwargs)
        try:
            if timeout is None:
                outcome = await response
            else:
                outcome = await asyncio.wait_for(response, timeout + 1.0)
        except asyncio.CancelledError:
            response.cancel()
            raise
        except TimeoutError:
            response.cancel()
            raise ServingError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded") from None
        except RayTaskError as exc:
            raise internal(f"replica failed: {exc.cause!r}") from None
        except (RayError, RayServeException) as exc:
            if model is not None:
                self.router.suspect_request(response._request_metadata.internal_request_id)
            which = f"replica {replica}" if replica else "the replica serving this request"
            raise unavailable(f"{which} is unavailable ({type(exc).__name__}); retry") from None
        if isinstance(outcome, Failure):
            raise outcome.error()
        if isinstance(outcome, Done):
            self.router.observe(outcome.snapshot)
            if outcome.failure is not None:
                raise outcome.failure.error()
        return outcome

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        return self.manager.statuses(name, version)

    def repository_index(self) -> list[tuple[str, VersionStatus | None]]:
        return self.manager.index()

    def snapshots(self) -> list[ReplicaSnapshot]:
        return self.router.snapshots()

    def ready(self) -> bool:
        return bool(self.router.replica_ids())

    # -- status: the replicas' status boards, merged (cluster/status.py) -----------------------

    async def overview(self) -> ClusterOverview:
        return await self.cluster_status.overview(self._gateway_view)

    async def history(self, models: Sequence[str] = (), busiest: int = 5) -> HistoryReport:
        return await self.cluster_status.history(self._gateway_view, models, busiest)

    async def events(self, after: int = 0) -> list[Event]:
        return await self.cluster_status.events_after(after)

    def _gateway_view(self) -> Gateway:
        models = self.model_configs()
        routing = {c.name: r for c in models if (r := self.routing(c.name))}
        return Gateway(
            models,
            routing,
            dict(self.served),
            self.router.inflight(),
            self.management.enabled,
            self.management.admin_token is not None,
            {c.name: self.shadows.counts(c.name) for c in models},
        )

    async def _ask(self, replica: str, method: str, *args: Any) -> Any:
        return await self._call(method, *args, replica=replica)

    # -- management: to every replica that holds the model -------------------------------------

    def _holders(self, name: str) -> list[str]:
        return [s.replica for s in self.router.snapshots() if s.holds(name)]

    async def load_model(self, name: str, authorization: str | None = None) -> None:
        """(Re)load on every replica that holds the model; a model held nowhere is placed on
        the replica with the most free budget."""
        self.management.authorize(authorization)
        if name not in {m.config.name for m in self.manager.models()}:
            config = self.management.discover(name)
            if config is None:
                raise not_found(f"model {name} is not configured and not in any repository")
            await self.reconfigure([*self.model_configs(), config], authorization)
        await self.place(name)

    async def place(self, name: str) -> None:
        """Load ``name`` where it is held, or on the replica the policy places it on; every
        other replica may load it on demand again (an unload is undone cluster-wide)."""
        holders = self._holders(name)
        if holders:
            await self._each(holders, "load_model", name)
        else:
            done = await self._call(
                "load_model", name, model=ModelRef(name), timeout=CONTROL_TIMEOUT
            )
            holders = [done.snapshot["replica"]]
        others = [r for r in self.router.replica_ids() if r not in holders]
        await self._each(others, "allow", name)
        self._signatures = {k: v for k, v in self._signatures.items() if k[0] != name}

    async def unload_model(self, name: str, authorization: str | None = None) -> None:
        self.management.authorize(authorization)
        self.manager.get(name)
        await self._each(self.router.replica_ids(), "unload_model", name)

    async def reconfigure(
        self, configs: list[ModelConfig], authorization: str | None = None
    ) -> None:
        """Every replica serves exactly these models (loaded where requests place them)."""
        self.management.authorize(authorization)
        served = {m.config.name: m.config.base_path for m in self.manager.models()}
        for config in configs:
            self.management.check_path(config, served.get(config.name))
        await self._each(self.router.replica_ids(), "reconfigure", configs)
        for name in set(served) - {c.name for c in configs}:
            self.manager.remove_model(name)
        self.shadows.keep(c.name for c in configs)
        for config in configs:
            self.manager.add_model(config)

    async def _each(self, replicas: list[str], method: str, *args: Any) -> None:
        calls = [self._call(method, *args, replica=r, timeout=CONTROL_TIMEOUT) for r in replicas]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def set_traffic(
        self,
        name: str,
        labels: dict[str, int] | None = None,
        traffic: TrafficConfig | None = None,
        allow_unavailable: bool = False,
        authorization: str | None = None,
    ) -> Routing:
        """Labels and splits live in the gateway's table: requests reach replicas with the
        version already chosen, so the change is cluster-wide at once."""
        self.management.authorize(authorization)
        self.manager.get(name)
        before = self.manager.traffic.routing(name)
        versions = available(self.manager.statuses(name))
        routing = self.manager.traffic.update(name, labels, traffic, versions, allow_unavailable)
        self.cluster_status.traffic_changed(name, before, routing)
        return routing

    async def stop_shadows(self) -> None:
        """Cancel the mirrors still going; the server calls this on its loop before
        ``close``, so the status reads still in flight stop with it."""
        await self._shadows.close()
        await self.cluster_status.stop()

    def close(self, timeout: float | None = None) -> bool:
        """Nothing runs here: the replicas own their models (Serve stops them)."""
        return True

    def abandon_requests(self) -> None:
        """Requests in flight are the replicas'; the gateway holds no queue of its own."""
        return None
