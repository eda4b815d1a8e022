"""Hostile clients that go after resources: bytes written, descriptors, threads, races.

Part of the hostile-input suite (see test_hostile_input.py), on both
registries against the real server under gunicorn. Each test prints its
figures (bytes written per request, descriptors per join, threads held):

* concatenation amplification: one final listing one partial many times,
  joins of waiting finals inside the PATCH that completes a partial, and
  finished finals that outlive their welcome;
* descriptors: concurrent joins of hundreds of parts under a low
  ``nofile`` limit;
* races on a final's size: two deferred partials declaring their lengths at
  the same moment under ``--max-size``, and sizes past 2^63-1;
* a final created while one of its partials is deleted;
* slow clients trickling headers and bodies to hold every thread;
* symbolic links planted in the data directory.
"""

from __future__ import annotations

import functools
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from resumable.filestore import read_sidecar_file

from ..support import (
    OFFSET_STREAM,
    TUS,
    RawPatch,
    Server,
    TusClient,
    assert_no_traceback,
    path_of,
    pattern_bytes,
    raw_request,
    request_head,
    sidecar_file,
    upload_id,
    wait_until,
)

KiB = 1024
MiB = 1024 * KiB
MAX_INT64 = 2**63 - 1


def stored_bytes(server: Server) -> int:
    """Bytes in the server's upload data files (sidecars left out)."""
    total = 0
    for entry in os.scandir(server.data_dir / "uploads"):
        if "." not in entry.name:
            total += entry.stat().st_size
    return total


def sidecar(server: Server, url: str) -> dict:
    record = read_sidecar_file(sidecar_file(server, url))
    assert record is not None, url
    return vars(record)


def make_partial(tus: TusClient, data: bytes | None, length: int | None = None) -> str:
    """A partial upload: complete with ``data``, or empty with ``length`` (None: deferred)."""
    headers = {"Upload-Concat": "partial"}
    if data is not None:
        return tus.new_upload(len(data), headers=headers, data=data)
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    return tus.new_upload(length, headers=headers)


def final(tus: TusClient, parts: list[str], **headers: str):  # noqa: ANN201 - a Response
    concat = "final;" + " ".join(path_of(part) for part in parts)
    return tus.create(headers={"Upload-Concat": concat, **headers})


def at_once(*calls: Callable[[], object]) -> list[object]:
    """Run the calls in threads released together; their results, in order."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


# --------------------------------------------------------------------------
# Concatenation amplification
# --------------------------------------------------------------------------


def test_final_listing_one_partial_many_times_writes_nothing(
    server: Server, backend: str
) -> None:
    """One 256 KiB partial listed 1000 times: 400 before anything is written.

    Joined, it would have made one request write 262,144,000 bytes.
    """
    tus = TusClient(server.endpoint)
    part = make_partial(tus, pattern_bytes(256 * KiB, seed=1))
    before = stored_bytes(server)
    started = time.monotonic()
    response = final(tus, [part] * 1000)
    elapsed = time.monotonic() - started
    written = stored_bytes(server) - before
    print(
        f"concatenation amplification [{backend}]: final listing one 256 KiB partial 1000 "
        f"times -> {response.status_code} in {elapsed * 1000:.0f} ms, bytes written {written} "
        f"(joined: {1000 * 256 * KiB:,})"
    )
    assert response.status_code == 400, (response.status_code, response.text)
    assert "more than once" in response.text
    assert written == 0
    assert_no_traceback(server)


def test_patch_completing_a_partial_does_not_wait_for_the_joins(
    server: Server, backend: str
) -> None:
    """Four finals wait for one unfinished partial, each also listing a 64 MiB partial.

    The 1-byte PATCH that completes the shared partial answers without
    joining them (the joins copy 256 MiB, off the request), and every final
    is joined soon after, byte-exact.
    """
    tus = TusClient(server.endpoint)
    bodies = [pattern_bytes(64 * MiB, seed=10 + i) for i in range(4)]
    bigs = [make_partial(tus, body) for body in bodies]
    shared = make_partial(tus, None, length=1)
    finals = []
    for big in bigs:
        response = final(tus, [big, shared])
        assert response.status_code == 201, (response.status_code, response.text)
        finals.append(response.headers["Location"])

    before = stored_bytes(server)
    started = time.monotonic()
    answer = tus.patch(shared, 0, b"!")
    latency = time.monotonic() - started
    joined_at_answer = sum(
        1 for url in finals if sidecar(server, url)["offset"] == 64 * MiB + 1
    )
    written_at_answer = stored_bytes(server) - before
    assert answer.status_code == 204, (answer.status_code, answer.text)

    def all_joined() -> bool:
        return all(sidecar(server, url)["offset"] == 64 * MiB + 1 for url in finals)

    assert wait_until(all_joined, 60, 0.02), [sidecar(server, url) for url in finals]
    joins_done = time.monotonic() - started
    print(
        f"joins off the request [{backend}]: 1-byte PATCH completing a partial that 4 finals "
        f"wait for answered in {latency * 1000:.1f} ms with {joined_at_answer} of 4 finals "
        f"joined and {written_at_answer:,} bytes written; all 4 joins "
        f"({4 * (64 * MiB + 1):,} bytes) done {joins_done:.2f} s after the PATCH started"
    )
    # Joined inside the PATCH, all four would be complete when it answers.
    assert joined_at_answer <= 1, joined_at_answer
    for url, body in zip(finals, bodies, strict=True):
        got = tus.get(url)
        assert got.status_code == 200 and got.content == body + b"!", url
    assert_no_traceback(server)


def test_finished_finals_expire_when_configured(start_server, backend: str) -> None:
    """--finished-expiry: finished uploads, finals included, are collected like expired ones."""
    server = start_server(backend, finished_expiry=1, gc_interval=0)
    tus = TusClient(server.endpoint)
    part = make_partial(tus, b"hello")
    response = final(tus, [part])
    assert response.status_code == 201
    joined = response.headers["Location"]
    assert tus.get(joined).content == b"hello"
    unfinished = tus.new_upload(10)
    time.sleep(1.2)
    assert tus.head(joined).status_code == 410
    assert tus.get(joined).status_code == 410
    assert tus.head(unfinished).status_code == 200  # unfinished: --expiry (7 days) applies
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESUMABLE_")}
    gc_command = [sys.executable, "-m", "resumable", "gc", "--data-dir", str(server.data_dir)]
    gc_command += ["--finished-expiry", "1"]
    if server.redis_url:
        gc_command += ["--redis-url", server.redis_url, "--redis-prefix", server.redis_prefix]
    collected = subprocess.run(gc_command, env=env, capture_output=True, text=True, timeout=60)
    assert collected.returncode == 0, collected.stderr
    print(f"finished-expiry [{backend}]: {collected.stdout.strip()}")
    assert tus.head(joined).status_code == 404
    assert tus.head(part).status_code == 404
    assert tus.head(unfinished).status_code == 200
    assert_no_traceback(server)


# --------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------

PARTS_PER_FINAL = 300
NOFILE = 128


def _descriptor_peaks(pids: list[int], stop: threading.Event, peaks: Counter) -> None:
    while not stop.is_set():
        for pid in pids:
            try:
                count = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue
            peaks[pid] = max(peaks[pid], count)
        time.sleep(0.0005)


def test_concurrent_joins_of_many_parts_under_a_low_descriptor_limit(
    start_server, backend: str
) -> None:
    """Four finals of 300 parts each, joined at once by one worker with nofile=128.

    A join that opened every part at once needed 300 descriptors and failed
    with EMFILE; parts are opened one at a time.
    """
    server = start_server(backend, workers=1, nofile=NOFILE)
    tus = TusClient(server.endpoint)
    lists = []
    for f in range(4):
        parts = [make_partial(tus, b"%d:%04d|" % (f, i) * 32) for i in range(PARTS_PER_FINAL)]
        lists.append(parts)
    (worker,) = server.worker_pids()
    baseline = len(os.listdir(f"/proc/{worker}/fd"))
    peaks: Counter = Counter()
    stop = threading.Event()
    sampler = threading.Thread(target=_descriptor_peaks, args=([worker], stop, peaks))
    sampler.start()
    answers: list = [None] * 4

    def create(index: int) -> None:
        answers[index] = final(TusClient(server.endpoint), lists[index])

    threads = [threading.Thread(target=create, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stop.set()
    sampler.join()
    print(
        f"descriptors [{backend}]: 4 concurrent joins of {PARTS_PER_FINAL} parts each under "
        f"nofile={NOFILE}: worker held {baseline} descriptors before, at most {peaks[worker]} "
        f"during the joins (one part open per join)"
    )
    for index, answer in enumerate(answers):
        assert answer is not None and answer.status_code == 201, answer
        url = answer.headers["Location"]
        expected = b"".join(b"%d:%04d|" % (index, i) * 32 for i in range(PARTS_PER_FINAL))
        head = tus.head(url)
        assert head.headers.get("Upload-Offset") == str(len(expected)), head.headers
        assert tus.get(url).content == expected
    assert peaks[worker] < NOFILE
    assert_no_traceback(server)


# --------------------------------------------------------------------------
# A final's size: races under --max-size, and 2^63-1
# --------------------------------------------------------------------------

RACE_ROUNDS = 15


def test_deferred_partials_declaring_at_once_cannot_pass_max_size(
    start_server, backend: str
) -> None:
    """--max-size 1000, a final of two deferred partials: both declare 1000 at once.

    Exactly one declaration may pass in each round; the final never grows
    past 1000 bytes.
    """
    server = start_server(backend, max_size=1000)
    outcomes: Counter = Counter()
    for _ in range(RACE_ROUNDS):
        tus = TusClient(server.endpoint)
        one, two = make_partial(tus, None), make_partial(tus, None)
        response = final(tus, [one, two])
        assert response.status_code == 201
        joined = response.headers["Location"]
        def declare(url: str) -> Callable[[], int]:
            client = TusClient(server.endpoint)
            headers = {"Upload-Length": "1000"}
            return lambda: client.patch(url, 0, b"", headers=headers).status_code

        statuses = at_once(declare(one), declare(two))
        outcomes[tuple(sorted(statuses))] += 1  # type: ignore[type-var]
        length = tus.head(joined).headers.get("Upload-Length")
        assert length is None or int(length) <= 1000, length
    print(f"max-size race [{backend}]: {RACE_ROUNDS} rounds, outcomes {dict(outcomes)}")
    assert outcomes == Counter({(204, 413): RACE_ROUNDS}), outcomes
    assert_no_traceback(server)


def test_final_longer_than_2_63_is_refused(start_server, backend: str) -> None:
    """Three partials of 2^63-1 bytes: their final is refused (413), known or deferred."""
    server = start_server(backend)  # no --max-size
    tus = TusClient(server.endpoint)
    huge = [make_partial(tus, None, length=MAX_INT64) for _ in range(3)]
    response = final(tus, huge)
    assert response.status_code == 413, (response.status_code, response.text)
    assert "Location" not in response.headers

    deferred = [make_partial(tus, None) for _ in range(2)]
    response = final(tus, deferred)
    assert response.status_code == 201
    joined = response.headers["Location"]
    first = tus.patch(deferred[0], 0, b"", headers={"Upload-Length": str(MAX_INT64)})
    second = tus.patch(deferred[1], 0, b"", headers={"Upload-Length": str(MAX_INT64)})
    assert first.status_code == 204, first.text
    assert second.status_code == 413, second.text
    length = tus.head(joined).headers.get("Upload-Length")
    assert length is None or int(length) <= MAX_INT64, length
    assert_no_traceback(server)


# --------------------------------------------------------------------------
# A final created while a partial is deleted
# --------------------------------------------------------------------------

DELETE_ROUNDS = 60
FINALS_PER_ROUND = 6


def finals_on_disk(server: Server) -> set[str]:
    found = set()
    for path in (server.data_dir / "uploads").glob("*.json"):
        record = read_sidecar_file(path)
        if record is not None and record.is_final:
            found.add(record.id)
    return found


def delete_after(server: Server, url: str, pause: float):  # noqa: ANN201 - a Response
    time.sleep(pause)
    return TusClient(server.endpoint).delete(url)


def test_final_racing_the_deletion_of_its_partial(server: Server, backend: str) -> None:
    """POST final;P Q (six at once) while DELETE P: never a 5xx, no final the client never
    heard of."""
    outcomes: Counter = Counter()
    learned = finals_on_disk(server)  # made by earlier tests on this server
    for round_number in range(DELETE_ROUNDS):
        tus = TusClient(server.endpoint)
        doomed = make_partial(tus, b"doomed")
        other = make_partial(tus, b"other")
        late = 0.001 * (round_number % 3)
        creations = [
            functools.partial(final, TusClient(server.endpoint), [doomed, other])
            for _ in range(FINALS_PER_ROUND)
        ]
        *created, deleted = at_once(
            *creations, functools.partial(delete_after, server, doomed, late)
        )
        for response in created:
            if response.status_code == 201:
                learned.add(upload_id(response.headers["Location"]))
            outcomes[(response.status_code, deleted.status_code)] += 1
    print(
        f"final vs delete [{backend}]: {DELETE_ROUNDS} rounds of {FINALS_PER_ROUND} finals "
        f"and one DELETE, outcomes (final, delete) {dict(outcomes)}"
    )
    assert all(status is not None and status < 500 for pair in outcomes for status in pair)
    unknown = finals_on_disk(server) - learned
    assert not unknown, sorted(unknown)
    assert_no_traceback(server)


# --------------------------------------------------------------------------
# Slow clients
# --------------------------------------------------------------------------

TRICKLE_THREADS = 20
TRICKLERS = 25


class Trickler:
    """A connection that sends ``at_once``, then ``trickled`` one byte every ``pause`` s."""

    def __init__(self, server: Server, at_once: bytes, trickled: bytes, pause: float):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        self.sock.sendall(at_once)
        self.trickled = trickled
        self.pause = pause
        self.started = time.monotonic()
        self.ended: float | None = None
        self.answer = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for byte in self.trickled:
                self.sock.sendall(bytes([byte]))
                time.sleep(self.pause)
        except OSError:
            pass
        finally:
            self.ended = time.monotonic()
        try:
            self.answer = self.sock.recv(4096)
        except OSError:
            pass

    @property
    def held(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def close(self) -> None:
        self.sock.close()


def test_trickling_clients_cannot_hold_every_thread(start_server, backend: str) -> None:
    """20 threads, 25 connections sending a byte every 0.5 s (13 in their headers, 12 in
    PATCH bodies): each is cut (408) within a few seconds, and OPTIONS keeps being answered.

    Without the header deadline and the minimum body rate, these connections
    held every thread and OPTIONS was never answered.
    """
    server = start_server(
        backend,
        workers=1,
        threads=TRICKLE_THREADS,
        header_timeout=2,
        read_timeout=2,
    )
    tus = TusClient(server.endpoint)
    tricklers = []
    for index in range(TRICKLERS):
        if index % 2 == 0:
            head = f"OPTIONS /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: {'a' * 200}\r\n\r\n"
            tricklers.append(Trickler(server, b"", head.encode(), 0.5))
        else:
            url = tus.new_upload(10_000)
            head = request_head(server, "PATCH", url, {
                **TUS, "Upload-Offset": "0", "Content-Type": OFFSET_STREAM,
                "Content-Length": "10000"})
            tricklers.append(Trickler(server, head, b"x" * 10_000, 0.5))

    latencies = []
    deadline = time.monotonic() + 10
    failures = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            response = raw_request(server, "OPTIONS", "/files/", timeout=10)
            if response.status != 204:
                failures += 1
        except OSError:
            failures += 1
        latencies.append(time.monotonic() - started)
        time.sleep(0.25)
    cut = [t for t in tricklers if t.ended is not None]
    statuses = Counter(t.answer.split(b"\r\n", 1)[0].decode("latin-1") for t in cut)
    held = sorted(t.held for t in cut)
    print(
        f"slow clients [{backend}]: {TRICKLERS} connections trickling 2 bytes/s against "
        f"{TRICKLE_THREADS} threads: {len(cut)} cut, held a thread for "
        f"{held[0] if held else 0:.1f}-{held[-1] if held else 0:.1f} s, answers {dict(statuses)}; "
        f"OPTIONS meanwhile: {len(latencies)} sent, {failures} failed, p50 "
        f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    for trickler in tricklers:
        trickler.close()
    assert failures == 0
    assert len(cut) == TRICKLERS, f"{TRICKLERS - len(cut)} tricklers still hold a thread"
    assert max(held) < 8, held
    for answer in statuses:
        assert answer.startswith("HTTP/1.1 408"), statuses
    assert_no_traceback(server)


def test_an_answer_that_leaves_the_body_unread_says_close(server: Server, backend: str) -> None:
    """An error answered before a large body is read closes the connection, and says so.

    gunicorn closed such a connection after announcing keep-alive, so a client
    sending its next request on it at once got no answer at all.
    """
    tus = TusClient(server.endpoint)
    url = tus.new_upload(100)
    big = b"x" * MiB
    cases = {
        "413, body longer than the upload": (0, len(big), big, "close"),
        "409, wrong offset": (7, len(big), big, "close"),
        "409, wrong offset, small body (drained)": (7, 10, b"y" * 10, "keep-alive"),
    }
    seen = {}
    for name, (offset, length, body, expected) in cases.items():
        raw = RawPatch(server, url, offset, length)
        raw.send_headers()
        raw.feed([body])  # from a thread: the answer may come before the body is out
        answer = raw.response(20, head_only=True)
        raw.close()
        assert answer is not None, name
        seen[name] = (answer.status, answer.get("connection"))
        assert answer.get("connection") == expected, (name, answer)
    print(f"unread bodies [{backend}]: {seen}")
    assert_no_traceback(server)


# --------------------------------------------------------------------------
# The data directory: links are never followed, and it is private
# --------------------------------------------------------------------------


def test_planted_links_are_never_followed(start_server, tmp_path: Path) -> None:
    """A link planted as an upload's lock file, data file or sidecar: the target is
    neither written, truncated nor served."""
    server = start_server("embedded")
    tus = TusClient(server.endpoint)
    target = tmp_path / "precious.txt"
    precious = b"do not touch\n" * 100
    problems = []
    for planted, sent in (
        ("locks/{id}.lock", 10),
        ("uploads/{id}", 10),
        ("uploads/{id}", 20),  # finished: GET must not serve the target
    ):
        target.write_bytes(precious)
        url = tus.new_upload(20)
        assert tus.patch(url, 0, b"0123456789ABCDEFGHIJ"[:sent]).status_code == 204
        link = server.data_dir / planted.format(id=upload_id(url))
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        download = tus.get(url)
        answers = {
            "PATCH": tus.patch(url, sent, b"abcdefghij"[: 20 - sent]).status_code,
            "GET": download.status_code,
            "DELETE": tus.delete(url).status_code,
        }
        if target.read_bytes() != precious:
            problems.append(f"{planted}: the target was changed ({answers})")
        if answers["PATCH"] == 204 and planted.startswith("uploads") and sent < 20:
            problems.append(f"{planted}: the PATCH wrote through the link")
        if precious[:10] in download.content:
            problems.append(f"{planted}: GET served the link's target")
        unchanged = target.read_bytes() == precious
        print(f"planted link {planted}: {answers}, target unchanged: {unchanged}")
    assert not problems, problems
    assert "refused a symbolic link" in server.log()


def test_data_dir_is_private_by_default(start_server) -> None:
    server = start_server("embedded")
    for folder in (server.data_dir / "uploads", server.data_dir / "locks"):
        assert folder.stat().st_mode & 0o777 == 0o700, (folder, oct(folder.stat().st_mode))
    requested = start_server("embedded", data_dir_mode="0750")
    assert (requested.data_dir / "uploads").stat().st_mode & 0o777 == 0o750

