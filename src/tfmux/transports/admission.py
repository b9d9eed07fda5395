"""Who gets a new connection, and when: the admission policy both ports' acceptors ask.

Measured with ``python -m benchmarks.soak`` on a server pinned to one core: accepting every
pending connection at once (what ``loop.create_server`` does) let a flood of new connections
hold the event loop for ~30 ms at a time (a well-behaved client's p99 went from 2 to 32 ms),
and an attacker who reconnects after each GOAWAY (a PING or reset flood) or each 413 kept the
core busy with connection set-up alone. The policy here, pure and clock-driven:

- **past the connection limit**, a newcomer is refused cleanly (REST 503, gRPC GOAWAY) at
  most ``refusals_per_second``; the others wait in the kernel's backlog until a connection
  closes (what nginx and Go's ``LimitListener`` do: waiting costs the server nothing);
- **after abuse** (connections the server closed for breaking a limit: floods, timeouts,
  oversized heads or bodies, protocol errors), once more than ``abuse_burst`` of them come
  from one client address within ``abuse_window_seconds``, newcomers *from that address* are
  admitted at most ``throttled_accepts_per_second`` until the window passes with no further
  abuse; the others are accepted and closed at once (leaving them in the backlog made a
  newcomer wait behind every queued attacker connection: 40 s in a test). Other addresses
  are admitted as before: throttling everyone let one attacker take nearly all of the
  throttled admissions and turn away every other newcomer. Only abuse from many addresses
  (past ``global_abuse_burst`` from addresses not yet throttled) throttles every newcomer.
  Behind a proxy every client has the proxy's address, which is then the same as throttling
  everyone. Connections already open (the well-behaved clients' keep-alive and gRPC
  channels) are never touched.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field


class AdmissionLimits(BaseModel):
    """How both ports admit new connections (``admission`` in the configuration file; the
    connection limits themselves are ``http_max_connections`` and ``h2.max_connections``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    refusals_per_second: float = Field(
        default=20.0, gt=0, description="newcomers past the connection limit refused cleanly"
    )
    accepts_per_turn: int = Field(
        default=16, ge=1, description="connections accepted per event-loop turn"
    )
    abuse_burst: int = Field(
        default=20,
        ge=1,
        description="connections from one address closed for abuse before its newcomers are "
        "throttled",
    )
    global_abuse_burst: int = Field(
        default=100,
        ge=1,
        description="connections closed for abuse, from addresses not throttled, before every "
        "newcomer is throttled",
    )
    abuse_window_seconds: float = Field(
        default=10.0, gt=0, description="how long abuse is remembered (and throttling lasts)"
    )
    throttled_accepts_per_second: float = Field(
        default=50.0, gt=0, description="new connections a second while throttled"
    )


MAX_ADDRESSES = 4096  # client addresses whose abuse is remembered (least recently abusive go)


def client_address(peer: object) -> str | None:
    """What abuse is remembered by: the host of a TCP peer address (IPv4 or IPv6, as
    ``accept`` or ``peername`` give it), None for others (Unix sockets)."""
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return peer[0]
    return None


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._last = burst, now

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def spend(self, amount: float, now: float) -> float:
        """Take ``amount`` (going into debt if need be); seconds until the debt is paid."""
        self._refill(now)
        self._tokens -= amount
        return max(0.0, -self._tokens / self.rate)

    def give_back(self) -> None:
        self._tokens = min(self.burst, self._tokens + 1.0)

    def wait(self, now: float) -> float:
        """Seconds until a token is there."""
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self.rate)


class Throttle:
    """Abuse remembered for one client address, or for everyone: past ``burst`` within the
    window, newcomers are admitted at most ``throttled_accepts_per_second`` (``admit``)
    until the window passes without more."""

    __slots__ = ("abuse", "admit", "until")

    def __init__(self, limits: AdmissionLimits, burst: int, now: float) -> None:
        self.abuse = TokenBucket(burst / limits.abuse_window_seconds, burst, now)
        rate = limits.throttled_accepts_per_second
        self.admit = TokenBucket(rate, max(1.0, rate), now)
        self.until = float("-inf")

    def note(self, now: float, window: float) -> bool:
        """One more abuse; True when it starts the throttling."""
        if self.abuse.take(now):
            return False
        started = now >= self.until
        self.until = now + window
        return started


class Admit(enum.Enum):
    ACCEPT = "accept"  # below the limit: a connection like any other
    REFUSE = "refuse"  # past the limit: accepted to be refused cleanly
    WAIT = "wait"  # left in the backlog for ``AdmissionGate.wait`` seconds
    DROP = "drop"  # accepted and closed at once (throttled: costs next to nothing)


class AdmissionGate:
    """Decides for each pending connection; ``note_abuse`` hears the server close one for
    breaking a limit."""

    def __init__(
        self,
        limits: AdmissionLimits,
        max_connections: int,
        open_count: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.max_connections = max_connections
        self._open = open_count
        self._clock = clock
        now = clock()
        refusals = limits.refusals_per_second
        self._refusals = TokenBucket(refusals, max(1.0, refusals), now)
        self._everyone = Throttle(limits, limits.global_abuse_burst, now)
        self._addresses: OrderedDict[str, Throttle] = OrderedDict()  # by client address
        self.wait = 0.0  # after WAIT: how long to leave the backlog alone
        self._taken: list[TokenBucket] = []  # what the last decision spent
        self.counts = dict.fromkeys(("refused", "waited", "dropped", "throttled", "abuse"), 0)

    def nobody_came(self) -> None:
        """The last decision found no connection pending: its tokens are given back."""
        self._give_back()

    def _give_back(self) -> None:
        for bucket in self._taken:
            bucket.give_back()
        self._taken = []

    def done(self, decision: Admit) -> None:
        """A connection was accepted under ``decision`` (counted only then)."""
        if decision is Admit.REFUSE:
            self.counts["refused"] += 1
        elif decision is Admit.DROP:
            self.counts["dropped"] += 1

    @property
    def throttled(self) -> bool:
        """Every newcomer is throttled (abuse from many addresses)."""
        return self._clock() < self._everyone.until

    def throttled_addresses(self) -> int:
        """Client addresses whose newcomers are throttled now."""
        now = self._clock()
        return sum(now < throttle.until for throttle in self._addresses.values())

    def note_abuse(self, address: str | None = None) -> None:
        """The server closed a connection from ``address`` (None: unknown, e.g. a Unix
        socket; such clients share one entry) for breaking a limit."""
        now = self._clock()
        window = self.limits.abuse_window_seconds
        self.counts["abuse"] += 1
        key = address or ""
        throttle = self._addresses.get(key)
        if throttle is None:
            throttle = self._addresses[key] = Throttle(self.limits, self.limits.abuse_burst, now)
            if len(self._addresses) > MAX_ADDRESSES:
                self._addresses.popitem(last=False)
        else:
            self._addresses.move_to_end(key)
        if now < throttle.until:  # held off already: it stays so, and is not everyone's
            throttle.until = now + window
            return
        if throttle.note(now, window):
            self.counts["throttled"] += 1
        if self._everyone.note(now, window):
            self.counts["throttled"] += 1

    def admits(self, address: str | None) -> bool:
        """After the accept, for a newcomer from ``address``: False if that address is
        throttled and its rate is spent (then closed at once, counted as dropped, and what
        the decision before the accept took is given back)."""
        throttle = self._addresses.get(address or "")
        if throttle is None:
            return True
        now = self._clock()
        if now >= throttle.until or throttle.admit.take(now):
            return True
        self.counts["dropped"] += 1
        self._give_back()
        return False

    def decide(self, pending: int = 0) -> Admit:
        """For the next pending connection; ``pending``: accepted, not yet open (counted)."""
        self._taken = []
        now = self._clock()
        everyone = self._everyone
        if now < everyone.until:
            if not everyone.admit.take(now):
                return Admit.DROP
            self._taken.append(everyone.admit)
        if self._open() + pending < self.max_connections:
            return Admit.ACCEPT
        if self._refusals.take(now):
            self._taken.append(self._refusals)
            return Admit.REFUSE
        self.wait = min(self._refusals.wait(now), 0.05)  # a slot may free before a token
        self.counts["waited"] += 1
        return Admit.WAIT
