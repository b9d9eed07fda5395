"""gzip/deflate messages are inflated on threads at a lower CPU priority than the threads that
serve requests (transports/h2/inflate.py): checked on the running server's own threads."""

from __future__ import annotations

import gzip
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.inflate import NICENESS

from .h2util import LimitedServer, Raw, grpc_message

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")


@pytest.fixture(scope="module")
def served() -> Iterator[LimitedServer]:
    server = LimitedServer()
    yield server
    server.close()


def nice_of(thread: threading.Thread) -> int:
    """Field 19 of /proc/self/task/TID/stat (after the parenthesised command name)."""
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_inflate_threads_run_below_the_serving_threads(served: LimitedServer) -> None:
    raw = Raw(served.port)
    raw.send(
        f.frame(f.HEADERS, f.END_HEADERS, 1, raw.block(**{"grpc-encoding": "gzip"})),
        f.frame(f.DATA, f.END_STREAM, 1, grpc_message(gzip.compress(b"hi"), compressed=True)),
    )
    status, frames = raw.status(1)
    raw.close()
    assert status == 0 and grpc_message(b"hi") in [p for _, _, _, p in frames]
    inflaters = [t for t in threading.enumerate() if t.name.startswith("tfmux-inflate")]
    assert inflaters, "the compressed message was inflated on the inflate pool"
    base = nice_of(threading.current_thread())
    assert all(nice_of(t) == min(19, base + NICENESS) for t in inflaters)
    assert served.good_call() == b"still serving"
