"""The dashboard in a real browser: headless Chromium (Debian's, installed by `make setup`)
driven by Playwright, against a real server serving real SavedModels.

It checks that the page shows the served models and their memory, that a burst of requests
shows in the plots within 10 seconds, that an unload through the page is refused without the
admin token and works with it, that the console stays free of errors and that every request
the page makes goes to the server itself. Screenshots land in tests/artifacts/ (ignored by
git); one is docs/images/dashboard.png, the README's, rewritten by every run so it stays true.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tfmux.config import ModelConfig, ServerConfig, TrafficConfig, VersionPolicy

from .browser import ARTIFACTS, CHROMIUM, FLAGS, REPO, Recorder
from .harness import BackgroundServer

TOKEN = "dash-token"
README_SHOT = REPO / "docs" / "images" / "dashboard.png"
PAGE_WEIGHT_LIMIT = 300 * 1024

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: `make setup` installs Debian's chromium", allow_module_level=True
    )


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[BackgroundServer]:
    def model(name: str, **fields: Any) -> ModelConfig:
        return ModelConfig(name=name, base_path=model_root / str(fields.pop("dir", name)), **fields)

    config = ServerConfig(
        admin_token=TOKEN,
        memory_budget_bytes=2 * 1024**3,
        models=[
            model("binary", pinned=True),
            model("regression"),
            model(
                "versioned",
                version_policy=VersionPolicy(kind="all"),
                labels={"stable": 1, "canary": 3},
                traffic=TrafficConfig(split={"stable": 80, "canary": 20}),
            ),
            model("corrupt"),
            model("lazy_binary", dir="binary", load="lazy"),
        ],
    )
    with BackgroundServer(config) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


RECORDERS: dict[int, Recorder] = {}


@pytest.fixture(scope="module")
def page(browser: Any, server: BackgroundServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    RECORDERS[id(page)] = Recorder(page)
    response = page.goto(server.url + "/dashboard")
    assert response is not None and response.ok
    page.wait_for_selector("#models tbody tr[data-model='binary']", timeout=30_000)
    yield page
    context.close()


def state_of(server: BackgroundServer, name: str) -> str:
    body = httpx.get(f"{server.url}/v1/models/{name}", timeout=10).json()
    return str(body["model_version_status"][0]["state"])


def wait_notice(page: Any, text: str, timeout: float = 30_000) -> str:
    """Wait until the page's notice says ``text`` or that an action was refused; return it."""
    page.wait_for_function(
        """(text) => {
            const notice = document.querySelector('#notice').textContent;
            return notice.includes(text) || notice.includes('refused');
        }""",
        arg=text,
        timeout=timeout,
    )
    notice = str(page.evaluate("document.querySelector('#notice').textContent"))
    assert text in notice, notice
    return notice


def shoot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_page_shows_models_memory_and_failures(page: Any, server: BackgroundServer) -> None:
    for name in ("binary", "regression", "versioned", "corrupt", "lazy_binary"):
        assert page.locator(f"#models tbody tr[data-model='{name}']").count() >= 1
    row = page.locator("#models tbody tr[data-model='binary']")
    assert "AVAILABLE" in row.inner_text() and "pinned" in row.inner_text()
    assert "MiB" in row.inner_text() or "KiB" in row.inner_text()  # its memory
    assert "Corrupt SavedModel" in page.locator("tr[data-model='corrupt']").inner_text()
    assert page.locator("tr[data-model='versioned']").count() == 3  # a row per version
    assert "START" in page.locator("tr[data-model='lazy_binary']").inner_text()
    memory = page.inner_text("#memory-text")
    assert "of a 2.0 GiB budget" in memory, memory
    assert page.locator("#memory-bar span").count() >= 3  # split by model
    assert "stable" in page.inner_text("#traffic") and "80" in page.inner_text("#traffic")
    page.wait_for_selector("#events li .kind-load", timeout=30_000)  # the startup loads
    page.fill("#filter", "regr")
    assert page.locator("#models tbody tr").count() == 1
    page.fill("#filter", "")
    page.click("#models th[data-key='memory']")  # sortable: the most memory first
    first = page.locator("#models tbody tr").first.get_attribute("data-model")
    assert first in {"binary", "regression", "versioned"}  # loaded models hold memory
    page.click("#models th[data-key='memory']")  # and the least
    first = page.locator("#models tbody tr").first.get_attribute("data-model")
    assert first in {"corrupt", "lazy_binary"}
    page.click("#models th[data-key='name']")
    shoot(page, "overview")


def test_burst_appears_in_the_plots_within_10_seconds(page: Any, server: BackgroundServer) -> None:
    url = f"{server.url}/v1/models/regression:predict"
    body = {"instances": [[1.0, 2.0, 3.0]]}
    with httpx.Client(timeout=10) as client, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: client.post(url, json=body).status_code, range(300)))
    assert codes == [200] * 300
    sent = time.monotonic()
    page.wait_for_function(
        """() => {
            const c = document.querySelector('#plot-rate');
            return c.dataset.lines.split(',').includes('regression') && Number(c.dataset.peak) > 0;
        }""",
        timeout=10_000,
    )
    assert time.monotonic() - sent < 10
    assert "regression" in (page.locator("#plot-latency").get_attribute("data-lines") or "")
    shoot(page, "burst")


def test_unload_needs_the_token(page: Any, server: BackgroundServer) -> None:
    page.click("tr[data-model='regression'] button[data-action='unload']")
    page.wait_for_selector("#notice.error", timeout=30_000)
    assert "refused: 401" in page.inner_text("#notice")
    assert state_of(server, "regression") == "AVAILABLE"
    page.fill("#token", TOKEN)
    page.click("#token-form button[type='submit']")
    page.click("tr[data-model='regression'] button[data-action='unload']")
    wait_notice(page, "unload regression: done")
    assert state_of(server, "regression") == "END"
    page.wait_for_function(
        """() => document.querySelector("tr[data-model='regression']").innerText.includes('END')""",
        timeout=30_000,
    )
    page.wait_for_selector("#events li:has-text('unloaded on request')", timeout=30_000)
    page.click("tr[data-model='regression'] button[data-action='load']")
    wait_notice(page, "load regression: done", timeout=60_000)
    assert state_of(server, "regression") == "AVAILABLE"
    shoot(page, "actions")
    # The refused unload is the one console error the page may show (the 401 it reported).
    unexpected = [e for e in RECORDERS[id(page)].errors if "status of 401" not in e]
    assert unexpected == [], unexpected
    assert len(RECORDERS[id(page)].errors) <= 1


def test_label_move_and_split_change_through_the_page(page: Any, server: BackgroundServer) -> None:
    page.fill("#token", TOKEN)
    page.click("#token-form button[type='submit']")
    page.fill("#label-form input[name='model']", "versioned")
    page.fill("#label-form input[name='label']", "canary")
    page.fill("#label-form input[name='version']", "2")
    page.click("#label-form button")
    wait_notice(page, "move label canary of versioned to version 2: done")
    page.fill("#split-form input[name='model']", "versioned")
    page.fill("#split-form input[name='weights']", "stable=50, canary=50")
    page.click("#split-form button")
    wait_notice(page, "change the split of versioned: done")
    traffic = httpx.get(f"{server.url}/v2/repository/models/versioned/traffic", timeout=10).json()
    assert traffic["labels"]["canary"] == 2
    assert traffic["split"] == {"stable": 50.0, "canary": 50.0}
    page.wait_for_selector("#events li:has-text('label canary moved')", timeout=30_000)


def test_no_request_leaves_the_server_and_the_page_is_light(
    page: Any, browser: Any, server: BackgroundServer
) -> None:
    origin = server.url
    assert RECORDERS[id(page)].urls
    outside = [u for u in RECORDERS[id(page)].urls if not u.startswith(origin + "/")]
    assert outside == [], outside
    # A fresh load: what the page weighs (document, script, style, first API answers).
    context = browser.new_context()
    fresh = context.new_page()
    sizes: list[int] = []
    fresh.on("response", lambda r: sizes.append(len(r.body())))
    fresh.goto(origin + "/dashboard")
    fresh.wait_for_selector("#models tbody tr[data-model='binary']")
    fresh.wait_for_function("() => document.querySelector('#plot-rate').dataset.lines")
    weight = sum(sizes)
    # Polls replace the page's data rather than add to it: the DOM keeps its size and the
    # JavaScript heap (after a full collection) does not grow from one round of polls to the
    # next.
    cdp = context.new_cdp_session(fresh)

    def heap() -> int:
        cdp.send("HeapProfiler.collectGarbage")
        return int(cdp.send("Runtime.getHeapUsage")["usedSize"])

    nodes = fresh.evaluate("document.getElementsByTagName('*').length")
    fresh.wait_for_timeout(4500)
    first = heap()
    fresh.wait_for_timeout(6500)  # three more rounds of polls
    second = heap()
    # The events list may gain a few rows (it is capped); the page must not grow with polls.
    assert fresh.evaluate("document.getElementsByTagName('*').length") <= nodes + 40
    context.close()
    assert 0 < weight < PAGE_WEIGHT_LIMIT, sizes
    assert second - first < 64 * 1024, (first, second)
    assert all("status of 401" in e for e in RECORDERS[id(page)].errors)


def test_readme_screenshot(page: Any, server: BackgroundServer) -> None:
    """docs/images/dashboard.png, the README's: this page after the tests above (a burst,
    an unload and a load, a label move and a split change), so it shows the page as it is."""
    page.click("#forget-token")
    page.wait_for_function("() => document.querySelector('#notice').hidden")
    page.wait_for_function("() => Number(document.querySelector('#plot-rate').dataset.peak) > 0")
    page.evaluate("window.scrollTo(0, 0); document.activeElement.blur()")
    README_SHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(README_SHOT))
    assert 10_000 < README_SHOT.stat().st_size < 400 * 1024
