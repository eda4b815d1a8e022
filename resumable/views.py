"""The tus endpoint: one function per method, each read top to bottom as the spec.

parse and validate every header → take the lock → load the record → check
state → stream → commit → answer. A failure anywhere is a raised
:class:`~resumable.protocol.TusError`; the app turns it into the response.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import MethodNotAllowed

from . import digests, draft
from .checksum import ALGORITHMS, Checksum, parse_checksum
from .concat import BackgroundJoins, Concatenator, final_length, parse_final
from .cors import apply_cors
from .download import download_response
from .expiry import ExpiryPolicy
from .forwarded import PublicView, public_view
from .gc import CollectorThread
from .hooks import Authorizer
from .lifecycle import (
    POST_TERMINATE,
    PRE_CREATE,
    PRE_TERMINATE,
    HookUnavailable,
    Lifecycle,
)
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
    UploadRejected,
    check_version,
    encode_metadata,
    is_offset_stream,
    is_valid_upload_id,
    new_upload_id,
    parse_metadata,
    parse_uint,
)
from .records import UploadRecord
from .registry import Lease, LeaseLost, Registry
from .responses import register_error_handlers
from .settings import Settings
from .store import Store
from .transfer import Appender
from .worker import warn_if_worker_cuts_uploads

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
register_error_handlers(blueprint)
log = logging.getLogger("resumable")

#: Methods the endpoint answers at its root and at an upload's URL (405 lists them).
ROOT_METHODS = ("POST", "OPTIONS")
UPLOAD_METHODS = ("GET", "HEAD", "PATCH", "DELETE", "OPTIONS")
#: Every other method, routed to a 405 of the endpoint's own (an unknown method
#: would otherwise reach the mounting app's 405 page).
OTHER_METHODS = ("PUT", "TRACE", "CONNECT", "PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK")
_OVERRIDE = re.compile(r"[A-Za-z]{1,16}")
PUBLIC_VIEW = "resumable.public_view"
#: The upload a request concerns (set for creations too), for the request log and metrics.
UPLOAD_ID = "resumable.upload_id"


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
    lifecycle: Lifecycle
    authorizer: Authorizer | None = None
    #: Periodic garbage collection in this process (gc.CollectorThread), if it runs one.
    collector: CollectorThread | None = None
    #: The process that started the background work below (0: none yet).
    started_in: int = 0

    def start_in_this_process(self, environ: dict[str, Any]) -> None:
        """Once per process, at its first request of the endpoint (threads do not survive
        a fork): the sweeper of owed post-finish events, the collector, the worker check."""
        if self.started_in == os.getpid():
            return
        self.started_in = os.getpid()
        self.lifecycle.start_sweeper()
        if self.collector is not None:
            self.collector.ensure_started()
        warn_if_worker_cuts_uploads(environ)


def services() -> Services:
    return cast(Services, current_app.extensions["resumable"])


# --------------------------------------------------------------------------
# Request-wide checks
# --------------------------------------------------------------------------


@blueprint.before_request
def prepare_request() -> None:
    """Name the upload, start the process's background work, require the version.

    Tus-Resumable is required on every request but OPTIONS and GET (browsers
    download).
    """
    current = request._get_current_object()  # type: ignore[attr-defined]
    environ = current.environ
    services().start_in_this_process(environ)
    upload_id = (current.view_args or {}).get("upload_id")
    if upload_id is not None:
        environ[UPLOAD_ID] = upload_id  # for the request log and metrics
    interop = draft.version_of(environ)
    if interop is not None:
        environ[draft.VERSION] = interop  # the IETF draft's rules (draft.py)
    elif current.method not in ("OPTIONS", "GET"):
        check_version(current.headers.get("Tus-Resumable"))


@blueprint.after_request
def tus_headers(response: Response) -> Response:
    """Every answer of the endpoint, errors included, names the protocol and passes CORS."""
    interop = draft.version()
    if interop is None:
        response.headers["Tus-Resumable"] = TUS_VERSION
    else:
        response.headers[draft.VERSION_HEADER] = str(interop)
    apply_cors(request, response, services().settings)
    return response


def public() -> PublicView:
    """Scheme, host, prefix and client address as the client used them (see forwarded.py)."""
    current = request._get_current_object()  # type: ignore[attr-defined]
    view: PublicView | None = current.environ.get(PUBLIC_VIEW)
    if view is None:
        if services().settings.trust_proxy:
            view = public_view(current.environ, True)
        else:  # the request as it came: Flask's own view of it, no second parse
            view = PublicView(current.scheme, current.host, current.script_root,
                              current.remote_addr or "")
        current.environ[PUBLIC_VIEW] = view
    return view


# --------------------------------------------------------------------------
# Method override and methods the endpoint does not answer
# --------------------------------------------------------------------------


def _overridden_method() -> str | None:
    """``POST`` + ``X-HTTP-Method-Override: PATCH`` is a PATCH (tus core).

    Only POST may be overridden, as tusd does: a GET or HEAD that turned into
    a DELETE could be triggered by a link or a prefetch.
    """
    value = request.headers.get("X-HTTP-Method-Override")
    if request.method == "POST" and value and _OVERRIDE.fullmatch(value):
        method = value.upper()
        return None if method == "POST" else method
    return None


def _serve_as(method: str, upload_id: str | None) -> Response:
    """Answer the request as if it had been sent with ``method``."""
    request.environ["resumable.original_method"] = request.method
    request.environ["REQUEST_METHOD"] = method
    request.method = method
    if upload_id is None:
        if method == "OPTIONS":
            return options()
        raise MethodNotAllowed(valid_methods=ROOT_METHODS)
    views: dict[str, Callable[[str], Response]]
    views = {"GET": read, "HEAD": read, "PATCH": patch, "DELETE": delete, "OPTIONS": options}
    view = views.get(method)
    if view is None:
        raise MethodNotAllowed(valid_methods=UPLOAD_METHODS)
    return view(upload_id)


@blueprint.route(
    "/<upload_id>", methods=["POST", *OTHER_METHODS], provide_automatic_options=False
)
def other_method(upload_id: str) -> Response:
    """POST with an override, and the methods an upload's URL does not take."""
    method = _overridden_method()
    if method is None:
        raise MethodNotAllowed(valid_methods=UPLOAD_METHODS)
    return _serve_as(method, upload_id)


@blueprint.route(
    "/", methods=["PATCH", *OTHER_METHODS], strict_slashes=False,
    provide_automatic_options=False,
)
def other_root_method() -> Response:
    """The IETF draft creates with any content-carrying method (PUT, PATCH too); tus does not."""
    interop = draft.version()
    if interop is not None and request.method in ("PUT", "PATCH"):
        return draft.create(interop)
    raise MethodNotAllowed(valid_methods=ROOT_METHODS)


@blueprint.route(
    "/<path:_path>", methods=["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", *OTHER_METHODS]
)
def nowhere(_path: str) -> Response:
    """Deeper paths under the endpoint: its own 404, not the mounting app's page."""
    raise NotFound("no such upload")


# --------------------------------------------------------------------------
# OPTIONS: discovery and CORS preflight
# --------------------------------------------------------------------------


@blueprint.route("/", methods=["OPTIONS"], strict_slashes=False, provide_automatic_options=False)
@blueprint.route("/<_upload_id>", methods=["OPTIONS"], provide_automatic_options=False)
def options(_upload_id: str | None = None) -> Response:
    settings = services().settings
    response = empty_response(204)
    response.headers["Tus-Version"] = TUS_VERSION
    response.headers["Tus-Extension"] = ",".join(extensions(settings))
    response.headers["Tus-Checksum-Algorithm"] = ",".join(ALGORITHMS)
    if settings.max_size:
        response.headers["Tus-Max-Size"] = str(settings.max_size)
    interop = draft.version()
    if interop is not None:  # both protocols' discovery: harmless to either client
        response.headers.update(draft.limits(interop))
        response.headers["Accept-Patch"] = draft.PARTIAL_UPLOAD
    return response


# --------------------------------------------------------------------------
# POST: creation (with upload, deferred length)
# --------------------------------------------------------------------------


@blueprint.route("/", methods=["POST"], strict_slashes=False)
def create() -> Response:
    interop = draft.version()
    if interop is not None:
        return draft.create(interop)
    method = _overridden_method()
    if method is not None:
        return _serve_as(method, None)
    svc = services()
    settings = svc.settings
    authorize("create", None)
    concat = request.headers.get("Upload-Concat")
    if concat is not None and concat.strip().startswith("final"):
        return _create_final(concat.strip())
    if concat is not None and concat.strip() != "partial":
        raise BadRequest("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    length = _creation_length(settings)
    raw_metadata = _metadata_header()
    with_body = has_body()
    checksum, trailer = _checksum_headers()
    if with_body:
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
    hook_headers = ask_pre_create(record)
    location = upload_url(record.id)
    headers = {**hook_headers, "Location": location}
    record = create_upload(record, location, checksum, trailer)
    if with_body:
        headers["Upload-Offset"] = str(record.offset)
    headers.update(svc.expiry.header(record))
    return empty_response(201, headers=headers)


def create_upload(
    record: UploadRecord, location: str, checksum: Checksum | None = None, trailer: bool = False
) -> UploadRecord:
    """Make a new upload exist, with the request's body streamed in when it has one
    (an empty upload is finished as it is created); then post-create."""
    svc = services()
    if has_body():
        record = create_with_data(record, location, checksum, trailer)
    else:
        digests.verify(svc.store, record)  # an empty representation's, when asked for
        with svc.lifecycle.finishing_commit(record, request.environ, record.is_complete):
            svc.registry.create(record)
    svc.lifecycle.created(record, request.environ)
    return record


def ask_pre_create(record: UploadRecord) -> dict[str, str]:
    """The pre-create hooks: they may refuse, or replace the metadata; their headers."""
    request.environ[UPLOAD_ID] = record.id
    answer = services().lifecycle.ask(PRE_CREATE, record, request.environ)
    if answer.metadata is not None:
        try:
            record.metadata = encode_metadata(answer.metadata)
        except ValueError as error:
            log.warning("pre-create hook answered metadata that cannot be kept: %s", error)
            raise HookUnavailable("the pre-create hook answered unusable metadata") from None
    return answer.headers


def create_with_data(
    record: UploadRecord, location: str, checksum: Checksum | None, trailer: bool
) -> UploadRecord:
    """creation-with-upload: stream the body into the upload being created.

    A body that ends early still created the upload: the answer names it.
    """
    try:
        return services().registry.create_with_data(
            record, lambda lease, new: append_body(lease, new, checksum, trailer)
        )
    except UploadRejected:
        raise
    except TusError as error:
        error.headers.setdefault("Location", location)
        raise


def _create_final(concat: str) -> Response:
    """POST Upload-Concat: final;… — join partials, now or when they finish."""
    svc = services()
    settings = svc.settings
    if request.headers.get("Upload-Length") is not None:
        raise BadRequest("a final upload's length is the sum of its parts; omit Upload-Length")
    if request.headers.get("Upload-Defer-Length") is not None:
        raise BadRequest("a final upload cannot defer its length")
    if has_body():
        raise Forbidden("a final upload cannot carry data")
    raw_metadata = _metadata_header()
    part_ids = parse_final(concat, settings.base_path, settings.max_concat_parts)
    for part_id in part_ids:
        authorize("read", part_id)
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
    hook_headers = ask_pre_create(record)
    svc.registry.create(record)
    svc.lifecycle.created(record, request.environ)
    svc.registry.add_waiting(record.id, part_ids)
    _delete_if_a_part_vanished(record)
    try:
        svc.concatenator.complete(record.id, wait=settings.lock_wait)
    except (TusError, LeaseLost, OSError) as error:
        # The final exists and HEAD or GET will join it again; the client
        # must learn its URL either way.
        log.warning("joining final upload %s failed for now: %s", record.id, error)
    return empty_response(201, headers={**hook_headers, "Location": upload_url(record.id)})


def _delete_if_a_part_vanished(final: UploadRecord) -> None:
    """Undo a final whose partial was deleted while it was being created.

    Such a final could only wait to be collected; the client learns which
    part is gone instead of the URL of an upload that can never complete.
    A partial deleted later makes the final an orphan, which gc removes.
    """
    registry = services().registry
    for part_id in final.parts:
        if registry.get(part_id) is None:
            with locked_upload(final.id) as (lease, record):
                registry.delete_upload(lease, record)
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
    """HEAD reports progress; GET downloads (one rule: Werkzeug pairs them).

    With the IETF draft's version header both retrieve the offset: a plain GET
    still downloads a finished upload.
    """
    require_known_id(upload_id)
    authorize("read", upload_id)
    interop = draft.version()
    if interop is not None:
        return draft.head(interop, upload_id)
    if request.method == "HEAD":
        return head(upload_id)
    return download(upload_id)


def head(upload_id: str) -> Response:
    svc = services()
    svc.registry.await_holder_commit(upload_id)
    record = load_upload(upload_id)
    if record.is_final and not record.is_complete:
        record = svc.concatenator.complete(upload_id, wait=svc.settings.lock_wait) or record
        parts = [svc.registry.get(part_id) for part_id in record.parts]
        if record.length is None and all(part is not None for part in parts):
            record.length = final_length(parts)  # type: ignore[arg-type]
    headers = upload_headers(record)
    headers["Cache-Control"] = "no-store"
    return empty_response(200, headers=headers)


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
    interop = draft.version()
    if interop is not None:
        return draft.append(interop, upload_id)
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
    require_known_id(upload_id)
    authorize("append", upload_id)
    load_upload(upload_id)

    try:
        with locked_upload(upload_id) as (lease, record):
            if record.is_final:
                raise Forbidden("a final concatenated upload cannot be patched")
            if offset != record.offset:
                raise OffsetConflict(
                    f"Upload-Offset {offset} does not match the upload's offset {record.offset}",
                    {"Upload-Offset": str(record.offset)},
                )
            if new_length is not None:
                _declare_length(lease, record, new_length)
            with deleted_if_finish_refused(lease, record):
                record = append_body(lease, record, checksum, trailer)
    except TusError:
        # An ending such as 413 may still have committed a partial's last byte.
        with contextlib.suppress(Exception):
            _join_waiting_finals(services().registry.get(upload_id))
        raise
    _join_waiting_finals(record)
    return empty_response(204, headers=_after_append_headers(record))


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


@contextmanager
def deleted_if_finish_refused(lease: Lease, record: UploadRecord) -> Iterator[None]:
    """Around what may finish ``record`` (held by ``lease``): a refused finish
    (UploadRejected) deletes it."""
    try:
        yield
    except UploadRejected:
        services().registry.delete_upload(lease, record)
        raise


def append_body(
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
    require_known_id(upload_id)
    authorize("delete", upload_id)
    load_upload(upload_id)
    lifecycle = services().lifecycle
    with locked_upload(upload_id) as (lease, record):
        lifecycle.ask(PRE_TERMINATE, record, request.environ)
        services().registry.delete_upload(lease, record)
    lifecycle.tell(POST_TERMINATE, record, request.environ, f"{upload_id}.post-terminate")
    return empty_response(204)


# --------------------------------------------------------------------------
# GET: download a finished upload
# --------------------------------------------------------------------------


def download(upload_id: str) -> Response:
    svc = services()
    record = load_upload(upload_id)
    if record.is_final and not record.is_complete:
        record = svc.concatenator.complete(upload_id, wait=svc.settings.lock_wait) or record
    if not record.is_complete:
        raise NotFound("upload is not complete yet; HEAD tells how far it is")
    metadata = parse_metadata(record.metadata)
    return download_response(svc.store.open_data(upload_id), record, metadata)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def authorize(action: str, upload_id: str | None) -> None:
    """Ask the configured access-control hook, before anything is changed or shown."""
    authorizer = services().authorizer
    if authorizer is not None and authorizer(action, upload_id, request) is False:
        raise Forbidden(f"not allowed to {action} this upload")


def require_known_id(upload_id: str) -> None:
    if not is_valid_upload_id(upload_id):
        raise NotFound("no such upload")


def load_upload(upload_id: str) -> UploadRecord:
    record = services().registry.get(upload_id)
    if record is None:
        raise NotFound("no such upload")
    if services().expiry.is_expired(record, time.time(), services().registry.finish_owed):
        if record.is_complete:
            raise Gone("upload expired: finished uploads are kept for a limited time here")
        raise Gone("upload expired before it was finished")
    return record


@contextmanager
def locked_upload(upload_id: str) -> Iterator[tuple[Lease, UploadRecord]]:
    """The upload's lock and its record as read under the lock."""
    registry = services().registry
    lease = registry.acquire(upload_id)
    try:
        yield lease, load_upload(upload_id)
    finally:
        lease.release()


def empty_response(status: int, headers: dict[str, str] | None = None) -> Response:
    """A response without a body, and so without a Content-Type."""
    response = Response(status=status, headers=headers)
    del response.headers["Content-Type"]
    return response


def has_body() -> bool:
    return bool(request.content_length) or _is_chunked()


def _is_chunked() -> bool:
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def upload_url(upload_id: str) -> str:
    """Absolute URL of an upload as the client reached us (proxy-aware when trusted)."""
    base = services().settings.base_path
    view = public()
    return f"{view.scheme}://{view.host}{view.script_root}{base}{upload_id}"
