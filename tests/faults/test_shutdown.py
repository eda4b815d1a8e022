"""Graceful shutdown: a stop ends running uploads at once and keeps every byte that arrived.

On SIGTERM to the gunicorn master (and for the old workers of a reload on
SIGHUP) a running PATCH or creation-with-upload POST stops reading its body,
commits what it received and answers with the offset reached, on a connection
closed after it; the server then exits well within ``--shutdown-timeout``
instead of running into it and having its workers killed (stopping.py,
worker.py). Each test runs the real server under gunicorn, its clients on raw
sockets sending a known byte pattern, and restarts the server on the same data
(and the same Redis) where it checks what was kept.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..support import (
    OFFSET_STREAM,
    TUS,
    RawRequest,
    RawResponse,
    Server,
    TusClient,
    assert_finished,
    path_of,
    pattern_bytes,
    split_backend,
    upload_id,
    wait_until,
)

MiB = 1 << 20
#: The --shutdown-timeout of these servers: the master kills what is left after it.
SHUTDOWN_TIMEOUT = 5
#: The longest a stop with uploads running may take: they end at once (about half
#: a second here). Far under the timeout: a worker that waited for an upload would be
#: killed at SHUTDOWN_TIMEOUT and fail this bound. On S3 each upload's last commit
#: stores its bytes there first, as slowly as the store goes (moto, in this process):
#: that stop is held to the timeout itself.
PROMPT_EXIT = 3.0
#: The longest a stop may take with idle connections open: gunicorn gives kept-alive
#: ones, and this worker gives those still sending a head, 2 s (worker.STOP_HEAD_GRACE).
#: That server has a longer timeout, IDLE_SHUTDOWN_TIMEOUT, so that a connection held
#: for gunicorn's 5 s wait for a first byte fails this bound too.
IDLE_EXIT = 5.0
IDLE_SHUTDOWN_TIMEOUT = 8
#: gunicorn's log line for a worker the master had to kill at the timeout.
KILLED = "was sent SIGKILL"


# --------------------------------------------------------------------------
# A request whose body a client sends slowly, on its own socket
# --------------------------------------------------------------------------


@dataclass
class SlowRequest:
    """A PATCH or creation POST whose body a thread sends in pieces, and its answer.

    ``sent`` counts body bytes handed to the kernel: the server cannot have
    received more. The answer is read by another thread as soon as it comes,
    so a reset that follows it (the server closes with bytes unread) cannot
    hide it; then the client closes its side, as tus clients do.
    """

    server: Server
    method: str
    path: str
    data: bytes
    chunked: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    first: int = 256 * 1024
    piece: int = 32 * 1024
    pause: float = 0.02
    #: Content-Length when it is not the data's (a body made by an overridden ``pieces``).
    length: int | None = None
    answer: RawResponse | None = None
    raw: RawRequest = field(init=False)

    @property
    def sent(self) -> int:
        return self.raw.sent

    def start(self) -> SlowRequest:
        length = None if self.chunked else len(self.data) if self.length is None else self.length
        headers = {**TUS, "Content-Type": OFFSET_STREAM, **self.headers}
        self.raw = RawRequest(self.server, self.method, self.path, length, headers)
        self.raw.send_headers()
        self.raw.feed(self.pieces(), self.pause)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def pieces(self) -> Iterator[bytes]:
        """The body: ``first`` bytes, then ``piece`` bytes at a time."""
        view = memoryview(self.data)
        position = 0
        while position < len(view):
            size = self.piece if position else self.first
            yield bytes(view[position : position + size])
            position += size

    def _read(self) -> None:
        self.answer = self.raw.response(30, head_only=True)
        with contextlib.suppress(OSError):
            self.raw.sock.shutdown(socket.SHUT_RDWR)  # as a client does, once answered

    def wait(self, timeout: float) -> RawResponse | None:
        """The answer, or None when the connection ended without one."""
        self.raw.answered.wait(timeout)
        self.raw.close()
        return self.answer


# --------------------------------------------------------------------------
# Servers: started on a data directory (and Redis prefix) a restart reuses
# --------------------------------------------------------------------------


@dataclass
class Site:
    """What a server keeps between its runs: its data directory, Redis and S3 bucket."""

    data_dir: Path
    redis_url: str | None
    redis_prefix: str
    #: The S3 settings (bucket, endpoint, prefix) when uploads are kept in S3.
    store: dict[str, object] = field(default_factory=dict)


@pytest.fixture
def launch() -> Iterator[Callable[..., Server]]:
    """launch(site, **settings) -> a running server on the site, stopped at the end."""
    started: list[Server] = []

    def start(site: Site, **settings: object) -> Server:
        server = Server(
            site.data_dir,
            redis_url=site.redis_url,
            workers=2,
            redis_prefix=site.redis_prefix,
            **{"shutdown_timeout": SHUTDOWN_TIMEOUT, **site.store, **settings},
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def site(tmp_path: Path, redis_url_for, backend: str, request: pytest.FixtureRequest) -> Site:
    """Where the backend's servers keep uploads: a fresh directory, Redis prefix, bucket."""
    store = {}
    if split_backend(backend)[1] == "s3":
        store = request.getfixturevalue("s3").settings()
    prefix = f"shutdown-{uuid.uuid4().hex[:8]}:"
    return Site(tmp_path / "data", redis_url_for(backend), prefix, store)


def stop_master(server: Server, timeout: float = SHUTDOWN_TIMEOUT + 10) -> float:
    """SIGTERM to the master alone (as ``docker stop`` sends it): seconds until it exited."""
    assert server.process is not None
    started = time.monotonic()
    os.kill(server.process.pid, signal.SIGTERM)
    server.process.wait(timeout)
    return time.monotonic() - started


def resume(tus: TusClient, server: Server, path: str, data: bytes) -> None:
    """A client back after the stop: HEAD's offset, the rest from there, then byte-exact."""
    url = server.url + path
    offset = tus.offset(url)
    response = tus.patch(url, offset, data[offset:])
    assert response.status_code == 204, (path, response.status_code, response.text)
    assert_finished(tus, url, data)


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["embedded", "redis", "redis-s3"])
def test_sigterm_during_uploads_keeps_every_byte_and_exits_promptly(
    launch, site: Site, backend: str
) -> None:
    """Six uploads stream slowly (four PATCHes and two creation-with-upload POSTs, half
    of them chunked) when the master gets SIGTERM. Every request is answered with the
    offset it reached, on a closed connection; the server exits far within the timeout
    (on S3: within it) without killing a worker; after a restart on the same data HEAD
    reports exactly the answered offsets (at least what HEAD acknowledged before) and
    every client resumes from there, byte-exact."""
    server = launch(site)
    tus = TusClient(server.endpoint)
    size = 16 * MiB  # at 1.6 MiB/s, 10 s each: twice the timeout
    uploads = []  # (request, data, path or None for a creation)
    for index in range(6):
        data = pattern_bytes(size, seed=index + 1)
        chunked = index % 2 == 1
        if index < 4:
            path = path_of(tus.new_upload(size))
            request = SlowRequest(server, "PATCH", path, data, chunked, {"Upload-Offset": "0"})
        else:
            path = None
            request = SlowRequest(
                server,
                "POST",
                path_of(server.endpoint),
                data,
                chunked,
                {"Upload-Length": str(size)},
            )
        uploads.append((request.start(), data, path))
    assert wait_until(lambda: all(r.sent >= MiB for r, _, _ in uploads), 20)
    # HEAD asks each holder to commit what it has: offsets acknowledged before the stop.
    acknowledged = {path: tus.offset(server.url + path) for _, _, path in uploads if path}
    assert all(offset > 0 for offset in acknowledged.values()), acknowledged
    time.sleep(0.3)  # more bytes arrive, not yet committed
    tus.session.close()  # no idle kept-alive connection: the stop waits for uploads alone

    elapsed = stop_master(server)
    print(
        f"\nSIGTERM with 6 uploads running [{backend}]: master exited after {elapsed:.2f} s "
        f"(timeout {SHUTDOWN_TIMEOUT} s)"
    )
    bound = SHUTDOWN_TIMEOUT if site.store else PROMPT_EXIT
    assert elapsed < bound, f"the stop took {elapsed:.2f} s"
    assert KILLED not in server.log(), server.log()

    answered = []
    for request, data, path in uploads:
        answer = request.wait(5)
        assert answer is not None, f"{request.method} {path}: no answer"
        assert answer.headers.get("connection") == "close", answer.headers
        if path is None:
            assert answer.status == 201, answer
            path = path_of(answer.headers["location"])
        else:
            assert answer.status == 204, answer
            assert answer.offset >= acknowledged[path], (path, answer, acknowledged[path])
        assert 0 < answer.offset <= request.sent < size, (path, answer, request.sent)
        answered.append((path, answer.offset, data))

    server = launch(site)
    tus = TusClient(server.endpoint)
    for path, offset, data in answered:
        assert tus.offset(server.url + path) == offset, path
        resume(tus, server, path, data)


@pytest.mark.parametrize("backend", ["embedded"])
def test_sigterm_without_uploads_exits_promptly(launch, site: Site) -> None:
    """No upload running; an idle kept-alive connection, one that never sent a byte and
    one stuck inside its request head: all are closed (the last two with a 408), a new
    connection is refused at once, and the server exits in a couple of seconds (the
    grace those connections get), not at the timeout (gunicorn's thread waits 5 s for
    a silent connection's first byte, the head deadline is --header-timeout, 30 s)."""
    server = launch(site, shutdown_timeout=IDLE_SHUTDOWN_TIMEOUT)
    options = b"OPTIONS /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
    kept = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    kept.sendall(options + b"\r\n")
    assert kept.recv(65536).startswith(b"HTTP/1.1 204")
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    stuck = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    stuck.sendall(options)  # and never the empty line that ends the head
    time.sleep(0.2)  # a worker has accepted them

    assert server.process is not None
    started = time.monotonic()
    os.kill(server.process.pid, signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    server.process.wait(IDLE_SHUTDOWN_TIMEOUT + 10)
    elapsed = time.monotonic() - started
    print(f"\nSIGTERM without uploads: master exited after {elapsed:.2f} s")
    assert elapsed < IDLE_EXIT, f"the stop took {elapsed:.2f} s"
    assert KILLED not in server.log(), server.log()
    kept.settimeout(1)
    assert kept.recv(65536) == b"", "the kept-alive connection is closed"
    for connection in (silent, stuck):
        connection.settimeout(1)
        last_words = connection.recv(65536)  # the head did not come in time, then the close
        assert last_words.startswith(b"HTTP/1.1 408"), last_words
    for connection in (kept, silent, stuck):
        connection.close()


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_reload_during_an_upload_answers_it_and_the_new_workers_resume_it(
    launch, site: Site
) -> None:
    """SIGHUP (a graceful reload) while a PATCH streams at a pace that would take longer
    than the timeout: the old worker answers it with the offset reached at once, and a
    PATCH from that offset on the new workers finishes the upload byte-exact."""
    server = launch(site)
    tus = TusClient(server.endpoint)
    size = 32 * MiB  # at about 3 MiB/s: ten seconds, twice the timeout
    data = pattern_bytes(size, seed=9)
    path = path_of(tus.new_upload(size))
    request = SlowRequest(
        server, "PATCH", path, data, headers={"Upload-Offset": "0"}, piece=64 * 1024
    ).start()
    assert wait_until(lambda: request.sent >= MiB, 20)
    old_workers = set(server.worker_pids())
    assert server.process is not None

    started = time.monotonic()
    os.kill(server.process.pid, signal.SIGHUP)
    answer = request.wait(SHUTDOWN_TIMEOUT + 5)
    took = time.monotonic() - started
    print(f"\nSIGHUP during an upload: answered after {took:.2f} s")
    assert answer is not None, "the reload cut the PATCH without an answer"
    assert answer.status == 204 and answer.headers.get("connection") == "close", answer
    assert 0 < answer.offset <= request.sent < size
    assert took < PROMPT_EXIT, f"the answer took {took:.2f} s"

    assert wait_until(
        lambda: not old_workers & set(server.worker_pids()) and len(server.worker_pids()) == 2,
        SHUTDOWN_TIMEOUT + 5,
    )
    assert KILLED not in server.log(), server.log()
    assert tus.offset(server.url + path) == answer.offset
    resume(tus, server, path, data)


@pytest.mark.parametrize("backend", ["embedded"])
def test_a_patch_sending_flat_out_does_not_hold_the_stop(launch, site: Site) -> None:
    """A PATCH whose client sends as fast as it can still sees the stop between slices:
    it is answered with its offset, the worker exits by itself long before the timeout,
    and the offset answered is what a restart finds, the bytes up to it the ones sent.
    The server reads 4 KiB slices and commits each (--chunk-size, --commit-bytes), far
    slower than the client sends, so the socket never runs dry and its thread never
    waits in poll (where the stop's descriptor would wake it); and no timer falls due
    (--commit-seconds) that would show it the stop by chance."""
    server = launch(site, chunk_size=4096, commit_bytes=4096, commit_seconds=60)
    tus = TusClient(server.endpoint)
    size = 4096 * MiB  # far more than can arrive before the stop
    block = pattern_bytes(4 * MiB, seed=3)
    path = path_of(tus.new_upload(size))

    class Endless(SlowRequest):
        def pieces(self) -> Iterator[bytes]:
            while True:
                yield block

    request = Endless(
        server, "PATCH", path, b"", headers={"Upload-Offset": "0"}, pause=0, length=size
    ).start()
    assert wait_until(lambda: tus.offset(server.url + path) >= 16 * MiB, 20)
    tus.session.close()

    elapsed = stop_master(server)
    print(
        f"\nSIGTERM during a flat-out PATCH: master exited after {elapsed:.2f} s "
        f"({request.sent / MiB:.0f} MiB sent)"
    )
    assert elapsed < PROMPT_EXIT, f"the stop took {elapsed:.2f} s"
    assert KILLED not in server.log(), server.log()
    answer = request.wait(5)
    assert answer is not None, "the PATCH got no answer"
    assert answer.status == 204 and answer.headers.get("connection") == "close", answer

    server = launch(site)
    tus = TusClient(server.endpoint)
    assert tus.offset(server.url + path) == answer.offset
    stored = site.data_dir / "uploads" / upload_id(path)
    assert stored.stat().st_size == answer.offset
    with stored.open("rb") as file:
        position = 0
        while piece := file.read(len(block)):
            assert piece == block[: len(piece)], f"stored bytes differ after {position}"
            position += len(piece)
