"""GET of a finished upload: streamed, with Range, and safe to open in a browser.

Uploaded bytes are untrusted. A stored HTML or SVG file served inline from
this origin would run its scripts here, so only types a browser cannot
execute are served inline; everything else is an attachment, and
``X-Content-Type-Options: nosniff`` stops the browser from guessing. The
file name from the metadata is reduced to a harmless form before it goes
into ``Content-Disposition``, with an RFC 6266 ``filename*`` for non-ASCII names.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from flask import Response, send_file

from .records import UploadRecord

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


def content_type(filetype: bytes | None) -> str:
    """The declared type when it is a well-formed media type, else octet-stream."""
    if filetype:
        text = filetype.decode("ascii", "replace").split(";", 1)[0].strip().lower()
        if _MEDIA_TYPE.fullmatch(text):
            return text
    return "application/octet-stream"


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


def download_response(path: str, record: UploadRecord, metadata: dict[str, bytes]) -> Response:
    mimetype = content_type(metadata.get("filetype"))
    response = send_file(path, mimetype=mimetype, conditional=True, etag=True, max_age=0)
    disposition = "inline" if mimetype in INLINE_TYPES else "attachment"
    name = safe_filename(metadata.get("filename"), record.id)
    response.headers["Content-Disposition"] = content_disposition(disposition, name)
    if mimetype == "text/plain":
        response.headers["Content-Type"] = "text/plain; charset=utf-8"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response
