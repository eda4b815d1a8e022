"""Uploads as tests make, name, encode and check them."""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import requests

from .http import TusClient

MiB = 1 << 20


class Storing(Protocol):
    """A server (or a deployment of replicas) that keeps its uploads under a data dir."""

    data_dir: Path

    def upload_ids(self) -> list[str]: ...


def upload_id(url: str) -> str:
    """The id an upload URL (or its path) ends in."""
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


def path_of(url: str) -> str:
    """``/files/<id>``: an upload URL without scheme and host, as a final may list it."""
    return urlsplit(url).path


def data_file(server: Storing, url: str) -> Path:
    """The file of the upload's bytes in the server's data dir (the file store)."""
    return server.data_dir / "uploads" / upload_id(url)


def sidecar_file(server: Storing, url: str) -> Path:
    """The file store's record of the upload, beside its bytes."""
    return data_file(server, url).with_suffix(".json")


def upload_count(server: Storing) -> int:
    """How many uploads the server keeps: a record per upload, whichever the store."""
    return len(server.upload_ids())


def make_upload(
    tus: TusClient, length: int | None, data: bytes = b"", headers: dict[str, str] | None = None
) -> str:
    """A new upload (``length`` None: deferred) holding ``data`` from a PATCH; its URL."""
    extra = dict(headers or {})
    if length is None:
        extra["Upload-Defer-Length"] = "1"
    url = tus.new_upload(length, headers=extra)
    if data:
        response = tus.patch(url, 0, data)
        assert response.status_code == 204, (response.status_code, response.text)
        assert response.headers["Upload-Offset"] == str(len(data))
    return url


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode("ascii")


def encode_metadata(**values: str | bytes) -> str:
    """Upload-Metadata for ``values``: ``key base64(value)`` pairs."""
    return ",".join(f"{key} {b64(value)}" for key, value in values.items())


def decode_metadata(header: str | None) -> dict[str, str]:
    """Upload-Metadata as the server reports it, values decoded as UTF-8."""
    result: dict[str, str] = {}
    for pair in (header or "").split(","):
        if not pair.strip():
            continue
        key, _, value = pair.strip().partition(" ")
        result[key] = base64.b64decode(value).decode("utf-8")
    return result


def b64_digest(algorithm: str, data: bytes | Iterable[bytes]) -> str:
    """The base64 digest of ``data`` (bytes, or its pieces) as tus and the draft send it."""
    pieces = [data] if isinstance(data, bytes | bytearray | memoryview) else data
    if algorithm == "crc32":
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        return base64.b64encode(crc.to_bytes(4, "big")).decode()
    hasher = hashlib.new(algorithm)
    for piece in pieces:
        hasher.update(piece)
    return base64.b64encode(hasher.digest()).decode()


def checksum_header(algorithm: str, data: bytes | Iterable[bytes]) -> str:
    """An Upload-Checksum value: the algorithm and the base64 digest."""
    return f"{algorithm} {b64_digest(algorithm, data)}"


def download_sha256(tus: TusClient, url: str) -> tuple[str, int]:
    """The hex sha256 and size of a GET, streamed: a large body is never held."""
    digest = hashlib.sha256()
    size = 0
    with tus.get(url, stream=True) as response:
        assert response.status_code == 200, (response.status_code, response.text)
        for chunk in response.iter_content(MiB):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def assert_finished(tus: TusClient, url: str, data: bytes) -> dict[str, str]:
    """HEAD says complete, GET streams exactly ``data``; HEAD's headers."""
    head = tus.head(url)
    assert head.status_code == 200, (head.status_code, head.text)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data))
    assert download_sha256(tus, url) == (hashlib.sha256(data).hexdigest(), len(data))
    return dict(head.headers)


def assert_state(tus: TusClient, url: str, offset: int, length: int | None) -> requests.Response:
    """HEAD shows ``offset`` and ``length`` (None: deferred); the HEAD's answer."""
    response = tus.head(url)
    assert response.status_code in (200, 204), (response.status_code, response.text)
    assert response.headers.get("Tus-Resumable") == "1.0.0", dict(response.headers)
    assert response.headers.get("Upload-Offset") == str(offset), dict(response.headers)
    if length is None:
        assert response.headers.get("Upload-Defer-Length") == "1", dict(response.headers)
        assert "Upload-Length" not in response.headers
    else:
        assert response.headers.get("Upload-Length") == str(length), dict(response.headers)
        assert "Upload-Defer-Length" not in response.headers
    return response


def assert_content(tus: TusClient, url: str, expected: bytes) -> None:
    """The stored bytes, read back through a download of the complete upload."""
    response = tus.get(url)
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.content == expected
