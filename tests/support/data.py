"""Test bytes: one seeded, non-repeating stream that any test can slice and read again.

Every upload a test sends is a window of such a stream. It is made in blocks
on demand, so a test can send a 512 MiB body it never holds, regenerate any
range (to resume from whatever offset the server reports, to check what a
file on disk begins with), and give many uploads overlapping windows of one
stream without a buffer of them all. Blocks are cached, so a window read
again costs a lookup, not a generation.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
#: Block size of the stream: generating one costs about a millisecond.
BLOCK = 256 * KiB
_INVERT = bytes(range(255, -1, -1))


@functools.lru_cache(maxsize=512)  # 128 MiB: the busiest fault test's stream, whole
def _block(seed: int, index: int) -> bytes:
    return random.Random(f"{seed}:{index}").randbytes(BLOCK)


class Pattern:
    """``size`` bytes of the stream ``seed``, from position ``offset`` of it.

    ``name`` says which upload it is in the reports of tests that send many.
    """

    def __init__(self, size: int, seed: int = 0, *, offset: int = 0, name: str = ""):
        self.size = size
        self.seed = seed
        self.offset = offset
        self.name = name or f"{size} bytes of stream {seed}"
        self._digests: dict[tuple[str, int, int], bytes] = {}

    def __repr__(self) -> str:
        return f"Pattern({self.name!r})"

    def pieces(self, start: int = 0, end: int | None = None, piece: int = MiB) -> Iterator[bytes]:
        """The bytes ``[start, end)`` in pieces of ``piece`` bytes (the last one shorter)."""
        end = self.size if end is None else min(end, self.size)
        for first in range(start, end, piece):
            yield self._read(first, min(end, first + piece))

    def bytes(self, start: int = 0, end: int | None = None) -> bytes:
        return self._read(start, self.size if end is None else min(end, self.size))

    def complement(self, start: int, end: int) -> bytes:
        """Bytes that differ from the pattern's at every position of ``[start, end)``."""
        return self.bytes(start, end).translate(_INVERT)

    def digest(self, algorithm: str = "sha256", start: int = 0, end: int | None = None) -> bytes:
        """The ``hashlib`` digest of ``[start, end)``, made once."""
        end = self.size if end is None else end
        key = (algorithm, start, end)
        if key not in self._digests:
            hasher = hashlib.new(algorithm)
            for piece in self.pieces(start, end):
                hasher.update(piece)
            self._digests[key] = hasher.digest()
        return self._digests[key]

    def sha256(self, end: int | None = None) -> str:
        """The hex sha256 of the first ``end`` bytes (all of them by default)."""
        return self.digest("sha256", 0, end).hex()

    def matches_file(self, path: Path, length: int) -> bool:
        """Whether the file's first ``length`` bytes are the pattern's."""
        with open(path, "rb") as handle:
            for piece in self.pieces(0, length):
                if handle.read(len(piece)) != piece:
                    return False
        return True

    def _read(self, start: int, end: int) -> bytes:
        first, last = self.offset + start, self.offset + end
        parts = []
        while first < last:
            index, within = divmod(first, BLOCK)
            take = min(BLOCK - within, last - first)
            parts.append(_block(self.seed, index)[within : within + take])
            first += take
        return b"".join(parts)


def pattern_bytes(size: int, seed: int = 0) -> bytes:
    """``size`` bytes of the stream ``seed``, whole (for bodies a test holds anyway)."""
    return Pattern(size, seed).bytes()


def pattern_file(directory: Path, size: int, seed: int) -> tuple[Path, bytes]:
    """A file of ``pattern_bytes(size, seed)`` for a client that uploads files; and its bytes."""
    data = pattern_bytes(size, seed)
    path = directory / f"upload-{seed}.bin"
    path.write_bytes(data)
    return path, data
