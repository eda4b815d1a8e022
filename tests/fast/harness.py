"""The endpoint of one test behind Flask's test client, and what its tests say often.

Requests go through ``create_app`` and the WSGI stack exactly as under
gunicorn, except for how a body is read: without gunicorn's socket,
``body.open_body`` reads ``wsgi.input`` in ``--chunk-size`` slices
(``StreamBody``). :meth:`Endpoint.send` hands the app any ``wsgi.input``, so
a test can end a body the way a client would: early, too long, slowly,
chunked (no ``Content-Length``).
"""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from flask import Flask
from flask.testing import FlaskClient
from werkzeug import Request
from werkzeug.test import EnvironBuilder, TestResponse

from resumable.gc import Report, collect
from resumable.records import UploadRecord
from resumable.registry import Registry
from resumable.settings import Settings
from resumable.store import Store
from resumable.views import Services

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"
#: ``--max-size`` of the endpoint most tests use: small, so 413s cost nothing to provoke.
MAX_SIZE = 1000
BASE = "/files/"


def upload_id(path: str) -> str:
    """The id at the end of an upload's URL or path."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def path_of(location: str) -> str:
    """``/files/<id>`` of an absolute ``Location``."""
    return BASE + upload_id(location)


def unknown_path() -> str:
    """The URL of an upload that was never created (a well-formed id)."""
    return BASE + secrets.token_hex(16)


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ from position to position, so a misplaced byte shows."""
    return bytes((i * 31 + seed * 7 + i // 251) % 256 for i in range(size))


@dataclass
class Endpoint:
    """One app with the endpoint mounted at ``/files/``, and its test client."""

    app: Flask
    registry_kind: str

    def __post_init__(self) -> None:
        self.client: FlaskClient = self.app.test_client()

    # -- what the app was built with -------------------------------------------

    @property
    def services(self) -> Services:
        return cast(Services, self.app.extensions["resumable"])

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def registry(self) -> Registry:
        return self.services.registry

    @property
    def store(self) -> Store:
        return self.services.store

    # -- requests ------------------------------------------------------------------

    def request(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> TestResponse:
        return self.client.open(path, method=method, headers=dict(headers or {}), data=body)

    def create(
        self,
        length: int | None = 100,
        data: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """POST an upload (``length`` None: deferred), with ``data`` in the creation; its path."""
        sent = {**TUS, **(headers or {})}
        if length is None:
            sent["Upload-Defer-Length"] = "1"
        else:
            sent["Upload-Length"] = str(length)
        if data:
            sent["Content-Type"] = OFFSET_STREAM
        response = self.request("POST", BASE, sent, data)
        assert response.status_code == 201, (response.status_code, response.get_data())
        return path_of(response.headers["Location"])

    def patch(
        self, path: str, offset: int, data: bytes, headers: Mapping[str, str] | None = None
    ) -> TestResponse:
        sent = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM}
        return self.request("PATCH", path, {**sent, **(headers or {})}, data)

    def head(self, path: str) -> TestResponse:
        return self.request("HEAD", path, TUS)

    def offset(self, path: str) -> int:
        """The offset a HEAD reports (the upload must exist)."""
        response = self.head(path)
        assert response.status_code == 200, response.status_code
        return int(response.headers["Upload-Offset"])

    def send(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        stream: Any,
        content_length: int | None,
    ) -> TestResponse:
        """A request whose ``wsgi.input`` is ``stream``, as a WSGI server would hand it over.

        ``content_length`` None sends the body like a chunked one a server has
        decoded: no ``CONTENT_LENGTH``, ``wsgi.input_terminated`` set.
        """
        builder = EnvironBuilder(path=path, method=method, headers=list(headers.items()))
        environ = builder.get_environ()
        environ["wsgi.input"] = stream
        if content_length is None:
            environ.pop("CONTENT_LENGTH", None)
            environ["wsgi.input_terminated"] = True
        else:
            environ["CONTENT_LENGTH"] = str(content_length)
        return self.client.open(Request(environ))

    # -- state, read past the HTTP interface -----------------------------------------

    def record(self, path: str) -> UploadRecord | None:
        return self.registry.get(upload_id(path))

    def upload_ids(self) -> set[str]:
        """Every upload the store holds a record of."""
        return set(self.store.upload_ids())

    def stored_bytes(self, path: str) -> bytes:
        """The first ``offset`` bytes of an upload's data, as a download would send them."""
        record = self.record(path)
        assert record is not None
        stored = self.store.open_data(record.id)
        try:
            return stored.file.read(record.offset)
        finally:
            stored.file.close()

    def set_expires(self, path: str, when: float) -> None:
        """Give an unfinished upload an explicit expiry, committed under its lock."""
        lease = self.registry.acquire(upload_id(path))
        try:
            record = self.registry.get(upload_id(path))
            assert record is not None and not record.is_complete
            record.expires = when
            self.registry.save(lease, record)
        finally:
            lease.release()

    def collect(self, now: float | None = None, grace: float | None = None) -> Report:
        """One garbage collection, as ``resumable gc`` runs it, at the clock ``now``."""
        options: dict[str, float] = {} if grace is None else {"grace": grace}
        return collect(
            self.registry,
            self.store,
            self.services.expiry,
            self.settings.max_size,
            now=time.time() if now is None else now,
            lifecycle=self.services.lifecycle,
            **options,
        )


class Trickle(io.RawIOBase):
    """A ``wsgi.input`` that hands out its bytes ``step`` at a time, then ends one way or another.

    ``then`` runs once all bytes are handed out; it may return more bytes (a
    body that goes on), return ``b""`` (the body, or the connection, ends
    there), or raise (a connection the server reports broken).
    ``before_read`` runs before every read (a test's hook into the body's timing).
    """

    def __init__(
        self,
        data: bytes,
        step: int | None = None,
        then: Callable[[], bytes] | None = None,
        before_read: Callable[[int], None] | None = None,
    ):
        self.data = data
        self.position = 0
        self.step = step
        self.then = then
        self.before_read = before_read
        #: Sizes the server asked for, one per read.
        self.asked: list[int] = []

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.asked.append(size)
        if self.before_read is not None:
            self.before_read(self.position)
        if self.position >= len(self.data):
            return self.then() if self.then is not None else b""
        want = len(self.data) - self.position if size is None or size < 0 else size
        if self.step is not None:
            want = min(want, self.step)
        piece = self.data[self.position : self.position + want]
        self.position += len(piece)
        return piece
