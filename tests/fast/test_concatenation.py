"""Concatenation (protocol.md, Concatenation): partials, finals joined at once or waiting.

The joins are real: the store copies the parts' bytes, and a download of
the final must be the parts' bytes in the listed order.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from werkzeug.test import TestResponse

from .harness import BASE, MAX_SIZE, TUS, Endpoint, path_of, pattern, unknown_path, upload_id

PARTIAL = {"Upload-Concat": "partial"}


def _final(endpoint: Endpoint, value: str, **more: str) -> TestResponse:
    return endpoint.request("POST", BASE, {**TUS, "Upload-Concat": value, **more})


def _partial(endpoint: Endpoint, data: bytes, length: int | None = None, sent: int | None = None
             ) -> str:
    """A partial upload of ``data`` (its length ``length``), ``sent`` bytes of it uploaded."""
    sent = len(data) if sent is None else sent
    return endpoint.create(len(data) if length is None else length, data[:sent], PARTIAL)


def test_a_final_of_finished_partials_is_joined_in_its_post(endpoint: Endpoint) -> None:
    first, second = pattern(300, seed=1), pattern(200, seed=2)
    parts = [_partial(endpoint, first), _partial(endpoint, second)]
    # Absolute (any host), host-relative and bare-id URLs all name a part.
    value = f"final;https://elsewhere.example{parts[0]} {upload_id(parts[1])}"
    created = _final(endpoint, value, **{"Upload-Metadata": "filename am9pbmVk"})
    assert created.status_code == 201
    final = path_of(created.headers["Location"])
    head = endpoint.head(final)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == "500"
    assert head.headers["Upload-Concat"] == value
    assert head.headers["Upload-Metadata"] == "filename am9pbmVk"
    assert "Upload-Expires" not in head.headers
    download = endpoint.request("GET", final)
    assert download.get_data() == first + second
    assert download.headers["Content-Disposition"] == 'attachment; filename="joined"'


def test_a_final_waits_for_its_partials_then_is_joined(endpoint: Endpoint) -> None:
    first, second = pattern(100, seed=3), pattern(50, seed=4)
    one = _partial(endpoint, first, sent=40)
    two = _partial(endpoint, second)
    created = _final(endpoint, f"final;{one} {two}")
    assert created.status_code == 201 and "Upload-Expires" not in created.headers
    final = path_of(created.headers["Location"])

    waiting = endpoint.head(final)
    assert waiting.status_code == 200
    assert "Upload-Offset" not in waiting.headers
    assert waiting.headers["Upload-Length"] == "150"
    assert endpoint.request("GET", final).status_code == 404
    assert endpoint.patch(final, 0, b"x").status_code == 403

    assert endpoint.patch(one, 40, first[40:]).status_code == 204
    joined = endpoint.head(final)
    assert joined.headers["Upload-Offset"] == joined.headers["Upload-Length"] == "150"
    assert endpoint.request("GET", final).get_data() == first + second
    # The parts stay, and are still theirs.
    assert endpoint.request("GET", one).get_data() == first


def test_a_waiting_final_shows_its_length_once_every_part_knows_its_own(
    endpoint: Endpoint,
) -> None:
    known = _partial(endpoint, b"hello")
    deferred = endpoint.create(None, b"wor", PARTIAL)
    final = path_of(_final(endpoint, f"final;{known} {deferred}").headers["Location"])
    head = endpoint.head(final)
    assert "Upload-Length" not in head.headers and "Upload-Defer-Length" not in head.headers
    declared = endpoint.patch(deferred, 3, b"ld", {"Upload-Length": "5"})
    assert declared.status_code == 204
    assert endpoint.head(final).headers["Upload-Offset"] == "10"
    assert endpoint.request("GET", final).get_data() == b"helloworld"


def test_a_deferred_partial_cannot_make_its_final_too_large(endpoint: Endpoint) -> None:
    known = _partial(endpoint, pattern(600))
    deferred = endpoint.create(None, b"", PARTIAL)
    assert _final(endpoint, f"final;{known} {deferred}").status_code == 201
    too_much = endpoint.patch(deferred, 0, b"", {"Upload-Length": str(MAX_SIZE - 600 + 1)})
    assert too_much.status_code == 413
    assert endpoint.head(deferred).headers["Upload-Defer-Length"] == "1"
    fits = endpoint.patch(deferred, 0, b"", {"Upload-Length": str(MAX_SIZE - 600)})
    assert fits.status_code == 204


def test_deleting_a_final_leaves_its_partials(endpoint: Endpoint) -> None:
    part = _partial(endpoint, b"hello")
    final = path_of(_final(endpoint, f"final;{part}").headers["Location"])
    assert endpoint.request("DELETE", final, TUS).status_code == 204
    assert endpoint.head(final).status_code == 404
    assert endpoint.request("GET", part).get_data() == b"hello"


def test_deleting_a_partial_leaves_a_joined_final_whole(endpoint: Endpoint) -> None:
    part = _partial(endpoint, b"hello")
    final = path_of(_final(endpoint, f"final;{part}").headers["Location"])
    assert endpoint.request("DELETE", part, TUS).status_code == 204
    assert endpoint.request("GET", final).get_data() == b"hello"


#: POSTs of a final, by what is wrong; ``{A}`` and ``{B}`` are partials, ``{W}`` a whole
#: upload, ``{N}`` one never created.
FINAL_ROWS = [
    ("length", "final;{A}", {"Upload-Length": "5"}, 400),
    ("defer-length", "final;{A}", {"Upload-Defer-Length": "1"}, 400),
    ("bad-metadata", "final;{A}", {"Upload-Metadata": "a ***"}, 400),
    ("no-url", "final;", {}, 400),
    ("blank-urls", "final;   ", {}, 400),
    ("no-semicolon", "final", {}, 400),
    ("too-many-parts", "final;{A} {B} {A2}", {}, 400),
    ("outside-base-path", "final;/elsewhere/{A_ID}", {}, 404),
    ("malformed-id", "final;/files/xyz", {}, 404),
    ("unknown-part", "final;{N}", {}, 404),
    ("part-twice", "final;{A} {A}", {}, 400),
    ("whole-upload", "final;{A} {W}", {}, 400),
    ("too-large", "final;{A} {BIG}", {}, 413),
    ("neither-kind", "finale;{A}", {}, 400),
]


@pytest.mark.parametrize(
    ("value", "extra", "status"),
    [pytest.param(value, extra, status, id=name) for name, value, extra, status in FINAL_ROWS],
)
def test_a_final_that_cannot_be_made_creates_nothing(
    make_endpoint: Callable[..., Endpoint], value: str, extra: dict[str, str], status: int
) -> None:
    endpoint = make_endpoint(max_concat_parts=2)
    uploads = {
        "A": _partial(endpoint, b"hello"),
        "A2": _partial(endpoint, b"again"),
        "B": endpoint.create(10, b"abc", PARTIAL),
        "BIG": endpoint.create(MAX_SIZE, b"", PARTIAL),
        "W": endpoint.create(5, b"whole"),
        "N": unknown_path(),
    }
    uploads["A_ID"] = upload_id(uploads["A"])
    before = endpoint.upload_ids()
    response = _final(endpoint, value.format_map(uploads), **extra)
    assert response.status_code == status, response.get_data(as_text=True)
    assert endpoint.upload_ids() == before


def test_a_final_with_a_body_is_forbidden(endpoint: Endpoint) -> None:
    part = _partial(endpoint, b"hello")
    before = endpoint.upload_ids()
    response = endpoint.request(
        "POST", BASE, {**TUS, "Upload-Concat": f"final;{part}",
                       "Content-Type": "application/offset+octet-stream"}, b"data")
    assert response.status_code == 403
    assert endpoint.upload_ids() == before


def test_partial_lengths_without_a_maximum_are_bounded_by_2_63(
    make_endpoint: Callable[..., Endpoint],
) -> None:
    endpoint = make_endpoint(max_size=0)
    big = endpoint.create(2**62, b"", PARTIAL)
    other = endpoint.create(2**62, b"", PARTIAL)
    assert _final(endpoint, f"final;{big} {other}").status_code == 413
    small = endpoint.create(2**62 - 1, b"", PARTIAL)
    assert _final(endpoint, f"final;{big} {small}").status_code == 201
