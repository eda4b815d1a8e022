"""/metrics under real gunicorn: exact counts summed over two workers, the in-flight gauge, paths.

Every request goes out on a new connection, and the worker that accepted it
is looked up (``connection_owner``), so the counts are known to come from both
workers: a scrape answered by one worker's registry alone would miss some.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from resumable import metrics

from ..support import (
    OFFSET_STREAM,
    ROOT,
    TUS,
    HostedApp,
    RawPatch,
    Server,
    connection_owner,
    wait_until,
)

UNKNOWN_ID = "0" * 32
GAUGES = {"resumable_patches_in_flight"}


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def scrape(url: str, path: str = "/metrics") -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape: (sample name, its labels) -> value."""
    response = requests.get(url + path, timeout=10)
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def settled_scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """A scrape once the counts stop moving: a readiness probe that timed out under load
    and was retried may still be served after the server counted as started."""
    previous = scrape(url)
    while True:
        time.sleep(0.3)
        current = scrape(url)
        if current == previous:
            return current
        previous = current


def since(before: dict, after: dict) -> dict:
    """Counters as grown since ``before`` (the readiness probe's OPTIONS came before it)."""
    return {key: v if key[0] in GAUGES else v - before.get(key, 0.0) for key, v in after.items()}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


class Calls:
    """Requests on fresh connections, each with the worker that served it."""

    def __init__(self, server: Server):
        self.server = server
        self.owners: list[int | None] = []
        self.counted: Counter[tuple[str, str]] = Counter()

    def __call__(self, method: str, path: str, headers: dict[str, str] | None = None,
                 body: bytes | None = None, counted_as: str | None = None,
                 ) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            conn.connect()
            self.owners.append(connection_owner(self.server, conn.sock))
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        self.counted[(counted_as or method, str(response.status))] += 1
        return response

    def reach_every_worker(self, path: str) -> None:
        """OPTIONS on new connections until each worker has served a request (counted too)."""
        workers = set(self.server.worker_pids())
        for _ in range(200):
            if workers <= set(self.owners):
                return
            assert self("OPTIONS", path).status == 204
        raise AssertionError(f"requests reached workers {set(self.owners)}, not all of {workers}")


def upload_path(response: http.client.HTTPResponse) -> str:
    location = response.getheader("Location")
    assert location, "no Location"
    return "/" + location.split("/", 3)[3]


def patch_headers(offset: int, **extra: str) -> dict[str, str]:
    return {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM, **extra}


def run_known_sequence(server: Server, base: str) -> tuple[Calls, int]:
    """3 creations (one with its body), 2 finished, 1 terminated, a 404, 405, 409 and 412."""
    call = Calls(server)
    first = call("POST", base, {**TUS, "Upload-Length": "1000"})
    second = call("POST", base, {**TUS, "Upload-Length": "500"})
    third = call("POST", base, {**TUS, "Upload-Length": "100", "Content-Type": OFFSET_STREAM},
                 b"c" * 100)
    assert [first.status, second.status, third.status] == [201, 201, 201]
    a, b = upload_path(first), upload_path(second)
    assert call("PATCH", a, patch_headers(0), b"a" * 600).status == 204
    override = {"X-HTTP-Method-Override": "PATCH"}  # a PATCH, counted as one
    assert call("POST", a, patch_headers(600, **override), b"a" * 400, "PATCH").status == 204
    # A method of the client's invention is "other": it cannot grow the label values.
    assert call("POST", a, {**TUS, "X-HTTP-Method-Override": "Frobnicate"},
                counted_as="other").status == 405
    assert call("PATCH", b, patch_headers(0), b"b" * 300).status == 204
    assert call("PATCH", b, patch_headers(0), b"b" * 10).status == 409
    assert call("HEAD", a, TUS).status == 200
    assert call("HEAD", base + UNKNOWN_ID, TUS).status == 404
    assert call("HEAD", a).status == 412  # no Tus-Resumable
    assert call("DELETE", b, TUS).status == 204
    assert call("GET", a).status == 200
    call.reach_every_worker(base)
    return call, 100 + 600 + 400 + 300


def assert_counts(samples: dict, call: Calls, received: int) -> None:
    counted = {
        (dict(labels)["method"], dict(labels)["status"]): v
        for (name, labels), v in samples.items() if name == "resumable_requests_total" and v
    }
    assert counted == dict(call.counted)
    errors = {
        dict(labels)["status"]: v
        for (name, labels), v in samples.items() if name == "resumable_errors_total" and v
    }
    assert errors == {"404": 1, "405": 1, "409": 1, "412": 1}
    for method in ("POST", "PATCH", "HEAD", "DELETE", "GET", "OPTIONS", "other"):
        served = sum(n for (m, _status), n in call.counted.items() if m == method)
        assert value(samples, "resumable_request_duration_seconds_count", method=method) == served
    assert value(samples, "resumable_bytes_received_total") == received
    assert value(samples, "resumable_uploads_created_total") == 3
    assert value(samples, "resumable_uploads_finished_total") == 2
    assert value(samples, "resumable_uploads_terminated_total") == 1
    assert value(samples, "resumable_patches_in_flight") == 0
    assert value(samples, "resumable_lock_waits_total") == 0
    assert value(samples, "resumable_locked_total") == 0


class SlowBody:
    """A PATCH whose body arrives in two halves, on a connection of its own."""

    def __init__(self, server: Server, path: str, offset: int, length: int):
        self.raw = RawPatch(server, path, offset, length)
        self.owner = connection_owner(server, self.raw.sock)
        self.raw.begin(b"x" * (length // 2))
        self.rest = length - length // 2

    def finish(self) -> int:
        """The rest of the body; the answer's status."""
        self.raw.send(b"x" * self.rest)
        answer = self.raw.response(30)
        self.raw.close()
        assert answer is not None, "no answer to the PATCH"
        return answer.status

    def abandon(self) -> None:
        self.raw.close()


def new_upload(url: str, length: int) -> str:
    response = requests.post(url, headers={**TUS, "Upload-Length": str(length)}, timeout=10)
    assert response.status_code == 201, response.text
    return "/" + response.headers["Location"].split("/", 3)[3]


def in_flight(url: str) -> float:
    return value(scrape(url), "resumable_patches_in_flight")


# --------------------------------------------------------------------------
# resumable serve
# --------------------------------------------------------------------------


def test_counts_summed_over_both_workers_match_the_requests(backend: str, start_server) -> None:
    server = start_server(backend, workers=2)
    before = settled_scrape(server.url)
    call, received = run_known_sequence(server, "/files/")
    assert set(call.owners) == set(server.worker_pids())
    # Several scrapes, each answered by whichever worker takes it, say the same;
    # the scrapes themselves are no requests of the endpoint.
    for _ in range(4):
        assert_counts(since(before, scrape(server.url)), call, received)


def test_patches_in_flight_go_down_however_they_end(backend: str, start_server) -> None:
    server = start_server(backend, workers=2)
    finished = SlowBody(server, new_upload(server.endpoint, 1000), 0, 1000)
    abandoned = SlowBody(server, new_upload(server.endpoint, 1000), 0, 1000)
    assert wait_until(lambda: in_flight(server.url) == 2, 10)
    assert finished.finish() == 204
    assert in_flight(server.url) == 1
    abandoned.abandon()  # the client is gone mid-body
    assert wait_until(lambda: in_flight(server.url) == 0, 10), in_flight(server.url)
    samples = scrape(server.url)
    assert value(samples, "resumable_requests_total", method="PATCH", status="204") == 1
    assert total(samples, "resumable_requests_total", method="PATCH") == 2


def test_a_killed_workers_patch_leaves_the_gauge(start_server) -> None:
    """gunicorn's child_exit hook drops the live gauge of a worker killed mid-PATCH."""
    server = start_server("embedded", workers=2)
    slow = SlowBody(server, new_upload(server.endpoint, 1000), 0, 1000)
    assert wait_until(lambda: in_flight(server.url) == 1, 10)
    assert slow.owner is not None
    os.kill(slow.owner, signal.SIGKILL)
    assert wait_until(lambda: in_flight(server.url) == 0, 10), in_flight(server.url)
    slow.abandon()


def test_a_lock_conflict_counts_a_wait_and_a_423(backend: str, start_server) -> None:
    """With --lock-wait 0 a DELETE of an upload a PATCH holds gives up at once: 423."""
    server = start_server(backend, workers=2, lock_wait=0)
    path = new_upload(server.endpoint, 1000)
    slow = SlowBody(server, path, 0, 1000)
    # A HEAD has the holder commit what came: it holds the lock from then on.
    assert wait_until(lambda: requests.head(server.url + path, headers=TUS, timeout=10)
                      .headers.get("Upload-Offset") == "500", 10)
    response = requests.delete(server.url + path, headers=TUS, timeout=10)
    assert response.status_code == 423, response.text
    slow.abandon()
    assert wait_until(lambda: in_flight(server.url) == 0, 10)
    samples = scrape(server.url)
    assert value(samples, "resumable_lock_waits_total") == 1
    assert value(samples, "resumable_locked_total") == 1
    assert value(samples, "resumable_requests_total", method="DELETE", status="423") == 1


def test_metrics_path_moves_or_turns_off(start_server) -> None:
    moved = start_server("embedded", workers=1, metrics_path="/internal/prometheus")
    assert requests.get(moved.url + "/metrics", timeout=10).status_code == 404
    assert "resumable_requests_total" in requests.get(
        moved.url + "/internal/prometheus", timeout=10).text
    off = start_server("embedded", workers=1, metrics_path="")
    assert requests.get(off.url + "/metrics", timeout=10).status_code == 404


def test_the_workers_share_a_private_directory_removed_on_exit(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", workers=2).start()
    try:
        assert requests.options(server.endpoint, timeout=10).status_code == 204
        assert scrape(server.url)  # every worker that served has its files mapped

        def directories() -> set[str]:
            found = set()
            for pid in server.worker_pids():
                for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                    if "/resumable-metrics-" in line:
                        found.add(os.path.dirname(line.split(None, 5)[-1]))
            return found

        assert wait_until(lambda: len(directories()) == 1, 10), directories()
        (directory,) = directories()
        assert os.stat(directory).st_mode & 0o777 == 0o700
    finally:
        server.stop()
    assert not os.path.exists(directory)


def test_the_command_line_leaves_prometheus_client_unimported() -> None:
    """prometheus_client fixes its mode when imported: serve's master must not import it
    before it has set PROMETHEUS_MULTIPROC_DIR."""
    code = ("import sys, resumable.cli, resumable.app, resumable.extension;"
            "print('prometheus_client' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=True)
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------
# A host app under its own gunicorn
# --------------------------------------------------------------------------


GUNICORN_CONFIG = "from resumable.metrics import child_exit  # noqa: F401\n"


class HostedWithMetrics(HostedApp):
    """The host app with PROMETHEUS_MULTIPROC_DIR and the README's child_exit hook."""

    def __init__(self, data_dir: Path, multiproc_dir: Path | None, **settings: object):
        super().__init__(data_dir, **settings)
        self.multiproc_dir = multiproc_dir
        self.config = data_dir.parent / f"gunicorn-{self.port}.conf.py"

    def command(self) -> list[str]:
        self.config.write_text(GUNICORN_CONFIG)
        command = super().command()
        return [*command[:-1], "--config", str(self.config), command[-1]]

    def environment(self) -> dict[str, str]:
        environment = super().environment()
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if self.multiproc_dir is not None:
            self.multiproc_dir.mkdir(exist_ok=True)
            environment["PROMETHEUS_MULTIPROC_DIR"] = str(self.multiproc_dir)
        return environment


@pytest.fixture
def hosted(tmp_path: Path):
    started: list[HostedApp] = []

    def start(multiproc_dir: Path | None) -> HostedApp:
        app = HostedWithMetrics(tmp_path / f"data{len(started)}", multiproc_dir)
        started.append(app)
        return app.start()

    yield start
    for app in started:
        app.stop()


def test_hosted_app_sums_its_workers_with_multiproc_dir(hosted, tmp_path: Path) -> None:
    server = hosted(tmp_path / "multiproc")
    before = settled_scrape(server.url)
    call, received = run_known_sequence(server, HostedApp.BASE_PATH)
    assert requests.get(server.url + "/", timeout=10).text == "host home\n"  # not counted
    assert set(call.owners) == set(server.worker_pids())
    for _ in range(4):
        assert_counts(since(before, scrape(server.url)), call, received)
    assert "/metrics shows the counts of the one worker" not in server.log()


def test_hosted_app_without_multiproc_dir_warns(hosted) -> None:
    server = hosted(None)
    scrape(server.url)
    assert wait_until(lambda: "/metrics shows the counts of the one worker" in server.log(), 5)
    time.sleep(0.1)
    assert server.log().count("/metrics shows the counts of the one worker") == 1


# --------------------------------------------------------------------------
# What the lifecycle reports (in this process: one registry)
# --------------------------------------------------------------------------


def test_lifecycle_and_hook_counts() -> None:
    def read() -> dict[str, float]:
        names = {
            "created": ("resumable_uploads_created_total", {}),
            "finished": ("resumable_uploads_finished_total", {}),
            "terminated": ("resumable_uploads_terminated_total", {}),
            "finish hooks": ("resumable_hook_invocations_total", {"hooktype": "post-finish"}),
            "create hooks": ("resumable_hook_invocations_total", {"hooktype": "pre-create"}),
            "create errors": ("resumable_hook_errors_total", {"hooktype": "pre-create"}),
            "finish errors": ("resumable_hook_errors_total", {"hooktype": "post-finish"}),
        }
        return {key: REGISTRY.get_sample_value(name, labels) or 0.0
                for key, (name, labels) in names.items()}

    before = read()
    for event in ("post-create", "post-create", "post-finish", "post-terminate", "post-receive"):
        metrics.count_upload_event(event)
    metrics.count_hook("post-finish", False)
    metrics.count_hook("pre-create", True)
    after = read()
    assert {key: after[key] - before[key] for key in after} == {
        "created": 2, "finished": 1, "terminated": 1, "finish hooks": 1, "create hooks": 1,
        "create errors": 1, "finish errors": 0,
    }
