"""Process memory as the operating system sees it, and what a model version costs."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Protocol


class MemoryProbe(Protocol):
    """Reads resident memory and returns the allocator's free pages to the OS."""

    def rss(self) -> int:
        """Resident set size of this process, in bytes."""
        ...

    def release(self) -> None:
        """Give freed heap memory back to the operating system (best effort)."""
        ...


class ProcessMemory:
    """Linux: RSS from /proc/self/statm; ``release`` is glibc's ``malloc_trim(0)``."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        self._trim = getattr(libc, "malloc_trim", None)

    def rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self._page

    def release(self) -> None:
        if self._trim is not None:
            self._trim(0)


def size_on_disk(path: Path) -> int:
    """Bytes of every file under a SavedModel directory (variables dominate)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue  # a file vanished while we looked: it costs nothing
    return total


def format_bytes(size: float) -> str:
    """``123.4 MiB`` style."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
