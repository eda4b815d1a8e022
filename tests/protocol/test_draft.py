"""The IETF draft "Resumable Uploads for HTTP" against the real server: request → answer.

One test per row of the interop-9 table (the numbers in the names), and the
rows whose answer differs by interop version run for every version that
differs (3 to 9). Most run against a server that sends no 104 (Python's
http.client would take an interim 104 for the final answer); the 104 itself
is read from a raw socket. Both registries.
"""

from __future__ import annotations

import socket
import time

import pytest
import requests

from ..support import (
    TUS,
    RawRequest,
    Server,
    b64_digest,
    pattern_bytes,
    read_head,
    request_head,
    wait_until,
)

BACKENDS = ("embedded", "redis", "redis-s3")
MAX_SIZE = 1000
PU = "application/partial-upload"
PROBLEMS = "https://iana.org/assignments/http-problem-types#"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, start_server) -> Server:
    return start_server(request.param, max_size=MAX_SIZE, interim_104="off")


class Draft:
    """Requests of one interop version."""

    def __init__(self, server: Server, version: int = 9):
        self.server = server
        self.version = version
        self.session = requests.Session()

    def headers(self, **fields: str) -> dict[str, str]:
        names = {"complete": "Upload-Complete", "offset": "Upload-Offset",
                 "length": "Upload-Length", "type": "Content-Type"}
        headers = {"Upload-Draft-Interop-Version": str(self.version)}
        for key, value in fields.items():
            if key == "complete" and self.version == 3:
                headers["Upload-Incomplete"] = "?0" if value == "?1" else "?1"
            else:
                headers[names.get(key, key)] = value
        return headers

    def create(self, body: bytes = b"", **fields: str) -> requests.Response:
        return self.session.post(self.server.endpoint, data=body, timeout=30,
                                 headers=self.headers(**fields))

    def new(self, length: int = 100, sent: bytes = b"") -> str:
        response = self.create(sent, complete="?0", length=str(length))
        assert response.status_code == 201, (response.status_code, response.text)
        return response.headers["Location"]

    def head(self, url: str) -> requests.Response:
        return self.session.head(url, headers=self.headers(), timeout=30)

    def append(self, url: str, offset: int, body: bytes, complete: str = "?0",
               **fields: str) -> requests.Response:
        fields = {"type": PU, **fields}
        return self.session.patch(url, data=body, timeout=30, headers=self.headers(
            offset=str(offset), complete=complete, **fields))

    def flag(self, response: requests.Response) -> bool | None:
        """The completeness the answer states, in the version's field."""
        if self.version == 3:
            value = response.headers.get("Upload-Incomplete")
            return None if value is None else value == "?0"
        value = response.headers.get("Upload-Complete")
        return None if value is None else value == "?1"


def upload_at_50(draft: Draft) -> str:
    """The table's upload A: length 100, offset 50, incomplete."""
    url = draft.new(100)
    assert draft.append(url, 0, pattern_bytes(50)).status_code in (201, 204)
    return url


@pytest.fixture
def draft(server: Server) -> Draft:
    return Draft(server)


def problem(response: requests.Response, kind: str) -> dict:
    assert response.headers["Content-Type"] == "application/problem+json"
    document = response.json()
    assert document["type"] == PROBLEMS + kind
    return document


def test_1_options_names_the_limits(draft: Draft) -> None:
    response = requests.options(draft.server.endpoint, headers=draft.headers(), timeout=10)
    assert response.status_code in (200, 204)
    assert response.headers["Upload-Limit"] == "max-size=1000, max-age=604800"
    assert "Tus-Resumable" not in response.headers
    assert response.headers["Upload-Draft-Interop-Version"] == "9"
    tus = requests.options(draft.server.endpoint, timeout=10)
    assert "Upload-Limit" not in tus.headers and tus.headers["Tus-Resumable"] == "1.0.0"


def test_2_careful_creation(draft: Draft) -> None:
    response = draft.create(complete="?0", length="100")
    assert response.status_code == 201
    assert response.headers["Location"].startswith(draft.server.endpoint)
    assert response.headers["Upload-Complete"] == "?0"
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Limit"].startswith("max-size=1000")
    assert "Tus-Resumable" not in response.headers


def test_3_creation_with_the_whole_body(draft: Draft) -> None:
    body = pattern_bytes(100)
    response = draft.create(body, complete="?1", type="image/png",
                            **{"Content-Disposition": 'attachment; filename="cat.png"'})
    assert response.status_code == 201 and response.headers["Upload-Complete"] == "?1"
    url = response.headers["Location"]
    download = requests.get(url, timeout=10)  # a plain GET downloads, as for tus
    assert download.content == body
    assert download.headers["Content-Type"] == "image/png"
    assert "cat.png" in download.headers["Content-Disposition"]


def test_4_creation_with_part_of_the_body(draft: Draft) -> None:
    response = draft.create(pattern_bytes(40), complete="?0", length="100")
    assert response.status_code == 201
    assert (response.headers["Upload-Complete"], response.headers["Upload-Offset"]) == ("?0", "40")


def test_5_inconsistent_lengths_on_creation(draft: Draft) -> None:
    before = set(draft.server.upload_ids())
    response = draft.create(pattern_bytes(100), complete="?1", length="90")
    assert response.status_code == 400 and response.headers["Upload-Complete"] == "?0"
    problem(response, "inconsistent-upload-length")
    assert set(draft.server.upload_ids()) == before


def test_6_too_large(draft: Draft) -> None:
    before = set(draft.server.upload_ids())
    response = draft.create(complete="?0", length="2000")
    assert response.status_code == 413
    assert response.headers["Upload-Limit"].startswith("max-size=1000")
    assert set(draft.server.upload_ids()) == before


def test_7_a_completeness_that_is_not_a_boolean(draft: Draft) -> None:
    response = draft.session.post(draft.server.endpoint, timeout=10, headers={
        **draft.headers(length="10"), "Upload-Complete": "true"})
    assert response.status_code == 400


def test_9_an_unknown_version_is_tus(draft: Draft) -> None:
    response = requests.post(draft.server.endpoint, timeout=10, headers={
        "Upload-Draft-Interop-Version": "99", "Upload-Complete": "?0"})
    assert response.status_code == 412 and response.headers["Tus-Version"] == "1.0.0"


def test_10_11_offset_retrieval_by_head_and_get(draft: Draft) -> None:
    url = upload_at_50(draft)
    for response in (draft.head(url),
                     requests.get(url, headers=draft.headers(), timeout=10)):
        assert response.status_code == 204
        assert response.headers["Upload-Offset"] == "50"
        assert response.headers["Upload-Complete"] == "?0"
        assert response.headers["Upload-Length"] == "100"
        assert response.headers["Upload-Limit"].startswith("max-size=1000")
        assert response.headers["Cache-Control"] == "no-store"
        assert response.content == b""


def test_12_unknown_upload(draft: Draft) -> None:
    assert draft.head(draft.server.endpoint + "0" * 32).status_code == 404


def test_13_append(draft: Draft) -> None:
    url = upload_at_50(draft)
    response = draft.append(url, 50, pattern_bytes(20))
    assert response.status_code == 204
    assert (response.headers["Upload-Complete"], response.headers["Upload-Offset"]) == ("?0", "70")


def test_14_offset_mismatch(draft: Draft) -> None:
    url = upload_at_50(draft)
    response = draft.append(url, 40, b"x")
    assert response.status_code == 409
    assert (response.headers["Upload-Complete"], response.headers["Upload-Offset"]) == ("?0", "50")
    document = problem(response, "mismatching-upload-offset")
    assert (document["expected-offset"], document["provided-offset"]) == (50, 40)


def test_15_16_17_malformed_appends(draft: Draft) -> None:
    url = upload_at_50(draft)
    wrong_type = draft.append(url, 50, b"x", type="application/offset+octet-stream")
    assert wrong_type.status_code == 415 and wrong_type.headers["Accept-Patch"] == PU
    no_flag = draft.session.patch(url, data=b"x", timeout=10, headers={
        **draft.headers(offset="50", type=PU)})
    assert no_flag.status_code == 400
    no_offset = draft.session.patch(url, data=b"x", timeout=10, headers={
        **draft.headers(complete="?0", type=PU)})
    assert no_offset.status_code == 400
    assert draft.head(url).headers["Upload-Offset"] == "50"


def test_18_21_22_23_completion_and_after(draft: Draft) -> None:
    data = pattern_bytes(100)
    url = draft.new(100, data[:50])
    done = draft.append(url, 50, data[50:], complete="?1")
    assert done.status_code == 204 and done.headers["Upload-Complete"] == "?1"
    replay = draft.append(url, 100, b"", complete="?1")  # a client that lost the answer
    assert replay.status_code == 204 and replay.headers["Upload-Complete"] == "?1"
    more = draft.append(url, 100, b"x", complete="?1")
    assert more.status_code == 400
    problem(more, "inconsistent-upload-length")
    assert requests.get(url, timeout=10).content == data


def test_19_a_short_completing_append(draft: Draft) -> None:
    url = upload_at_50(draft)
    response = draft.append(url, 50, pattern_bytes(40), complete="?1")
    assert response.status_code == 400 and response.headers["Upload-Complete"] == "?0"
    problem(response, "inconsistent-upload-length")
    assert draft.head(url).headers["Upload-Offset"] == "50"


def test_20_a_body_past_the_length(draft: Draft) -> None:
    url = upload_at_50(draft)
    chunks = iter([pattern_bytes(30), pattern_bytes(30)])  # chunked: no Content-Length
    response = draft.append(url, 50, chunks)
    assert response.status_code == 400
    problem(response, "inconsistent-upload-length")
    # Refused, not deactivated (both are the draft's): what fits is kept.
    assert draft.head(url).headers["Upload-Offset"] == "100"


def test_24_a_completing_append_fixes_an_unknown_length(draft: Draft) -> None:
    response = draft.create(pattern_bytes(10), complete="?0")
    url = response.headers["Location"]
    assert "Upload-Length" not in draft.head(url).headers
    done = draft.append(url, 10, iter([pattern_bytes(5)]), complete="?1")
    assert done.status_code == 204 and done.headers["Upload-Complete"] == "?1"
    head = draft.head(url)
    assert (head.headers["Upload-Length"], head.headers["Upload-Complete"]) == ("15", "?1")


def test_25_a_changed_length(draft: Draft) -> None:
    url = upload_at_50(draft)
    response = draft.append(url, 50, b"x", length="120")
    assert response.status_code == 400
    problem(response, "inconsistent-upload-length")


def stalled_append(draft: Draft, url: str) -> RawRequest:
    """An append from offset 50 declaring 50 bytes, of which 10 arrive; then silence."""
    stuck = RawRequest(draft.server, "PATCH", url, 50,
                       draft.headers(offset="50", complete="?0", type=PU)).begin(pattern_bytes(10))
    assert wait_until(lambda: draft.head(url).headers["Upload-Offset"] == "60", 5)
    return stuck


def test_27_a_new_append_takes_over_a_stuck_one(draft: Draft) -> None:
    url = upload_at_50(draft)
    stuck = stalled_append(draft, url)
    try:
        taken = draft.append(url, 60, pattern_bytes(5))
        assert taken.status_code == 204 and taken.headers["Upload-Offset"] == "65"
    finally:
        stuck.close()


def test_21_completion_by_an_empty_append(draft: Draft) -> None:
    """All bytes sent with ?0, then an empty ?1: complete, in every version."""
    url = draft.new(100, pattern_bytes(100))
    done = draft.append(url, 100, b"", complete="?1")
    assert done.status_code == 204 and done.headers["Upload-Complete"] == "?1"


def test_28_29_cancellation(draft: Draft) -> None:
    url = upload_at_50(draft)
    streaming = stalled_append(draft, url)
    try:  # a request still streaming into it is ended by the DELETE (lock release)
        deleted = draft.session.delete(url, headers=draft.headers(), timeout=10)
        assert deleted.status_code == 204
    finally:
        streaming.close()
    assert draft.head(url).status_code == 404
    assert draft.session.delete(url, headers=draft.headers(), timeout=10).status_code == 404


# -- where the versions differ ---------------------------------------------------


@pytest.mark.parametrize("version", range(3, 10))
def test_versions_creation_and_append(server: Server, version: int) -> None:
    """Field names, statuses and problem bodies of each interop version."""
    draft = Draft(server, version)
    created = draft.create(pattern_bytes(10), complete="?0", length="30")
    assert created.status_code == 201 and created.headers["Upload-Offset"] == "10"
    assert draft.flag(created) is False
    assert ("Upload-Limit" in created.headers) is (version >= 6)
    if version == 6:
        assert "expires=604800" in created.headers["Upload-Limit"]
    url = created.headers["Location"]
    appended = draft.append(url, 10, pattern_bytes(10))
    assert appended.status_code == (201 if version <= 6 else 204)
    assert appended.headers["Upload-Offset"] == "20" and draft.flag(appended) is False
    conflict = draft.append(url, 5, b"x")
    assert conflict.status_code == 409 and conflict.headers["Upload-Offset"] == "20"
    if version >= 6:
        problem(conflict, "mismatching-upload-offset")
    loose = draft.append(url, 20, pattern_bytes(10),
                         type="application/octet-stream")  # no partial-upload type
    assert loose.status_code == (415 if version >= 6 else (201 if version <= 6 else 204))
    if version >= 6:
        loose = draft.append(url, 20, pattern_bytes(10), complete="?1")
    assert draft.flag(loose) is True
    # An empty completing append at the final offset succeeds in every version.
    again = draft.append(url, 30, b"", complete="?1")
    assert again.status_code == (201 if version <= 6 else 204) and draft.flag(again) is True
    more = draft.append(url, 30, b"x", complete="?1")
    assert more.status_code == 400
    if version >= 6:
        problem(more, "completed-upload" if version <= 8 else "inconsistent-upload-length")
    head = draft.head(url)
    assert head.status_code == 204 and draft.flag(head) is True


def test_tus_and_draft_share_uploads(draft: Draft) -> None:
    """An upload made by one protocol is resumed by the other."""
    tus_made = requests.post(draft.server.endpoint, timeout=10,
                             headers={**TUS, "Upload-Length": "20"}).headers["Location"]
    assert draft.append(tus_made, 0, pattern_bytes(10)).status_code == 204
    tus_head = requests.head(tus_made, headers=TUS, timeout=10)
    assert tus_head.headers["Upload-Offset"] == "10" and tus_head.headers["Tus-Resumable"]


# -- 104 Upload Resumption Supported -----------------------------------------------


@pytest.fixture(scope="module")
def announcing(start_server) -> Server:
    """A server with the default --interim-104 auto: it sends 104 to direct connections."""
    return start_server("redis", max_size=10_000_000)


def _start_creation(server: Server, length: int, sent: bytes) -> socket.socket:
    """A complete creation of ``length`` bytes, interop 9, its first bytes ``sent``."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    headers = {"Upload-Draft-Interop-Version": "9", "Upload-Complete": "?1",
               "Content-Length": str(length)}
    sock.sendall(request_head(server, "POST", "/files/", headers) + sent)
    return sock


def test_104_announces_the_upload_before_the_body_and_a_cut_resumes(
    announcing: Server,
) -> None:
    data = pattern_bytes(3_000_000, seed=5)
    sock = _start_creation(announcing, len(data), b"")
    interim = read_head(sock, bytearray())  # before a byte of the body was sent
    assert interim.status == 104
    location = interim.headers["location"]
    assert interim.headers["upload-draft-interop-version"] == "9"
    assert interim.headers["upload-limit"] == "max-size=10000000, max-age=604800"
    sock.sendall(data[:1_000_000])
    time.sleep(0.5)
    sock.close()  # the connection is lost mid-body
    draft = Draft(announcing)
    assert wait_until(lambda: draft.head(location).headers.get("Upload-Offset") == "1000000", 10)
    done = draft.append(location, 1_000_000, data[1_000_000:], complete="?1")
    assert done.status_code == 204 and done.headers["Upload-Complete"] == "?1"
    assert requests.get(location, timeout=30).content == data


def test_104_then_the_final_answer_on_a_kept_alive_connection(announcing: Server) -> None:
    body = b"0123456789"
    sock = _start_creation(announcing, len(body), body)
    buffer = bytearray()
    try:
        interim = read_head(sock, buffer)
        assert interim.status == 104
        location = interim.headers["location"]
        final = read_head(sock, buffer)
        assert final.status == 201 and final.headers["location"] == location
        # The same connection takes the next request.
        sock.sendall(request_head(announcing, "HEAD", location,
                                  {"Upload-Draft-Interop-Version": "9"}))
        head = read_head(sock, bytearray())
        assert (head.status, head.headers["upload-offset"], head.headers["upload-complete"]) == (
            204, "10", "?1")
    finally:
        sock.close()


def test_no_104_without_a_supported_version(announcing: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", announcing.port), timeout=10)
    try:
        sock.sendall(request_head(announcing, "POST", "/files/", {
            **TUS, "Upload-Length": "3", "Upload-Draft-Interop-Version": "99",
            "Content-Length": "0"}))
        assert read_head(sock, bytearray()).status == 201
    finally:
        sock.close()


def test_careful_creation_and_resumption_through_nginx(start_server) -> None:
    """Behind the shipped nginx config (a trusted proxy): no 104 by default, so careful
    creation; every request on one kept-alive connection, each answered in turn."""
    proxied = start_server("proxied-redis")
    draft = Draft(proxied)
    data = pattern_bytes(3 * 1024 * 1024, seed=8)
    created = draft.create(complete="?0", length=str(len(data)))
    assert created.status_code == 201
    url = created.headers["Location"]
    assert url.startswith(proxied.endpoint)
    offset = 0
    for end in (1_000_000, 2_000_000):
        appended = draft.append(url, offset, data[offset:end])
        assert appended.status_code == 204, appended.text
        offset = int(appended.headers["Upload-Offset"])
        assert int(draft.head(url).headers["Upload-Offset"]) == offset == end
    done = draft.append(url, offset, data[offset:], complete="?1")
    assert done.status_code == 204 and done.headers["Upload-Complete"] == "?1"
    assert requests.get(url, timeout=30).content == data


def digest(data: bytes, algorithm: str = "sha256") -> str:
    """An RFC 9530 digest field's member for ``data``."""
    return f"{algorithm.replace('sha', 'sha-')}=:{b64_digest(algorithm, data)}:"


def test_content_digest_is_verified(draft: Draft) -> None:
    """RFC 9530 Content-Digest on an append: a mismatch keeps nothing; a match is kept."""
    url = upload_at_50(draft)
    body = pattern_bytes(20, seed=3)
    wrong = draft.append(url, 50, body, **{"Content-Digest": digest(b"other")})
    assert wrong.status_code == 400 and wrong.headers["Upload-Complete"] == "?0"
    assert draft.head(url).headers["Upload-Offset"] == "50"
    right = draft.append(url, 50, body, **{"Content-Digest": digest(body, "sha512")})
    assert right.status_code == 204 and right.headers["Upload-Offset"] == "70"
    unknown = draft.append(url, 70, body, **{"Content-Digest": "md5=:AAAA:"})
    assert unknown.status_code == 204  # not an algorithm it verifies: taken as it is
    malformed = draft.append(url, 90, body, **{"Content-Digest": "sha-256=notbytes"})
    assert malformed.status_code == 400


@pytest.mark.parametrize("version", [3, 6, 9])
def test_repr_digest_is_checked_over_several_requests(server: Server, version: int) -> None:
    """Repr-Digest on the creation covers the whole representation, checked once its last
    byte is stored; the completing answer and offset retrieval repeat it."""
    draft = Draft(server, version)
    data = pattern_bytes(100, seed=version)
    created = draft.create(data[:40], complete="?0", length="100",
                           **{"Repr-Digest": f"md5=:AAAA:, {digest(data)}"})
    assert created.status_code == 201 and "Repr-Digest" not in created.headers
    url = created.headers["Location"]
    done = draft.append(url, 40, data[40:], complete="?1")
    assert done.status_code in (200, 201, 204) and draft.flag(done) is True
    assert done.headers["Repr-Digest"] == digest(data)
    assert draft.head(url).headers["Repr-Digest"] == digest(data)
    assert requests.get(url, timeout=10).content == data


def test_a_representation_unlike_its_repr_digest_is_deleted(draft: Draft) -> None:
    data = pattern_bytes(100, seed=4)
    before = set(draft.server.upload_ids())
    url = draft.create(data[:40], complete="?0", length="100",
                       **{"Repr-Digest": digest(b"something else")}).headers["Location"]
    done = draft.append(url, 40, data[40:], complete="?1")
    assert done.status_code == 400 and "Repr-Digest" in done.text
    assert done.headers["Upload-Complete"] == "?0"
    assert draft.head(url).status_code == 404
    assert requests.get(url, timeout=10).status_code in (404, 410)
    whole = draft.create(data, complete="?1", **{"Repr-Digest": digest(data[1:], "sha512")})
    assert whole.status_code == 400
    assert set(draft.server.upload_ids()) == before  # nothing of either is left


def test_want_repr_digest_asks_for_the_servers_digest(draft: Draft) -> None:
    data = pattern_bytes(70, seed=5)
    response = draft.create(data, complete="?1",
                            **{"Want-Repr-Digest": "sha-256=3, sha-512=7, md5=10"})
    assert response.status_code == 201
    assert response.headers["Repr-Digest"] == digest(data, "sha512")
    ignored = draft.create(data, complete="?1", **{"Want-Repr-Digest": "sha-256=0"})
    assert ignored.status_code == 201 and "Repr-Digest" not in ignored.headers


def test_repr_digest_when_the_length_comes_with_the_last_bytes(draft: Draft) -> None:
    """A completing append of unknown length (chunked): the length, then the check."""
    data = pattern_bytes(60, seed=6)
    for expected, status in ((data, 204), (data + b"!", 400)):
        url = draft.create(data[:10], complete="?0",
                           **{"Repr-Digest": digest(expected)}).headers["Location"]
        done = draft.append(url, 10, iter([data[10:35], data[35:]]), complete="?1")
        assert done.status_code == status, done.text
        assert done.headers["Upload-Complete"] == ("?1" if status == 204 else "?0")
        assert draft.head(url).status_code == (204 if status == 204 else 404)
        if status == 204:
            assert requests.get(url, timeout=10).content == data


def test_repr_digest_of_an_empty_representation(draft: Draft) -> None:
    empty = draft.create(b"", complete="?1", **{"Repr-Digest": digest(b"")})
    assert empty.status_code == 201 and empty.headers["Repr-Digest"] == digest(b"")
    before = set(draft.server.upload_ids())
    wrong = draft.create(b"", complete="?1", **{"Repr-Digest": digest(b"x")})
    assert wrong.status_code == 400
    malformed = draft.create(b"abc", complete="?1", **{"Repr-Digest": "sha-256=:AAAA:"})
    assert malformed.status_code == 400 and "Repr-Digest" in malformed.text
    assert set(draft.server.upload_ids()) == before


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_creation_with_other_methods(draft: Draft, method: str) -> None:
    body = pattern_bytes(30)
    response = draft.session.request(method, draft.server.endpoint, data=body, timeout=10,
                                     headers=draft.headers(complete="?1"))
    assert response.status_code == 201 and response.headers["Upload-Complete"] == "?1"
    assert requests.get(response.headers["Location"], timeout=10).content == body
    tus = requests.request(method, draft.server.endpoint, headers=TUS, timeout=10)
    assert tus.status_code == 405  # tus creates with POST only


def test_no_104_on_a_careful_creation(announcing: Server) -> None:
    """No body, no 104: the final answer names the URL at once (clients that cannot
    read interim answers, such as Python's http.client, create this way)."""
    response = requests.post(announcing.endpoint, timeout=10, headers={
        "Upload-Draft-Interop-Version": "9", "Upload-Complete": "?0", "Upload-Length": "5"})
    assert response.status_code == 201 and response.headers["Location"]
