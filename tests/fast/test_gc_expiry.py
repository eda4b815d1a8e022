"""Expiry and garbage collection (expiry.py, gc.py), on explicit clocks.

An upload's expiry is a timestamp in its record; a collection is
``gc.collect`` at a clock the test names. So "a week later" is a number,
and nothing waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from .harness import BASE, TUS, Endpoint, path_of, upload_id

WEEK = 7 * 24 * 3600.0
HOUR = 3600.0


def test_an_expired_upload_answers_410_until_collected_then_404(endpoint: Endpoint) -> None:
    path = endpoint.create(10, b"hello")
    endpoint.set_expires(path, time.time() - 1)
    for method, headers in (("HEAD", TUS), ("PATCH", None), ("DELETE", TUS), ("GET", {})):
        if method == "PATCH":
            status = endpoint.patch(path, 5, b"x").status_code
        else:
            status = endpoint.request(method, path, headers).status_code
        assert status == 410, method
    report = endpoint.collect()
    assert (report.expired, report.locked) == (1, 0)
    assert upload_id(path) not in endpoint.upload_ids()
    assert endpoint.head(path).status_code == 404


def test_collection_removes_exactly_what_has_expired_at_its_clock(endpoint: Endpoint) -> None:
    now = time.time()
    unfinished = endpoint.create(10, b"hello")
    finished = endpoint.create(5, b"hello")
    empty = endpoint.create(0)
    recent = endpoint.create(10)
    endpoint.set_expires(recent, now + 2 * WEEK)

    assert endpoint.collect(now=now).expired == 0
    report = endpoint.collect(now=now + WEEK + 60)
    assert report.expired == 1
    remaining = endpoint.upload_ids()
    assert upload_id(unfinished) not in remaining
    assert {upload_id(finished), upload_id(empty), upload_id(recent)} <= remaining
    assert endpoint.collect(now=now + 2 * WEEK + 60).expired == 1
    assert upload_id(recent) not in endpoint.upload_ids()


def test_a_patch_moves_the_expiry_past_a_collection(endpoint: Endpoint) -> None:
    now = time.time()
    path = endpoint.create(10, b"hello")
    endpoint.set_expires(path, now + 60)
    assert endpoint.patch(path, 5, b"wor").status_code == 204
    assert endpoint.collect(now=now + 120).expired == 0
    assert endpoint.offset(path) == 8


def test_finished_uploads_are_kept_unless_finished_expiry_is_set(
    make_endpoint: Callable[..., Endpoint],
) -> None:
    keeping = make_endpoint()
    kept = keeping.create(5, b"hello")
    assert keeping.collect(now=time.time() + 52 * WEEK).expired == 0
    assert keeping.request("GET", kept).get_data() == b"hello"

    expiring = make_endpoint(finished_expiry=HOUR)
    finished_at = time.time()
    done = expiring.create(5, b"hello")
    assert expiring.collect(now=finished_at + HOUR - 60).expired == 0
    assert expiring.collect(now=time.time() + HOUR + 1).expired == 1
    assert expiring.head(done).status_code == 404


def test_a_finished_upload_past_finished_expiry_answers_410(
    make_endpoint: Callable[..., Endpoint],
) -> None:
    endpoint = make_endpoint(finished_expiry=HOUR)
    path = endpoint.create(5, b"hello")
    lease = endpoint.registry.acquire(upload_id(path))
    try:
        record = endpoint.record(path)
        assert record is not None and record.finished is not None
        record.finished -= HOUR + 1
        endpoint.registry.save(lease, record)
    finally:
        lease.release()
    response = endpoint.request("GET", path)
    assert response.status_code == 410
    assert "finished uploads are kept for a limited time" in response.get_data(as_text=True)


def test_a_locked_expired_upload_stays_for_the_next_collection(endpoint: Endpoint) -> None:
    path = endpoint.create(10, b"hello")
    later = time.time() + WEEK + 60
    lease = endpoint.registry.acquire(upload_id(path))
    try:
        report = endpoint.collect(now=later)
        assert (report.expired, report.locked) == (0, 1)
    finally:
        lease.release()
    assert endpoint.collect(now=later).expired == 1


@pytest.mark.parametrize("how", ["partial-deleted", "partial-expired"])
def test_a_final_that_can_never_complete_is_collected(endpoint: Endpoint, how: str) -> None:
    now = time.time()
    done = endpoint.create(5, b"hello", {"Upload-Concat": "partial"})
    pending = endpoint.create(10, b"abc", {"Upload-Concat": "partial"})
    created = endpoint.request("POST", BASE, {**TUS, "Upload-Concat": f"final;{done} {pending}"})
    final = path_of(created.headers["Location"])
    assert endpoint.collect(now=now).expired == 0
    if how == "partial-deleted":
        assert endpoint.request("DELETE", pending, TUS).status_code == 204
        clock = now
    else:
        clock = now + WEEK + 60
    report = endpoint.collect(now=clock)
    assert upload_id(final) not in endpoint.upload_ids()
    assert endpoint.head(final).status_code == 404
    assert report.expired == (1 if how == "partial-deleted" else 2)
    assert upload_id(done) in endpoint.upload_ids()


def test_a_waiting_final_is_kept_while_its_partials_live(endpoint: Endpoint) -> None:
    pending = endpoint.create(10, b"abc", {"Upload-Concat": "partial"})
    created = endpoint.request("POST", BASE, {**TUS, "Upload-Concat": f"final;{pending}"})
    final = path_of(created.headers["Location"])
    assert endpoint.record(final).expires is None  # type: ignore[union-attr]
    assert endpoint.collect(now=time.time() + WEEK - 60).expired == 0
    assert upload_id(final) in endpoint.upload_ids()


def test_leftover_data_files_go_after_the_grace_period(endpoint: Endpoint) -> None:
    """A creation that crashed before its record: its data file goes, once old enough."""
    leftover = "ab" * 16
    endpoint.store.create(leftover).close()
    path = endpoint.create(5, b"hello")
    assert endpoint.collect(now=time.time()).leftovers == 0
    report = endpoint.collect(now=time.time() + HOUR + 60)
    assert report.leftovers == 1
    assert endpoint.store.read_record(leftover) is None
    with pytest.raises(FileNotFoundError):
        endpoint.store.open_data(leftover)
    assert endpoint.request("GET", path).get_data() == b"hello"
