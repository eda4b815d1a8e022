"""The sidecar record file: two slots updated in place, torn writes, the older form."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from resumable.filestore import FileStore, read_sidecar_file
from resumable.records import UploadRecord


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "data")


def _record(offset: int = 0, **fields: object) -> UploadRecord:
    return UploadRecord(id="0123456789abcdef0123456789abcdef", length=1 << 30, offset=offset,
                        metadata="filename ZmlsZS5iaW4=", created=1.0, **fields)  # type: ignore[arg-type]


def test_commits_overwrite_the_older_slot_in_place(store: FileStore) -> None:
    record = _record()
    store.write_record(record)
    path = store.sidecar_path(record.id)
    created = os.stat(path)
    for offset in (10, 20, 30):
        record.offset = offset
        store.write_record(record)
        assert store.read_record(record.id) == record
    after = os.stat(path)
    # The same file all along: no new inode per commit, and its size is fixed.
    assert (after.st_ino, after.st_size) == (created.st_ino, created.st_size)
    halves = path.read_bytes()
    size = len(halves) // 2
    offsets = sorted(json.loads(halves[i * size + 26 :].split(b"\n")[0])["offset"] for i in (0, 1))
    assert offsets == [20, 30]  # the newest and the one before it


@pytest.mark.parametrize("damage", ["flipped byte", "cut short"])
def test_a_torn_slot_falls_back_to_the_commit_before(store: FileStore, damage: str) -> None:
    record = _record(offset=100)
    store.write_record(record)
    record.offset = 200
    store.write_record(record)  # slot 1 now holds offset 200, slot 0 offset 100
    path = store.sidecar_path(record.id)
    raw = bytearray(path.read_bytes())
    size = len(raw) // 2
    if damage == "flipped byte":
        raw[size + 40] ^= 0x01
    else:  # a write cut after its first bytes: the old tail stays
        raw[size + 30 : 2 * size - 1] = b" " * (size - 31)
    path.write_bytes(bytes(raw))
    assert store.read_record(record.id).offset == 100
    record.offset = 300
    store.write_record(record)  # goes over the damaged slot
    assert store.read_record(record.id).offset == 300


def test_no_valid_slot_is_an_error_not_an_empty_upload(store: FileStore) -> None:
    record = _record()
    store.write_record(record)
    path = store.sidecar_path(record.id)
    path.write_bytes(b"x" * len(path.read_bytes()))
    with pytest.raises(ValueError, match="no valid record"):
        store.read_record(record.id)


def test_the_older_plain_json_form_is_read_and_rewritten(store: FileStore) -> None:
    record = _record(offset=5)
    path = store.sidecar_path(record.id)
    path.write_text(record.to_json())
    assert store.read_record(record.id) == record
    record.offset = 6
    store.write_record(record)
    assert not path.read_bytes().startswith(b"{")
    assert read_sidecar_file(path) == record


def test_a_record_that_outgrows_its_slot_is_written_whole(store: FileStore) -> None:
    record = _record()
    store.write_record(record)
    path = store.sidecar_path(record.id)
    first = os.stat(path)
    record.metadata = "note " + "QUFB" * 200  # far past the slot's spare room
    store.write_record(record)
    second = os.stat(path)
    assert second.st_ino != first.st_ino and second.st_size > first.st_size
    assert store.read_record(record.id) == record
    record.offset = 1
    store.write_record(record)  # and in place again from then on
    assert os.stat(path).st_ino == second.st_ino
    assert store.read_record(record.id) == record
    assert not list(path.parent.glob("*.tmp"))


def test_a_missing_sidecar_is_no_upload(store: FileStore) -> None:
    assert store.read_record("0123456789abcdef0123456789abcdef") is None
