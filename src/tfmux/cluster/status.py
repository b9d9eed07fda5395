"""The gateway's status API: every replica asked at once, each within ``STATUS_TIMEOUT``, the
answers cached for ``CACHE_SECONDS`` and shared by every caller meanwhile (many open pages
cost each replica one call a second, and none when nobody looks), their events merged into
one log. A replica that does not answer is shown unreachable with its last report, never an
error for the whole page. Runs on the gateway's event loop."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from tfmux.cluster.overview import ClusterOverview, Gateway, Reading, busiest, merge_overview
from tfmux.cluster.placement import ReplicaSnapshot
from tfmux.cluster.series import merge_history
from tfmux.core.events import Event, EventLog, Routes, Snapshot, compare
from tfmux.core.status import RECENT_EVENTS, HistoryReport
from tfmux.core.traffic import Routing
from tfmux.errors import ServingError

STATUS_TIMEOUT = 2.0  # seconds each replica has to answer a status call
CACHE_SECONDS = 1.0  # how long answers are shared
HISTORY_KEYS = 16  # distinct history queries cached at once

T = TypeVar("T")
Ask = Callable[..., Awaitable[Any]]  # ask(replica, method, *args): one call to one replica


class _Shared(Generic[T]):
    """Answers by key, kept ``seconds``; one computation in flight per key, awaited by all."""

    def __init__(self, seconds: float, size: int) -> None:
        self._seconds = seconds
        self._size = size
        self._answers: dict[Hashable, tuple[float, T]] = {}
        self._pending: dict[Hashable, asyncio.Future[T]] = {}

    async def get(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        hit = self._answers.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fill(key, make))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    async def stop(self) -> None:
        """Cancel the reads in flight (each is bounded by the timeout anyway)."""
        pending = list(self._pending.values())
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _fill(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        value = await make()
        now = time.monotonic()
        self._answers = {k: a for k, a in self._answers.items() if a[0] > now}
        if len(self._answers) < self._size:
            self._answers[key] = (now + self._seconds, value)
        return value


class ClusterStatus:
    """``snapshots``: the live replicas as the router last heard them; ``observe``: hands
    the router the fresher snapshot a status answer carries."""

    def __init__(
        self,
        ask: Ask,
        snapshots: Callable[[], Sequence[ReplicaSnapshot]],
        observe: Callable[[dict[str, Any]], None],
        clock: Callable[[], float] = time.time,
        capacity: int = 500,
        cache_seconds: float | None = None,
    ) -> None:
        self._ask = ask
        self._snapshots = snapshots
        self._observe = observe
        self._clock = clock
        self.events = EventLog(capacity)
        self._cursors: dict[str, int] = {}  # replica -> the newest of its events merged
        self._states: dict[str, str] = {}  # replica -> "up" / "unreachable", last read
        keep = CACHE_SECONDS if cache_seconds is None else cache_seconds
        self._readings: _Shared[list[Reading]] = _Shared(keep, 1)
        self._histories: _Shared[list[HistoryReport]] = _Shared(keep, HISTORY_KEYS)
        self._overviews: _Shared[ClusterOverview] = _Shared(keep, 1)

    # -- the read API (ClusterService answers the transports with these) ------------------

    async def overview(self, gateway: Callable[[], Gateway]) -> ClusterOverview:
        """The merged overview, shared like the reads: many pages cost one merge a second."""
        return await self._overviews.get(None, lambda: self._merge(gateway))

    async def _merge(self, gateway: Callable[[], Gateway]) -> ClusterOverview:
        readings = await self.readings()
        recent = self.events.after(0, RECENT_EVENTS)
        # Merging 1,000 models takes tens of ms: in a thread, so the loop keeps serving.
        merge = functools.partial(merge_overview, readings, gateway(), recent, self._clock())
        return await asyncio.get_running_loop().run_in_executor(None, merge)

    async def history(
        self, gateway: Callable[[], Gateway], models: Sequence[str], count: int
    ) -> HistoryReport:
        """The merged series of the cluster's ``count`` busiest models and of ``models``."""
        top = busiest(await self.overview(gateway), count)
        readings = await self.readings()
        names = list(dict.fromkeys([*top, *models]))
        up = tuple(r.snapshot.replica for r in readings if r.overview is not None)
        reports = await self._histories.get((up, *names), lambda: self._read_histories(up, names))
        return merge_history(reports, top)

    async def events_after(self, after: int) -> list[Event]:
        await self.readings()  # brings the replicas' new events in
        return self.events.after(after)

    async def stop(self) -> None:
        """The gateway is stopping: no read of the replicas outlives it."""
        await self._overviews.stop()
        await self._readings.stop()
        await self._histories.stop()

    def traffic_changed(self, name: str, before: Routing | None, after: Routing) -> None:
        """A label or split moved at the gateway (where the cluster's routing lives)."""
        old = Snapshot(routes={name: _routes(before)} if before is not None else {})
        compare(old, Snapshot(routes={name: _routes(after)}), self._clock(), self.events)

    # -- reading the replicas ---------------------------------------------------------------

    async def readings(self) -> list[Reading]:
        return await self._readings.get(None, self._read)

    async def _read(self) -> list[Reading]:
        snaps = list(self._snapshots())
        readings = list(await asyncio.gather(*(self._read_one(s) for s in snaps)))
        self._note_replicas(readings)
        return readings

    async def _read_one(self, snap: ReplicaSnapshot) -> Reading:
        rid = snap.replica
        try:
            call = self._ask(rid, "status_report", self._cursors.get(rid, 0))
            answer = await asyncio.wait_for(call, STATUS_TIMEOUT)
        except TimeoutError:
            return Reading(snap, None, f"no answer within {STATUS_TIMEOUT:g} s")
        except ServingError as exc:
            return Reading(snap, None, exc.message)
        except Exception as exc:  # whatever Ray raised: this replica only
            return Reading(snap, None, f"{type(exc).__name__}: {exc}")
        for event in answer.events:
            message = f"replica {rid}: {event.message}"
            self.events.add(event.time, event.kind, event.model, event.version, message)
            self._cursors[rid] = event.id
        self._observe(answer.snapshot)
        return Reading(ReplicaSnapshot.from_wire(answer.snapshot), answer.overview)

    async def _read_histories(self, up: Sequence[str], names: list[str]) -> list[HistoryReport]:
        async def one(rid: str) -> HistoryReport | None:
            try:
                call = self._ask(rid, "history_report", names)
                report = await asyncio.wait_for(call, STATUS_TIMEOUT)
            except Exception:  # a replica that cannot answer adds nothing
                return None
            assert isinstance(report, HistoryReport)
            return report

        reports = await asyncio.gather(*(one(rid) for rid in up))
        return [r for r in reports if r is not None]

    def _note_replicas(self, readings: list[Reading]) -> None:
        """Events for replicas that appeared, stopped answering, answer again or are gone."""
        now = self._clock()
        states: dict[str, str] = {}
        for reading in readings:
            rid, node = reading.snapshot.replica, reading.snapshot.node
            state = "up" if reading.overview is not None else "unreachable"
            states[rid] = state
            was = self._states.get(rid)
            if state == "unreachable" and was != "unreachable":
                self.events.add(
                    now, "replica", "", None, f"replica {rid} is unreachable: {reading.error}"
                )
            elif state == "up" and was is None:
                self.events.add(now, "replica", "", None, f"replica {rid} is up (node {node})")
            elif state == "up" and was == "unreachable":
                self.events.add(now, "replica", "", None, f"replica {rid} answers again")
        for gone in set(self._states) - set(states):
            self.events.add(now, "replica", "", None, f"replica {gone} left the cluster")
            self._cursors.pop(gone, None)
        self._states = states


def _routes(routing: Routing) -> Routes:
    return Routes(dict(routing.labels), dict(routing.split.weights))
