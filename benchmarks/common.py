"""What every part of the benchmark agrees on: paths, cores, protocols, models, logging."""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DOC = ROOT / "docs" / "benchmarks.md"
DOC_START, DOC_END = "<!-- results:start -->", "<!-- results:end -->"
SERVER_CORE, LOAD_CORE = 0, 1
PROTOCOLS = ("rest", "v2", "grpc")
PROTOCOL_NAMES = {"rest": "REST JSON", "v2": "V2 binary", "grpc": "gRPC Predict"}
MODELS = ("mlp", "tiny")
CONNECTIONS = 32
DISTURBED = 0.25  # share of the server's core other processes may take before a re-measure


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
