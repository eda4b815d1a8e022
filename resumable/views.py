"""The tus endpoint: one function per method, each read top to bottom as the spec.

parse and validate every header → take the lock → load the record → check
state → stream → commit → answer. A failure anywhere is a raised
:class:`~resumable.protocol.TusError`; the app turns it into the response.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, request

from .checksum import ALGORITHMS, Checksum, parse_checksum
from .concat import BackgroundJoins, Concatenator, final_length, parse_final
from .download import download_response
from .expiry import ExpiryPolicy
from .hooks import Authorizer
from .protocol import (
    TUS_VERSION,
    BadRequest,
    Forbidden,
    Gone,
    HeaderTooLarge,
    NotFound,
    OffsetConflict,
    PayloadTooLarge,
    TusError,
    UnsupportedMediaType,
    check_version,
    is_offset_stream,
    is_valid_upload_id,
    new_upload_id,
    parse_metadata,
    parse_uint,
)
from .records import UploadRecord
from .registry import Lease, LeaseLost, Registry
from .settings import Settings
from .store import Store
from .transfer import Appender

#: Extensions this server implements, in the order OPTIONS lists them.
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
    "checksum-trailer",
    "concatenation",
    "concatenation-unfinished",
)


def extensions(settings: Settings) -> list[str]:
    """What this configuration offers: expiration only when uploads expire, and
    checksum-trailer only where the trailers reach the server."""
    withheld = set()
    if settings.expiry <= 0:
        withheld.add("expiration")
    if not settings.offers_checksum_trailer:
        withheld.add("checksum-trailer")
    return [name for name in EXTENSIONS if name not in withheld]


blueprint = Blueprint("tus", __name__)
log = logging.getLogger("resumable")


@dataclass
class Services:
    """What the views need, built once per app by the factory."""

    settings: Settings
    store: Store
    registry: Registry
    appender: Appender
    concatenator: Concatenator
    joins: BackgroundJoins
    expiry: ExpiryPolicy
    authorizer: Authorizer | None = None


def services() -> Services:
    return current_app.extensions["resumable"]


# --------------------------------------------------------------------------
# Request-wide checks
# --------------------------------------------------------------------------


@blueprint.before_request
def require_tus_version() -> None:
    """Tus-Resumable on every request but OPTIONS and GET (browsers download)."""
    if request.method not in ("OPTIONS", "GET"):
        check_version(request.headers.get("Tus-Resumable"))


# --------------------------------------------------------------------------
# OPTIONS: discovery and CORS preflight
# --------------------------------------------------------------------------


@blueprint.route("/", methods=["OPTIONS"], strict_slashes=False, provide_automatic_options=False)
@blueprint.route("/<_upload_id>", methods=["OPTIONS"], provide_automatic_options=False)
def options(_upload_id: str | None = None) -> Response:
    settings = services().settings
    response = _empty(204)
    response.headers["Tus-Version"] = TUS_VERSION
    response.headers["Tus-Extension"] = ",".join(extensions(settings))
    response.headers["Tus-Checksum-Algorithm"] = ",".join(ALGORITHMS)
    if settings.max_size:
        response.headers["Tus-Max-Size"] = str(settings.max_size)
    return response


# --------------------------------------------------------------------------
# POST: creation (with upload, deferred length)
# --------------------------------------------------------------------------


@blueprint.route("/", methods=["POST"], strict_slashes=False)
def create() -> Response:
    svc = services()
    settings = svc.settings
    _authorize("create", None)
    concat = request.headers.get("Upload-Concat")
    if concat is not None and concat.strip().startswith("final"):
        return _create_final(concat.strip())
    if concat is not None and concat.strip() != "partial":
        raise BadRequest("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    length = _creation_length(settings)
    raw_metadata = _metadata_header()
    has_body = _has_body()
    checksum, trailer = _checksum_headers()
    if has_body:
        if not is_offset_stream(request.headers.get("Content-Type")):
            raise UnsupportedMediaType(
                "a body on creation needs Content-Type: application/offset+octet-stream"
            )
        declared = request.content_length
        if length is not None and declared is not None and declared > length:
            raise PayloadTooLarge("body is longer than Upload-Length")
        if length is None and settings.max_size and (declared or 0) > settings.max_size:
            raise PayloadTooLarge(f"body is longer than the maximum of {settings.max_size} bytes")

    record = UploadRecord(
        id=new_upload_id(),
        length=length,
        metadata=raw_metadata,
        concat="partial" if concat is not None else None,
        created=time.time(),
    )
    svc.expiry.stamp(record, record.created)
    location = upload_url(record.id)
    headers = {"Location": location}
    if has_body:
        record = _create_with_data(record, location, checksum, trailer)
        headers["Upload-Offset"] = str(record.offset)
    else:
        svc.registry.create(record)
    headers.update(svc.expiry.header(record))
    return _empty(201, headers=headers)


def _create_with_data(
    record: UploadRecord, location: str, checksum: Checksum | None, trailer: bool
) -> UploadRecord:
    """creation-with-upload: stream the body into the upload being born."""
    registry = services().registry
    lease = registry.conceive(record)
    try:
        record = _append(lease, record, checksum, trailer)
    except TusError as error:
        if not lease.born:
            registry.save(lease, record)  # the answer names it: make it exist
        error.headers.setdefault("Location", location)
        raise
    except BaseException:
        registry.abandon(lease)
        raise
    finally:
        lease.release()  # closes the data file if no append took it
    if not lease.born:
        registry.save(lease, record)
    return record


def _create_final(concat: str) -> Response:
    """POST Upload-Concat: final;… — join partials, now or when they finish."""
    svc = services()
    settings = svc.settings
    if request.headers.get("Upload-Length") is not None:
        raise BadRequest("a final upload's length is the sum of its parts; omit Upload-Length")
    if request.headers.get("Upload-Defer-Length") is not None:
        raise BadRequest("a final upload cannot defer its length")
    if _has_body():
        raise Forbidden("a final upload cannot carry data")
    raw_metadata = _metadata_header()
    part_ids = parse_final(concat, settings.base_path, settings.max_concat_parts)
    for part_id in part_ids:
        _authorize("read", part_id)
    parts = svc.concatenator.load_parts(part_ids)
    length = final_length(parts)
    if length is not None:
        svc.concatenator.check_size(length)

    record = UploadRecord(
        id=new_upload_id(),
        length=length,
        metadata=raw_metadata,
        concat=concat,
        parts=part_ids,
        created=time.time(),
    )
    svc.expiry.stamp(record, record.created)
    svc.registry.create(record)
    svc.registry.add_waiting(record.id, part_ids)
    _forget_if_a_part_vanished(record)
    try:
        svc.concatenator.complete(record.id, wait=settings.lock_wait)
    except (TusError, LeaseLost, OSError) as error:
        # The final exists and HEAD or GET will join it again; the client
        # must learn its URL either way.
        log.warning("joining final upload %s failed for now: %s", record.id, error)
    return _empty(201, headers={"Location": upload_url(record.id)})


def _forget_if_a_part_vanished(final: UploadRecord) -> None:
    """Undo a final whose partial was deleted while it was being created.

    Such a final could only wait to be collected; the client learns which
    part is gone instead of the URL of an upload that can never complete.
    A partial deleted later makes the final an orphan, which gc removes.
    """
    registry = services().registry
    for part_id in final.parts:
        if registry.get(part_id) is None:
            with _locked(final.id) as (lease, record):
                registry.forget(lease, record)
            raise NotFound(f"partial upload {part_id} does not exist")


def _metadata_header() -> str | None:
    """The raw Upload-Metadata, validated; None when absent or blank."""
    raw = request.headers.get("Upload-Metadata")
    limit = services().settings.max_metadata_size
    if raw is not None and len(raw) > limit:
        raise HeaderTooLarge(f"Upload-Metadata is longer than {limit} bytes")
    parse_metadata(raw)
    return raw if raw and raw.strip() else None


def _creation_length(settings: Settings) -> int | None:
    """Exactly one of Upload-Length and Upload-Defer-Length: 1."""
    length_header = request.headers.get("Upload-Length")
    defer_header = request.headers.get("Upload-Defer-Length")
    if length_header is not None and defer_header is not None:
        raise BadRequest("send Upload-Length or Upload-Defer-Length, not both")
    if defer_header is not None:
        if defer_header.strip() != "1":
            raise BadRequest("Upload-Defer-Length must be 1")
        return None
    if length_header is None:
        raise BadRequest("Upload-Length or Upload-Defer-Length: 1 is required")
    length = parse_uint(length_header.strip(), "Upload-Length")
    if settings.max_size and length > settings.max_size:
        raise PayloadTooLarge(f"Upload-Length exceeds the maximum of {settings.max_size} bytes")
    return length


# --------------------------------------------------------------------------
# HEAD: where is it?
# --------------------------------------------------------------------------


@blueprint.route("/<upload_id>", methods=["GET", "HEAD"])
def read(upload_id: str) -> Response:
    """HEAD reports progress; GET downloads (one rule: Werkzeug pairs them)."""
    _require_known_id(upload_id)
    _authorize("read", upload_id)
    if request.method == "HEAD":
        return head(upload_id)
    return download(upload_id)


def head(upload_id: str) -> Response:
    svc = services()
    svc.registry.settle(upload_id)
    record = _load(upload_id)
    if record.is_final and not record.is_complete:
        record = svc.concatenator.complete(upload_id, wait=svc.settings.lock_wait) or record
        parts = [svc.registry.get(part_id) for part_id in record.parts]
        if record.length is None and all(part is not None for part in parts):
            record.length = final_length(parts)  # type: ignore[arg-type]
    headers = upload_headers(record)
    headers["Cache-Control"] = "no-store"
    return _empty(200, headers=headers)


def upload_headers(record: UploadRecord) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not record.is_final or record.is_complete:
        headers["Upload-Offset"] = str(record.offset)
    if record.length is not None:
        headers["Upload-Length"] = str(record.length)
    elif not record.is_final:
        headers["Upload-Defer-Length"] = "1"
    if record.metadata is not None:
        headers["Upload-Metadata"] = record.metadata
    if record.concat is not None:
        headers["Upload-Concat"] = record.concat
    headers.update(services().expiry.header(record))
    return headers


# --------------------------------------------------------------------------
# PATCH: append
# --------------------------------------------------------------------------


@blueprint.route("/<upload_id>", methods=["PATCH"])
def patch(upload_id: str) -> Response:
    if not is_offset_stream(request.headers.get("Content-Type")):
        raise UnsupportedMediaType("PATCH needs Content-Type: application/offset+octet-stream")
    offset_header = request.headers.get("Upload-Offset")
    if offset_header is None:
        raise BadRequest("Upload-Offset is required")
    offset = parse_uint(offset_header.strip(), "Upload-Offset")
    length_header = request.headers.get("Upload-Length")
    new_length = (
        None if length_header is None else parse_uint(length_header.strip(), "Upload-Length")
    )
    checksum, trailer = _checksum_headers()
    _require_known_id(upload_id)
    _authorize("append", upload_id)
    _load(upload_id)

    try:
        with _locked(upload_id) as (lease, record):
            if record.is_final:
                raise Forbidden("a final concatenated upload cannot be patched")
            if offset != record.offset:
                raise OffsetConflict(
                    f"Upload-Offset {offset} does not match the upload's offset {record.offset}",
                    {"Upload-Offset": str(record.offset)},
                )
            if new_length is not None:
                _declare_length(lease, record, new_length)
            record = _append(lease, record, checksum, trailer)
    except TusError:
        # An ending such as 413 may still have committed a partial's last byte.
        with contextlib.suppress(Exception):
            _join_waiting_finals(services().registry.get(upload_id))
        raise
    _join_waiting_finals(record)
    return _empty(204, headers=_after_append_headers(record))


def _join_waiting_finals(record: UploadRecord | None) -> None:
    """A partial just completed: have the finals that waited for it joined, off this request."""
    if record is not None and record.is_partial and record.is_complete:
        services().joins.submit(record.id)


def _declare_length(lease: Lease, record: UploadRecord, length: int) -> None:
    """A deferred length becomes known, once; a known one can only be repeated."""
    settings = services().settings
    if record.length is not None:
        if length != record.length:
            raise BadRequest("Upload-Length cannot change once it is set")
        return
    if length < record.offset:
        raise BadRequest("Upload-Length is smaller than the bytes already uploaded")
    declared = request.content_length
    if declared is not None and record.offset + declared > length:
        raise PayloadTooLarge("body is longer than the Upload-Length it declares")
    if settings.max_size and length > settings.max_size:
        raise PayloadTooLarge(f"Upload-Length exceeds the maximum of {settings.max_size} bytes")
    services().concatenator.save_length(lease, record, length)


def _checksum_headers() -> tuple[Checksum | None, bool]:
    """Upload-Checksum as a header, or announced as a trailer (never both)."""
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    announced = {name.strip().lower() for name in request.headers.get("Trailer", "").split(",")}
    trailer = "upload-checksum" in announced
    if trailer and checksum is not None:
        raise BadRequest("send Upload-Checksum as a header or as a trailer, not both")
    if trailer and not _is_chunked():
        raise BadRequest("an Upload-Checksum trailer needs a chunked body")
    return checksum, trailer


def _append(
    lease: Lease, record: UploadRecord, checksum: Checksum | None, trailer: bool = False
) -> UploadRecord:
    """Check the body fits, then stream it in."""
    svc = services()
    if record.length is not None:
        limit: int | None = record.length - record.offset
    elif svc.settings.max_size:
        limit = svc.settings.max_size - record.offset
    else:
        limit = None
    declared = request.content_length
    if limit is not None and declared is not None and declared > limit:
        raise PayloadTooLarge(
            f"body of {declared} bytes exceeds the {limit} bytes left in this upload",
            {"Upload-Offset": str(record.offset)},
        )
    if declared == 0 and checksum is None:
        return record
    return svc.appender.append(request.environ, lease, record, limit, checksum, trailer)


def _after_append_headers(record: UploadRecord) -> dict[str, str]:
    return {"Upload-Offset": str(record.offset), **services().expiry.header(record)}


# --------------------------------------------------------------------------
# DELETE: termination
# --------------------------------------------------------------------------


@blueprint.route("/<upload_id>", methods=["DELETE"])
def delete(upload_id: str) -> Response:
    _require_known_id(upload_id)
    _authorize("delete", upload_id)
    _load(upload_id)
    with _locked(upload_id) as (lease, record):
        services().registry.forget(lease, record)
    return _empty(204)


# --------------------------------------------------------------------------
# GET: download a finished upload
# --------------------------------------------------------------------------


def download(upload_id: str) -> Response:
    svc = services()
    record = _load(upload_id)
    if record.is_final and not record.is_complete:
        record = svc.concatenator.complete(upload_id, wait=svc.settings.lock_wait) or record
    if not record.is_complete:
        raise NotFound("upload is not complete yet; HEAD tells how far it is")
    metadata = parse_metadata(record.metadata)
    return download_response(svc.store.open_data(upload_id), record, metadata)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _authorize(action: str, upload_id: str | None) -> None:
    """Ask the configured access-control hook, before anything is changed or shown."""
    authorizer = services().authorizer
    if authorizer is not None and authorizer(action, upload_id, request) is False:
        raise Forbidden(f"not allowed to {action} this upload")


def _require_known_id(upload_id: str) -> None:
    if not is_valid_upload_id(upload_id):
        raise NotFound("no such upload")


def _load(upload_id: str) -> UploadRecord:
    record = services().registry.get(upload_id)
    if record is None:
        raise NotFound("no such upload")
    if services().expiry.is_expired(record, time.time()):
        if record.is_complete:
            raise Gone("upload expired: finished uploads are kept for a limited time here")
        raise Gone("upload expired before it was finished")
    return record


@contextmanager
def _locked(upload_id: str) -> Iterator[tuple[Lease, UploadRecord]]:
    """The upload's lock and its record as read under the lock."""
    registry = services().registry
    lease = registry.acquire(upload_id)
    try:
        yield lease, _load(upload_id)
    finally:
        lease.release()


def _empty(status: int, headers: dict[str, str] | None = None) -> Response:
    """A response without a body, and so without a Content-Type."""
    response = Response(status=status, headers=headers)
    del response.headers["Content-Type"]
    return response


def _has_body() -> bool:
    return bool(request.content_length) or _is_chunked()


def _is_chunked() -> bool:
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def upload_url(upload_id: str) -> str:
    """Absolute URL of an upload as the client reached us (proxy-aware when trusted)."""
    base = services().settings.base_path
    return f"{request.scheme}://{request.host}{request.script_root}{base}{upload_id}"
