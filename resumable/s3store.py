"""The S3 store: uploads in an S3-compatible bucket; the data directory holds only spool files.

Objects under the configured prefix, for an upload ``<id>`` (the last path
segment of its URL):

* ``<id>`` – the finished upload, one object, its ``Content-Type`` from the
  ``filetype`` metadata: what users process straight from the bucket;
* ``<id>.info`` – JSON: the upload's record and the store's state (the
  multipart upload, its parts, the tail pieces): the durable record;
* ``<id>.tail.<n>`` – a tail piece: bytes after the last part, stored by a
  commit so that the next ``PATCH``, on any host, continues them.

While an upload is in progress its bytes are an S3 multipart upload whose
parts are listed in the state, followed by the tail pieces; the offset is
their sum. A body streams into a local spool file, one file per part; a
full part is sent (at most ``IN_FLIGHT`` per request, beside the ones the
request keeps receiving) and the spool file goes. ``settle`` (before every
commit) waits for the parts, stores the bytes since the last piece as a new
tail piece, then writes the state: so a ``PATCH`` is answered only once its
bytes are in S3, and a killed worker loses at most its unsettled spool.
Objects are written before the state that names them and deleted after the
state that drops them, so at every instant the state names bytes that exist.
The last ``settle`` (or a record written complete) completes the multipart
upload into ``<id>``; parts the state does not name are left out by S3.

The state is also the truth about the offset when the registry disagrees
(a crash between the store's write and the registry's commit leaves the
store ahead): a writer opened behind it cuts the tail pieces back when it
can, and otherwise raises :class:`StoredAhead` so the request is answered
with the stored offset.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import math
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from .files import make_private_dir, open_nofollow, remove_unknown, writable_problem, write_all
from .protocol import BadRequest, is_valid_upload_id, parse_metadata
from .records import UploadRecord
from .store import Store, StoredAhead, StoredData, StoreUnavailable, UploadWriter

MiB = 1024 * 1024
GiB = 1024 * MiB
#: S3's limits: parts of 5 MiB (but the last) to 5 GiB, at most 10,000 of them.
MIN_PART = 5 * MiB
#: Seconds a readiness probe (problem) waits for the bucket, asking once.
PROBE_SECONDS = 2.0
MAX_PART = 5 * GiB
MAX_PARTS = 10_000
#: With an unknown length, the part size doubles every this many parts, so
#: 10,000 parts of a default 8 MiB reach beyond S3's largest object (5 TiB).
PARTS_PER_DOUBLING = 1000
#: Parts one request has sent and not yet seen acknowledged by S3.
IN_FLIGHT = 2
#: Bytes of a download or a tail piece read per request to S3.
READ_CHUNK = 8 * MiB
#: Seconds between a waiting writer's calls of its keepalive (lock renewal).
KEEPALIVE_SECONDS = 1.0

_Function = TypeVar("_Function", bound=Callable[..., Any])
_Result = TypeVar("_Result")


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    return (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)


def _is_unavailable(error: BaseException) -> bool:
    """An endpoint that cannot be reached, or that answers 5xx or throttles (after retries)."""
    from botocore.exceptions import ClientError

    if isinstance(error, _unavailable_errors()):
        return True
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = error.response.get("Error", {}).get("Code", "")
        return status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout")
    return False


def _is_missing(error: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(error, ClientError):
        return False
    code = error.response.get("Error", {}).get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload") or status == 404


def _neutral(function: _Function) -> _Function:
    """StoreUnavailable where boto3 could not reach S3 (after its own retries)."""

    @functools.wraps(function)
    def translated(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except StoreUnavailable:
            raise
        except Exception as error:
            if _is_unavailable(error):
                raise StoreUnavailable(f"S3: {error}") from error
            raise

    return translated  # type: ignore[return-value]


@dataclass
class S3State:
    """Where an upload's bytes are in the bucket."""

    multipart: str | None = None
    #: Parts of the multipart upload, in order: (number, size, ETag).
    parts: list[tuple[int, int, str]] = field(default_factory=list)
    #: Tail pieces after the parts, in order: (key, size).
    tail: list[tuple[str, int]] = field(default_factory=list)
    complete: bool = False
    #: The next tail piece's number (keys are never reused).
    pieces: int = 0
    #: Once complete: the object's size.
    size: int = 0

    @property
    def parts_end(self) -> int:
        return sum(size for _, size, _ in self.parts)

    @property
    def offset(self) -> int:
        if self.complete:
            return self.size
        return self.parts_end + sum(size for _, size in self.tail)

    def to_dict(self) -> dict[str, Any]:
        return {
            "multipart": self.multipart,
            "parts": [list(p) for p in self.parts],
            "tail": [list(t) for t in self.tail],
            "complete": self.complete,
            "pieces": self.pieces,
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> S3State:
        return cls(
            multipart=data.get("multipart"),
            parts=[(int(n), int(s), str(e)) for n, s, e in data.get("parts", [])],
            tail=[(str(k), int(s)) for k, s in data.get("tail", [])],
            complete=bool(data.get("complete")),
            pieces=int(data.get("pieces", 0)),
            size=int(data.get("size", 0)),
        )


@dataclass
class _Info:
    record: UploadRecord
    state: S3State


class S3Store(Store):
    """Uploads in ``bucket`` under ``prefix``; spool files under ``spool_dir``."""

    def __init__(
        self,
        bucket: str,
        spool_dir: str | os.PathLike[str],
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
        part_size: int = 8 * MiB,
        min_part: int = MIN_PART,
        upload_threads: int = 8,
        mode: int | None = None,
    ):
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.region = region
        self.part_size = part_size
        self.min_part = min_part
        self.upload_threads = upload_threads
        self.spool_dir = Path(spool_dir) / "spool"
        make_private_dir(self.spool_dir, mode)
        self._client: Any = None
        self._probe: tuple[int, Any] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()
        #: Writers open in this process, so a record written meanwhile keeps their state.
        self._writers: dict[str, S3Writer] = {}

    # -- clients, one per process (boto3 clients are thread-safe, not fork-safe) --

    @property
    def client(self) -> Any:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._client = make_client(self.endpoint, self.region)
                    self._executor = ThreadPoolExecutor(
                        self.upload_threads, thread_name_prefix="resumable-s3"
                    )
                    self._writers = {}
                    self._pid = os.getpid()
        return self._client

    @property
    def executor(self) -> ThreadPoolExecutor:
        self.client  # noqa: B018 - made with the client, per process
        assert self._executor is not None
        return self._executor

    # -- keys ------------------------------------------------------------------

    def key(self, upload_id: str) -> str:
        if not is_valid_upload_id(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return f"{self.prefix}{upload_id}"

    def info_key(self, upload_id: str) -> str:
        return self.key(upload_id) + ".info"

    def piece_key(self, upload_id: str, number: int) -> str:
        return f"{self.key(upload_id)}.tail.{number:08d}"

    # -- the info object: record and state -----------------------------------------

    @_neutral
    def _read_info(self, upload_id: str) -> _Info | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.info_key(upload_id))["Body"]
        except Exception as error:
            if _is_missing(error):
                return None
            raise
        with contextlib.closing(body):
            data = json.loads(body.read())
        return _Info(UploadRecord(**data["record"]), S3State.from_dict(data["state"]))

    @_neutral
    def _write_info(self, record: UploadRecord, state: S3State) -> None:
        data = {"record": vars(record), "state": state.to_dict()}
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.info_key(record.id),
            Body=json.dumps(data, separators=(",", ":")).encode(),
            ContentType="application/json",
        )

    def write_record(self, record: UploadRecord) -> None:
        """Keep ``record`` with the state of the bytes: the open writer's, else the stored one.

        A record written complete whose bytes are not yet one object (an
        empty upload, or a length declared equal to the offset) is completed here.
        """
        writer = self._writers.get(record.id)
        if writer is not None:
            if writer.stored_info == (vars(record), writer.state.to_dict()):
                return  # the writer's settle just stored this very record
            state = writer.state
        else:
            info = self._read_info(record.id)
            if info is None and record.offset > 0:
                raise FileNotFoundError(f"upload {record.id} has no state in the bucket")
            state = info.state if info is not None else S3State()
        if record.is_complete and not state.complete:
            state = self._complete(record, state)
        self._write_info(record, state)

    def assemble(self, record: UploadRecord) -> None:
        if record.is_complete:
            self.write_record(record)

    def read_record(self, upload_id: str) -> UploadRecord | None:
        info = self._read_info(upload_id)
        return None if info is None else info.record

    # -- lifecycle -------------------------------------------------------------------

    def create(self, upload_id: str) -> S3Writer:
        """A writer for a new upload; its multipart upload starts with the first part."""
        record = UploadRecord(id=upload_id, length=None)
        return self._writer(record, S3State(), 0)

    def open_writer(self, upload_id: str, offset: int) -> S3Writer:
        info = self._read_info(upload_id)
        if info is None:
            raise FileNotFoundError(f"upload {upload_id} is not in the bucket")
        state = info.state
        if not state.complete and self._exists(self.key(upload_id)):
            # Completed, then the process stopped before writing so.
            size = self._size(self.key(upload_id))
            state = S3State(complete=True, pieces=state.pieces, size=size)
            self._write_info(info.record, state)
        if state.offset > offset:
            if state.complete or offset < state.parts_end:
                raise StoredAhead(state.offset)
            state = self._cut_tail(upload_id, state, offset)
        elif state.offset < offset:
            raise OSError(
                f"upload {upload_id}: the bucket holds {state.offset} bytes, the record {offset}"
            )
        info.record.offset = offset
        return self._writer(info.record, state, offset)

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            if _is_missing(error):
                return False
            raise
        return True

    def _size(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def _writer(self, record: UploadRecord, state: S3State, offset: int) -> S3Writer:
        writer = S3Writer(self, record, state)
        try:
            writer.load_tail()
        except BaseException:
            writer.close()
            raise
        self._writers[record.id] = writer
        return writer

    @_neutral
    def _cut_tail(self, upload_id: str, state: S3State, offset: int) -> S3State:
        """The state with its tail pieces cut back to ``offset`` (never acknowledged bytes).

        A piece that straddles ``offset`` is replaced by a new one holding
        its first part; the pieces dropped stay until gc removes them.
        """
        kept: list[tuple[str, int]] = []
        position = state.parts_end
        pieces = state.pieces
        for key, size in state.tail:
            if position + size <= offset:
                kept.append((key, size))
            elif position < offset:
                head = self._get_range(key, 0, offset - position)
                new_key = self.piece_key(upload_id, pieces)
                pieces += 1
                self.client.put_object(Bucket=self.bucket, Key=new_key, Body=head)
                kept.append((new_key, len(head)))
            position += size
        return S3State(state.multipart, list(state.parts), kept, state.complete, pieces)

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        body = self.client.get_object(
            Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
        )["Body"]
        with contextlib.closing(body):
            return cast(bytes, body.read())

    @_neutral
    def open_data(self, upload_id: str) -> StoredData:
        key = self.key(upload_id)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            if not _is_missing(error):
                raise
            info = self._read_info(upload_id)
            if info is None or not info.record.is_complete:
                raise FileNotFoundError(f"upload {upload_id} has no object") from None
            # Completed in the registry, not yet here (its completion was cut short).
            self.write_record(info.record)
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        size = int(head["ContentLength"])
        reader = S3Reader(self, key, size)
        modified = head["LastModified"].timestamp()
        return StoredData(io.BufferedReader(reader, READ_CHUNK), size, modified)

    @_neutral
    def delete(self, upload_id: str) -> None:
        """The info first (then the upload no longer exists), then every other object."""
        info = self._read_info(upload_id)
        self.client.delete_object(Bucket=self.bucket, Key=self.info_key(upload_id))
        if info is not None and info.state.multipart:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key(upload_id), UploadId=info.state.multipart
                )
        keys = [self.key(upload_id)] + [
            item["Key"] for item in self._list(self.key(upload_id) + ".")
        ]
        for start in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True},
            )

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    @_neutral
    def upload_ids(self) -> Iterator[str]:
        ids = []
        for item in self._list(self.prefix):
            name = item["Key"][len(self.prefix) :]
            if name.endswith(".info") and is_valid_upload_id(name[:-5]):
                ids.append(name[:-5])
        return iter(ids)

    def storage_info(self, upload_id: str) -> dict[str, str]:
        return {"Type": "s3store", "Bucket": self.bucket, "Key": self.prefix + upload_id}

    def problem(self) -> str | None:
        reason = writable_problem(self.spool_dir)
        if reason is not None:
            return f"{self.spool_dir} is not writable: {reason}"
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._probe_client().head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as error:
            return f"bucket {self.bucket!r}: {error}"
        return None

    def _probe_client(self) -> Any:
        """A client that asks once and waits 2 s: the uploads' client retries for
        seconds, and a readiness probe must answer before the prober gives up."""
        if self._probe is None or self._probe[0] != os.getpid():
            client = make_client(self.endpoint, self.region, attempts=1, timeout=PROBE_SECONDS)
            self._probe = (os.getpid(), client)
        return self._probe[1]

    @_neutral
    def remove_leftovers(self, older_than: float) -> int:
        """Objects and multipart uploads no state names, untouched since ``older_than``.

        Also the spool files of crashed workers. Operators should add a
        bucket lifecycle rule that aborts incomplete multipart uploads too.
        """
        removed = remove_unknown(self.spool_dir, set(), older_than)
        infos: dict[str, _Info | None] = {}

        def info_of(upload_id: str) -> _Info | None:
            if upload_id not in infos:
                infos[upload_id] = self._read_info(upload_id)
            return infos[upload_id]

        for item in list(self._list(self.prefix)):
            name = item["Key"][len(self.prefix) :]
            upload_id, _, rest = name.partition(".")
            if not is_valid_upload_id(upload_id) or rest == "info":
                continue
            if item["LastModified"].timestamp() >= older_than:
                continue
            info = info_of(upload_id)
            named = info is not None and (
                (rest == "" and info.state.complete)
                or any(key == item["Key"] for key, _ in info.state.tail)
            )
            if not named:
                self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                removed += 1
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                upload_id = upload["Key"][len(self.prefix) :]
                if upload["Initiated"].timestamp() >= older_than:
                    continue
                if not is_valid_upload_id(upload_id):
                    continue
                info = info_of(upload_id)
                if info is None or info.state.multipart != upload["UploadId"]:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        return removed

    # -- parts and completion ----------------------------------------------------------

    def next_part_size(self, state_parts: int, done: int, length: int | None) -> int:
        """The size of part number ``state_parts + 1``, ``done`` bytes being in parts already.

        With a known length the parts are equal (as Cloudflare R2 wants),
        grown so that 10,000 are enough; with an unknown one the size doubles
        every PARTS_PER_DOUBLING parts.
        """
        if length is not None:
            size = max(self.part_size, math.ceil(length / MAX_PARTS))
            left = max(MAX_PARTS - state_parts, 1)
            if size * left < length - done:  # earlier parts were smaller (a deferred length)
                size = math.ceil((length - done) / left)
            return min(MAX_PART, size)
        return min(MAX_PART, cast(int, self.part_size * 2 ** (state_parts // PARTS_PER_DOUBLING)))

    @_neutral
    def start_multipart(self, record: UploadRecord) -> str:
        return str(
            self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key(record.id), ContentType=content_type(record)
            )["UploadId"]
        )

    @_neutral
    def upload_part(
        self, upload_id: str, multipart: str, number: int, path: Path, size: int
    ) -> str:
        fd = open_nofollow(path, os.O_RDONLY)
        try:
            answer = self.client.upload_part(
                Bucket=self.bucket,
                Key=self.key(upload_id),
                UploadId=multipart,
                PartNumber=number,
                Body=_Slice(fd, 0, size),
                ContentLength=size,
            )
        finally:
            os.close(fd)
        return str(answer["ETag"])

    @_neutral
    def _complete(self, record: UploadRecord, state: S3State) -> S3State:
        """One object from the parts and the tail pieces (the pieces become the last part)."""
        key = self.key(record.id)
        tail = sum(size for _, size in state.tail)
        if not state.parts and tail == 0:
            if state.multipart:
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=state.multipart
                    )
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=b"", ContentType=content_type(record)
            )
        else:
            multipart = state.multipart or self.start_multipart(record)
            parts = list(state.parts)
            if tail:
                spool = self.spool_dir / f"{record.id}.{secrets.token_hex(8)}.last"
                fd = open_nofollow(spool, os.O_RDWR | os.O_CREAT | os.O_EXCL)
                try:
                    for piece, _ in state.tail:
                        self._download_into(fd, piece)
                    number = len(parts) + 1
                    parts.append((number, tail, self.upload_part(
                        record.id, multipart, number, spool, tail)))
                finally:
                    os.close(fd)
                    spool.unlink()
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=multipart,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": e} for n, _, e in parts]
                },
            )
        return S3State(complete=True, pieces=state.pieces, size=state.offset)

    def _download_into(self, fd: int, key: str) -> int:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        total = 0
        with contextlib.closing(body):
            for chunk in iter(lambda: body.read(READ_CHUNK), b""):
                write_all(fd, memoryview(chunk))
                total += len(chunk)
        return total

    def delete_pieces(self, keys: list[str]) -> None:
        """Pieces no state names any more (best effort: gc removes what is left)."""
        for start in range(0, len(keys), 1000):
            with contextlib.suppress(Exception):
                self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]],
                            "Quiet": True},
                )

    def forget_writer(self, writer: S3Writer) -> None:
        if self._writers.get(writer.record.id) is writer:
            del self._writers[writer.record.id]

    # -- concatenation ---------------------------------------------------------------

    @_neutral
    def concatenate(
        self,
        upload_id: str,
        part_ids: list[str],
        lengths: list[int],
        between: Callable[[], None] = lambda: None,
    ) -> None:
        """The final object from the partial uploads' objects, copied inside S3 where it can.

        A stretch of at least the minimum part is copied with UploadPartCopy;
        shorter ones (small partial uploads) pass through a spool file.
        """
        info = self._read_info(upload_id)
        record = info.record if info is not None else UploadRecord(id=upload_id, length=None)
        total = sum(lengths)
        if total == 0:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key(upload_id), Body=b"",
                ContentType=content_type(record),
            )
        else:
            assembler = _Assembler(self, record, total)
            try:
                for part_id, length in zip(part_ids, lengths, strict=True):
                    assembler.add(self.key(part_id), length, between)
                assembler.finish()
            except BaseException:
                assembler.abort()
                raise
        self._write_info(record, S3State(complete=True, size=total))


class _Assembler:
    """Parts of a final object: copies of long stretches, spooled bytes for short ones."""

    def __init__(self, store: S3Store, record: UploadRecord, total: int):
        self.store = store
        self.record = record
        self.total = total
        self.multipart = store.start_multipart(record)
        self.parts: list[tuple[int, str]] = []
        self.done = 0
        self.spool = store.spool_dir / f"{record.id}.{secrets.token_hex(8)}.join"
        self.fd = open_nofollow(self.spool, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        self.spooled = 0

    @property
    def client(self) -> Any:
        return self.store.client

    def _part_size(self) -> int:
        return self.store.next_part_size(len(self.parts), self.done, self.total)

    def add(self, source: str, length: int, between: Callable[[], None]) -> None:
        position = 0
        while position < length:
            left = length - position
            if self.spooled == 0 and left >= self.store.min_part:
                size = min(left, MAX_PART)
                number = len(self.parts) + 1
                answer = self.client.upload_part_copy(
                    Bucket=self.store.bucket,
                    Key=self.store.key(self.record.id),
                    UploadId=self.multipart,
                    PartNumber=number,
                    CopySource={"Bucket": self.store.bucket, "Key": source},
                    CopySourceRange=f"bytes={position}-{position + size - 1}",
                )
                self.parts.append((number, str(answer["CopyPartResult"]["ETag"])))
                self.done += size
                position += size
            else:
                size = min(left, self._part_size() - self.spooled)
                data = self.store._get_range(source, position, size)
                os.pwrite(self.fd, data, self.spooled)
                self.spooled += len(data)
                position += len(data)
                if self.spooled >= self._part_size():
                    self._send_spool()
            between()

    def _send_spool(self) -> None:
        number = len(self.parts) + 1
        etag = self.store.upload_part(
            self.record.id, self.multipart, number, self.spool, self.spooled
        )
        self.parts.append((number, etag))
        self.done += self.spooled
        self.spooled = 0
        os.ftruncate(self.fd, 0)

    def finish(self) -> None:
        if self.spooled:
            self._send_spool()
        self.client.complete_multipart_upload(
            Bucket=self.store.bucket,
            Key=self.store.key(self.record.id),
            UploadId=self.multipart,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in self.parts]},
        )
        self._close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(
                Bucket=self.store.bucket, Key=self.store.key(self.record.id),
                UploadId=self.multipart,
            )
        self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            with contextlib.suppress(FileNotFoundError):
                self.spool.unlink()


class S3Writer(UploadWriter):
    """Appends to an upload in the bucket through spool files, one per part.

    ``spool`` holds the bytes after the last part sent or being sent: at
    first the tail pieces (downloaded), then what the request brings. When
    it holds a whole part it is sent (in the background, at most IN_FLIGHT
    at once) and a new spool file begins.
    """

    def __init__(self, store: S3Store, record: UploadRecord, state: S3State):
        self.store = store
        self.record = record
        self.state = state
        #: Parts being sent: (number, size, path, future ETag), in order.
        self.sending: list[tuple[int, int, Path, Future[str]]] = []
        #: Parts sent since the last settle: (number, size, ETag).
        self.sent: list[tuple[int, int, str]] = []
        self.fd = -1
        self.path: Path | None = None
        self.spooled = 0  # bytes in the current spool file
        self.stored = 0  # of them, those the state's tail pieces hold
        self.part_limit = 0
        self.closed = False
        #: Where the current spool file starts in the upload.
        self.spool_start = state.parts_end
        #: While held (hold()): the spool files of parts sent, (start, size, path),
        #: kept until settled so read_back can read them.
        self.holding = False
        self.kept: list[tuple[int, int, Path]] = []
        #: The record and state the last settle stored in the info object.
        self.stored_info: tuple[dict[str, Any], dict[str, Any]] | None = None

    def _new_spool(self) -> None:
        self.path = self.store.spool_dir / f"{self.record.id}.{secrets.token_hex(8)}.part"
        self.fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        self.spooled = 0
        self.stored = 0
        self.part_limit = self.store.next_part_size(
            len(self.state.parts) + len(self.sent) + len(self.sending),
            self.state.parts_end + sum(s for _, s, _ in self.sent)
            + sum(s for _, s, _, _ in self.sending),
            self.record.length,
        )

    @_neutral
    def load_tail(self) -> None:
        """Start the spool with the tail pieces, so the next part continues them."""
        self._new_spool()
        for key, _size in self.state.tail:
            self.spooled += self.store._download_into(self.fd, key)
        self.stored = self.spooled

    def write(self, data: memoryview) -> None:
        while len(data):
            room = self.part_limit - self.spooled
            n = min(room, len(data))
            write_all(self.fd, data[:n])
            self.spooled += n
            data = data[n:]
            if self.spooled >= self.part_limit:
                self._send_part()

    def _send_part(self) -> None:
        """The full spool file becomes a part, sent in the background."""
        if self.state.multipart is None:
            self.state.multipart = self.store.start_multipart(self.record)
        while len(self.sending) >= IN_FLIGHT:
            self._receive_oldest()
        number = len(self.state.parts) + len(self.sent) + len(self.sending) + 1
        assert self.path is not None
        os.close(self.fd)
        path, size = self.path, self.spooled
        future = self.store.executor.submit(
            self.store.upload_part, self.record.id, self.state.multipart, number, path, size
        )
        self.sending.append((number, size, path, future))
        if self.holding:
            self.kept.append((self.spool_start, size, path))
        self.spool_start += size
        self._new_spool()

    def _wait(self, future: Future[_Result]) -> _Result:
        """The result of work on S3, the caller's lease kept alive meanwhile.

        Requests to S3 may take long (a part on a slow link, completing a
        large object), longer than a lock outlives its last renewal: without
        renewals a slow store would hand the upload to another request.
        """
        while not wait([future], timeout=KEEPALIVE_SECONDS).done:
            self._keep_alive()
        return future.result()

    def _keep_alive(self) -> None:
        if self.keepalive is not None:
            self.keepalive()

    def _in_background(
        self, function: Callable[..., _Result], *args: Any, **kwargs: Any
    ) -> _Result:
        """``function(*args, **kwargs)`` on the store's threads, waited for with ``_wait``."""
        return self._wait(self.store.executor.submit(function, *args, **kwargs))

    def _receive_oldest(self) -> None:
        number, size, path, future = self.sending[0]
        try:
            etag = self._wait(future)
        finally:
            self.sending.pop(0)
            if not self.holding:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        self.sent.append((number, size, etag))

    def cut(self, end: int) -> int:
        """Drop what was not settled; a store can keep no more than that here."""
        self._drop_unsettled()
        return self.state.offset

    def _drop_unsettled(self) -> None:
        for _, _, path, future in self.sending:
            future.cancel()
            with contextlib.suppress(Exception):
                future.result()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.sending = []
        self.sent = []
        self._drop_kept()
        self._discard_spool()
        self.spool_start = self.state.parts_end
        self.load_tail()

    def _discard_spool(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None

    def hold(self) -> None:
        self.holding = True

    def read_back(self, position: int, view: memoryview) -> int:
        """From the spool files kept while held, or the current one."""
        files = [*self.kept]
        if self.path is not None:
            files.append((self.spool_start, self.spooled, self.path))
        for start, size, path in files:
            if start <= position < start + size:
                with open(path, "rb") as spool:
                    spool.seek(position - start)
                    return spool.readinto(view[: start + size - position])
        return 0

    def _drop_kept(self) -> None:
        for _, _, path in self.kept:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.kept = []

    @_neutral
    def settle(self, record: UploadRecord) -> None:
        """Parts sent, the new bytes stored as a tail piece, then the state naming them.

        When ``record`` is complete the bytes after the last part become the
        last part (or, for an upload shorter than a part, the object itself).
        """
        self.record = record
        final = record.is_complete
        if self.state.complete:
            return  # nothing can have been written after the last byte
        while self.sending:
            self._receive_oldest()
        state = self.state
        parts = state.parts + self.sent
        # After a new part the old pieces are inside it; the spool holds what follows.
        obsolete = [key for key, _ in state.tail] if self.sent or final else []
        tail = [] if self.sent else list(state.tail)
        pieces = state.pieces
        if final:
            new = self._finish(parts, pieces)
        else:
            if self.spooled > self.stored:
                key = self.store.piece_key(self.record.id, pieces)
                pieces += 1
                self._put_spool(key, self.stored)
                tail.append((key, self.spooled - self.stored))
                self.stored = self.spooled
            new = S3State(state.multipart, parts, tail, False, pieces)
        self._keep_alive()  # never name the new state for a holder that was replaced
        self.store._write_info(record, new)
        self.stored_info = (dict(vars(record)), new.to_dict())
        self.state = new
        self.sent = []
        self._drop_kept()
        if obsolete:
            self.store.delete_pieces(obsolete)

    def _put_spool(self, key: str, start: int, **extra: Any) -> None:
        """The current spool file from ``start`` as the object ``key``."""
        size = self.spooled - start
        self._in_background(
            self.store.client.put_object, Bucket=self.store.bucket, Key=key,
            Body=_Slice(self.fd, start, size), ContentLength=size, **extra,
        )

    def _finish(self, parts: list[tuple[int, int, str]], pieces: int) -> S3State:
        store = self.store
        key = store.key(self.record.id)
        if not parts:  # shorter than a part: one PUT
            self._put_spool(key, 0, ContentType=content_type(self.record))
            if self.state.multipart:
                with contextlib.suppress(Exception):
                    store.client.abort_multipart_upload(
                        Bucket=store.bucket, Key=key, UploadId=self.state.multipart
                    )
            return S3State(complete=True, pieces=pieces, size=self.spooled)
        multipart = self.state.multipart
        assert multipart is not None
        if self.spooled:
            assert self.path is not None
            number = len(parts) + 1
            parts = parts + [(number, self.spooled, self._in_background(
                store.upload_part, self.record.id, multipart, number, self.path, self.spooled))]
        self._in_background(
            store.client.complete_multipart_upload,
            Bucket=store.bucket,
            Key=key,
            UploadId=multipart,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, _, e in parts]},
        )
        return S3State(complete=True, pieces=pieces, size=sum(size for _, size, _ in parts))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.store.forget_writer(self)
        for _, _, path, future in self.sending:
            future.cancel()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.sending = []
        self._drop_kept()
        self._discard_spool()


class _Seekable(io.RawIOBase):
    """``size`` bytes read from ``position``, which ``seek`` moves (botocore rewinds a
    body to sign and to resend it; a download's Range seeks)."""

    size = 0
    position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        position = min(max(base + offset, 0), self.size)
        if position != self.position:
            self.moved()
            self.position = position
        return self.position

    def moved(self) -> None:
        """The position changed: drop whatever was opened at the old one."""


class _Slice(_Seekable):
    """``length`` bytes of a file from ``start``: a part's or a piece's body."""

    def __init__(self, fd: int, start: int, length: int):
        self.fd = fd
        self.start = start
        self.size = length
        self.position = 0

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.size - self.position)
        if want <= 0:
            return 0
        # Straight into the caller's buffer: a bytes object per read, in every
        # sending thread, added 10-20 MiB to each worker's peak with 16 uploads.
        n = os.preadv(self.fd, [memoryview(buffer).cast("B")[:want]], self.start + self.position)
        if not n:
            raise OSError(errno.EIO, "spool file is shorter than the part")
        self.position += n
        return n


class S3Reader(_Seekable):
    """A finished upload's object, read in ranged requests from wherever it is sought to."""

    def __init__(self, store: S3Store, key: str, size: int):
        self.store = store
        self.key = key
        self.size = size
        self.position = 0
        self.body: Any = None

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.size:
            return 0
        if self.body is None:
            self.body = _neutral(self.store.client.get_object)(
                Bucket=self.store.bucket, Key=self.key, Range=f"bytes={self.position}-"
            )["Body"]
        data = self.body.read(len(buffer))
        if not data:
            raise OSError(f"{self.key} ended at {self.position} of {self.size} bytes")
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def moved(self) -> None:
        self._drop()

    def _drop(self) -> None:
        if self.body is not None:
            with contextlib.suppress(Exception):
                self.body.close()
            self.body = None

    def close(self) -> None:
        self._drop()
        super().close()


def content_type(record: UploadRecord) -> str:
    """The object's Content-Type: the ``filetype`` metadata when it looks like one."""
    try:
        value = parse_metadata(record.metadata).get("filetype", b"").decode("ascii")
    except (BadRequest, UnicodeDecodeError):
        value = ""
    kind, _, subtype = value.partition("/")
    if kind and subtype and all(c.isalnum() or c in "!#$&^_.+-/;= " for c in value):
        return value
    return "application/octet-stream"


def make_client(
    endpoint: str | None, region: str | None, attempts: int = 5, timeout: float = 0.0
) -> Any:
    """A boto3 S3 client: the standard credential chain, retries with backoff.

    boto3 1.36 and later add checksum headers that several S3-compatible
    servers refuse; with an endpoint of its own (MinIO, Ceph RGW, R2) they
    are sent only where the API requires them.
    """
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {
        "retries": {"max_attempts": attempts, "mode": "standard"},
        "max_pool_connections": 64,
        "connect_timeout": timeout or 5,
        "read_timeout": timeout or 60,
        "s3": {"addressing_style": "path" if endpoint else "auto"},
    }
    if endpoint:
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=region, config=Config(**options)
    )


def bucket_problem(bucket: str, endpoint: str | None, region: str | None) -> str | None:
    """Why ``bucket`` cannot be used now (missing, no credentials, unreachable), or None."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        make_client(endpoint, region).head_bucket(Bucket=bucket)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        reason = {"404": "does not exist", "NoSuchBucket": "does not exist",
                  "403": "is not ours to use (check the credentials)"}.get(code, str(error))
        return f"bucket {bucket!r} {reason}"
    except BotoCoreError as error:
        return f"bucket {bucket!r}: {error}"
    return None

