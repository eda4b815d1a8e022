"""End-to-end faults against real processes: gunicorn workers, Redis, raw sockets.

Each test injects one fault a real tus client or a real deployment produces
(a race of two PATCHes on two workers, a client gone silent, a client gone,
a worker SIGKILLed, a HEAD during a long PATCH) and checks what the server
then reports and stores, byte for byte. Run with ``-s`` to see what each test
injected and measured. Every test runs on both registry backends.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from resumable.filestore import read_sidecar_file

from ..support import (
    OFFSET_STREAM,
    TUS,
    MiB,
    Pattern,
    RawPatch,
    Server,
    SizedBody,
    TusClient,
    connection_owner,
    data_file,
    download_sha256,
    sidecar_file,
)
from ..support.http import connect

# --------------------------------------------------------------------------
# Sending a pattern, checking what came back
# --------------------------------------------------------------------------


def hashed(pieces: Iterator[bytes], digest) -> Iterator[bytes]:
    """Pass pieces through, feeding the digest as they go out."""
    for piece in pieces:
        digest.update(piece)
        yield piece


def patch_rest(tus: TusClient, url: str, pattern: Pattern, offset: int, length: int):
    """PATCH ``[offset, length)`` of the pattern, streamed with Content-Length."""
    body = SizedBody(pattern.pieces(offset, length), length - offset)
    return tus.patch(url, offset, body)


def assert_exact(tus: TusClient, url: str, pattern: Pattern, length: int) -> None:
    got, size = download_sha256(tus, url)
    assert size == length, f"GET returned {size} bytes, expected {length}"
    assert got == pattern.sha256(length), "stored bytes differ from the bytes sent"


def started_patch(
    server: Server, url: str, total: int, pattern: Pattern, sent: int
) -> RawPatch:
    """A PATCH declaring ``total`` bytes, its headers and first ``sent`` bytes on the wire."""
    return RawPatch(server, url, 0, total).begin(*pattern.pieces(0, sent))


# --------------------------------------------------------------------------
# Which gunicorn worker holds a connection (/proc/net/tcp + /proc/<pid>/fd)
# --------------------------------------------------------------------------


def connections_on_two_workers(server: Server, attempts: int = 40):
    """Two open connections accepted by two different worker processes."""
    first = connect(server)
    first_pid = connection_owner(server, first)
    assert first_pid is not None, "no worker accepted the connection"
    spare: list[socket.socket] = []
    try:
        for _ in range(attempts):
            other = connect(server)
            pid = connection_owner(server, other)
            if pid is not None and pid != first_pid:
                return (first, first_pid), (other, pid)
            spare.append(other)
    finally:
        for sock in spare:
            sock.close()
    first.close()
    pytest.fail(f"{attempts} connections all landed on worker {first_pid}")


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


COMMIT_SECONDS = 1.0
COMMIT_BYTES = 8 * MiB


@pytest.fixture(scope="module")
def fault_server(backend: str, start_server) -> Server:
    return start_server(
        backend, workers=2, commit_seconds=COMMIT_SECONDS, commit_bytes=COMMIT_BYTES
    )


@pytest.fixture
def client(fault_server: Server) -> TusClient:
    return TusClient(fault_server.endpoint)


def fresh(server: Server) -> TusClient:
    """A client with its own new connection."""
    return TusClient(server.endpoint)


# --------------------------------------------------------------------------
# 1. 256 MiB in three PATCHes (Content-Length, chunked, Content-Length), GET back
# --------------------------------------------------------------------------


def test_256_mib_three_patches_round_trip(
    backend: str, fault_server: Server, client: TusClient
) -> None:
    total = 256 * MiB
    cuts = [0, 96 * MiB, 176 * MiB, total]
    pattern = Pattern(total, seed=1)
    url = client.new_upload(total)
    sent_digest = hashlib.sha256()
    started = time.monotonic()

    first = SizedBody(hashed(pattern.pieces(cuts[0], cuts[1]), sent_digest), cuts[1] - cuts[0])
    response = client.patch(url, cuts[0], first)
    assert response.request.headers.get("Content-Length") == str(cuts[1] - cuts[0])
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(cuts[1])

    chunked = hashed(pattern.pieces(cuts[1], cuts[2]), sent_digest)  # a generator: chunked
    response = client.patch(url, cuts[1], chunked)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(cuts[2])

    last = SizedBody(hashed(pattern.pieces(cuts[2], cuts[3]), sent_digest), cuts[3] - cuts[2])
    response = client.patch(url, cuts[2], last)
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(total)
    upload_seconds = time.monotonic() - started

    head = client.head(url)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == str(total)
    assert head.headers["Upload-Length"] == str(total)

    started = time.monotonic()
    got, size = download_sha256(fresh(fault_server), url)
    download_seconds = time.monotonic() - started
    print(
        f"\n[{backend}] 256 MiB via PATCH CL {cuts[1] // MiB} MiB + chunked "
        f"{(cuts[2] - cuts[1]) // MiB} MiB + CL {(cuts[3] - cuts[2]) // MiB} MiB "
        f"in {upload_seconds:.2f} s ({total / MiB / upload_seconds:.0f} MiB/s); "
        f"GET {size} bytes in {download_seconds:.2f} s; sha256 {got[:16]}... "
        f"sent {sent_digest.hexdigest()[:16]}..."
    )
    assert size == total
    assert got == sent_digest.hexdigest()
    assert client.delete(url).status_code == 204  # give the disk back


# --------------------------------------------------------------------------
# 2. Two PATCHes at the same offset, same moment, two workers
# --------------------------------------------------------------------------


RACE_ROUNDS = 10
RACE_SIZE = 4 * MiB
RACE_PIECE = 256 * 1024
RACE_PAUSE = 0.03


def _race_feed(raw: RawPatch, pattern: Pattern, barrier: threading.Barrier, delay: float) -> None:
    barrier.wait()
    try:
        raw.send_headers()
    except OSError as error:
        raw.send_error = error
        return
    time.sleep(delay)
    for piece in pattern.pieces(0, RACE_SIZE, RACE_PIECE):
        if raw.answered.is_set() or not raw.send(piece):
            return
        time.sleep(RACE_PAUSE)


def test_same_offset_race_on_two_workers(
    backend: str, fault_server: Server, client: TusClient
) -> None:
    print(
        f"\n[{backend}] race: {RACE_ROUNDS} rounds, two PATCHes at offset 0 of "
        f"{RACE_SIZE // MiB} MiB each ({RACE_PIECE // 1024} KiB every {RACE_PAUSE * 1000:.0f} ms)"
        ", two connections on two workers"
    )
    outcomes: dict[tuple[int, ...], int] = {}
    for round_no in range(RACE_ROUNDS):
        url = client.new_upload(RACE_SIZE)
        patterns = [Pattern(RACE_SIZE, seed=100 + 2 * round_no),
                    Pattern(RACE_SIZE, seed=101 + 2 * round_no)]
        (sock_a, pid_a), (sock_b, pid_b) = connections_on_two_workers(fault_server)
        assert pid_a != pid_b
        raws = [RawPatch(fault_server, url, 0, RACE_SIZE, sock=sock) for sock in (sock_a, sock_b)]
        # Even rounds: bodies flow at once (the holder has bytes when told to go).
        # Odd rounds: bodies start late (the holder has none; the other may win).
        delay = 0.0 if round_no % 2 == 0 else 0.4
        barrier = threading.Barrier(2)
        feeders = [
            threading.Thread(target=_race_feed, args=(raw, pattern, barrier, delay))
            for raw, pattern in zip(raws, patterns, strict=True)
        ]
        for feeder in feeders:
            feeder.start()
        responses = [raw.response(timeout=20) for raw in raws]
        for feeder in feeders:
            feeder.join(20)
        for raw in raws:
            raw.close()

        head_offset = client.offset(url)
        statuses = tuple(None if r is None else r.status for r in responses)
        offsets = [None if r is None else r.offset for r in responses]
        acknowledged = max((o for o in offsets if o is not None), default=0)
        writers = [
            i
            for i, r in enumerate(responses)
            if r is not None
            and (
                r.status == 204 or (r.status == 423 and head_offset > 0 and r.offset == head_offset)
            )
        ]
        kept = writers[0] if len(writers) == 1 else 0
        print(
            f"  round {round_no}: workers {pid_a}/{pid_b} body delay {delay:.1f} s: "
            f"A {statuses[0]} offset {offsets[0]} (sent {raws[0].sent}), "
            f"B {statuses[1]} offset {offsets[1]} (sent {raws[1].sent}); "
            f"HEAD {head_offset}; kept {'AB'[kept] if writers else '-'}"
        )
        outcomes[tuple(sorted(s or 0 for s in statuses))] = (
            outcomes.get(tuple(sorted(s or 0 for s in statuses)), 0) + 1
        )

        assert all(s in (204, 409, 423) for s in statuses), statuses
        assert statuses.count(204) <= 1, "both PATCHes were accepted for the same bytes"
        assert head_offset == acknowledged, (head_offset, offsets)
        if head_offset > 0:
            assert len(writers) == 1, (statuses, offsets, head_offset)
        source = patterns[kept]
        with open(data_file(fault_server, url), "rb") as stored:
            prefix = stored.read(head_offset)
        assert prefix == source.bytes(0, head_offset), "stored prefix mixes the two bodies"
        if head_offset < RACE_SIZE:
            response = patch_rest(fresh(fault_server), url, source, head_offset, RACE_SIZE)
            assert response.status_code == 204, response.text
        assert_exact(client, url, source, RACE_SIZE)
    print(f"  outcomes (sorted status pairs): {outcomes}")


# --------------------------------------------------------------------------
# 3. A silent client holds the lock: HEAD answers fast, a PATCH takes over
# --------------------------------------------------------------------------


def test_silent_holder_released_by_head_and_patch(
    backend: str, fault_server: Server, client: TusClient
) -> None:
    total = 16 * MiB
    half = total // 2
    pattern = Pattern(total, seed=3)
    url = client.new_upload(total)
    stuck = started_patch(fault_server, url, total, pattern, half)
    time.sleep(0.5)  # loopback: the server has read the half by now

    started = time.monotonic()
    head = fresh(fault_server).head(url)
    head_latency = time.monotonic() - started
    assert head.status_code == 200
    head_offset = int(head.headers["Upload-Offset"])

    started = time.monotonic()
    response = patch_rest(fresh(fault_server), url, pattern, head_offset, total)
    patch_seconds = time.monotonic() - started
    holder_answer = stuck.response(timeout=5)
    stuck.close()
    print(
        f"\n[{backend}] silent holder: sent headers (Content-Length {total}) + {half} bytes, "
        f"then silence; HEAD latency {head_latency * 1000:.0f} ms -> offset {head_offset}; "
        f"PATCH from it -> {response.status_code} in {patch_seconds:.2f} s; "
        f"silent client got {holder_answer and holder_answer.status} "
        f"offset {holder_answer and holder_answer.offset}"
    )
    assert head_latency < 2.0
    assert head_offset == half
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(total)
    assert holder_answer is not None and holder_answer.status == 423
    assert holder_answer.offset == half
    assert_exact(client, url, pattern, total)


# --------------------------------------------------------------------------
# 4. A client disconnects 20 MiB into a 64 MiB body
# --------------------------------------------------------------------------


def test_disconnect_mid_body_keeps_received_bytes(
    backend: str, fault_server: Server, client: TusClient
) -> None:
    total = 64 * MiB
    cut = 20 * MiB
    pattern = Pattern(total, seed=4)
    url = client.new_upload(total)
    raw = started_patch(fault_server, url, total, pattern, cut)
    raw.close()
    closed_at = time.monotonic()

    seen = []
    deadline = closed_at + 5.0
    offset = -1
    while time.monotonic() < deadline:
        offset = client.offset(url)
        seen.append(offset)
        if offset == cut:
            break
        time.sleep(0.05)
    settled = time.monotonic() - closed_at
    stored = os.path.getsize(data_file(fault_server, url))
    print(
        f"\n[{backend}] disconnect: declared {total} bytes, sent {raw.sent} and closed; "
        f"HEAD offsets {sorted(set(seen))} settled at {offset} after {settled:.2f} s; "
        f"data file holds {stored} bytes"
    )
    assert offset == cut, f"HEAD reported {offset}, the server received {cut}"
    assert stored >= offset
    response = patch_rest(fresh(fault_server), url, pattern, offset, total)
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(total)
    assert_exact(client, url, pattern, total)


# --------------------------------------------------------------------------
# 5. The worker streaming a PATCH is SIGKILLed
# --------------------------------------------------------------------------


KILL_TTL = 3.0


def test_sigkilled_worker_lock_frees_and_upload_resumes(backend: str, start_server) -> None:
    server = start_server(backend, workers=2, lock_ttl=KILL_TTL)
    tus = TusClient(server.endpoint)
    total = 32 * MiB
    sent_before_kill = 12 * MiB
    pattern = Pattern(total, seed=5)
    url = tus.new_upload(total)
    raw = RawPatch(server, url, 0, total)
    raw.send_headers()
    victim = connection_owner(server, raw.sock)
    assert victim is not None, "no worker holds the PATCH connection"
    workers_before = server.worker_pids()
    assert victim in workers_before
    # About 20 MiB/s: heartbeats fall inside the flow, so the server commits
    # (commit_bytes) part of it and is killed holding uncommitted bytes.
    for piece in pattern.pieces(0, sent_before_kill, 512 * 1024):
        assert raw.send(piece)
        time.sleep(0.025)
    time.sleep(0.05)  # loopback: the server has read the last piece
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    raw.close()

    # An empty PATCH needs the lock before it looks at anything: 204 or 409
    # both mean it got the lock, 423 that it did not within lock_wait.
    probes = []
    freed_after = None
    while time.monotonic() - killed_at < KILL_TTL + 5:
        response = requests.patch(
            url,
            headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_STREAM},
            data=b"",
            timeout=30,
        )
        probes.append(response.status_code)
        if response.status_code in (204, 409):
            freed_after = time.monotonic() - killed_at
            break
        assert response.status_code == 423, (response.status_code, response.text)
    offset = tus.offset(url)
    stored = os.path.getsize(data_file(server, url))
    print(
        f"\n[{backend}] SIGKILL worker {victim} (workers {workers_before}, now "
        f"{server.worker_pids()}) after "
        f"{sent_before_kill} of {total} bytes; lock free after "
        f"{freed_after if freed_after is None else round(freed_after, 2)} s "
        f"(lock_ttl {KILL_TTL:g}; probes {probes}); HEAD offset {offset}, "
        f"data file holds {stored} bytes"
    )
    assert freed_after is not None, "the dead worker's lock never freed"
    if backend == "redis":
        assert freed_after <= KILL_TTL + 0.5
    else:
        assert freed_after <= 1.0
    assert 0 <= offset <= stored
    assert offset <= sent_before_kill
    response = patch_rest(tus, url, pattern, offset, total)
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(total)
    assert_exact(tus, url, pattern, total)


# --------------------------------------------------------------------------
# 6. Offsets are committed during a long PATCH; HEAD does not break it
# --------------------------------------------------------------------------


def test_long_patch_commits_and_survives_head(
    backend: str, fault_server: Server, client: TusClient
) -> None:
    total = 16 * MiB
    first = 7 * MiB  # below commit_bytes: only the commit_seconds timer can commit it
    assert first < COMMIT_BYTES
    pattern = Pattern(total, seed=6)
    url = client.new_upload(total)
    raw = started_patch(fault_server, url, total, pattern, first)
    time.sleep(2 * COMMIT_SECONDS)  # the socket stays open and silent
    sidecar = read_sidecar_file(sidecar_file(fault_server, url))
    assert sidecar is not None
    committed_by_timer = sidecar.offset

    started = time.monotonic()
    head = fresh(fault_server).head(url)
    head_latency = time.monotonic() - started
    assert head.status_code == 200
    head_offset = int(head.headers["Upload-Offset"])

    for piece in pattern.pieces(first, total):
        assert raw.send(piece), f"the PATCH connection broke: {raw.send_error}"
    answer = raw.response(timeout=30)
    raw.close()
    print(
        f"\n[{backend}] long PATCH: sent {first} of {total} bytes, paused "
        f"{2 * COMMIT_SECONDS:g} s; "
        f"offset committed by the timer {committed_by_timer}; HEAD latency "
        f"{head_latency * 1000:.0f} ms -> {head_offset}; rest sent, PATCH answered "
        f"{answer and answer.status} offset {answer and answer.offset}"
    )
    assert committed_by_timer > 0, "nothing committed during the PATCH"
    assert head_offset > 0
    assert head_offset == first, "HEAD did not get every received byte committed"
    assert answer is not None and answer.status == 204
    assert answer.offset == total
    assert_exact(client, url, pattern, total)


# --------------------------------------------------------------------------
# 6b. A large PATCH cut short: the file ends at the offset, few blocks reserved
# --------------------------------------------------------------------------


def test_cut_large_patch_ends_the_file_at_its_offset(
    backend: str, fault_server: Server, client: TusClient
) -> None:
    """Blocks reserved ahead of a large body never move the end of file, and reach at
    most twice what the request wrote plus 1 MiB (a client declaring 512 MiB and gone
    after 24 MiB leaves about 24 MiB reserved past the offset, not 488 MiB)."""
    total, sent = 512 * MiB, 24 * MiB
    pattern = Pattern(total, seed=61)
    url = client.new_upload(total)
    raw = started_patch(fault_server, url, total, pattern, sent)
    time.sleep(0.5)  # let the server read what was sent before the connection goes
    raw.close()
    deadline = time.monotonic() + 15
    offset = 0
    while time.monotonic() < deadline:
        head = fresh(fault_server).head(url)
        offset = int(head.headers["Upload-Offset"])
        if offset == sent:
            break
        time.sleep(0.2)
    assert offset == sent, "the bytes of the cut PATCH were not all kept"
    stat = data_file(fault_server, url).stat()
    assert stat.st_size == offset, (stat.st_size, offset)
    allocated = stat.st_blocks * 512
    print(f"\n[{backend}] cut PATCH: offset {offset}, allocated {allocated} bytes")
    assert allocated <= 2 * offset + 2 * MiB, (allocated, offset)  # 1 MiB for metadata
    assert pattern.matches_file(data_file(fault_server, url), offset), "stored bytes differ"
