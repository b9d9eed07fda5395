"""The client side of ``tfmux models``, ``tfmux load`` and ``tfmux unload``: it talks to a
running server over the V2 REST model repository API (``/v2/repository/...``) and renders
what the server says with rich (a table, a spinner while a load runs). ``cli`` declares the
commands; their options, name check and error handling live here.

Every failure is an ``AdminError`` whose ``exit_code`` tells scripts what went wrong.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import click
import httpx
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tfmux.config import MODEL_NAME_RE

DEFAULT_URL = "http://127.0.0.1:8501"
FAILED = 1  # the server answered with an error (load failed, unknown model, ...)
UNREACHABLE = 3  # no server answered at the URL
REFUSED = 4  # management is disabled, or the admin token is missing or wrong
POLL_SECONDS = 0.25  # how often a load's progress is read from the repository index
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


class AdminError(Exception):
    """A management call that did not succeed; the message is meant for the user."""

    def __init__(self, message: str, exit_code: int = FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ModelEntry:
    """One row of the repository index: a model version (or a model with no version)."""

    name: str
    version: str
    state: str
    reason: str
    memory_bytes: int | None
    memory_measured: bool

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ModelEntry:
        return cls(
            str(entry.get("name", "")),
            str(entry.get("version", "")),
            str(entry.get("state", "")),
            str(entry.get("reason", "")),
            entry.get("memory_bytes"),
            bool(entry.get("memory_measured", False)),
        )


class AdminClient:
    """Management calls against one server. An async context manager owning its connections."""

    def __init__(self, url: str, token: str | None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.aclose()

    async def index(self, name: str | None = None) -> list[ModelEntry]:
        """Every model version the server knows (only ``name``'s, when given)."""
        response = await self.request("POST", "/v2/repository/index")
        try:
            entries = [ModelEntry.from_json(e) for e in response.json()]
        except (ValueError, TypeError, AttributeError):
            raise AdminError(f"{self.url} does not answer like a tfmux server") from None
        return [e for e in entries if name is None or e.name == name]

    async def load(self, name: str) -> None:
        """Load (or reload) ``name``; returns once the server has finished loading it."""
        path = f"/v2/repository/models/{quote(name, safe='')}/load"
        await self.request("POST", path, timeout=None)

    async def unload(self, name: str) -> None:
        """Unload every version of ``name``, once its in-flight requests have finished."""
        path = f"/v2/repository/models/{quote(name, safe='')}/unload"
        await self.request("POST", path, timeout=None)

    async def request(
        self, method: str, path: str, json: Any = None, timeout: Any = httpx.USE_CLIENT_DEFAULT
    ) -> httpx.Response:
        """One call to the server: an AdminError when none answers or it answers an error."""
        try:
            response = await self._http.request(method, path, json=json, timeout=timeout)
        except httpx.TransportError as exc:
            raise AdminError(
                f"cannot reach a tfmux server at {self.url} ({exc or type(exc).__name__}); "
                "is it running, and is --url right?",
                UNREACHABLE,
            ) from None
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def _error(self, response: httpx.Response) -> AdminError:
        message = _error_message(response)
        if response.status_code == 403:
            return AdminError(f"refused: {message}", REFUSED)
        if response.status_code == 401:
            hint = (
                "the admin token was refused; check --token or $TFMUX_ADMIN_TOKEN"
                if self._token
                else "this server needs an admin token: pass --token or set $TFMUX_ADMIN_TOKEN"
            )
            return AdminError(hint, REFUSED)
        return AdminError(message)


def _error_message(response: httpx.Response) -> str:
    """The server's ``{"error": ...}`` message, or the status and the start of the body."""
    try:
        message = response.json().get("error")
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, str) and message:
        return message
    return f"HTTP {response.status_code} from {response.request.url}: {response.text[:200]}"


# -- rendering ----------------------------------------------------------------------------------


def format_bytes(size: int) -> str:
    """``12.3 MiB``: powers of 1024, one decimal above bytes."""
    power = min(max(size.bit_length() - 1, 0) // 10, len(_UNITS) - 1)
    return f"{size} B" if power == 0 else f"{size / 1024**power:.1f} {_UNITS[power]}"


def memory_text(entry: ModelEntry) -> str:
    """What a version costs: measured after its load, or ``~`` the estimate before."""
    if entry.memory_bytes is None:
        return ""
    text = format_bytes(entry.memory_bytes)
    return text if entry.memory_measured else f"~{text} (estimate)"


def models_table(entries: list[ModelEntry]) -> Table:
    table = Table("model", "version", "state", "memory", "reason")
    for e in entries:
        state = f"[green]{e.state}[/]" if e.state == "READY" else e.state
        table.add_row(e.name, e.version, state, memory_text(e), e.reason)
    return table


def describe(entry: ModelEntry) -> str:
    """``binary v1 READY 1.2 MiB`` (with the reason, when there is one)."""
    parts = [entry.name, f"v{entry.version}" if entry.version else "", entry.state]
    parts += [memory_text(entry), f"({entry.reason})" if entry.reason else ""]
    return " ".join(p for p in parts if p)


# -- commands -----------------------------------------------------------------------------------

Command = Callable[[AdminClient, Console], Awaitable[None]]


def server_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--url`` and ``--token``, shared by the commands that talk to a running server."""
    command = click.option(
        "--token",
        envvar="TFMUX_ADMIN_TOKEN",
        default=None,
        help="The server's admin token, for changes.  [default: $TFMUX_ADMIN_TOKEN]",
    )(command)
    return click.option(
        "--url",
        envvar="TFMUX_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="The server's REST address ($TFMUX_URL).",
    )(command)


def model_name(ctx: click.Context, param: click.Parameter, name: str) -> str:
    """A click callback: refuse what is not a model name before asking the server."""
    if not MODEL_NAME_RE.match(name):
        raise click.BadParameter(f"{name!r} is not a model name ({MODEL_NAME_RE.pattern})")
    return name


def run(url: str, token: str | None, command: Command) -> None:
    """Run one command against the server at ``url``; on failure print why and exit with
    the error's code."""

    async def main() -> None:
        async with AdminClient(url, token) as client:
            await command(client, Console(highlight=False))

    try:
        asyncio.run(main())
    except AdminError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


async def show_models(client: AdminClient, console: Console) -> None:
    entries = await client.index()
    if entries:
        console.print(models_table(entries))
    else:
        console.print("no models are configured on this server")


async def load(client: AdminClient, console: Console, name: str) -> None:
    """Load ``name`` while a spinner shows its state, read from the repository index; print a
    line when a version starts loading, and finally each version's state and memory."""
    started = time.monotonic()
    loading = asyncio.ensure_future(client.load(name))
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    try:
        live = console.is_terminal  # elsewhere (a pipe, a log) the lines alone tell it
        with Progress(*columns, console=console, transient=True, disable=not live) as progress:
            task = progress.add_task(f"loading {name}", total=None)
            announced: set[str] = set()
            while not (await asyncio.wait({loading}, timeout=POLL_SECONDS))[0]:
                for entry in await client.index(name):
                    if entry.state == "LOADING" and entry.version not in announced:
                        announced.add(entry.version)
                        console.print(describe(entry))
                    progress.update(task, description=f"loading {describe(entry)}")
        await loading
    finally:
        loading.cancel()
    for entry in await client.index(name):
        console.print(describe(entry))
    console.print(f"loaded {name} in {time.monotonic() - started:.2f} s")


async def unload(client: AdminClient, console: Console, name: str) -> None:
    await client.unload(name)
    for entry in await client.index(name):
        console.print(describe(entry))
    console.print(f"unloaded {name}")
