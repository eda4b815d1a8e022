"""Upload-Checksum: parse the header, hash the body as it streams, compare.

The digest is fed slice by slice from the append loop, so verifying a
checksum costs no second pass over the data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zlib
from collections.abc import Callable

from .protocol import BadRequest


class _Crc32:
    """zlib's CRC-32 behind the hashlib interface; digest is 4 bytes big-endian."""

    digest_size = 4

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def _hashlib(name: str) -> Callable[[], object]:
    return lambda: hashlib.new(name)


#: Algorithm name (as on the wire) → factory. Order is the advertised order.
ALGORITHMS: dict[str, Callable[[], object]] = {
    "sha1": _hashlib("sha1"),
    "md5": _hashlib("md5"),
    "sha256": _hashlib("sha256"),
    "sha512": _hashlib("sha512"),
    "crc32": _Crc32,
}


class Checksum:
    """One expected digest and the running hash of the body."""

    def __init__(self, algorithm: str, expected: bytes):
        self.algorithm = algorithm
        self.expected = expected
        self.hasher = ALGORITHMS[algorithm]()

    def update(self, data: memoryview) -> None:
        self.hasher.update(data)  # type: ignore[attr-defined]

    def matches(self) -> bool:
        return hmac.compare_digest(self.hasher.digest(), self.expected)  # type: ignore[attr-defined]


def parse_checksum(value: str | None) -> Checksum | None:
    """``<algorithm> <base64 digest>``; None when the header is absent.

    Unknown algorithms, a missing digest, bad base64 and a digest of the
    wrong length for the algorithm are all 400, decided before any body byte
    is read.
    """
    if value is None:
        return None
    parts = value.strip().split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise BadRequest("Upload-Checksum must be '<algorithm> <base64 digest>'")
    algorithm, encoded = parts
    if algorithm not in ALGORITHMS:
        raise BadRequest(
            f"checksum algorithm {algorithm!r} is not supported; use one of " + ",".join(ALGORITHMS)
        )
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Upload-Checksum digest is not valid base64") from None
    checksum = Checksum(algorithm, digest)
    if len(digest) != checksum.hasher.digest_size:  # type: ignore[attr-defined]
        raise BadRequest(f"Upload-Checksum digest has the wrong length for {algorithm}")
    return checksum
