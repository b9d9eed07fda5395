"""gzip/deflate request messages inflated in bounded steps, stopped at the message limit.

Runs on the gRPC server's inflate threads (zlib releases the GIL while it works), never on the
event loop: a small message that inflates to gigabytes costs one thread until the limit, and at
most ``limit`` bytes of memory.
"""

from __future__ import annotations

import contextlib
import os
import threading
import zlib

WBITS = {b"gzip": 31, b"deflate": 15}
_IN_STEP = 256 * 1024  # compressed bytes fed at a time (the unconsumed tail is a copy)
_OUT_STEP = 1024 * 1024  # inflated bytes produced at a time


NICENESS = 10  # inflate threads' nice value above the serving threads' (Linux: per thread)


def lower_priority() -> None:
    """The pool's thread initializer: a gzip bomb's inflating yields the core to the threads
    serving everyone else (raising a thread's nice value needs no privilege)."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + NICENESS)
        )


class TooLarge(Exception):
    """The message inflates to more than the limit."""


def inflate(data: bytes | bytearray | memoryview, wbits: int, limit: int) -> bytearray:
    """``data`` inflated; raises ``TooLarge`` past ``limit`` bytes, ``zlib.error`` if corrupt."""
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    view = memoryview(data)
    for offset in range(0, len(view), _IN_STEP):
        tail: bytes | memoryview = view[offset : offset + _IN_STEP]
        while tail:
            out += inflater.decompress(tail, _OUT_STEP)
            if len(out) > limit:
                raise TooLarge
            tail = inflater.unconsumed_tail
        if inflater.eof:
            break
    out += inflater.flush()  # at most a match's worth once all input is consumed
    if len(out) > limit:
        raise TooLarge
    return out
