"""The OpenAPI document is the contract: what /openapi.json says is what the server does.

A live server with real models (and an admin token, so management calls exercise auth):

- every path the document declares answers 405 with ``Allow`` for the methods it does not
  declare, and ``Allow`` lists exactly the declared ones;
- requests the document forbids are refused (the cases schemathesis once found accepted);
- schemathesis with every check, all phases, seeded and derandomized, passes
  (``TFMUX_FUZZ_PROFILE=long`` raises its examples per operation from 5 to 100).

Each is followed by a good request on the same server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tfmux.transports.openapi import document

from .conftest import e2e_config
from .harness import BackgroundServer

pytestmark = pytest.mark.tf

TOKEN = "contract-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")
LONG = os.environ.get("TFMUX_FUZZ_PROFILE") == "long"
EXAMPLES = 100 if LONG else 5
# A model of each kind: TF2, mixed dtypes, classify/regress, versions with labels, lazy, corrupt.
MODELS = ("binary", "multi", "cr", "versioned", "lazy_binary", "corrupt")
# Real values for path templates, so the probes reach real models.
VALUES = {"model_name": "versioned", "version": "1", "model_version": "1", "label": "stable"}


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[BackgroundServer]:
    """Its own server: schemathesis unloads models and changes traffic."""
    config = e2e_config(model_root)
    models = [m for m in config.models if m.name in MODELS]
    config = config.model_copy(update={"admin_token": TOKEN, "models": models})
    with BackgroundServer(config) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def _good_request(http: httpx.Client) -> None:
    """The server still serves: (re)load a model with the token, then predict with it."""
    assert http.post("/v2/repository/models/binary/load", headers=AUTH).status_code == 200
    r = http.post("/v1/models/binary:predict", json={"instances": [[1.0, 2.0, 3.0]]})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 1


def test_document_names_the_servers_models_labels_and_security(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    status = doc["paths"]["/v1/models/{model_name}/labels/{label}"]["get"]
    params = {p["name"]: p for p in status["parameters"]}
    assert set(params["model_name"]["examples"]) == set(MODELS)
    assert set(params["label"]["examples"]) == {"stable", "canary"}
    load = doc["paths"]["/v2/repository/models/{model_name}/load"]["post"]
    assert load["security"] == [{"adminToken": []}]
    assert doc["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    # Without a token configured, management needs no credentials: the document says so.
    open_load = document(["m"])["paths"]["/v2/repository/models/{model_name}/load"]["post"]
    assert open_load["security"] == [{}]
    _good_request(http)


def test_undeclared_methods_answer_405_with_the_declared_ones_in_allow(
    http: httpx.Client,
) -> None:
    doc = http.get("/openapi.json").json()
    checked = 0
    for template, item in doc["paths"].items():
        path = re.sub(r"{(\w+)}", lambda m: VALUES[m[1]], template)
        declared = sorted(method.upper() for method in item)
        for method in METHODS:
            if method in declared:
                continue
            r = http.request(method, path)
            assert r.status_code == 405, (method, path, r.status_code, r.text)
            assert sorted(r.headers["allow"].split(", ")) == declared, (method, path)
            if method != "HEAD":
                assert method in r.json()["error"] and "not allowed" in r.json()["error"]
            checked += 1
    assert checked > 150  # every declared path, every other method
    assert http.delete("/no/such/path").status_code == 404  # unknown paths stay 404
    _good_request(http)


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        # Found by schemathesis: each of these was accepted or answered 500.
        ("/v2/repository/models/binary/unload", {"parameters": False}, "'parameters'"),
        ("/v2/repository/models/versioned/traffic", {"labels": {"no good": None}}, "label"),
        ("/v1/models/cr:classify", {"examples": [{"f": [{"b64": "\u0084"}]}]}, "base64"),
        ("/v1/models/binary/versions/0.1:predict", {"instances": [1]}, "integer"),
        ("/v1/models/binary/versions/\u0663:predict", {"instances": [1]}, "integer"),
    ],
)
def test_requests_the_document_forbids_are_refused(
    http: httpx.Client, path: str, body: object, fragment: str
) -> None:
    r = http.post(path, json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]
    _good_request(http)


def test_null_is_absent_where_the_document_says_so(http: httpx.Client) -> None:
    """``ready: null`` and ``parameters: null`` are documented as nullable and read as absent."""
    assert http.post("/v2/repository/index", json={"ready": None}).status_code == 200
    r = http.post("/v2/repository/models/binary/load", json={"parameters": None}, headers=AUTH)
    assert r.status_code == 200, r.text
    _good_request(http)


CONFIG = Path(__file__).with_name("schemathesis.toml")  # shown in docs/rest-api.md


def test_schemathesis_all_checks_pass(
    server: BackgroundServer, http: httpx.Client, tmp_path: Path
) -> None:
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(CONFIG),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",  # CPython 3.11's ast is not thread-safe under hypothesis' lambda introspection
        "--no-color",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    environment = {**os.environ, "TFMUX_ADMIN_TOKEN": TOKEN}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=environment
    )
    output = done.stdout + done.stderr
    summary = output[output.find("SUMMARY") :] if "SUMMARY" in output else output[-3000:]
    assert done.returncode == 0, f"schemathesis found contract failures:\n{output[-12000:]}"
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", summary)
    assert selected is not None and len(set(selected.groups())) == 1, summary  # all tested
    _good_request(http)
