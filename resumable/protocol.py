"""The tus 1.0 wire contract: header names, parsers, formatters and errors.

Everything here is pure: no Flask, no Redis, no file system. Views parse every
request header through these functions *before* touching any state, so a bad
header can only ever produce a 4xx and never a half-applied change. Every
protocol rule that ends a request is an exception class below that carries its
own status code; the app turns it into a response in one place.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping
from email.utils import formatdate

TUS_VERSION = "1.0.0"
SUPPORTED_VERSIONS = (TUS_VERSION,)
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

#: Response headers a browser client must be allowed to read (CORS).
EXPOSED_HEADERS = (
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Metadata",
    "Upload-Expires",
    "Upload-Concat",
    "Tus-Version",
    "Tus-Resumable",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Retry-After",
    "X-Request-ID",
)

#: Request headers a browser client may send (CORS preflight answer).
ALLOWED_REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Origin",
    "X-Requested-With",
    "X-Request-ID",
    "X-HTTP-Method-Override",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Metadata",
    "Upload-Concat",
    "Upload-Checksum",
    "Tus-Resumable",
)


# --------------------------------------------------------------------------
# Errors: one class per status, raised with a short human reason.
# --------------------------------------------------------------------------


class TusError(Exception):
    """A request the protocol ends early; carries the status it answers with."""

    status: int = 500
    reason_phrase: str | None = None
    #: The answer's body type: the reason as a line of text, unless a subclass says.
    mimetype = "text/plain"

    def __init__(self, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> str:
        return self.message + "\n"

    @property
    def status_line(self) -> str | int:
        """Status for Werkzeug; codes Python does not know need their phrase."""
        if self.reason_phrase:
            return f"{self.status} {self.reason_phrase}"
        return self.status


class BadRequest(TusError):
    status = 400


class Unauthorized(TusError):
    status = 401


class Forbidden(TusError):
    status = 403


class NotFound(TusError):
    status = 404


class MethodNotAllowed(TusError):
    status = 405


class RequestTimeout(TusError):
    """The body stalled longer than the read timeout; what arrived is kept."""

    status = 408


class OffsetConflict(TusError):
    """Upload-Offset differs from the recorded offset, or the upload is not
    in a state that accepts the request."""

    status = 409


class Gone(TusError):
    status = 410


class UnsupportedVersion(TusError):
    status = 412

    def __init__(self, message: str):
        super().__init__(message, {"Tus-Version": ",".join(SUPPORTED_VERSIONS)})


class PayloadTooLarge(TusError):
    status = 413


class UnsupportedMediaType(TusError):
    status = 415


class UploadRejected(TusError):
    """The upload may not finish, so it is deleted: a pre-finish receiver refused it,
    or its bytes do not match the digest its creation named."""

    status = 400


class Locked(TusError):
    """Another request holds the upload and did not let go in time."""

    status = 423


class HeaderTooLarge(TusError):
    status = 431


class ChecksumMismatch(TusError):
    status = 460
    reason_phrase = "Checksum Mismatch"


class ServiceUnavailable(TusError):
    status = 503

    def __init__(self, message: str, retry_after: int = 3):
        super().__init__(message, {"Retry-After": str(retry_after)})


class InsufficientStorage(TusError):
    status = 507


# --------------------------------------------------------------------------
# Upload ids
# --------------------------------------------------------------------------

_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def new_upload_id() -> str:
    """128 random bits, hex: unguessable, and safe as a file name and key."""
    return secrets.token_hex(16)


def is_valid_upload_id(value: str) -> bool:
    """Only ids this server could have made may reach a path or a key."""
    return len(value) == 32 and _UPLOAD_ID.fullmatch(value) is not None


# --------------------------------------------------------------------------
# Header parsers
# --------------------------------------------------------------------------

_UINT = re.compile(r"[0-9]{1,19}")
#: The largest length or offset tus allows (a signed 64-bit integer), finals included.
MAX_UPLOAD_LENGTH = 2**63 - 1


def parse_uint(value: str, header: str) -> int:
    """A non-negative decimal integer: no sign, space, hex or fraction."""
    if not _UINT.fullmatch(value):
        raise BadRequest(f"{header} must be a non-negative integer")
    number = int(value)
    if number > MAX_UPLOAD_LENGTH:
        raise BadRequest(f"{header} is out of range")
    return number


def check_version(value: str | None) -> None:
    """Tus-Resumable on a request: missing or unknown version is 412."""
    if value is None:
        raise UnsupportedVersion("Tus-Resumable header is missing")
    if value.strip() not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(f"Tus-Resumable {value!r} is not supported")


def is_offset_stream(content_type: str | None) -> bool:
    """True for application/offset+octet-stream, any case, any parameters."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == OFFSET_CONTENT_TYPE


_METADATA_KEY = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # printable ASCII, no space or comma


def parse_metadata(raw: str | None) -> dict[str, bytes]:
    """Decode Upload-Metadata into key → bytes, or raise BadRequest.

    The raw header is what is stored and echoed; this only validates it and
    gives views the decoded values (filename, filetype). An empty or blank
    header means no metadata (tuspy sends one); ``key`` and ``key `` both
    mean an empty value.
    """
    if raw is None or not raw.strip():
        return {}
    result: dict[str, bytes] = {}
    for pair in raw.split(","):
        pair = pair.strip(" \t")
        if not pair:
            raise BadRequest("Upload-Metadata has an empty pair")
        parts = pair.split(" ")
        if len(parts) > 2:
            raise BadRequest("Upload-Metadata pair has more than one space")
        key = parts[0]
        if not _METADATA_KEY.fullmatch(key):
            raise BadRequest("Upload-Metadata key is empty or not printable ASCII")
        if key in result:
            raise BadRequest(f"Upload-Metadata key {key!r} appears twice")
        encoded = parts[1] if len(parts) == 2 else ""
        try:
            result[key] = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"Upload-Metadata value of {key!r} is not valid base64") from None
    return result


def encode_metadata(values: Mapping[str, str]) -> str | None:
    """Upload-Metadata for ``values`` (a hook's new metadata); None when empty.

    ValueError for a key the header cannot carry (empty, a space or a comma).
    """
    pairs = []
    for key, value in values.items():
        if not _METADATA_KEY.fullmatch(key):
            raise ValueError(f"metadata key {key!r} cannot be sent in Upload-Metadata")
        encoded = base64.b64encode(value.encode()).decode()
        pairs.append(f"{key} {encoded}" if encoded else key)
    return ",".join(pairs) or None


def format_http_date(timestamp: float) -> str:
    """IMF-fixdate in GMT, as Upload-Expires requires."""
    return formatdate(timestamp, usegmt=True)
