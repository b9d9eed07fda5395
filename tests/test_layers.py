"""The layering docs/architecture.md states, checked on the source: transports ask the service
and never reach the models table behind it (``service.manager``); the core imports no
transport."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "tfmux"


def _offending(folder: str, pattern: str) -> list[str]:
    found = []
    for path in sorted((SRC / folder).rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(pattern, line):
                found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    return found


def test_transports_never_reach_the_manager() -> None:
    assert _offending("transports", r"\.manager\b") == []


def test_the_core_imports_no_transport() -> None:
    assert _offending("core", r"^\s*(from|import) tfmux\.transports") == []
