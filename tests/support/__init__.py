"""What the suite's tests share: real processes, clients, test data, waits and guards.

One module per job:

* ``paths``: where the repository is;
* ``waiting``: ``wait_until``, the one poll loop;
* ``processes``: free ports, a process's children, stopping a process group
  (standard library only: the benchmarks use it too);
* ``redis_servers``: private redis-server, Redis Cluster and Sentinel deployments
  (standard library only, likewise);
* ``servers``: ``resumable serve`` and a host app under gunicorn, per backend;
* ``nginx``: the shipped nginx config in front of replicas;
* ``s3``: moto's S3 server and a proxy injecting S3's faults;
* ``http``: the tus client and the one raw HTTP/1.1 client;
* ``uploads``: upload ids, data files, metadata and checksums, finished uploads;
* ``data``: the one test-data generator;
* ``guards``: no 5xx and no traceback in the server's log;
* ``hooks``: a receiver of HTTP hooks;
* ``resumer``: a resuming tus client and the fault suites' tally;
* ``node`` and ``browser``: Node.js projects, headless Chromium.

The names most tests use are imported here: ``from ..support import Server, TusClient``.
"""

from .data import KiB, MiB, Pattern, pattern_bytes, pattern_file
from .guards import assert_no_traceback, fail_on_server_error, guarded
from .hooks import HookReceiver
from .http import (
    OFFSET_STREAM,
    TUS,
    RawPatch,
    RawRequest,
    RawResponse,
    SizedBody,
    TusClient,
    chunked_request,
    iter_chunks,
    offered_extensions,
    paced,
    raw_request,
    read_head,
    request_head,
)
from .nginx import NGINX_MISSING, UPSTREAM_FAIL_TIMEOUT, Nginx, Proxied, nginx_executable
from .paths import ROOT, TESTS
from .processes import free_port
from .redis_servers import RedisCluster, RedisSentinel, RedisServer
from .s3 import FaultyS3, MotoS3, s3_client
from .servers import HOSTED, PROXIED, HostedApp, Server, connection_owner, split_backend
from .uploads import (
    assert_content,
    assert_finished,
    assert_state,
    b64,
    b64_digest,
    checksum_header,
    data_file,
    decode_metadata,
    download_sha256,
    encode_metadata,
    make_upload,
    path_of,
    sidecar_file,
    upload_count,
    upload_id,
)
from .waiting import wait_until

__all__ = [
    "HOSTED", "NGINX_MISSING", "OFFSET_STREAM", "PROXIED", "ROOT", "TESTS", "TUS",
    "UPSTREAM_FAIL_TIMEOUT", "FaultyS3", "HookReceiver", "HostedApp", "KiB", "MiB", "MotoS3",
    "Nginx", "Pattern", "Proxied", "RawPatch", "RawRequest", "RawResponse", "RedisCluster",
    "RedisSentinel", "RedisServer", "Server", "SizedBody", "TusClient", "assert_content",
    "assert_finished", "assert_no_traceback", "assert_state", "b64", "b64_digest",
    "checksum_header", "chunked_request", "connection_owner", "data_file", "decode_metadata",
    "download_sha256", "encode_metadata", "fail_on_server_error", "free_port", "guarded",
    "iter_chunks", "make_upload", "nginx_executable", "offered_extensions", "paced", "path_of",
    "pattern_bytes", "pattern_file", "raw_request", "read_head", "request_head", "s3_client",
    "sidecar_file", "split_backend", "upload_count", "upload_id", "wait_until",
]
