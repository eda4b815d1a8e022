"""RFC 9530 integrity fields of the IETF draft: ``Content-Digest`` and ``Repr-Digest``.

``Content-Digest`` covers one request's content: it becomes the append
loop's checksum, computed as the body streams, and a content that does not
match it is not kept.

``Repr-Digest`` on a creation covers the whole representation, which may
arrive over many requests, on any worker, and with object storage is only
readable as one piece once it is complete. So it is checked by reading the
stored upload back once its last byte is stored and before the commit that
says it is complete: a mismatch deletes the upload and nothing announces it
finished. ``Want-Repr-Digest`` asks for the server's digest instead; it is
computed the same way and sent with the completing answer.

The upload record keeps what the creation asked (``digest``:
``"sha256 <base64>"`` to check, ``"sha256"`` to compute); once the upload is
complete it holds the digest computed, which offset retrieval then repeats.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib

from .checksum import Checksum, parse_checksum
from .protocol import BadRequest, UploadRejected
from .records import UploadRecord
from .store import Store

#: RFC 9530 algorithm names, and this server's (hashlib's) names for them.
ALGORITHMS = {"sha-256": "sha256", "sha-512": "sha512"}
_FIELD_NAMES = {ours: theirs for theirs, ours in ALGORITHMS.items()}
_READ_SIZE = 1024 * 1024


class RepresentationMismatch(UploadRejected):
    """The stored representation does not match the creation's ``Repr-Digest``.

    The upload is deleted: its bytes are the client's, but not the ones it meant.
    """


def _members(raw: str) -> list[tuple[str, str]]:
    """A dictionary field's members as (lowercased key, value without parameters)."""
    members = []
    for member in raw.split(","):
        key, _, value = member.strip().partition("=")
        members.append((key.strip().lower(), value.split(";")[0].strip()))
    return members


def _byte_sequence(field: str, key: str, value: str) -> str:
    """The base64 inside ``:...:``, or 400."""
    if len(value) < 2 or value[0] != ":" or value[-1] != ":":
        raise BadRequest(f"{field} values are byte sequences: {key}=:<base64>:")
    return value[1:-1]


def _first_checked(field: str, raw: str) -> Checksum | None:
    """The field's first member of an algorithm computed here, as a checksum; 400 if malformed.

    A field naming only other algorithms is accepted unverified, as RFC 9530
    lets a recipient do.
    """
    for key, value in _members(raw):
        algorithm = ALGORITHMS.get(key)
        if algorithm is None:
            continue
        encoded = _byte_sequence(field, key, value)
        try:
            return parse_checksum(f"{algorithm} {encoded}")
        except BadRequest:
            raise BadRequest(f"{field} {key} is not a valid digest") from None
    return None


def content_digest(raw: str | None) -> Checksum | None:
    """``Content-Digest``: the checksum of the request's content, or None."""
    return None if raw is None else _first_checked("Content-Digest", raw)


def _wanted(raw: str) -> str | None:
    """``Want-Repr-Digest``: the computed algorithm of the highest preference (1 to 10)."""
    best: tuple[int, str] | None = None
    for key, value in _members(raw):
        algorithm = ALGORITHMS.get(key)
        if algorithm is None or not value.isdigit():
            continue
        weight = int(value)
        if 0 < weight <= 10 and (best is None or weight > best[0]):
            best = (weight, algorithm)
    return None if best is None else best[1]


def asked(repr_digest: str | None, want_repr_digest: str | None) -> str | None:
    """What a creation asks of its representation, as the record keeps it (or None).

    A digest to check wins over a wish: the answer then carries the same
    digest, which the client already knows to compare.
    """
    if repr_digest is not None:
        expected = _first_checked("Repr-Digest", repr_digest)
        if expected is not None:
            return f"{expected.algorithm} {base64.b64encode(expected.expected).decode()}"
    if want_repr_digest is not None:
        return _wanted(want_repr_digest)
    return None


def verify(store: Store, record: UploadRecord) -> None:
    """Check (or compute) a complete upload's representation digest, before its commit.

    Reads the stored bytes back: the store first makes them one piece
    (``Store.assemble``). On success ``record.digest`` holds the digest
    computed; a mismatch raises RepresentationMismatch.
    """
    if record.digest is None or not record.is_complete:
        return
    algorithm, _, expected = record.digest.partition(" ")
    hasher = hashlib.new(algorithm)
    length = record.length or 0
    if length:
        store.assemble(record)
        stored = store.open_data(record.id)
        with contextlib.closing(stored.file):
            remaining = length
            while remaining:
                chunk = stored.file.read(min(_READ_SIZE, remaining))
                if not chunk:
                    raise OSError(f"upload {record.id} holds fewer than {length} bytes")
                hasher.update(chunk)
                remaining -= len(chunk)
    computed = base64.b64encode(hasher.digest()).decode()
    if expected and computed != expected:
        raise RepresentationMismatch(
            "the upload does not match its Repr-Digest; it was deleted"
        )
    record.digest = f"{algorithm} {computed}"


def field(record: UploadRecord) -> dict[str, str]:
    """``Repr-Digest`` of a complete upload whose digest was asked for; else nothing."""
    if record.digest is None or not record.is_complete:
        return {}
    algorithm, _, value = record.digest.partition(" ")
    if not value:
        return {}
    return {"Repr-Digest": f"{_FIELD_NAMES[algorithm]}=:{value}:"}
