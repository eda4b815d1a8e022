"""Header parsers and formatters: pure functions, no server."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest

from resumable.checksum import parse_checksum
from resumable.protocol import (
    BadRequest,
    ChecksumMismatch,
    UnsupportedVersion,
    check_version,
    format_http_date,
    is_offset_stream,
    is_valid_upload_id,
    new_upload_id,
    parse_metadata,
    parse_uint,
)


@pytest.mark.parametrize(
    "value, expected", [("0", 0), ("42", 42), ("9223372036854775807", 2**63 - 1)]
)
def test_parse_uint_accepts_plain_decimals(value: str, expected: int) -> None:
    assert parse_uint(value, "Upload-Length") == expected


@pytest.mark.parametrize(
    "value", ["", "-1", "+1", "1.5", "abc", "0x10", " 1", "1 2", "9223372036854775808", "1" * 20]
)
def test_parse_uint_rejects_everything_else(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_uint(value, "Upload-Length")


def test_metadata_decodes_and_allows_empty_values() -> None:
    parsed = parse_metadata("filename d29ybGQ=,is_confidential, empty ")
    assert parsed == {"filename": b"world", "is_confidential": b"", "empty": b""}


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_blank_metadata_means_none(raw: str | None) -> None:
    assert parse_metadata(raw) == {}


@pytest.mark.parametrize(
    "raw",
    [
        "filename d29ybGQ",  # unpadded
        "filename !!!!",  # not base64
        "a YQ==,a Yg==",  # duplicate key
        "a YQ== extra",  # three parts
        "a YQ==,,b Yg==",  # empty pair
        "k\x01ey YQ==",  # control character in key
    ],
)
def test_malformed_metadata_is_rejected(raw: str) -> None:
    with pytest.raises(BadRequest):
        parse_metadata(raw)


def test_version_check() -> None:
    check_version("1.0.0")
    with pytest.raises(UnsupportedVersion) as missing:
        check_version(None)
    assert missing.value.headers["Tus-Version"] == "1.0.0"
    assert missing.value.status == 412
    with pytest.raises(UnsupportedVersion):
        check_version("0.2.2")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("application/offset+octet-stream", True),
        ("Application/Offset+Octet-Stream; charset=x", True),
        ("application/octet-stream", False),
        (None, False),
        ("", False),
    ],
)
def test_offset_stream_media_type(value: str | None, expected: bool) -> None:
    assert is_offset_stream(value) is expected


def test_upload_ids_are_128_bit_hex_and_validated() -> None:
    ids = {new_upload_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_valid_upload_id(i) and len(i) == 32 for i in ids)
    for bad in ["..", "../" + "a" * 29, "A" * 32, "a" * 31, "a" * 33, "a" * 31 + "\x00", ""]:
        assert not is_valid_upload_id(bad)


def test_http_date_is_imf_fixdate_gmt() -> None:
    assert format_http_date(1403712000) == "Wed, 25 Jun 2014 16:00:00 GMT"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512"])
def test_checksum_matches_hashlib_streamed(algorithm: str) -> None:
    data = b"hello world" * 1000
    checksum = parse_checksum(f"{algorithm} {_b64(hashlib.new(algorithm, data).digest())}")
    assert checksum is not None
    for start in range(0, len(data), 777):
        checksum.update(memoryview(data)[start : start + 777])
    assert checksum.matches()


def test_crc32_checksum() -> None:
    data = b"hello world"
    checksum = parse_checksum("crc32 " + _b64(zlib.crc32(data).to_bytes(4, "big")))
    assert checksum is not None
    checksum.update(memoryview(data))
    assert checksum.matches()
    other = parse_checksum("crc32 " + _b64(zlib.crc32(b"x").to_bytes(4, "big")))
    assert other is not None
    other.update(memoryview(data))
    assert not other.matches()


@pytest.mark.parametrize(
    "value",
    [
        "sha999 AAAA",
        "sha1",
        "sha1 ",
        "sha1 not-base64!",
        "sha1 AAAA",
        "sha1  Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
    ],
)
def test_bad_checksum_headers_are_400(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_checksum(value)


def test_checksum_mismatch_has_its_own_status_line() -> None:
    error = ChecksumMismatch("no")
    assert error.status == 460
    assert error.status_line == "460 Checksum Mismatch"
