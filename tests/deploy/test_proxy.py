"""nginx in front of two replicas: the shipped deploy/nginx.conf, run for real.

conftest's start_server (``proxied-…`` backends, tests.support.Proxied) starts
Debian's nginx with deploy/nginx.conf itself (included from a
generated main config that only puts pid, logs and temp files under the test's
directory, and with two small include files of its own: the upstream servers
and the listen port, the parts that differ from docker-compose). Behind it run
two ``resumable serve`` instances (two gthread workers each, --trust-proxy)
sharing one redis-server and one data directory, as the compose replicas do.

nginx adds ``X-Upstream`` (the replica that answered) to every answer; the
tests use it to show that one upload's requests land on both replicas. The
last tests run the other deployment many hosts use: replicas with their own
small data dirs, sharing only Redis and an S3 bucket (moto).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from ..support import (
    NGINX_MISSING,
    OFFSET_STREAM,
    TUS,
    MiB,
    Proxied,
    Server,
    TusClient,
    checksum_header,
    data_file,
    download_sha256,
    encode_metadata,
    iter_chunks,
    nginx_executable,
    pattern_bytes,
    raw_request,
    s3_client,
    upload_id,
    wait_until,
)

ORIGIN = "https://app.example"
RETRIED = (423, 502, 503, 504)  # what tus-js-client retries after a HEAD (with 409)
UPLOAD_URL = re.compile(r"(?P<base>.+/files/)(?P<id>[0-9a-f]{32})")

# Every replica: what compose sets (trust the proxy), plus short lock times so
# a lock left by a SIGKILLed replica expires within the test's retries.
REPLICA_SETTINGS: dict[str, object] = {
    "trust_proxy": True,
    "cors_origins": ORIGIN,
    "lock_ttl": 2.0,
    "lock_wait": 1.0,
    "commit_bytes": MiB,
    "gc_interval": 0,
}


def start_cluster(start_server, backend: str = "proxied-redis") -> Proxied:
    """nginx in front of two replicas sharing Redis and one data dir (or, with
    ``proxied-redis-s3``, a bucket and data dirs of their own): conftest's start_server."""
    deployment = start_server(backend, **REPLICA_SETTINGS)
    assert isinstance(deployment, Proxied)
    return deployment


@pytest.fixture(scope="module")
def cluster(start_server) -> Proxied:
    return start_cluster(start_server)


@pytest.fixture
def tus(cluster: Proxied) -> TusClient:
    return TusClient(cluster.endpoint)


def only(response: requests.Response, name: str) -> str:
    """The value of a header the answer carries exactly once (not merged, not duplicated)."""
    values = response.raw.headers.getlist(name)
    assert len(values) == 1, f"{name}: {values!r} in {dict(response.headers)!r}"
    return values[0]


def temp_files(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file()]


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_nginx_is_installed() -> None:
    assert nginx_executable() is not None, NGINX_MISSING


def test_patches_of_one_upload_land_on_both_replicas(cluster: Proxied, tus: TusClient) -> None:
    data = pattern_bytes(6 * MiB, seed=1)
    url = tus.new_upload(len(data))
    offset = 0
    answered_by = []
    for chunk in iter_chunks(data, MiB):
        response = tus.patch(url, offset, chunk)
        assert response.status_code == 204, (response.status_code, response.text)
        offset = int(response.headers["Upload-Offset"])
        answered_by.append(only(response, "X-Upstream"))
    assert offset == len(data)
    # Round-robin, request by request, whatever the keep-alive connections.
    assert set(answered_by) == cluster.addresses, answered_by
    assert tus.offset(url) == len(data)

    download = tus.get(url)
    assert download.status_code == 200
    assert download.content == data
    assert data_file(cluster, url).read_bytes() == data


def holder_of(cluster: Proxied, upload_id: str) -> Server | None:
    """The replica one of whose workers has a file of the upload open: the one writing it
    (its data file on a shared disk, its spool files in the replica's own data dir on S3)."""
    for replica in cluster.replicas:
        prefixes = (str(replica.data_dir / "uploads" / upload_id),
                    str(replica.data_dir / "spool" / upload_id))
        for pid in replica.worker_pids():
            with contextlib.suppress(OSError):
                for name in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{name}").startswith(prefixes):
                            return replica
    return None


def recorded_offset(cluster: Proxied, url: str) -> int:
    """The upload's offset in the registry (Redis): what HEAD answers and a commit counts.

    The store's durable record is written just before it, so it may be ahead
    when a replica dies between the two; those bytes were never acknowledged.
    """
    assert cluster.redis_url is not None
    key = f"{cluster.redis_prefix}upload:{{{upload_id(url)}}}"
    value = redis.Redis.from_url(cluster.redis_url).hget(key, "offset")
    return 0 if value is None else int(value)


def resume(client: TusClient, url: str, data: bytes, delays: list[float]) -> list[tuple]:
    """What tus-js-client does after an error: HEAD for the offset, PATCH the rest.

    Retries connection errors and 423/502/503/504 after each of ``delays``;
    returns every attempt as (method, status, replica).
    """
    attempts: list[tuple] = []
    for delay in delays:
        time.sleep(delay)
        try:
            head = client.head(url)
        except requests.ConnectionError as error:
            attempts.append(("HEAD", repr(error), None))
            continue
        attempts.append(("HEAD", head.status_code, head.headers.get("X-Upstream")))
        if head.status_code in RETRIED:
            continue
        assert head.status_code == 200, (head.status_code, head.text, attempts)
        offset = int(head.headers["Upload-Offset"])
        if offset == len(data):
            return attempts
        try:
            patch = client.patch(url, offset, data[offset:])
        except requests.ConnectionError as error:
            attempts.append(("PATCH", repr(error), None))
            continue
        attempts.append(("PATCH", patch.status_code, patch.headers.get("X-Upstream")))
        if patch.status_code in RETRIED or patch.status_code == 409:
            continue
        assert patch.status_code == 204, (patch.status_code, patch.text, attempts)
        assert int(patch.headers["Upload-Offset"]) == len(data)
        return attempts
    raise AssertionError(f"the upload did not resume: {attempts}")


@pytest.mark.parametrize("shape", ["shared-disk", "s3"])
def test_replica_killed_mid_patch_and_the_client_resumes_through_the_proxy(
    start_server, shape: str
) -> None:
    """A host dies mid-PATCH after a commit: what it committed survives, and the
    client resumes on the other host. On a shared disk, and on S3 with data dirs
    of their own."""
    # Its own deployment: one replica will be dead afterwards.
    cluster = start_cluster(start_server, "proxied-redis-s3" if shape == "s3" else "proxied-redis")
    tus = TusClient(cluster.endpoint)
    data = pattern_bytes(24 * MiB, seed=2)
    url = tus.new_upload(len(data))

    sent_before_kill = 6 * MiB
    killed = threading.Event()
    outcome: dict[str, object] = {}

    def body() -> Iterator[bytes]:
        yield from iter_chunks(data[:sent_before_kill], 256 * 1024)
        killed.wait(20)
        yield from iter_chunks(data[sent_before_kill : sent_before_kill + 2 * MiB], 256 * 1024)

    def interrupted_patch() -> None:
        try:
            outcome["response"] = tus.patch(url, 0, body())
        except requests.RequestException as error:
            outcome["error"] = error

    thread = threading.Thread(target=interrupted_patch)
    thread.start()
    try:
        found: list[Server] = []

        def committed_while_writing() -> bool:
            holder = holder_of(cluster, upload_id(url))
            if holder is not None and recorded_offset(cluster, url) >= 4 * MiB:
                found.append(holder)
                return True
            return False

        # Killed after a periodic commit (--commit-bytes 1 MiB, every heartbeat):
        # those bytes must survive the kill.
        assert wait_until(committed_while_writing, 15), "no replica committed 4 MiB"
        victim = found[0]
        assert victim.process is not None
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait(10)
    finally:
        killed.set()
        thread.join(30)
    assert not thread.is_alive()
    if "response" in outcome:
        response = outcome["response"]
        assert isinstance(response, requests.Response)
        assert response.status_code == 502, (response.status_code, response.text)
        assert only(response, "X-Upstream") == cluster.address(victim)
    else:
        assert isinstance(outcome.get("error"), requests.ConnectionError), outcome

    survivor = next(replica for replica in cluster.replicas if replica is not victim)
    kept = TusClient(cluster.endpoint).head(url)
    assert kept.status_code in (200, 423), kept.status_code
    if kept.status_code == 200:
        assert 4 * MiB <= int(kept.headers["Upload-Offset"]) <= sent_before_kill
    attempts = resume(TusClient(cluster.endpoint), url, data, [0, 0.25, 0.5, 1, 1, 2, 2, 3])
    print(f"interrupted PATCH: {outcome}; after SIGKILL of {cluster.address(victim)}: {attempts}")
    assert attempts[-1][1] in (200, 204)
    answered = {replica for _method, status, replica in attempts if status in (200, 204)}
    assert answered == {cluster.address(survivor)}, attempts

    download = tus.get(url)
    assert download.status_code == 200
    assert only(download, "X-Upstream") == cluster.address(survivor)
    assert hashlib.sha256(download.content).digest() == hashlib.sha256(data).digest()
    if shape == "s3":
        assert cluster.stored_content(upload_id(url)) == data
    else:
        assert data_file(cluster, url).read_bytes() == data


def test_location_is_the_proxy_url_and_follows_the_host(cluster: Proxied, tus: TusClient) -> None:
    created = tus.create(10)
    assert created.status_code == 201, created.text
    location = only(created, "Location")
    assert UPLOAD_URL.fullmatch(location).group("base") == cluster.endpoint
    assert tus.head(location).status_code == 200  # and it works through the proxy

    for host, base in (
        ("uploads.example", "http://uploads.example/files/"),
        ("uploads.example:8443", "http://uploads.example:8443/files/"),
    ):
        created = tus.create(10, headers={"Host": host})
        assert created.status_code == 201, created.text
        assert UPLOAD_URL.fullmatch(only(created, "Location")).group("base") == base


def test_forged_forwarding_headers_do_not_reach_the_server(
    cluster: Proxied, tus: TusClient
) -> None:
    forged = {
        "Forwarded": "for=203.0.113.9;host=evil.example;proto=https",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": "444",
        "X-Forwarded-Prefix": "/evil",
        "X-Forwarded-For": "203.0.113.9",
    }
    created = tus.create(10, headers=forged)
    assert created.status_code == 201, created.text
    assert UPLOAD_URL.fullmatch(only(created, "Location")).group("base") == cluster.endpoint


def test_cors_through_the_proxy(cluster: Proxied, tus: TusClient) -> None:
    preflight = tus.session.options(
        cluster.endpoint,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "tus-resumable, upload-offset, content-type",
        },
        timeout=10,
    )
    assert preflight.status_code in (200, 204)
    assert only(preflight, "Access-Control-Allow-Origin") == ORIGIN
    assert only(preflight, "Access-Control-Allow-Credentials") == "true"
    assert "PATCH" in only(preflight, "Access-Control-Allow-Methods")
    allowed = {
        h.strip().lower() for h in only(preflight, "Access-Control-Allow-Headers").split(",")
    }
    assert {"tus-resumable", "upload-offset", "upload-length", "upload-metadata"} <= allowed

    created = tus.create(3, headers={"Origin": ORIGIN})
    assert created.status_code == 201
    assert only(created, "Access-Control-Allow-Origin") == ORIGIN
    exposed = {h.strip() for h in only(created, "Access-Control-Expose-Headers").split(",")}
    assert {"Location", "Upload-Offset", "Upload-Length"} <= exposed
    patched = tus.patch(only(created, "Location"), 0, b"abc", headers={"Origin": ORIGIN})
    assert patched.status_code == 204
    assert only(patched, "Access-Control-Allow-Origin") == ORIGIN

    stranger = tus.create(3, headers={"Origin": "https://evil.example"})
    assert stranger.status_code == 201
    assert "Access-Control-Allow-Origin" not in stranger.headers


def test_64_mib_patch_streams_through_without_spooling(cluster: Proxied, tus: TusClient) -> None:
    nginx = cluster.nginx
    assert nginx.client_body_temp.is_dir()  # nginx made it: the temp path is in use
    data = pattern_bytes(64 * MiB, seed=3)
    url = tus.new_upload(len(data))
    spooled: set[Path] = set()
    outcome: dict[str, requests.Response] = {}
    thread = threading.Thread(target=lambda: outcome.update(response=tus.patch(url, 0, data)))
    thread.start()
    while thread.is_alive():
        spooled.update(temp_files(nginx.client_body_temp))
        time.sleep(0.005)
    thread.join()
    response = outcome["response"]
    assert response.status_code == 204, (response.status_code, response.text)
    assert int(response.headers["Upload-Offset"]) == len(data)
    assert not spooled, f"nginx spooled the body to {spooled}"
    assert not temp_files(nginx.client_body_temp)
    assert "buffered to a temporary file" not in nginx.log()

    # And back: a 64 MiB download is streamed, not buffered to proxy_temp.
    digest = hashlib.sha256()
    with tus.get(url, stream=True) as download:
        assert download.status_code == 200
        for piece in download.iter_content(MiB):
            digest.update(piece)
            assert not temp_files(nginx.proxy_temp)
    assert digest.digest() == hashlib.sha256(data).digest()
    assert "buffered to a temporary file" not in nginx.log()


def test_chunked_patch_with_expect_continue(tus: TusClient) -> None:
    """tus-java-client: Transfer-Encoding: chunked, no Content-Length, Expect: 100-continue."""
    data = pattern_bytes(3 * MiB + 17, seed=4)
    url = tus.new_upload(len(data))
    response = tus.patch(url, 0, iter_chunks(data, 2 * MiB), headers={"Expect": "100-continue"})
    assert response.status_code == 204, (response.status_code, response.text)
    assert int(response.headers["Upload-Offset"]) == len(data)
    assert tus.get(url).content == data


def test_large_upload_metadata_passes_both_ways(tus: TusClient) -> None:
    metadata = encode_metadata(filename="big.bin", blob=pattern_bytes(11_000, seed=5))
    assert 14_000 < len(metadata) <= 16 * 1024  # over nginx's defaults, under the server's limit
    url = tus.new_upload(5, headers={"Upload-Metadata": metadata})
    head = tus.head(url)
    assert head.status_code == 200, head.text
    assert head.headers["Upload-Metadata"] == metadata


def test_large_upload_concat_passes_both_ways(tus: TusClient) -> None:
    parts = []
    for index in range(200):
        created = tus.create(1, headers={"Upload-Concat": "partial"}, data=bytes([index]))
        assert created.status_code == 201, created.text
        parts.append(created.headers["Location"])
    concat = "final;" + " ".join(parts)
    assert len(concat) > 12_000
    created = tus.create(headers={"Upload-Concat": concat})
    assert created.status_code == 201, (created.status_code, created.text)
    final = created.headers["Location"]
    head = tus.head(final)
    assert head.status_code == 200, head.text
    assert head.headers["Upload-Concat"] == concat
    assert head.headers["Upload-Offset"] == "200"
    assert tus.get(final).content == bytes(range(200))


def test_checksum_trailer_is_not_offered_through_the_proxy(
    cluster: Proxied, tus: TusClient
) -> None:
    """nginx does not forward request trailers, so behind a trusted proxy the
    server does not offer checksum-trailer; a client that sends one anyway is
    told why its digest cannot be checked (400 or 460), and nothing is kept."""
    offered = tus.options().headers.get("Tus-Extension", "")
    assert "checksum" in offered.split(",")
    assert "checksum-trailer" not in offered.split(",")
    url = tus.new_upload(11)
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_STREAM,
               "Transfer-Encoding": "chunked", "Trailer": "Upload-Checksum"}
    body = b"b\r\nhello world\r\n0\r\n" + (
        f"Upload-Checksum: {checksum_header('sha256', b'hello world')}\r\n\r\n".encode())
    reply = raw_request(cluster, "PATCH", url, headers, body, timeout=30)
    # nginx re-frames a body it has whole with Content-Length (400: a trailer
    # needs a chunked body), and drops the trailer of one it streams (460).
    assert (reply.status, b"never arrived" in reply.body or b"needs a chunked body" in reply.body
            ) in ((400, True), (460, True)), reply
    assert tus.offset(url) == 0


# --------------------------------------------------------------------------
# Two hosts with no shared disk: Redis and an S3 bucket
# --------------------------------------------------------------------------


def disk_use(directory: Path) -> int:
    """Bytes the files under ``directory`` take: their size or their blocks, the larger."""
    total = 0
    for path in temp_files(directory):
        with contextlib.suppress(OSError):
            stat = path.stat()
            total += max(stat.st_size, stat.st_blocks * 512)
    return total


def test_256_mib_alternating_hosts_on_s3_with_small_data_dirs(start_server) -> None:
    """Each PATCH lands on the other replica; neither keeps more than its spool."""
    deployment = start_cluster(start_server, "proxied-redis-s3")
    tus = TusClient(deployment.endpoint)
    size, patch_size = 256 * MiB, 32 * MiB
    data = pattern_bytes(size, seed=6)
    url = tus.new_upload(size)
    peaks = {replica.port: 0 for replica in deployment.replicas}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for replica in deployment.replicas:
                peaks[replica.port] = max(peaks[replica.port], disk_use(replica.data_dir))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    answered_by = []
    try:
        for offset in range(0, size, patch_size):
            response = tus.patch(url, offset, data[offset : offset + patch_size])
            assert response.status_code == 204, (response.status_code, response.text)
            assert int(response.headers["Upload-Offset"]) == offset + patch_size
            answered_by.append(only(response, "X-Upstream"))
    finally:
        done.set()
        sampler.join()
    print(f"256 MiB over {len(answered_by)} PATCHes, answered by {answered_by}; "
          f"peak data dir per replica: { {port: peak // MiB for port, peak in peaks.items()} } MiB")
    assert set(answered_by) == deployment.addresses, answered_by
    assert all(a != b for a, b in itertools.pairwise(answered_by)), answered_by
    assert max(peaks.values()) < 64 * MiB, peaks

    expected = hashlib.sha256(data).hexdigest()
    assert download_sha256(tus, url) == (expected, len(data))
    settings = deployment.settings
    stored = s3_client(str(settings["s3_endpoint"])).get_object(
        Bucket=settings["s3_bucket"], Key=f"{settings['s3_prefix']}{upload_id(url)}"
    )
    digest = hashlib.sha256()
    for piece in stored["Body"].iter_chunks(MiB):
        digest.update(piece)
    assert digest.hexdigest() == expected
    assert deployment.stored_names(upload_id(url)) == [upload_id(url), upload_id(url) + ".info"]
