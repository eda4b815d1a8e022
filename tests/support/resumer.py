"""A tus client that resumes as real ones do, and the tally a fault scenario keeps.

:class:`Resumer` behaves as tus clients do (HEAD, then PATCH from the offset,
retrying 423, 5xx and broken connections with a short backoff) and checks
every offset the server reports against what it acknowledged before;
:class:`Tally` counts what the fault suites print and assert: faults
injected, uploads verified byte-exact, bytes lost, corrupt files, unexpected 5xx.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from .data import MiB, Pattern
from .http import OFFSET_STREAM, TUS, SizedBody, paced
from .uploads import checksum_header

PIECE = 256 * 1024


class Tally:
    """Counters of one scenario, safe to update from many client threads.

    * ``lost``: bytes the server acknowledged (a 204's or HEAD's offset, or
      bytes a scenario knows the server received and must keep) that a later
      answer or the stored file no longer has;
    * ``corrupt``: uploads whose stored bytes differ from the bytes sent;
    * ``unexpected_5xx``: 5xx answers other than those ``allowed`` at the time
      (503 during a Redis outage, 507 on a full disk).
    """

    def __init__(self, scenario: str):
        self.scenario = scenario
        self.faults = 0
        self.verified = 0
        self.lost = 0
        self.corrupt = 0
        self.unexpected_5xx = 0
        self.allowed_5xx: frozenset[int] = frozenset()
        self.problems: list[str] = []
        self.statuses: dict[int, int] = {}
        self.lock = threading.Lock()

    def line(self) -> str:
        return (
            f"{self.scenario}: faults injected {self.faults}, uploads verified byte-exact "
            f"{self.verified}, bytes lost {self.lost}, corrupt files {self.corrupt}, "
            f"unexpected 5xx {self.unexpected_5xx}"
        )

    def fault(self, count: int = 1) -> None:
        with self.lock:
            self.faults += count

    def status(self, code: int, what: str) -> None:
        with self.lock:
            self.statuses[code] = self.statuses.get(code, 0) + 1
            if code >= 500 and code not in self.allowed_5xx:
                self.unexpected_5xx += 1
                self.problems.append(f"unexpected {code} on {what}")

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def add_lost(self, count: int, why: str) -> None:
        if count > 0:
            with self.lock:
                self.lost += count
                self.problems.append(f"{count} bytes lost: {why}")

    def add_verified(self, ok: bool, why: str) -> None:
        with self.lock:
            if ok:
                self.verified += 1
            else:
                self.corrupt += 1
                self.problems.append(f"corrupt: {why}")

    def assert_clean(self) -> None:
        assert (self.lost, self.corrupt, self.unexpected_5xx) == (0, 0, 0), "\n".join(
            self.problems[:20]
        )


CLIENT_ERRORS = (requests.RequestException, OSError)


class Resumer:
    """HEAD, then PATCH the rest from the offset; retry 423, 5xx and broken connections.

    Every offset the server reports is checked against the highest one it
    acknowledged before (an offset going back is acknowledged bytes lost).
    """

    def __init__(
        self,
        endpoint: str,
        tally: Tally,
        *,
        chunked: bool = False,
        checksum: str | None = None,
        deadline: float = 120.0,
        backoff: tuple[float, float] = (0.05, 0.3),
        rng: random.Random | None = None,
        on_patch: Callable[[bool], None] | None = None,
        rate: float | None = None,
    ):
        self.endpoint = endpoint
        self.tally = tally
        self.chunked = chunked
        self.checksum = checksum
        self.deadline = deadline
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.on_patch = on_patch
        self.rate = rate  # bytes per second a PATCH body is sent at (None: as fast as it goes)
        self.session = requests.Session()
        self.interrupted = 0  # PATCHes that ended without an answer
        self.retries = 0

    def _pause(self) -> None:
        self.retries += 1
        time.sleep(self.rng.uniform(*self.backoff))

    def _reconnect(self) -> None:
        self.session.close()
        self.session = requests.Session()

    def create(self, blob: Pattern, started: float | None = None) -> str:
        started = time.monotonic() if started is None else started
        while time.monotonic() - started < self.deadline:
            try:
                response = self.session.post(
                    self.endpoint,
                    headers={**TUS, "Upload-Length": str(blob.size)},
                    timeout=(5, 60),
                )
            except CLIENT_ERRORS:
                self._reconnect()
                self._pause()
                continue
            self.tally.status(response.status_code, f"POST {blob.name}")
            if response.status_code == 201:
                return response.headers["Location"]
            if response.status_code != 423 and response.status_code < 500:
                raise AssertionError(f"POST {blob.name}: {response.status_code} {response.text}")
            self._pause()
        raise AssertionError(f"POST {blob.name} did not succeed in {self.deadline:g} s")

    def head(self, url: str) -> requests.Response:
        return self.session.head(url, headers=TUS, timeout=(5, 60))

    def finish(self, url: str, blob: Pattern, acknowledged: int = 0) -> int:
        """Resume until the server holds every byte; the highest acknowledged offset."""
        started = time.monotonic()
        while True:
            if time.monotonic() - started > self.deadline:
                raise AssertionError(
                    f"{blob.name} unfinished after {self.deadline:g} s "
                    f"(acknowledged {acknowledged} of {blob.size})"
                )
            try:
                response = self.head(url)
            except CLIENT_ERRORS:
                self._reconnect()
                self._pause()
                continue
            self.tally.status(response.status_code, f"HEAD {blob.name}")
            if response.status_code != 200:
                if response.status_code == 423 or response.status_code >= 500:
                    self._pause()
                    continue
                raise AssertionError(f"HEAD {blob.name}: {response.status_code}")
            offset = int(response.headers["Upload-Offset"])
            acknowledged = self._observe(blob, offset, acknowledged, "HEAD")
            if offset == blob.size:
                return acknowledged
            acknowledged = self._patch(url, blob, offset, acknowledged)

    def _observe(self, blob: Pattern, offset: int, acknowledged: int, what: str) -> int:
        if offset < acknowledged:
            self.tally.add_lost(
                acknowledged - offset, f"{blob.name}: {what} offset {offset} < {acknowledged}"
            )
        if offset > blob.size:
            self.tally.problem(f"{blob.name}: {what} offset {offset} > size {blob.size}")
            raise AssertionError(f"{blob.name}: offset {offset} beyond its length {blob.size}")
        return max(acknowledged, offset)

    def _patch(self, url: str, blob: Pattern, offset: int, acknowledged: int) -> int:
        headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM}
        if self.checksum:
            headers["Upload-Checksum"] = checksum_header(self.checksum, blob.pieces(offset))
        pieces = paced(blob.pieces(offset, piece=PIECE), self.rate)
        body: object = (
            (bytes(p) for p in pieces) if self.chunked else SizedBody(pieces, blob.size - offset)
        )
        if self.on_patch:
            self.on_patch(True)
        try:
            response = self.session.patch(url, headers=headers, data=body, timeout=(5, 60))
        except CLIENT_ERRORS:
            self.interrupted += 1
            self._reconnect()
            self._pause()
            return acknowledged
        finally:
            if self.on_patch:
                self.on_patch(False)
        self.tally.status(response.status_code, f"PATCH {blob.name}")
        if response.status_code == 204:
            new = int(response.headers["Upload-Offset"])
            if new != blob.size:
                self.tally.problem(f"{blob.name}: 204 with offset {new}, expected {blob.size}")
            return self._observe(blob, new, acknowledged, "PATCH")
        if response.status_code in (409, 423) or response.status_code >= 500:
            self._pause()
            return acknowledged
        raise AssertionError(f"PATCH {blob.name}: {response.status_code} {response.text}")

    def download_sha256(self, url: str) -> tuple[str, int] | None:
        """sha256 and size of a GET, streamed; None when the connection broke."""
        digest = hashlib.sha256()
        size = 0
        try:
            with self.session.get(url, stream=True, timeout=(5, 60)) as response:
                self.tally.status(response.status_code, f"GET {url}")
                if response.status_code != 200:
                    return None
                for chunk in response.iter_content(MiB):
                    digest.update(chunk)
                    size += len(chunk)
        except CLIENT_ERRORS:
            self._reconnect()
            return None
        return digest.hexdigest(), size

    def verify(self, url: str, blob: Pattern) -> bool:
        """GET it back (retrying broken downloads); count it verified or corrupt."""
        started = time.monotonic()
        while time.monotonic() - started < self.deadline:
            got = self.download_sha256(url)
            if got is None:
                self._pause()
                continue
            digest, size = got
            ok = size == blob.size and digest == blob.sha256()
            self.tally.add_verified(
                ok, f"{blob.name}: GET gave {size} bytes sha256 {digest[:12]}, sent {blob.size}"
            )
            return ok
        raise AssertionError(f"GET {blob.name} never succeeded in {self.deadline:g} s")


def settle_offset(endpoint_url: str, guess: int = 0) -> tuple[int, int]:
    """Take the upload's lock once with an empty PATCH: (status, offset).

    The empty PATCH must get the lock before it looks at the offset, so when
    it answers, any earlier holder has finished and committed: 204 means the
    offset is ``guess``, 409 carries the true one.
    """
    response = requests.patch(
        endpoint_url,
        headers={
            **TUS,
            "Upload-Offset": str(guess),
            "Content-Type": OFFSET_STREAM,
            "Content-Length": "0",
        },
        data=b"",
        timeout=30,
    )
    status = response.status_code
    if status == 204:
        return status, guess
    if status == 409:
        return status, int(response.headers["Upload-Offset"])
    return status, -1


def file_snapshot(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            try:
                snapshot[str(path.relative_to(root))] = path.stat().st_size
            except FileNotFoundError:
                continue
    return snapshot
