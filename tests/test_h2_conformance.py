"""RFC 9113 (HTTP/2) rules a gRPC server must follow, as raw frames against tfmux's own server.

Each case is a function ``case_<name>(raw, served)`` whose docstring starts with its section;
docs/h2-conformance.md lists every case (a test below keeps the two in step). After every case
a well-behaved grpcio call must still be served.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tfmux.transports.h2 import frames as f

from .h2util import LimitedServer, Raw, grpc_message, setting

DOC = Path(__file__).resolve().parents[1] / "docs" / "h2-conformance.md"
BAD_PREFACE = b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n"


def connection_error(code: int, *frames: Callable[[Raw], bytes]) -> Callable[[Raw], None]:
    """Send what ``frames`` build; expect GOAWAY(code) and the connection closed."""

    def check(raw: Raw) -> None:
        raw.send(*(build(raw) for build in frames))
        assert raw.goaway() == code

    return check


def stream_error(sid: int, code: int, *frames: Callable[[Raw], bytes]) -> Callable[[Raw], None]:
    """Send what ``frames`` build; expect RST_STREAM(code) on ``sid``, the connection usable."""

    def check(raw: Raw) -> None:
        raw.send(*(build(raw) for build in frames))
        assert raw.rst(sid) == code
        raw.send(raw.request(sid + 2, b"after"))
        assert raw.status(sid + 2)[0] == 0

    return check


def headers(sid: int, flags: int = f.END_HEADERS, **extra: str) -> Callable[[Raw], bytes]:
    return lambda raw: f.frame(f.HEADERS, flags, sid, raw.block(**extra))


def raw_frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> Callable[[Raw], bytes]:
    return lambda raw: f.frame(ftype, flags, sid, payload)


def raw_headers(sid: int, fields: list[tuple[str, str]]) -> Callable[[Raw], bytes]:
    return lambda raw: f.frame(f.HEADERS, f.END_HEADERS, sid, bytes(raw.encoder.encode(fields)))


GOOD = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/t.Test/echo"),
    (":authority", "t"),
    ("content-type", "application/grpc"),
]


def _settings_frames(raw: Raw) -> list[tuple[int, int, int, bytes]]:
    return raw.frames(lambda fr: fr[0] == f.SETTINGS and fr[1] & f.ACK > 0)


# -- the cases -------------------------------------------------------------------------------

CASES: dict[str, tuple[str, Callable[[Raw], None]]] = {
    # §3.4 connection preface
    "preface-invalid": ("3.4", connection_error(f.PROTOCOL_ERROR)),
    "preface-not-settings": (
        "3.4",
        connection_error(f.PROTOCOL_ERROR, raw_frame(f.PING, 0, 0, b"12345678")),
    ),
    # §4 frames
    "frame-over-max-frame-size": (
        "4.2",
        connection_error(f.FRAME_SIZE_ERROR, lambda raw: f.frame_header(2**24 - 1, f.DATA, 0, 1)),
    ),
    "hpack-invalid-index": (
        "4.3",
        connection_error(f.COMPRESSION_ERROR, raw_frame(f.HEADERS, f.END_HEADERS, 1, b"\xff\x50")),
    ),
    "hpack-table-size-update-too-large": (
        "4.3",
        connection_error(
            f.COMPRESSION_ERROR, raw_frame(f.HEADERS, f.END_HEADERS, 1, b"\x3f\xe1\xff\x03")
        ),
    ),
    # §5.1 stream states
    "stream-id-even": ("5.1.1", connection_error(f.PROTOCOL_ERROR, headers(2))),
    "stream-id-decreasing": (
        "5.1.1",
        connection_error(
            f.PROTOCOL_ERROR,
            lambda raw: raw.request(5, b"x"),
            headers(3, f.END_HEADERS | f.END_STREAM),
        ),
    ),
    "data-on-idle-stream": (
        "5.1",
        connection_error(f.PROTOCOL_ERROR, raw_frame(f.DATA, 0, 1, b"abc")),
    ),
    "rst-on-idle-stream": (
        "5.1, 6.4",
        connection_error(f.PROTOCOL_ERROR, lambda raw: f.rst_stream(1, f.CANCEL)),
    ),
    "window-update-on-idle-stream": (
        "5.1, 6.9",
        connection_error(f.PROTOCOL_ERROR, lambda raw: f.window_update(1, 100)),
    ),
    "data-on-half-closed-stream": (
        "5.1",
        stream_error(
            1,
            f.STREAM_CLOSED,
            lambda raw: raw.request(1, b"", path="/t.Test/hang"),
            raw_frame(f.DATA, 0, 1, b"late"),
        ),
    ),
    "headers-on-closed-stream": (
        "5.1",
        connection_error(
            f.PROTOCOL_ERROR,
            lambda raw: raw.request(1, b"x") + f.rst_stream(1, f.CANCEL),
            headers(1, f.END_HEADERS | f.END_STREAM),
        ),
    ),
    "priority-self-dependency": (
        "5.3.1",
        stream_error(1, f.PROTOCOL_ERROR, raw_frame(f.PRIORITY, 0, 1, b"\x00\x00\x00\x01\x10")),
    ),
    # §6.1 DATA, §6.2 HEADERS
    "data-on-stream-0": ("6.1", connection_error(f.PROTOCOL_ERROR, raw_frame(f.DATA, 0, 0, b"x"))),
    "data-padding-too-long": (
        "6.1",
        connection_error(f.PROTOCOL_ERROR, headers(1), raw_frame(f.DATA, f.PADDED, 1, b"\x09abc")),
    ),
    "headers-on-stream-0": ("6.2", connection_error(f.PROTOCOL_ERROR, headers(0))),
    "headers-padding-too-long": (
        "6.2",
        connection_error(
            f.PROTOCOL_ERROR,
            lambda raw: f.frame(f.HEADERS, f.PADDED | f.END_HEADERS, 1, b"\xff" + raw.block()),
        ),
    ),
    # §6.3 PRIORITY, §6.4 RST_STREAM
    "priority-on-stream-0": (
        "6.3",
        connection_error(f.PROTOCOL_ERROR, raw_frame(f.PRIORITY, 0, 0, b"\x00\x00\x00\x01\x10")),
    ),
    "priority-bad-length": (
        "6.3",
        stream_error(1, f.FRAME_SIZE_ERROR, raw_frame(f.PRIORITY, 0, 1, b"\x00\x00\x00")),
    ),
    "rst-on-stream-0": (
        "6.4",
        connection_error(f.PROTOCOL_ERROR, lambda raw: f.rst_stream(0, f.CANCEL)),
    ),
    "rst-bad-length": (
        "6.4",
        connection_error(f.FRAME_SIZE_ERROR, headers(1), raw_frame(f.RST_STREAM, 0, 1, b"\0")),
    ),
    # §6.5 SETTINGS
    "settings-ack-with-payload": (
        "6.5",
        connection_error(f.FRAME_SIZE_ERROR, raw_frame(f.SETTINGS, f.ACK, 0, b"\0" * 6)),
    ),
    "settings-bad-length": (
        "6.5",
        connection_error(f.FRAME_SIZE_ERROR, raw_frame(f.SETTINGS, 0, 0, b"\0" * 5)),
    ),
    "settings-on-stream": (
        "6.5",
        connection_error(f.PROTOCOL_ERROR, raw_frame(f.SETTINGS, 0, 1)),
    ),
    "settings-enable-push-invalid": (
        "6.5.2",
        connection_error(f.PROTOCOL_ERROR, raw_frame(f.SETTINGS, 0, 0, setting(f.ENABLE_PUSH, 2))),
    ),
    "settings-initial-window-too-large": (
        "6.5.2",
        connection_error(
            f.FLOW_CONTROL_ERROR,
            raw_frame(f.SETTINGS, 0, 0, setting(f.INITIAL_WINDOW_SIZE, 2**31)),
        ),
    ),
    "settings-max-frame-size-too-small": (
        "6.5.2",
        connection_error(
            f.PROTOCOL_ERROR, raw_frame(f.SETTINGS, 0, 0, setting(f.MAX_FRAME_SIZE, 16_383))
        ),
    ),
    "settings-max-frame-size-too-large": (
        "6.5.2",
        connection_error(
            f.PROTOCOL_ERROR, raw_frame(f.SETTINGS, 0, 0, setting(f.MAX_FRAME_SIZE, 2**24))
        ),
    ),
    # §6.7 PING
    "ping-on-stream": (
        "6.7",
        connection_error(f.PROTOCOL_ERROR, raw_frame(f.PING, 0, 1, b"12345678")),
    ),
    "ping-bad-length": (
        "6.7",
        connection_error(f.FRAME_SIZE_ERROR, raw_frame(f.PING, 0, 0, b"1234567")),
    ),
    # §6.9 WINDOW_UPDATE and flow control
    "window-update-0-on-connection": (
        "6.9",
        connection_error(f.PROTOCOL_ERROR, lambda raw: f.window_update(0, 0)),
    ),
    "window-update-0-on-stream": (
        "6.9",
        stream_error(1, f.PROTOCOL_ERROR, headers(1), lambda raw: f.window_update(1, 0)),
    ),
    "window-update-bad-length": (
        "6.9",
        connection_error(f.FRAME_SIZE_ERROR, raw_frame(f.WINDOW_UPDATE, 0, 0, b"\0\0\x01")),
    ),
    "connection-window-overflow": (
        "6.9.1",
        connection_error(f.FLOW_CONTROL_ERROR, lambda raw: f.window_update(0, 2**31 - 1) * 2),
    ),
    "stream-window-overflow": (
        "6.9.1",
        stream_error(
            1,
            f.FLOW_CONTROL_ERROR,
            lambda raw: raw.request(1, b"", path="/t.Test/hang"),
            lambda raw: f.window_update(1, 2**31 - 1),
        ),
    ),
    "data-beyond-stream-window": (
        "6.9.1",
        stream_error(1, f.FLOW_CONTROL_ERROR, headers(1), raw_frame(f.DATA, 0, 1, b"\0" * 70_000)),
    ),
    "connection-window-overrun": (
        "6.9.1",
        connection_error(
            f.FLOW_CONTROL_ERROR,
            headers(1),
            # 40,000 bytes: the stream window is topped up to 4 MiB, the connection window
            # (64 KiB on this case's server) given back; then one frame larger than it.
            raw_frame(f.DATA, 0, 1, b"\0" * 40_000),
            raw_frame(f.DATA, 0, 1, b"\0" * 70_000),
        ),
    ),
    "settings-initial-window-too-large-for-open-stream": (
        "6.9.2",
        connection_error(
            f.FLOW_CONTROL_ERROR,
            lambda raw: raw.request(1, b"", path="/t.Test/hang"),
            lambda raw: f.window_update(1, 2**31 - 65_536),
            raw_frame(f.SETTINGS, 0, 0, setting(f.INITIAL_WINDOW_SIZE, 2**31 - 1)),
        ),
    ),
    # §6.10 CONTINUATION
    "continuation-without-headers": (
        "6.10",
        connection_error(f.PROTOCOL_ERROR, raw_frame(f.CONTINUATION, f.END_HEADERS, 1, b"\x82")),
    ),
    "continuation-other-stream": (
        "6.10",
        connection_error(
            f.PROTOCOL_ERROR,
            lambda raw: f.frame(f.HEADERS, 0, 1, raw.block()[:3]),
            raw_frame(f.CONTINUATION, f.END_HEADERS, 3, b"\x82"),
        ),
    ),
    "frame-inside-header-block": (
        "6.10",
        connection_error(
            f.PROTOCOL_ERROR,
            lambda raw: f.frame(f.HEADERS, 0, 1, raw.block()[:3]),
            raw_frame(f.PING, 0, 0, b"12345678"),
        ),
    ),
    # §8 HTTP semantics
    "push-promise-from-client": (
        "8.4",
        connection_error(f.PROTOCOL_ERROR, raw_frame(f.PUSH_PROMISE, 0, 1, b"\0" * 4)),
    ),
    "malformed-uppercase-name": (
        "8.2.1",
        stream_error(1, f.PROTOCOL_ERROR, raw_headers(1, [*GOOD, ("X-Upper", "1")])),
    ),
    "malformed-connection-header": (
        "8.2.2",
        stream_error(1, f.PROTOCOL_ERROR, raw_headers(1, [*GOOD, ("connection", "close")])),
    ),
    "malformed-te-not-trailers": (
        "8.2.2",
        stream_error(1, f.PROTOCOL_ERROR, raw_headers(1, [*GOOD, ("te", "gzip")])),
    ),
    "malformed-pseudo-after-regular": (
        "8.3",
        stream_error(1, f.PROTOCOL_ERROR, raw_headers(1, [*GOOD[1:], GOOD[0]])),
    ),
    "malformed-unknown-pseudo": (
        "8.3",
        stream_error(1, f.PROTOCOL_ERROR, raw_headers(1, [*GOOD, (":status", "200")])),
    ),
    "content-length-larger-than-data": (
        "8.1.1",
        stream_error(
            1,
            f.PROTOCOL_ERROR,
            headers(1, **{"content-length": "100"}),
            raw_frame(f.DATA, f.END_STREAM, 1, grpc_message(b"short")),
        ),
    ),
    "content-length-smaller-than-data": (
        "8.1.1",
        stream_error(
            1,
            f.PROTOCOL_ERROR,
            headers(1, **{"content-length": "3"}),
            raw_frame(f.DATA, 0, 1, grpc_message(b"longer")),
        ),
    ),
    "content-length-without-data": (
        "8.1.1",
        stream_error(
            1, f.PROTOCOL_ERROR, headers(1, f.END_HEADERS | f.END_STREAM, **{"content-length": "5"})
        ),
    ),
    "content-length-invalid": (
        "8.1.1",
        stream_error(1, f.PROTOCOL_ERROR, headers(1, **{"content-length": "1e3"})),
    ),
    "headers-priority-self-dependency": (
        "5.3.1",
        stream_error(
            1,
            f.PROTOCOL_ERROR,
            lambda raw: f.frame(
                f.HEADERS, f.END_HEADERS | f.PRIORITY_FLAG, 1, b"\0\0\0\x01\x10" + raw.block()
            ),
        ),
    ),
    "malformed-missing-path": (
        "8.3.1",
        stream_error(1, f.PROTOCOL_ERROR, raw_headers(1, [GOOD[0], GOOD[1], GOOD[3]])),
    ),
    "trailers-without-end-stream": (
        "8.1",
        stream_error(
            1,
            f.PROTOCOL_ERROR,
            headers(1),
            raw_frame(f.DATA, 0, 1, grpc_message(b"x")),
            headers(1),
        ),
    ),
}


def case_server_settings_first_and_acks(raw: Raw) -> None:
    """§3.4, §6.5.3: the server's first frame is SETTINGS; it acknowledges ours."""
    first = raw.frames(lambda fr: True)[0]
    assert first[0] == f.SETTINGS and not first[1] & f.ACK
    raw.send(f.frame(f.SETTINGS, 0, 0, setting(0x7777, 1)))  # unknown setting: ignored
    _settings_frames(raw)


def case_unknown_frame_type_ignored(raw: Raw) -> None:
    """§4.1, §5.5: frames of unknown types (and unknown flags) are ignored."""
    raw.send(f.frame(0xEE, 0xFF, 0, b"ignored"), f.frame(0xEE, 0, 1, b"also"))
    raw.send(raw.request(1, b"fine"))
    assert raw.status(1)[0] == 0


def case_ping_answered_with_same_payload(raw: Raw) -> None:
    """§6.7: a PING is answered with an ACK carrying its payload; a PING ACK is not."""
    raw.send(f.frame(f.PING, f.ACK, 0, b"not-me!!"), f.frame(f.PING, 0, 0, b"answer!!"))
    pings = [fr for fr in raw.frames(lambda fr: fr[0] == f.PING) if fr[0] == f.PING]
    assert pings == [(f.PING, f.ACK, 0, b"answer!!")]


def case_frames_fit_the_peers_max_frame_size(raw: Raw) -> None:
    """§4.2: DATA the server sends never exceeds the client's SETTINGS_MAX_FRAME_SIZE."""
    raw.send(raw.request(1, b"z" * 40_000))
    status, frames = raw.status(1)
    sizes = [len(p) for t, _, _, p in frames if t == f.DATA]
    assert status == 0 and sum(sizes) == 40_005 and max(sizes) <= 16_384


def case_client_goaway_lets_streams_finish(raw: Raw) -> None:
    """§6.8: after the client's GOAWAY the server sends its own (NO_ERROR), the open stream is
    still answered, then the server closes the connection."""
    raw.send(raw.request(1, b"last one"), f.goaway(0, f.NO_ERROR))
    status, frames = raw.status(1)
    assert status == 0
    goaways = [fr for fr in frames if fr[0] == f.GOAWAY]
    if not goaways:
        goaways = raw.frames(lambda fr: fr[0] == f.GOAWAY)[-1:]
    assert int.from_bytes(goaways[0][3][4:8], "big") == f.NO_ERROR
    raw.expect_closed()


def case_content_length_matching_is_served(raw: Raw) -> None:
    """§8.1.1: a request whose content-length equals its DATA is served."""
    message = grpc_message(b"exact")
    raw.send(
        f.frame(f.HEADERS, f.END_HEADERS, 1, raw.block(**{"content-length": str(len(message))})),
        f.frame(f.DATA, f.END_STREAM, 1, message),
    )
    assert raw.status(1)[0] == 0


def case_window_update_on_half_closed_stream(raw: Raw) -> None:
    """§5.1, §6.9: WINDOW_UPDATE on a stream the client has ended is allowed (the server still
    sends on it): an answer larger than the client's window completes once it is opened."""
    message = grpc_message(b"w" * 100_000)  # its echo exceeds the client's 65,535-byte windows
    raw.send(
        f.frame(f.HEADERS, f.END_HEADERS, 1, raw.block()), f.frame(f.DATA, 0, 1, message[:50_000])
    )
    raw.frames(lambda fr: fr[0] == f.WINDOW_UPDATE and fr[2] == 1)  # room for the rest
    raw.send(f.frame(f.DATA, f.END_STREAM, 1, message[50_000:]))
    sent = raw.frames(lambda fr: fr[0] == f.DATA)
    raw.send(f.window_update(1, 100_000), f.window_update(0, 100_000))
    status, more = raw.status(1)
    assert status == 0
    assert sum(len(p) for t, _, _, p in sent + more if t == f.DATA) == len(message)


def case_late_reset_and_window_update_ignored(raw: Raw) -> None:
    """§5.1: RST_STREAM and WINDOW_UPDATE on a stream the server has just ended are ignored
    (a client's cancel that crossed the answer); the connection carries on."""
    raw.send(raw.request(1, b"answered"))
    assert raw.status(1)[0] == 0
    raw.send(f.rst_stream(1, f.CANCEL), f.window_update(1, 1000), raw.request(3, b"next"))
    assert raw.status(3)[0] == 0


def case_content_type_not_grpc(raw: Raw) -> None:
    """§8.1 (gRPC over HTTP/2): a POST whose content-type is not application/grpc gets HTTP
    415, not a reset."""
    fields = [*GOOD[:4], ("content-type", "application/json")]
    raw.send(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, raw.encoder.encode(fields)))
    frames = raw.frames(lambda fr: fr[0] == f.HEADERS and fr[2] == 1)
    assert dict(raw.decoder.decode(frames[-1][3]))[":status"] == "415"


def case_not_grpc_gets_an_http_status(raw: Raw) -> None:
    """§8.1 (gRPC over HTTP/2): a request that is not gRPC gets an HTTP status, not a reset."""
    fields = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "t")]
    raw.send(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, raw.encoder.encode(fields)))
    frames = raw.frames(lambda fr: fr[0] == f.HEADERS and fr[2] == 1)
    assert dict(raw.decoder.decode(frames[-1][3]))[":status"] == "405"


for _function in (
    case_server_settings_first_and_acks,
    case_unknown_frame_type_ignored,
    case_ping_answered_with_same_payload,
    case_frames_fit_the_peers_max_frame_size,
    case_client_goaway_lets_streams_finish,
    case_not_grpc_gets_an_http_status,
    case_content_length_matching_is_served,
    case_window_update_on_half_closed_stream,
    case_late_reset_and_window_update_ignored,
    case_content_type_not_grpc,
):
    _section = re.match(r"§([\d.]+)", _function.__doc__ or "")
    assert _section is not None
    _name = _function.__name__.removeprefix("case_").replace("_", "-")
    CASES[_name] = (_section.group(1), _function)


@pytest.fixture(scope="module")
def served() -> Iterator[LimitedServer]:
    server = LimitedServer()
    yield server
    server.close()


# Cases that need a server with other limits than the shared one.
OWN_LIMITS: dict[str, dict[str, int]] = {
    "connection-window-overrun": {"connection_window_bytes": 65_536}
}


@pytest.mark.parametrize("name", CASES)
def test_rfc9113(served: LimitedServer, name: str) -> None:
    _, check = CASES[name]
    if name in OWN_LIMITS:
        served = LimitedServer(**OWN_LIMITS[name])
        try:
            _run(served, name, check)
        finally:
            served.close()
    else:
        _run(served, name, check)


def _run(served: LimitedServer, name: str, check: Callable[[Raw], None]) -> None:
    preface = not name.startswith("preface-")
    raw = Raw(served.port, preface=preface)
    try:
        if name == "preface-invalid":
            raw.send(BAD_PREFACE)
        elif name == "preface-not-settings":
            raw.send(f.PREFACE)
        check(raw)
    finally:
        raw.close()
    assert served.good_call() == b"still serving"


def test_every_case_is_listed_in_the_docs() -> None:
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), re.MULTILINE))
    assert listed == set(CASES)
