"""tuspy (the official Python tus client) against the real server, on both backends.

Each upload is checked byte-exact with a GET and sha256, and through HEAD.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import version
from pathlib import Path

import pytest
from tusclient.client import TusClient as TuspyClient
from tusclient.exceptions import TusUploadFailed
from tusclient.fingerprint.fingerprint import Fingerprint
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader import Uploader

from ..support import MiB, Server, TusClient, assert_finished, decode_metadata, pattern_file

#: Both registries on local disk, uploads kept in S3 (moto) on one instance, and two
#: replicas behind nginx with their own data dirs sharing Redis and the bucket.
BACKENDS = ("embedded", "redis", "redis-s3", "proxied-redis-s3", "hosted-redis")

CHUNK = 5 * MiB
FILENAME = "résumé 東京.bin"
TUSPY_VERSION = version("tuspy")


@pytest.fixture(autouse=True)
def _report_client_version(request: pytest.FixtureRequest) -> None:
    """Name the client under test in the run's summary (tests/conftest.py prints it)."""
    request.node.user_properties.append(("client under test", f"tuspy {TUSPY_VERSION}"))


def test_tuspy_stop_and_resume_with_new_uploader(
    server: Server, tus: TusClient, tmp_path: Path
) -> None:
    """2 of 5 chunks, stop; a new client resumes from the stored URL; non-ASCII metadata."""
    path, data = pattern_file(tmp_path, 23 * MiB + 321, seed=21)
    metadata = {"filename": FILENAME, "filetype": "application/octet-stream"}
    storage = FileStorage(str(tmp_path / "tuspy-urls.json"))
    try:
        first = TuspyClient(server.endpoint).uploader(
            file_path=str(path),
            chunk_size=CHUNK,
            metadata=metadata,
            store_url=True,
            url_storage=storage,
        )
        first.upload_chunk()
        first.upload_chunk()
        assert first.offset == 2 * CHUNK
        url = first.url
        with open(path, "rb") as stream:
            stored_url = storage.get_item(Fingerprint().get_fingerprint(stream))
    finally:
        storage.close()
    assert stored_url == url
    assert url.startswith(server.endpoint)
    assert tus.offset(url) == 2 * CHUNK

    # A fresh client and uploader, knowing only the stored URL: HEAD, then the rest.
    second = TuspyClient(server.endpoint).uploader(
        file_path=str(path), chunk_size=CHUNK, url=stored_url
    )
    assert second.offset == 2 * CHUNK  # learnt from the server's HEAD
    second.upload()
    assert second.url == url
    assert second.offset == len(data)

    head = tus.head(url)
    assert decode_metadata(head.headers.get("Upload-Metadata")) == metadata
    assert_finished(tus, url, data)


class WrongChecksumUploader(Uploader):
    """tuspy with a broken sha1: every Upload-Checksum it sends is wrong."""

    CHECKSUM_ALGORITHM_PAIR = ("sha1", lambda chunk: hashlib.sha1(chunk + b"!"))


def test_tuspy_upload_checksum(server: Server, tus: TusClient, tmp_path: Path) -> None:
    """upload_checksum=True: sha1 per chunk is verified (460 when wrong), then accepted."""
    path, data = pattern_file(tmp_path, 12 * MiB + 99, seed=22)
    client = TuspyClient(server.endpoint)

    wrong = WrongChecksumUploader(
        file_path=str(path), client=client, chunk_size=CHUNK, upload_checksum=True
    )
    with pytest.raises(TusUploadFailed) as failure:
        wrong.upload_chunk()
    assert failure.value.status_code == 460, failure.value.response_content
    url = wrong.url
    assert tus.offset(url) == 0  # the rejected chunk left nothing behind

    right = client.uploader(file_path=str(path), chunk_size=CHUNK, url=url, upload_checksum=True)
    assert right.checksum_algorithm_name == "sha1"
    assert right.offset == 0
    right.upload()
    assert right.offset == len(data)
    assert_finished(tus, url, data)
