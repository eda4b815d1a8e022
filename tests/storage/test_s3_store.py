"""Uploads kept in S3 (moto's server mode): what only the S3 store has.

The protocol and extension tables run on S3 too (tests/protocol/test_protocol.py,
tests/extensions/test_extensions.py, backend ``redis-s3``); here: the finished object
in the bucket, parts and tail pieces continued by another host, joins copied
inside S3, a bounded spool, the endpoint going away mid-upload, Redis
flushed, gc of what no record names, and a bucket that is not there; and,
through a proxy that injects faults into S3's answers, a slow S3 (the lock
is kept), throttling and 5xx (retried, then 503), S3 gone mid-PATCH, and a
client that drops mid-body.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from resumable.protocol import new_upload_id
from resumable.records import UploadRecord
from resumable.s3store import S3Store
from resumable.worker import S3_MALLOC_ARENAS

from ..support import (
    OFFSET_STREAM,
    TUS,
    FaultyS3,
    MotoS3,
    RawPatch,
    RedisServer,
    Server,
    SizedBody,
    TusClient,
    assert_no_traceback,
    b64,
    b64_digest,
    iter_chunks,
    pattern_bytes,
    raw_request,
    s3_client,
    upload_id,
    wait_until,
)

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def bucket_settings(s3: MotoS3) -> dict[str, object]:
    return s3.settings()


@pytest.fixture(scope="module")
def hosts(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,
    bucket_settings: dict[str, object],
) -> Iterator[list[Server]]:
    """Two servers with data directories of their own, sharing the bucket and Redis."""
    started = []
    prefix = f"s3hosts{os.getpid()}:"
    for name in ("a", "b"):
        server = Server(
            tmp_path_factory.mktemp(f"host-{name}") / "data", redis_url=redis_server.url,
            workers=2, redis_prefix=prefix, **bucket_settings,
        )
        started.append(server.start())
    yield started
    for server in started:
        server.stop()


def object_sha256(server: Server, upload_id: str) -> tuple[str, str]:
    """sha256 and Content-Type of the upload's object, read through boto3."""
    client = s3_client(str(server.settings["s3_endpoint"]))
    key = f"{server.settings['s3_prefix']}{upload_id}"
    answer = client.get_object(Bucket=server.settings["s3_bucket"], Key=key)
    digest = hashlib.sha256()
    for chunk in iter(lambda: answer["Body"].read(MiB), b""):
        digest.update(chunk)
    return digest.hexdigest(), answer["ContentType"]


def spool_bytes(server: Server) -> int:
    """Bytes in the server's spool files now (a file may go while it is counted)."""
    folder = Path(server.data_dir, "spool")
    total = 0
    for entry in os.scandir(folder) if folder.is_dir() else ():
        try:
            total += entry.stat().st_size
        except FileNotFoundError:
            pass
    return total


def test_patches_alternating_between_hosts_make_one_object(hosts: list[Server]) -> None:
    """24 MiB + 5 bytes in PATCHes of 3 MiB that alternate between two hosts: each
    continues the other's parts and tail pieces; the object in the bucket is
    byte-exact, typed from the metadata, and no spool file is left."""
    data = pattern_bytes(24 * MiB + 5, seed=11)
    first = TusClient(hosts[0].endpoint)
    url = first.new_upload(len(data), headers={"Upload-Metadata": "filetype aW1hZ2UvcG5n"})
    uid = upload_id(url)
    offset = 0
    for index, start in enumerate(range(0, len(data), 3 * MiB)):
        tus = TusClient(hosts[index % 2].endpoint)
        piece = data[start : start + 3 * MiB]
        response = tus.patch(url, offset, piece)
        assert response.status_code == 204, (index, response.status_code, response.text)
        offset += len(piece)
        assert TusClient(hosts[(index + 1) % 2].endpoint).offset(url) == offset
    assert offset == len(data)
    digest, content_type = object_sha256(hosts[0], uid)
    assert digest == hashlib.sha256(data).hexdigest()
    assert content_type == "image/png"
    assert TusClient(hosts[1].endpoint).get(url).content == data
    names = hosts[0].stored_names(uid)
    assert names == [uid, f"{uid}.info"], names
    assert spool_bytes(hosts[0]) == spool_bytes(hosts[1]) == 0


@pytest.mark.parametrize("matches", [True, False])
def test_a_draft_repr_digest_is_checked_against_the_assembled_object(
    hosts: list[Server], matches: bool
) -> None:
    """An IETF draft upload of several parts, sent to two hosts: its Repr-Digest is
    checked on the object once assembled; a mismatch leaves nothing in the bucket."""
    data = pattern_bytes(12 * MiB + 3, seed=12)
    meant = data if matches else data[:-1] + b"?"
    value = b64_digest("sha256", meant)
    draft = {"Upload-Draft-Interop-Version": "9"}
    # Careful creation (no body, so no interim 104, which Python's client cannot read).
    created = requests.post(hosts[0].endpoint, timeout=60, headers={
        **draft, "Upload-Complete": "?0", "Upload-Length": str(len(data)),
        "Repr-Digest": f"sha-256=:{value}:"})
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    uid = upload_id(url)
    append = {**draft, "Content-Type": "application/partial-upload"}
    first = requests.patch(url, data=data[: 7 * MiB], timeout=60, headers={
        **append, "Upload-Complete": "?0", "Upload-Offset": "0"})
    assert first.status_code == 204, first.text
    other = url.replace(hosts[0].endpoint, hosts[1].endpoint)
    assert other != url
    done = requests.patch(other, data=data[7 * MiB :], timeout=60, headers={
        **append, "Upload-Complete": "?1", "Upload-Offset": str(7 * MiB)})
    if matches:
        assert done.status_code == 204, done.text
        assert done.headers["Repr-Digest"] == f"sha-256=:{value}:"
        assert object_sha256(hosts[1], uid)[0] == hashlib.sha256(data).hexdigest()
    else:
        assert done.status_code == 400, done.text
        assert requests.head(url, headers=draft, timeout=10).status_code == 404
        assert wait_until(lambda: hosts[0].stored_names(uid) == [], 10)


def test_one_long_patch_keeps_the_spool_bounded(hosts: list[Server]) -> None:
    """64 MiB in one PATCH: the spool holds a few parts at most, never the upload."""
    data = pattern_bytes(64 * MiB, seed=12)
    tus = TusClient(hosts[0].endpoint)
    url = tus.new_upload(len(data))
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], spool_bytes(hosts[0]))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        response = tus.patch(url, 0, SizedBody(iter_chunks(data, MiB), len(data)))
    finally:
        done.set()
        watcher.join()
    assert response.status_code == 204, response.text
    assert object_sha256(hosts[0], upload_id(url))[0] == hashlib.sha256(data).hexdigest()
    print(f"\npeak spool {peak[0] / MiB:.1f} MiB for a 64 MiB PATCH")
    assert 0 < peak[0] <= 4 * 8 * MiB, peak[0]


def test_a_join_copies_long_parts_inside_s3(hosts: list[Server]) -> None:
    """A final of a 6 MiB part (copied with UploadPartCopy), a 3-byte part and a
    7 MiB one (a short stretch first, so it passes the spool): byte-exact."""
    tus = TusClient(hosts[0].endpoint)
    contents = [pattern_bytes(6 * MiB, seed=1), b"abc", pattern_bytes(7 * MiB + 1, seed=2)]
    parts = []
    for content in contents:
        url = tus.new_upload(len(content), headers={"Upload-Concat": "partial"})
        assert tus.patch(url, 0, content).status_code == 204
        parts.append(url)
    created = tus.create(headers={"Upload-Concat": "final;" + " ".join(parts)})
    assert created.status_code == 201, created.text
    final = created.headers["Location"]
    joined = b"".join(contents)
    assert tus.head(final).headers["Upload-Offset"] == str(len(joined))
    assert object_sha256(hosts[0], upload_id(final))[0] == hashlib.sha256(joined).hexdigest()
    ranged = tus.get(final, headers={"Range": f"bytes={6 * MiB}-{6 * MiB + 9}"})
    assert ranged.status_code == 206 and ranged.content == joined[6 * MiB : 6 * MiB + 10]


def test_redis_flushed_records_come_back_from_the_bucket(
    hosts: list[Server], redis_server: RedisServer
) -> None:
    """Redis loses everything mid-upload: the offset is rebuilt from the info object."""
    data = pattern_bytes(10 * MiB + 7, seed=13)
    tus = TusClient(hosts[0].endpoint)
    url = tus.new_upload(len(data))
    assert tus.patch(url, 0, data[: 9 * MiB]).status_code == 204
    redis.Redis.from_url(redis_server.url).flushall()
    assert tus.offset(url) == 9 * MiB
    assert tus.patch(url, 9 * MiB, data[9 * MiB :]).status_code == 204
    assert tus.get(url).content == data


def test_the_endpoint_gone_mid_upload_answers_503_then_the_client_resumes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """S3 stops between two PATCHes: the PATCH answers 503 with Retry-After and
    nothing acknowledged is lost; once S3 is back the upload continues."""
    moto = MotoS3().start()
    server = Server(tmp_path / "data", redis_url=redis_server.url, workers=1, **moto.settings())
    server.start()
    try:
        data = pattern_bytes(6 * MiB, seed=14)
        tus = TusClient(server.endpoint)
        url = tus.new_upload(len(data))
        assert tus.patch(url, 0, data[: 2 * MiB]).status_code == 204
        moto.stop()
        refused = tus.patch(url, 2 * MiB, data[2 * MiB : 4 * MiB])
        assert refused.status_code == 503, refused.text
        assert refused.headers.get("Retry-After")
        moto.start()
        offset = tus.offset(url)
        assert offset == 2 * MiB, offset
        assert tus.patch(url, offset, data[offset:]).status_code == 204
        assert tus.get(url).content == data
        assert_no_traceback(server)
    finally:
        server.stop()
        moto.stop()


def test_gc_removes_what_no_record_names(s3: MotoS3, tmp_path: Path) -> None:
    """A crashed worker's multipart upload, a tail piece no state names and an
    upload whose info went: gc removes them, and leaves the live upload."""
    bucket = s3.new_bucket()
    store = S3Store(bucket, tmp_path, prefix="p/", endpoint=s3.endpoint, region="us-east-1")
    client = s3_client(s3.endpoint)
    live = UploadRecord(id=new_upload_id(), length=20 * MiB)
    writer = store.create(live.id)
    writer.write(memoryview(pattern_bytes(9 * MiB, seed=3)))
    live.offset = 9 * MiB
    writer.settle(live)
    writer.close()
    store.write_record(live)
    orphan = new_upload_id()
    client.create_multipart_upload(Bucket=bucket, Key=f"p/{orphan}")
    client.put_object(Bucket=bucket, Key=f"p/{live.id}.tail.00000099", Body=b"stale")
    client.put_object(Bucket=bucket, Key=f"p/{orphan}", Body=b"left by a crashed delete")
    # Younger than the grace: kept; but moto reports every multipart upload as
    # initiated in 2010, so the orphan one goes at once (the live one is named).
    assert store.remove_leftovers(time.time() - 3600) == 1
    assert [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [
        f"p/{live.id}"]
    removed = store.remove_leftovers(time.time() + 1)
    assert removed == 2, removed
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == sorted([f"p/{live.id}.info", f"p/{live.id}.tail.00000000"]), keys
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [f"p/{live.id}"]


def test_a_missing_bucket_stops_serve_with_the_reason(s3: MotoS3, tmp_path: Path) -> None:
    result = serve_once("--data-dir", str(tmp_path), "--s3-bucket", "no-such-bucket",
                        "--s3-endpoint", s3.endpoint)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert "bucket 'no-such-bucket' does not exist" in result.stderr


def serve_once(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``resumable serve`` that is expected to stop at start."""
    return subprocess.run([sys.executable, "-m", "resumable", "serve", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_refused_or_missing_credentials_stop_serve_with_the_reason(
    s3: MotoS3, tmp_path: Path, faulty: FaultyS3
) -> None:
    """The bucket answers 403 (keys it does not know), or boto3 finds no
    credentials at all: serve stops at start and says which, no traceback."""
    bucket = s3.new_bucket()
    faulty.clear()
    faulty.refuse("HEAD", "", 100, 403, "InvalidAccessKeyId")
    try:
        refused = serve_once("--data-dir", str(tmp_path / "a"), "--s3-bucket", bucket,
                             "--s3-endpoint", faulty.endpoint)
    finally:
        faulty.clear()
    assert refused.returncode == 2, (refused.returncode, refused.stderr)
    assert f"bucket '{bucket}' is not ours to use (check the credentials)" in refused.stderr
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env["HOME"] = str(tmp_path)  # no ~/.aws either
    anonymous = serve_once("--data-dir", str(tmp_path / "b"), "--s3-bucket", bucket,
                           "--s3-endpoint", s3.endpoint, "--s3-region", "us-east-1", env=env)
    assert anonymous.returncode == 2, (anonymous.returncode, anonymous.stderr)
    assert "Unable to locate credentials" in anonymous.stderr, anonymous.stderr
    for result in (refused, anonymous):
        assert "Traceback" not in result.stderr


def test_a_checksummed_trailer_is_verified_from_the_spool(hosts: list[Server]) -> None:
    """checksum-trailer on S3: the body (larger than a part) stays in the spool
    until the trailer's digest is checked; a mismatch keeps nothing."""
    data = pattern_bytes(9 * MiB + 3, seed=15)
    tus = TusClient(hosts[0].endpoint)

    def patch_with_trailer(url: str, digest: bytes) -> int:
        headers = {**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_STREAM,
                   "Transfer-Encoding": "chunked", "Trailer": "Upload-Checksum"}
        chunks = [b"%x\r\n" % len(chunk) + chunk + b"\r\n" for chunk in iter_chunks(data, MiB)]
        trailer = f"0\r\nUpload-Checksum: sha256 {b64(digest)}\r\n\r\n".encode()
        return raw_request(hosts[0], "PATCH", url, headers, [*chunks, trailer], timeout=60).status

    bad = tus.new_upload(len(data))
    assert patch_with_trailer(bad, hashlib.sha256(b"other").digest()) == 460
    assert tus.offset(bad) == 0
    good = tus.new_upload(len(data))
    assert patch_with_trailer(good, hashlib.sha256(data).digest()) == 204
    assert tus.get(good).content == data
    assert spool_bytes(hosts[0]) == 0


# --------------------------------------------------------------------------
# S3 slow, throttling, failing and gone mid-PATCH; clients that drop
# --------------------------------------------------------------------------

#: Short lock times, so a store that outlasts them would lose the upload's lock.
FAULT_SETTINGS: dict[str, object] = {"lock_ttl": 2.0, "lock_wait": 1.0, "heartbeat": 0.5}
#: CompleteMultipartUpload (POST ?uploadId=…) and UploadPart (PUT ?partNumber=…&uploadId=…).
COMPLETE = ("POST", "uploadId")
UPLOAD_PART = ("PUT", "partNumber&uploadId")


@pytest.fixture(scope="module")
def faulty(s3: MotoS3) -> Iterator[FaultyS3]:
    proxy = FaultyS3(s3.endpoint).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def faulty_server(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, s3: MotoS3,
    faulty: FaultyS3,
) -> Iterator[Server]:
    """One server that reaches the bucket through the faulty proxy."""
    settings = {**s3.settings(), "s3_endpoint": faulty.endpoint, **FAULT_SETTINGS}
    server = Server(tmp_path_factory.mktemp("faulty") / "data", redis_url=redis_server.url,
                    workers=2, **settings)
    yield server.start()
    server.stop()


@pytest.fixture
def proxy(faulty: FaultyS3) -> Iterator[FaultyS3]:
    faulty.clear()
    yield faulty
    faulty.clear()


def assert_stored(server: Server, url: str, data: bytes) -> None:
    """Byte-exact by GET and as the object in the bucket; no traceback in the log."""
    assert TusClient(server.endpoint).get(url).content == data
    assert server.stored_content(upload_id(url)) == data
    assert_no_traceback(server)


def test_a_slow_s3_does_not_cost_the_lock(faulty_server: Server, proxy: FaultyS3) -> None:
    """Parts and the completion each take longer than a lock outlives its last
    renewal (2 s): the writer renews while it waits, so the PATCH still ends 204."""
    proxy.slow(*UPLOAD_PART, 2.5)
    proxy.slow(*COMPLETE, 5.0)
    data = pattern_bytes(12 * MiB + 1, seed=16)
    tus = TusClient(faulty_server.endpoint)
    url = tus.new_upload(len(data))
    started = time.monotonic()
    response = tus.patch(url, 0, data)
    took = time.monotonic() - started
    assert response.status_code == 204, (response.status_code, response.text)
    assert took > 7.5, took  # the delays really happened
    proxy.clear()
    assert_stored(faulty_server, url, data)


def test_throttling_is_retried_then_refused_and_nothing_acknowledged_is_lost(
    faulty_server: Server, proxy: FaultyS3
) -> None:
    """503 SlowDown for two UploadParts: boto3 retries and the PATCH succeeds.
    For more answers than it retries: the PATCH answers 503 with Retry-After,
    the offset stays at what was acknowledged, and the client resumes."""
    data = pattern_bytes(20 * MiB, seed=17)
    tus = TusClient(faulty_server.endpoint)
    url = tus.new_upload(len(data))
    proxy.throttle(*UPLOAD_PART, 2)
    assert tus.patch(url, 0, data[: 8 * MiB]).status_code == 204
    assert not proxy.throttled[0][2]  # both throttled answers were given
    proxy.throttle(*UPLOAD_PART, 1000)
    refused = tus.patch(url, 8 * MiB, data[8 * MiB : 18 * MiB])
    assert refused.status_code == 503, (refused.status_code, refused.text)
    assert refused.headers.get("Retry-After")
    proxy.clear()
    offset = tus.offset(url)
    assert offset == 8 * MiB, offset
    assert tus.patch(url, offset, data[offset:]).status_code == 204
    assert_stored(faulty_server, url, data)


def test_s3_gone_mid_patch_answers_503_then_the_client_resumes(
    faulty_server: Server, proxy: FaultyS3
) -> None:
    """S3 goes away while a PATCH streams (after one of its parts was sent): the
    PATCH answers 503, the acknowledged bytes stay, the upload resumes when it is back."""
    data = pattern_bytes(24 * MiB, seed=18)
    tus = TusClient(faulty_server.endpoint)
    url = tus.new_upload(len(data))
    assert tus.patch(url, 0, data[: 3 * MiB]).status_code == 204

    def body() -> Iterator[bytes]:
        yield from iter_chunks(data[3 * MiB : 14 * MiB], MiB)  # a part and more
        time.sleep(0.5)
        proxy.down = True
        yield from iter_chunks(data[14 * MiB :], MiB)

    refused = tus.patch(url, 3 * MiB, SizedBody(body(), len(data) - 3 * MiB))
    assert refused.status_code == 503, (refused.status_code, refused.text)
    proxy.clear()
    offset = tus.offset(url)
    assert 3 * MiB <= offset < len(data), offset
    assert tus.patch(url, offset, data[offset:]).status_code == 204
    assert_stored(faulty_server, url, data)


def test_a_client_that_drops_mid_body_keeps_what_arrived(faulty_server: Server) -> None:
    """The connection closes after 7 MiB of a declared 12 MiB: a part and a tail
    piece keep those bytes, and the client continues from the offset HEAD gives."""
    data = pattern_bytes(12 * MiB, seed=19)
    tus = TusClient(faulty_server.endpoint)
    url = tus.new_upload(len(data))
    sent = 7 * MiB
    raw = RawPatch(faulty_server, url, 0, len(data)).begin(data[:sent])
    time.sleep(0.5)
    raw.close()
    assert wait_until(lambda: tus.offset(url) == sent, 15), tus.offset(url)
    assert tus.patch(url, sent, data[sent:]).status_code == 204
    assert_stored(faulty_server, url, data)


ARENA_PROBE = """
import ctypes, ctypes.util, sys, tempfile, threading
from resumable.worker import S3_MALLOC_ARENAS, limit_malloc_arenas
print(limit_malloc_arenas(S3_MALLOC_ARENAS) if sys.argv[1] == "limit" else None)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p

def churn():  # ctypes lets the GIL go: sixteen threads really meet in malloc
    for _ in range(3000):
        libc.free(libc.malloc(1 << 16))

threads = [threading.Thread(target=churn) for _ in range(16)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
path = tempfile.mktemp()
report = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(report))
libc.fclose(ctypes.c_void_p(report))
print(open(path).read().count("<heap nr="))
"""


@pytest.mark.parametrize("how", ["limit", "operator"])
def test_a_worker_storing_to_s3_keeps_one_malloc_arena(how: str) -> None:
    """What keeps an S3 worker's RSS flat: glibc's arenas capped (at one) for the
    threads to come (sixteen contending threads made nine here without), unless
    the operator set MALLOC_ARENA_MAX, which then wins."""
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    if how == "operator":
        env["MALLOC_ARENA_MAX"] = "4"
    result = subprocess.run([sys.executable, "-c", ARENA_PROBE, "limit"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    capped, heaps = result.stdout.split()
    if how == "limit":
        assert (capped, int(heaps)) == ("True", S3_MALLOC_ARENAS)
    else:
        assert capped == "False" and int(heaps) <= 4, (capped, heaps)


def test_a_commit_writes_the_info_object_once(faulty_server: Server, proxy: FaultyS3) -> None:
    """The settle stores the record with the state; the registry's commit that
    follows finds it stored and does not PUT it again."""
    tus = TusClient(faulty_server.endpoint)
    url = tus.new_upload(10 * MiB)
    uid = upload_id(url)
    proxy.seen.clear()
    assert tus.patch(url, 0, pattern_bytes(3 * MiB, seed=20)).status_code == 204
    info_puts = [seen for seen in proxy.seen
                 if seen[0] == "PUT" and seen[1].endswith(f"{uid}.info")]
    assert len(info_puts) == 1, proxy.seen


def test_readyz_follows_the_bucket(faulty: FaultyS3, faulty_server: Server) -> None:
    """/readyz asks the bucket once with a short deadline: 503 soon after S3 goes away
    (the uploads' client would retry for seconds), 200 once it is back."""
    def ready() -> int:
        return requests.get(faulty_server.url + "/readyz", timeout=10).status_code

    assert ready() == 200
    faulty.down = True
    try:
        started = time.monotonic()
        assert ready() == 503
        assert time.monotonic() - started < 5
    finally:
        faulty.down = False
    assert wait_until(lambda: ready() == 200, 10)
