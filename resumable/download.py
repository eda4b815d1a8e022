"""GET of a finished upload: streamed, with Range, and safe to open in a browser.

Uploaded bytes are untrusted. A stored HTML or SVG file served inline from
this origin would run its scripts here, and a stored script or style sheet
served with its own type can be loaded by another page with ``<script src>``
or ``<link rel=stylesheet>`` (``nosniff`` does not stop a type that is
right). So only types a browser cannot execute keep their type and are
served inline; every other upload is sent as ``application/octet-stream``
and as an attachment, and ``X-Content-Type-Options: nosniff`` stops the
browser from guessing. The file name from the metadata is reduced to a
harmless form before it goes into ``Content-Disposition``, with an RFC 6266
``filename*`` for non-ASCII names.
"""

from __future__ import annotations

import re
import time
import unicodedata
import zlib
from urllib.parse import quote

from flask import Response, request
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.wsgi import wrap_file

from .records import UploadRecord
from .store import StoredData

INLINE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/apng",
        "image/avif",
        "image/webp",
        "audio/wav",
        "audio/wave",
        "audio/mp4",
        "audio/mpeg",
        "audio/ogg",
        "audio/webm",
        "video/mp4",
        "video/ogg",
        "video/webm",
        "text/plain",
    }
)

_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]{0,126}"
)


OCTET_STREAM = "application/octet-stream"


def content_type(filetype: bytes | None) -> str:
    """The declared type when a browser cannot run it (INLINE_TYPES), else octet-stream."""
    if filetype:
        text = filetype.decode("ascii", "replace").split(";", 1)[0].strip().lower()
        if _MEDIA_TYPE.fullmatch(text) and text in INLINE_TYPES:
            return text
    return OCTET_STREAM


def safe_filename(filename: bytes | None, fallback: str) -> str:
    """A name without controls, quotes, backslashes or path separators."""
    text = filename.decode("utf-8", "replace") if filename else ""
    text = unicodedata.normalize("NFC", text)
    cleaned = "".join(
        "_" if unicodedata.category(ch).startswith("C") or ch in '"\\/' else ch for ch in text
    ).strip(" .")
    return cleaned[:255] or fallback


_ASCII_UNSAFE = re.compile(r"[^A-Za-z0-9 !#$%&'()+,\-.;=@\[\]^_`{}~]")


def content_disposition(disposition: str, name: str) -> str:
    """RFC 6266: an ASCII ``filename`` for old clients, ``filename*`` for the rest.

    The ASCII fallback is cleaned *after* folding to ASCII: compatibility
    folding turns look-alikes (full-width solidus, quotation mark) back into
    the very characters the cleaning removed.
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    fallback = _ASCII_UNSAFE.sub("_", folded).strip(" .") or "download"
    value = f'{disposition}; filename="{fallback}"'
    if fallback != name:
        value += "; filename*=UTF-8''" + quote(name, safe="!#$&+^`|~-._")
    return value


def download_response(
    data: StoredData, record: UploadRecord, metadata: dict[str, bytes]
) -> Response:
    """Stream the upload's bytes ``data`` (closed with the response), with Range and ETag."""
    mimetype = content_type(metadata.get("filetype"))
    response = _file_response(data, record.id, mimetype)
    disposition = "inline" if mimetype in INLINE_TYPES else "attachment"
    name = safe_filename(metadata.get("filename"), record.id)
    response.headers["Content-Disposition"] = content_disposition(disposition, name)
    if mimetype == "text/plain":
        response.headers["Content-Type"] = "text/plain; charset=utf-8"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def _file_response(data: StoredData, upload_id: str, mimetype: str) -> Response:
    """A conditional, range-capable response for bytes the store opened and described.

    The validators keep the form ``<mtime>-<size>-<checksum of the id>``.
    """
    try:
        response = Response(
            wrap_file(request.environ, data.file), mimetype=mimetype, direct_passthrough=True
        )
        response.content_length = data.size
        response.last_modified = data.modified  # type: ignore[assignment]
        response.cache_control.no_cache = True
        response.cache_control.max_age = 0
        response.expires = int(time.time())  # type: ignore[assignment]
        checksum = zlib.adler32(upload_id.encode()) & 0xFFFFFFFF
        response.set_etag(f"{data.modified}-{data.size}-{checksum}")
        # It returns the response itself; Werkzeug types that as its base Response.
        return response.make_conditional(  # type: ignore[return-value]
            request.environ, accept_ranges=True, complete_length=data.size
        )
    except (OSError, RequestedRangeNotSatisfiable):
        data.file.close()
        raise
