"""Prometheus metrics of the tus endpoint, served at ``--metrics-path`` (``/metrics``).

They are shaped after tusd's, so a tusd dashboard ports by renaming ``tusd_`` to
``resumable_`` (and adding ``_total`` where tusd's counter has none):

======================================================  ========================================
resumable                                               tusd
======================================================  ========================================
``resumable_requests_total{method,status}``             ``tusd_requests_total{method}``
``resumable_errors_total{status}`` (4xx and 5xx)        ``tusd_errors_total{status,code}``
``resumable_bytes_received_total``                      ``tusd_bytes_received``
``resumable_uploads_created_total``                     ``tusd_uploads_created``
``resumable_uploads_finished_total``                    ``tusd_uploads_finished``
``resumable_uploads_terminated_total``                  ``tusd_uploads_terminated``
``resumable_patches_in_flight`` (gauge)                 ``tusd_connections_open`` (closest)
``resumable_hook_invocations_total{hooktype}``          ``tusd_hook_invocations_total{hooktype}``
``resumable_hook_errors_total{hooktype}``               ``tusd_hook_errors_total{hooktype}``
``resumable_request_duration_seconds{method}``          none (histogram)
``resumable_lock_waits_total``                          none
``resumable_locked_total``                              none (423 answers)
``resumable_storage_errors_total``                      none
``resumable_registry_errors_total``                     none
======================================================  ========================================

tusd's ``code`` label (its own error codes) has no counterpart. The method label
names the tus methods and folds every other into ``other``: a method override
can name any word, and each distinct label value would be kept forever.

Several processes: gunicorn runs several workers, each with its own memory,
and a scrape reaches one of them. prometheus_client's multiprocess mode has
every process write its values to files in ``PROMETHEUS_MULTIPROC_DIR``, and
a scrape sums the files. prometheus_client picks the mode once, when it is
first imported, from that variable; so this module imports it only when a
metric is first used or served (never at import: the registry and the command
line import this module), and ``resumable serve`` sets the variable in its
master before the workers fork (:func:`shared_by_workers`) and drops the
files of a worker's live gauges when it exits (:func:`child_exit`). An app
that mounts the endpoint under its own gunicorn does the same by setting the
variable and the hook; without the variable each process serves its own
registry, and a warning says so once the server runs several processes.

Recording never fails a request: a metric that cannot be written (a removed
multiprocess directory) is logged once and the request goes on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .settings import HOOK_EVENTS

if TYPE_CHECKING:
    from flask import Blueprint, Response

log = logging.getLogger("resumable")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Methods counted under their own name; any other is counted as ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"})
#: Request durations, from a HEAD's milliseconds to a PATCH's hours.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 4 * 3600.0,
)
#: Lifecycle events that count an upload (what the lifecycle reports).
UPLOAD_EVENTS = {"post-create": "created", "post-finish": "finished",
                 "post-terminate": "terminated"}


class _Metrics:
    """Every metric of the endpoint, made once per process, when first needed."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram, values

        if multiprocess_dir() and not getattr(values.ValueClass, "_multiprocess", True):
            log.warning(
                "%s is set but prometheus_client was imported before it was: this "
                "process's metrics stay out of the shared files",
                MULTIPROC_ENV,
            )
        self.requests = Counter(
            "resumable_requests_total",
            "Requests served by the tus endpoint, by method and status.",
            ["method", "status"],
        )
        self.errors = Counter(
            "resumable_errors_total",
            "Requests of the tus endpoint answered with an error (4xx, 5xx), by status.",
            ["status"],
        )
        self.duration = Histogram(
            "resumable_request_duration_seconds",
            "Seconds from a request's start to its response (a download's body streams after).",
            ["method"],
            buckets=DURATION_BUCKETS,
        )
        self.bytes_received = Counter(
            "resumable_bytes_received_total", "Bytes of request bodies stored in uploads."
        )
        self.uploads = {
            kind: Counter(f"resumable_uploads_{kind}_total", f"Uploads {kind}.")
            for kind in UPLOAD_EVENTS.values()
        }
        self.patches_in_flight = Gauge(
            "resumable_patches_in_flight",
            "PATCH requests being served now.",
            multiprocess_mode="livesum",
        )
        self.lock_waits = Counter(
            "resumable_lock_waits_total",
            "Requests that found their upload locked and asked the holder to let go.",
        )
        self.locked = Counter(
            "resumable_locked_total",
            "Requests that gave up waiting for an upload's lock (423).",
        )
        self.hook_invocations = Counter(
            "resumable_hook_invocations_total",
            "Lifecycle hook deliveries, by event.",
            ["hooktype"],
        )
        self.hook_errors = Counter(
            "resumable_hook_errors_total",
            "Lifecycle hook deliveries that failed, by event.",
            ["hooktype"],
        )
        for event in HOOK_EVENTS:  # every event shows, at zero until it happens
            self.hook_invocations.labels(event)
            self.hook_errors.labels(event)
        self.storage_errors = Counter(
            "resumable_storage_errors_total",
            "Requests answered 503 because the upload storage (S3) was unavailable.",
        )
        self.registry_errors = Counter(
            "resumable_registry_errors_total",
            "Requests answered 503 because the upload registry (Redis) was unavailable.",
        )


_made: _Metrics | None = None
_making = threading.Lock()
_failure_logged = False
#: Whether this process records at all: not when every app in it turned /metrics off,
#: so a server without metrics pays nothing for them.
_recording = True


def record_metrics(enabled: bool) -> None:
    """Record (or not) in this process; set by each app that mounts the endpoint."""
    global _recording
    _recording = enabled


def _metrics() -> _Metrics:
    global _made
    if _made is None:
        with _making:
            if _made is None:
                _made = _Metrics()
    return _made


F = TypeVar("F", bound=Callable[..., None])


def _never_fails(record: F) -> F:
    """A metric that cannot be recorded is logged once per process, never raised."""

    @functools.wraps(record)
    def guarded(*args: Any) -> None:
        global _failure_logged
        if not _recording:
            return
        try:
            record(*args)
        except Exception:
            if not _failure_logged:
                _failure_logged = True
                log.exception("recording a metric failed (further failures are not logged)")

    return guarded  # type: ignore[return-value]


# --------------------------------------------------------------------------
# What the endpoint records
# --------------------------------------------------------------------------


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


@_never_fails
def count_request(method: str, status: int, seconds: float, bytes_received: int) -> None:
    """One request of the tus endpoint, once it is answered."""
    metrics = _metrics()
    method = method_label(method)
    metrics.requests.labels(method, str(status)).inc()
    if status >= 400:
        metrics.errors.labels(str(status)).inc()
    metrics.duration.labels(method).observe(max(0.0, seconds))
    if bytes_received > 0:
        metrics.bytes_received.inc(bytes_received)


@_never_fails
def patch_started() -> None:
    _metrics().patches_in_flight.inc()


@_never_fails
def patch_ended() -> None:
    _metrics().patches_in_flight.dec()


@_never_fails
def count_upload_event(event_type: str) -> None:
    """An upload was created, finished or terminated (``post-create`` …); others are ignored."""
    kind = UPLOAD_EVENTS.get(event_type)
    if kind is not None:
        _metrics().uploads[kind].inc()


@_never_fails
def count_hook(event_type: str, failed: bool) -> None:
    """One delivery of a lifecycle event to its receivers, and whether it failed."""
    metrics = _metrics()
    metrics.hook_invocations.labels(event_type).inc()
    if failed:
        metrics.hook_errors.labels(event_type).inc()


@_never_fails
def count_lock_wait() -> None:
    _metrics().lock_waits.inc()


@_never_fails
def count_locked() -> None:
    _metrics().locked.inc()


@_never_fails
def count_storage_error() -> None:
    _metrics().storage_errors.inc()


@_never_fails
def count_registry_error() -> None:
    _metrics().registry_errors.inc()


# --------------------------------------------------------------------------
# Serving them
# --------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """The directory multiprocess mode keeps values in, or None (one process, one registry)."""
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


def metrics_blueprint(path: str) -> Blueprint:
    """The metrics view at ``path``, in a blueprint of its own.

    Registered apart from the tus blueprint, so none of the endpoint's hooks,
    headers, CORS answers or error pages apply to it, and its scrapes are
    neither counted nor logged as uploads' requests.
    """
    from flask import Blueprint  # not at import: the registry and `resumable gc` import this

    blueprint = Blueprint("resumable_metrics", __name__)
    blueprint.add_url_rule(path, "metrics", _serve, methods=["GET"])
    return blueprint


class _SeveralProcessesCheck:
    """Warn once per process when each of several workers would answer with its own counts."""

    def __init__(self) -> None:
        self.checked = False

    def __call__(self, environ: dict[str, Any]) -> None:
        if self.checked:
            return
        self.checked = True
        if environ.get("wsgi.multiprocess"):
            log.warning(
                "/metrics shows the counts of the one worker process that answers the scrape: "
                "set %s to an empty directory and call resumable.metrics.child_exit from "
                "gunicorn's child_exit hook (see README, Metrics)",
                MULTIPROC_ENV,
            )


_check_processes = _SeveralProcessesCheck()


def _serve() -> Response:
    from flask import Response, request
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    _metrics()  # every metric shows, at zero, before anything happened here
    directory = multiprocess_dir()
    if directory is not None:
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        # prometheus_client leaves the multiprocess functions unannotated.
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        _check_processes(request.environ)
        registry = REGISTRY
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(registry), headers={"Content-Type": content_type,
                                               "Cache-Control": "no-store"})


# --------------------------------------------------------------------------
# Several worker processes
# --------------------------------------------------------------------------


@contextlib.contextmanager
def shared_by_workers(enabled: bool = True) -> Iterator[str | None]:
    """For gunicorn's master: a private directory for the workers' values, for its lifetime.

    Named in ``PROMETHEUS_MULTIPROC_DIR`` before any worker forks (and before
    prometheus_client is imported: see the module docstring), so every worker
    writes there and a scrape of any of them sums all. Files of a previous run
    would be summed too, hence a new directory each time, removed on exit.
    Forked workers leave through this block as well (gunicorn's ``sys.exit``
    in the child): only the process that made the directory removes it.
    """
    if not enabled:
        yield None
        return
    path = tempfile.mkdtemp(prefix="resumable-metrics-")
    owner = os.getpid()
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)


def child_exit(_server: object, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook: a worker's in-flight gauges leave with it.

    Its counters stay (a scrape keeps summing them); its live gauge file is
    removed, or a PATCH it was serving when it died would count forever.
    """
    directory = multiprocess_dir()
    if directory is None or not os.path.isdir(directory):
        return
    from prometheus_client.multiprocess import mark_process_dead

    # prometheus_client leaves the multiprocess functions unannotated.
    mark_process_dead(worker.pid, directory)  # type: ignore[no-untyped-call]
