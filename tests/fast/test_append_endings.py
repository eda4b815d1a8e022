"""How a body ends decides what is kept and what is answered (transfer.py's table).

Without gunicorn the append loop reads ``wsgi.input`` (body.StreamBody), so
each ending is made by the ``wsgi.input`` a test hands the app: a body that
runs past the length, one that stops early, one the server reports broken, a
trickle too slow for ``--min-body-rate``, one a newer request takes over.
Endings that need gunicorn's socket (a stall noticed while no byte arrives,
the server's own chunked decoding and trailers), a full disk, a lost Redis
lease or the process stopping are left to the real-process tier.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Callable

import pytest
from werkzeug.test import EnvironBuilder, TestResponse

from resumable.body import StreamBody, open_body

from .harness import MAX_SIZE, OFFSET_STREAM, TUS, Endpoint, Trickle, pattern, upload_id


def _at(offset: int, **more: str) -> dict[str, str]:
    return {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM, **more}


def _sha256(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


class _Waiter:
    """A holder that never needs waking: enough for open_body to choose a reader."""

    wake_fd = -1
    stop_fd = -1

    def next_wait(self) -> float:
        return 1.0

    def on_idle(self) -> None:
        """Nothing to do."""


def test_without_gunicorn_the_body_is_read_from_wsgi_input() -> None:
    environ = EnvironBuilder(method="PATCH", data=b"hello").get_environ()
    body = open_body(environ, _Waiter())
    assert isinstance(body, StreamBody) and body.declared_length == 5


def test_a_body_streams_in_chunk_size_slices(make_endpoint: Callable[..., Endpoint]) -> None:
    """Invariant 6 in-process: the loop asks for a slice at a time, never the whole body."""
    endpoint = make_endpoint(chunk_size=4096, max_size=0)
    data = pattern(20000)
    path = endpoint.create(len(data))
    stream = Trickle(data)
    response = endpoint.send("PATCH", path, _at(0), stream, len(data))
    assert (response.status_code, response.headers["Upload-Offset"]) == (204, "20000")
    assert max(stream.asked) <= 4096 and len(stream.asked) >= 20000 // 4096
    assert endpoint.request("GET", path).get_data() == data


def test_a_chunked_body_within_the_length_is_kept_whole(endpoint: Endpoint) -> None:
    path = endpoint.create(100, b"x" * 10)
    data = pattern(50)
    response = endpoint.send(
        "PATCH", path, _at(10, **{"Transfer-Encoding": "chunked"}), Trickle(data, step=7), None
    )
    assert (response.status_code, response.headers["Upload-Offset"]) == (204, "60")
    assert endpoint.stored_bytes(path) == b"x" * 10 + data


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "with-checksum"])
def test_a_body_past_the_length_keeps_bytes_up_to_the_length(
    endpoint: Endpoint, checksum: bool
) -> None:
    """A chunked body of 12 bytes for the 10 left: the first 10 are stored, 413;
    with Upload-Checksum nothing of the request is kept."""
    path = endpoint.create(15, b"hello")
    data = pattern(12)
    headers = _at(5, **{"Transfer-Encoding": "chunked"})
    if checksum:
        headers["Upload-Checksum"] = _sha256(data)
    response = endpoint.send("PATCH", path, headers, Trickle(data, step=5), None)
    kept = 0 if checksum else 10
    assert response.status_code == 413
    assert response.headers["Upload-Offset"] == str(5 + kept)
    assert endpoint.offset(path) == 5 + kept
    assert endpoint.stored_bytes(path) == b"hello" + data[:kept]


def test_a_deferred_upload_takes_bytes_up_to_max_size(endpoint: Endpoint) -> None:
    path = endpoint.create(None, b"hello")
    data = pattern(MAX_SIZE)
    response = endpoint.send(
        "PATCH", path, _at(5, **{"Transfer-Encoding": "chunked"}), Trickle(data, step=300), None
    )
    assert response.status_code == 413
    assert endpoint.offset(path) == MAX_SIZE
    assert endpoint.stored_bytes(path) == b"hello" + data[: MAX_SIZE - 5]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_checksum_mismatch_keeps_nothing_and_the_next_patch_starts_clean(
    endpoint: Endpoint, chunked: bool
) -> None:
    path = endpoint.create(20, b"hello")
    headers = _at(5, **{"Upload-Checksum": _sha256(b"0123456789")})
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    response = endpoint.send("PATCH", path, headers, Trickle(b"9876543210", step=3),
                             None if chunked else 10)
    assert response.status_code == 460
    assert endpoint.offset(path) == 5
    good = endpoint.patch(path, 5, b"0123456789abcde", {"Upload-Checksum": _sha256(
        b"0123456789abcde")})
    assert good.status_code == 204
    assert endpoint.request("GET", path).get_data() == b"hello0123456789abcde"


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "with-checksum"])
def test_a_client_gone_mid_body_keeps_what_arrived(endpoint: Endpoint, checksum: bool) -> None:
    """Content-Length 100, 37 bytes sent, then the connection ends: 400, the 37 are kept
    (none with Upload-Checksum), and the client resumes from HEAD's offset."""
    data = pattern(100)
    path = endpoint.create(100)
    headers = _at(0, **({"Upload-Checksum": _sha256(data)} if checksum else {}))
    response = endpoint.send("PATCH", path, headers, Trickle(data[:37], step=10), 100)
    assert response.status_code == 400
    kept = 0 if checksum else 37
    assert endpoint.offset(path) == kept
    assert endpoint.patch(path, kept, data[kept:]).status_code == 204
    assert endpoint.request("GET", path).get_data() == data


def test_a_client_gone_reported_by_the_server_as_an_error_keeps_what_arrived(
    endpoint: Endpoint,
) -> None:
    """uWSGI, mod_wsgi and Werkzeug's server report a reset by raising from
    ``wsgi.input``: still a client gone (400), and what arrived is kept."""
    def reset() -> bytes:
        raise ConnectionResetError(104, "Connection reset by peer")

    path = endpoint.create(100)
    response = endpoint.send("PATCH", path, _at(0), Trickle(pattern(37), then=reset), 100)
    assert (response.status_code, endpoint.offset(path)) == (400, 37)


def test_an_announced_trailer_never_arrives_under_wsgi(endpoint: Endpoint) -> None:
    """WSGI hands no trailers to the application: such a request keeps nothing (460)."""
    path = endpoint.create(20, b"hello")
    headers = _at(5, **{"Transfer-Encoding": "chunked", "Trailer": "Upload-Checksum"})
    response = endpoint.send("PATCH", path, headers, Trickle(b"world"), None)
    assert response.status_code == 460
    assert response.get_data(as_text=True) == "the Upload-Checksum trailer never arrived\n"
    assert endpoint.offset(path) == 5


def test_a_body_below_the_minimum_rate_is_cut_and_kept(
    make_endpoint: Callable[..., Endpoint],
) -> None:
    """A window of a microsecond that must bring a thousand bytes: the first byte's
    window already fails, with no waiting, and that byte is kept (408)."""
    endpoint = make_endpoint(read_timeout=1e-6, min_body_rate=10**9)
    data = pattern(50)
    path = endpoint.create(50)
    response = endpoint.send("PATCH", path, _at(0), Trickle(data, step=1), 50)
    assert response.status_code == 408
    kept = int(response.headers["Upload-Offset"])
    assert 1 <= kept < 50
    assert endpoint.offset(path) == kept
    assert endpoint.stored_bytes(path) == data[:kept]


def _trickle_after(
    prefix: bytes, tail: bytes, at_prefix_end: Callable[[], object], until: Callable[[], bool]
) -> Trickle:
    """``prefix`` at once; then ``at_prefix_end`` runs, and ``tail`` follows a byte per
    millisecond (a slow client, so a request from another thread reaches the holder
    mid-body) until ``until()`` holds, then at once."""
    fired = False

    def before_read(position: int) -> None:
        nonlocal fired
        if position >= len(prefix):
            if not fired:
                fired = True
                at_prefix_end()
            if not until():
                time.sleep(0.001)

    return Trickle(prefix + tail, step=1, before_read=before_read)


#: Bytes of a slow body, sent after the first 40: enough to outlast any thread's
#: wake-up, ended early by what the test waits for.
SLOW_TAIL = 5000


def test_a_newer_request_takes_the_upload_over_and_the_bytes_are_kept(
    make_endpoint: Callable[..., Endpoint],
) -> None:
    """A hard release request (what a newer PATCH or DELETE posts) mid-body: the
    holder commits what it received and answers 423 with that offset."""
    endpoint = make_endpoint(max_size=0)
    data = pattern(40 + SLOW_TAIL)
    path = endpoint.create(len(data))
    stream = _trickle_after(
        data[:40], data[40:],
        lambda: endpoint.registry.request_release(upload_id(path), hard=True),
        until=lambda: False,
    )
    response = endpoint.send("PATCH", path, _at(0), stream, len(data))
    assert response.status_code == 423, response.get_data()
    kept = int(response.headers["Upload-Offset"])
    assert 40 <= kept < len(data)
    assert endpoint.offset(path) == kept
    assert endpoint.patch(path, kept, data[kept:]).status_code == 204
    assert endpoint.request("GET", path).get_data() == data


def test_head_during_a_body_gets_the_bytes_in_flight_committed(
    make_endpoint: Callable[..., Endpoint],
) -> None:
    """A HEAD mid-body asks the holder to commit at once (a soft request) and sees
    those bytes, long before the next periodic commit; the PATCH goes on to 204."""
    endpoint = make_endpoint(max_size=0)
    data = pattern(40 + SLOW_TAIL)
    path = endpoint.create(len(data))
    seen: list[TestResponse] = []
    other = endpoint.app.test_client()
    head = threading.Thread(target=lambda: seen.append(other.head(path, headers=TUS)))

    stream = _trickle_after(data[:40], data[40:], head.start, until=lambda: bool(seen))
    response = endpoint.send("PATCH", path, _at(0), stream, len(data))
    head.join(5)
    assert (response.status_code, response.headers["Upload-Offset"]) == (204, str(len(data)))
    assert len(seen) == 1 and seen[0].status_code == 200
    assert 40 <= int(seen[0].headers["Upload-Offset"]) < len(data)
    assert endpoint.request("GET", path).get_data() == data
