"""The IETF draft "Resumable Uploads for HTTP" on the tus endpoint's own URLs.

A request that carries ``Upload-Draft-Interop-Version`` with a version this
server speaks (3 to 9: drafts -01 to -12) is served by the draft's rules for
that version; every other request is tus 1.0, unchanged. The uploads are
the same uploads: one registry, one store, the same locks, access and
lifecycle hooks, metrics and expiry. A draft upload's ``Content-Type`` and
``Content-Disposition`` file name become its ``filetype`` and ``filename``
metadata, so downloads, hooks and S3 objects look the same as for tus.

Where the versions differ (protocol.md has the table):

* 3 says ``Upload-Incomplete`` (the inverse) where 4 and later say
  ``Upload-Complete``;
* 3 to 6 answer an append or creation that leaves the upload incomplete
  with 201 and ``Upload-Offset``; 7 and later with 204 (append) and
  ``Upload-Complete: ?0``;
* 6 and later require ``Content-Type: application/partial-upload`` on an
  append, name limits in ``Upload-Limit`` and explain conflicts with RFC 9457
  problem details; the limit ``max-age`` was ``expires`` in 6;
* 9 may replay the final answer to an empty completing append of a finished
  upload (a client that lost it); 6 to 8 refuse it as ``completed-upload``.

Completeness is this server's as for tus: an upload is complete when its
offset reaches its length, which a completing request (``Upload-Complete:
?1``) fixes when it was not known.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from flask import Response, request

from . import digests, views
from .protocol import (
    BadRequest,
    ChecksumMismatch,
    Forbidden,
    OffsetConflict,
    PayloadTooLarge,
    TusError,
    UnsupportedMediaType,
    UploadRejected,
    encode_metadata,
    new_upload_id,
)
from .records import UploadRecord
from .structured import boolean, dictionary, parse_boolean, parse_integer

log = logging.getLogger("resumable")

#: Interop versions served: drafts -01 (3) to -12 (9).
VERSIONS = range(3, 10)
VERSION_HEADER = "Upload-Draft-Interop-Version"
PARTIAL_UPLOAD = "application/partial-upload"
PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"
#: The WSGI environ key of the version a request is served by.
VERSION = "resumable.draft_version"


def version_of(environ: dict[str, Any]) -> int | None:
    """The draft version a request asks for, when this server speaks it; else None (tus)."""
    version = parse_integer(environ.get("HTTP_UPLOAD_DRAFT_INTEROP_VERSION"))
    return version if version in VERSIONS else None


def version() -> int | None:
    return request.environ.get(VERSION)


# --------------------------------------------------------------------------
# Errors: RFC 9457 problem details where the draft names a problem type
# --------------------------------------------------------------------------


class Problem(TusError):
    """An answer with an ``application/problem+json`` body (from interop 6)."""

    mimetype = "application/problem+json"

    def __init__(self, status: int, kind: str, title: str, headers: dict[str, str],
                 **members: Any):
        super().__init__(title, headers)
        self.status = status
        self.document = {"type": PROBLEM_TYPES + kind, "title": title, **members}

    def body(self) -> str:
        return json.dumps(self.document) + "\n"


def _conflict(draft: int, record: UploadRecord, provided: int) -> TusError:
    headers = {"Upload-Offset": str(record.offset), **_flag(draft, False)}
    title = "offset from request does not match offset of resource"
    if draft < 6:
        return OffsetConflict(title, headers)
    return Problem(409, "mismatching-upload-offset", title, headers,
                   **{"expected-offset": record.offset, "provided-offset": provided})


def _inconsistent(draft: int, title: str) -> TusError:
    headers = _flag(draft, False)
    if draft < 6:
        return BadRequest(title, headers)
    return Problem(400, "inconsistent-upload-length", title, headers)


# --------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------


def _flag(draft: int, complete: bool) -> dict[str, str]:
    """The completeness field of the version: Upload-Incomplete (3) or Upload-Complete."""
    if draft == 3:
        return {"Upload-Incomplete": boolean(not complete)}
    return {"Upload-Complete": boolean(complete)}


def _completes(draft: int) -> bool | None:
    """Whether the request says it carries the rest; None when it does not say (validly)."""
    if draft == 3:
        incomplete = parse_boolean(request.headers.get("Upload-Incomplete"))
        return None if incomplete is None else not incomplete
    return parse_boolean(request.headers.get("Upload-Complete"))


def limits(draft: int) -> dict[str, str]:
    """``Upload-Limit`` (from interop 6): ``max-size`` and ``max-age``, or ``min-size=0``."""
    if draft < 6:
        return {}
    settings = views.services().settings
    values: dict[str, int] = {}
    if settings.max_size:
        values["max-size"] = settings.max_size
    if settings.expiry > 0:
        values["max-age" if draft >= 7 else "expires"] = int(settings.expiry)
    return {"Upload-Limit": dictionary(values or {"min-size": 0})}


def _digest_checked(draft: int, append: Callable[[], UploadRecord]) -> UploadRecord:
    """Run ``append``; a content that does not match its Content-Digest is not kept (400),
    and an upload whose finish was refused (its Repr-Digest, a hook) did not complete."""
    try:
        return append()
    except ChecksumMismatch as mismatch:  # its headers name the upload a creation made
        raise BadRequest("the content does not match its Content-Digest; nothing was kept",
                         {**mismatch.headers, **_flag(draft, False)}) from None
    except UploadRejected as rejected:
        rejected.headers.update(_flag(draft, False))
        raise


def _length_header() -> int | None:
    length = parse_integer(request.headers.get("Upload-Length"))
    return length if length is not None and length >= 0 else None


_FILENAME = re.compile(r'filename\*?=(?:"((?:[^"\\]|\\.)*)"|([^;]+))', re.I)


def _metadata() -> dict[str, str]:
    """``filetype`` and ``filename`` from the representation's own headers."""
    metadata: dict[str, str] = {}
    content_type = request.headers.get("Content-Type", "").strip()
    if content_type and content_type.split(";")[0].strip().lower() != PARTIAL_UPLOAD:
        metadata["filetype"] = content_type
    match = _FILENAME.search(request.headers.get("Content-Disposition", ""))
    if match:
        name = match.group(1) if match.group(1) is not None else match.group(2).strip()
        if name.lower().startswith("utf-8''"):
            name = unquote(name[7:])
        metadata["filename"] = name.replace('\\"', '"')
    return metadata


# --------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------


def state_headers(draft: int, record: UploadRecord) -> dict[str, str]:
    """Where an upload is, in the version's fields (HEAD, and every append's answer)."""
    headers = {"Upload-Offset": str(record.offset), **_flag(draft, record.is_complete)}
    if record.length is not None:
        headers["Upload-Length"] = str(record.length)
    headers.update(limits(draft))
    headers.update(digests.field(record))
    return headers


def _answer(draft: int, record: UploadRecord, created: bool) -> Response:
    """A creation's or an append's answer: 201 up to interop 6 and for creations, else 204."""
    headers = state_headers(draft, record)
    if created:
        headers["Location"] = views.upload_url(record.id)
    status = 201 if created or draft <= 6 else 204
    return views.empty_response(status, headers=headers)


# --------------------------------------------------------------------------
# The requests
# --------------------------------------------------------------------------


def create(draft: int) -> Response:
    """Creation: any body, complete (``?1``) or the start of one (``?0``)."""
    svc = views.services()
    settings = svc.settings
    views.authorize("create", None)
    complete = _completes(draft)
    if complete is None:
        field = "Upload-Incomplete" if draft == 3 else "Upload-Complete"
        raise BadRequest(f"{field} must be ?1 or ?0")
    length = _length_header()
    declared = request.content_length
    if complete and declared is not None:
        if length is not None and length != declared:
            raise _inconsistent(draft, "Upload-Length differs from the body's length")
        length = declared
    if length is not None and settings.max_size and length > settings.max_size:
        raise PayloadTooLarge(f"the upload is larger than {settings.max_size} bytes",
                              limits(draft))
    record = UploadRecord(id=new_upload_id(), length=length, created=time.time())
    record.digest = digests.asked(request.headers.get("Repr-Digest"),
                                  request.headers.get("Want-Repr-Digest"))
    metadata = _metadata()
    if metadata:
        record.metadata = encode_metadata(metadata)
    svc.expiry.stamp(record, record.created)
    views.ask_pre_create(record)
    location = views.upload_url(record.id)
    digest = digests.content_digest(request.headers.get("Content-Digest"))
    if views.has_body():
        _announce(draft, location)
    record = _digest_checked(draft, lambda: views.create_upload(record, location, digest))
    if complete and record.length is None:
        record = _digest_checked(draft, lambda: _declare_final_length(record))
    return _answer(draft, record, created=True)


def head(draft: int, upload_id: str) -> Response:
    """Offset retrieval (HEAD, and GET with the version's header)."""
    svc = views.services()
    svc.registry.await_holder_commit(upload_id)
    record = views.load_upload(upload_id)
    if record.is_final:
        raise BadRequest("a final concatenation is a tus upload")
    headers = state_headers(draft, record)
    headers["Cache-Control"] = "no-store"
    return views.empty_response(204, headers=headers)


def append(draft: int, upload_id: str) -> Response:
    """Append: the next bytes at ``Upload-Offset``; ``?1`` says they are the last."""
    media = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if draft >= 6 and media != PARTIAL_UPLOAD:
        raise UnsupportedMediaType(f"an append needs Content-Type: {PARTIAL_UPLOAD}",
                                   {"Accept-Patch": PARTIAL_UPLOAD})
    offset = parse_integer(request.headers.get("Upload-Offset"))
    if offset is None or offset < 0:
        raise BadRequest("Upload-Offset must be a non-negative integer")
    complete = _completes(draft)
    if complete is None:
        raise BadRequest("Upload-Complete must be ?1 or ?0" if draft > 3
                         else "Upload-Incomplete must be ?1 or ?0")
    new_length = _length_header()
    digest = digests.content_digest(request.headers.get("Content-Digest"))
    views.require_known_id(upload_id)
    views.authorize("append", upload_id)
    views.load_upload(upload_id)
    declared = request.content_length
    with views.locked_upload(upload_id) as (lease, record):
        if record.is_final:
            raise Forbidden("a final concatenation is a tus upload")
        if record.is_complete:
            return _after_completion(draft, record, offset, complete)
        if offset != record.offset:
            raise _conflict(draft, record, offset)
        length = record.length
        if new_length is not None:
            if length is not None and new_length != length:
                raise _inconsistent(draft, "Upload-Length differs from the upload's length")
            length = new_length
        if complete and declared is not None:
            if length is not None and offset + declared != length:
                raise _inconsistent(draft, "the body does not end the upload at its length")
            length = offset + declared
        if length is not None and length < offset:
            raise _inconsistent(draft, "Upload-Length is below the upload's offset")
        if length is not None and length != record.length:
            views.services().concatenator.save_length(lease, record, length)
        try:
            with views.deleted_if_finish_refused(lease, record):
                record = _digest_checked(
                    draft, lambda: views.append_body(lease, record, digest, False)
                )
        except PayloadTooLarge:
            raise _inconsistent(draft, "the body runs past the upload's length") from None
    if complete and record.length is None:
        record = _digest_checked(draft, lambda: _declare_final_length(record))
    return _answer(draft, record, created=False)


def _after_completion(draft: int, record: UploadRecord, offset: int, complete: bool) -> Response:
    """An append to an upload whose offset reached its length.

    An empty completing append at that offset succeeds: it is the client's
    own completion after sending the last bytes with ``?0`` (this server's
    uploads complete with their length), or, in 9, a client asking again
    for a final answer it lost. Content is refused: ``completed-upload`` in
    6 to 8, an inconsistent length in 9.
    """
    if complete and offset == record.offset and not views.has_body():
        return _answer(draft, record, created=False)
    if 6 <= draft <= 8:
        raise Problem(400, "completed-upload", "the upload is already complete",
                      _flag(draft, True))
    raise _inconsistent(draft, "the upload is already complete")


def _declare_final_length(record: UploadRecord) -> UploadRecord:
    """A completing body of unknown length has ended: the offset is the length."""
    svc = views.services()
    with views.locked_upload(record.id) as (lease, stored):
        if stored.length is None:
            stored.length = stored.offset
            svc.expiry.stamp(stored, time.time())
            with views.deleted_if_finish_refused(lease, stored):
                digests.verify(svc.store, stored)
                with svc.lifecycle.finishing_commit(stored, request.environ):
                    svc.registry.save(lease, stored)
        return stored


# --------------------------------------------------------------------------
# 104 Upload Resumption Supported
# --------------------------------------------------------------------------


def _announce(draft: int, location: str) -> None:
    """Tell the client its upload's URL before the body comes (interim 104), so a
    connection lost mid-body can resume.

    Written straight to gunicorn's socket (WSGI has no interim responses),
    before a byte of the body is read, and only to direct connections unless
    ``--interim-104 on``: a proxy that does not know 104 (Debian's nginx 1.22)
    takes it for the final answer, and the client's next request on that
    connection hangs. HTTP/1.1 only, and only before a body: a careful
    creation (no body) has its URL in the final answer at once, which also
    serves clients that cannot read interim responses (Python's http.client).
    """
    settings = views.services().settings
    environ = request.environ
    sock = environ.get("gunicorn.socket")
    wanted = {"on": True, "off": False}.get(settings.interim_104, not settings.trust_proxy)
    if not wanted or sock is None or environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        return
    lines = ["HTTP/1.1 104 Upload Resumption Supported", f"Location: {location}",
             f"{VERSION_HEADER}: {draft}"]
    lines += [f"{name}: {value}" for name, value in limits(draft).items()]
    with contextlib.suppress(OSError):
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
