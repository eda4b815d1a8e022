"""One settings object for the whole server, loaded from flags and environment.

Every knob is a field of :class:`Settings` with its help text beside it. The
command line flags (``--data-dir``) and the environment variables
(``RESUMABLE_DATA_DIR``) are both derived from the field names, so they cannot
drift apart; flags win over the environment, the environment over defaults.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .redis_url import parse_redis_url

ENV_PREFIX = "RESUMABLE_"
MiB = 1024 * 1024
WORKER_CLASSES = ("gthread", "sync", "gevent", "eventlet")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SWITCHES = ("auto", "on", "off")
LOG_FORMATS = ("text", "json")
#: Lifecycle events, in the order an upload meets them.
HOOK_EVENTS = (
    "pre-create",
    "post-create",
    "post-receive",
    "pre-finish",
    "post-finish",
    "pre-terminate",
    "post-terminate",
)


def _setting(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Settings:
    host: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(1080, "port to listen on")
    workers: int = _setting(2, "gunicorn worker processes")
    worker_class: str = _setting(
        "gthread", "gunicorn worker class; the default threads hold long uploads without timeouts"
    )
    threads: int = _setting(
        2048,
        "threads per worker: the most connections (streaming uploads) one worker holds at "
        "once; threads start on demand, and a full worker leaves new connections to the others",
    )
    data_dir: str = _setting(
        "data",
        "directory for upload data and sidecar records; a relative path is taken from the "
        "working directory at start",
    )
    data_dir_mode: str = _setting(
        "0700", "permissions (octal) of the data directory and its folders when they are created"
    )
    s3_bucket: str | None = _setting(
        None,
        "S3 bucket the uploads are kept in (finished ones as one object each); unset: files "
        "in the data directory, which then holds only spool files",
    )
    s3_endpoint: str | None = _setting(
        None, "S3 endpoint URL for S3-compatible storage (MinIO, Ceph RGW, R2); unset: AWS"
    )
    s3_prefix: str = _setting("", "prefix of every object key this server writes")
    s3_region: str | None = _setting(None, "S3 region; unset: the AWS configuration's")
    s3_part_size: int = _setting(
        8 * MiB,
        "bytes of each multipart part (5 MiB to 5 GiB; grown so 10,000 parts hold the upload)",
    )
    redis_url: str | None = _setting(
        None,
        "Redis URL for offsets and locks shared by many hosts: redis://, rediss://, unix://, "
        "redis+sentinel://HOST:PORT[,…]/MASTER[/DB] or redis+cluster://HOST:PORT[,…]; "
        "unset: embedded registry",
    )
    redis_prefix: str = _setting("resumable:", "prefix of every Redis key this server writes")
    redis_wait_replicas: int = _setting(
        -1,
        "Redis replicas that must hold each lock, commit and deletion before it is answered "
        "(WAIT), so a failover cannot lose them; -1: 1 behind Sentinel, else 0",
    )
    base_path: str = _setting("/files/", "URL path the tus endpoint is mounted at")
    max_size: int = _setting(0, "largest upload in bytes (Tus-Max-Size); 0 means no limit")
    lock_ttl: float = _setting(
        10.0, "seconds a lock outlives its holder when the holder dies without releasing it"
    )
    lock_wait: float = _setting(
        3.0, "seconds a request waits for the holder of an upload to let go before 423"
    )
    heartbeat: float = _setting(
        0.0,
        "seconds between a Redis writer's lock renewals (release requests reach it at once, "
        "by pub/sub); 0: a quarter of --lock-ttl",
    )
    commit_bytes: int = _setting(16 * MiB, "a long PATCH commits its offset every this many bytes")
    commit_seconds: float = _setting(
        5.0, "... and at least every this many seconds (a HEAD gets the newest offset anyway)"
    )
    read_timeout: float = _setting(
        60.0, "seconds a request body may stall before the server cuts it and keeps what came"
    )
    min_body_rate: int = _setting(
        500,
        "bytes per second a request body must average over each --read-timeout window, else "
        "it is cut like a stalled one (a trickle cannot hold a thread); 0 disables",
    )
    header_timeout: float = _setting(
        30.0, "seconds a client has to send a request's headers once it started (gthread)"
    )
    chunk_size: int = _setting(MiB, "bytes read from the socket and written at a time")
    fsync: bool = _setting(
        False, "fsync data before acknowledging it (survives power loss, costs throughput)"
    )
    expiry: float = _setting(
        7 * 24 * 3600.0,
        "seconds an unfinished upload lives after its last PATCH (expiration); 0 disables",
    )
    finished_expiry: float = _setting(
        0.0,
        "seconds a finished upload (final concatenations included) is kept after it "
        "finished; 0 keeps finished uploads until they are deleted",
    )
    gc_interval: float = _setting(
        600.0, "seconds between garbage collections run by `serve`; 0 leaves it to `resumable gc`"
    )
    max_concat_parts: int = _setting(1000, "most partial uploads one final concatenation may join")
    max_metadata_size: int = _setting(
        16 * 1024, "longest Upload-Metadata header in bytes (431 beyond)"
    )
    trust_proxy: bool = _setting(
        False, "build Location URLs from X-Forwarded-* / Forwarded headers set by a proxy"
    )
    checksum_trailer: str = _setting(
        "auto",
        "offer checksum-trailer: on, off, or auto (off with --trust-proxy: proxies such as "
        "nginx drop request trailers, so a client's digest would never arrive)",
    )
    cors_origins: str = _setting("*", "origins allowed by CORS, comma separated, or *")
    cors_allow_headers: str = _setting(
        "", "request headers browsers may send besides tus's own, comma separated (X-Api-Key)"
    )
    cors_expose_headers: str = _setting(
        "", "response headers browsers may read besides tus's own, comma separated"
    )
    cors_max_age: int = _setting(86400, "seconds a browser may cache a CORS preflight's answer")
    auth_hook: str | None = _setting(
        None, "access-control hook 'package.module:function' asked before every request"
    )
    hooks: str | None = _setting(
        None,
        "lifecycle hooks 'package.module:object': an object whose methods (or a mapping whose "
        "entries) are named after events, pre_create ... post_terminate",
    )
    hooks_http: str | None = _setting(
        None, "URL that receives lifecycle hooks as POSTs in tusd's HTTP hook format"
    )
    hooks_enabled_events: str = _setting(
        ",".join(HOOK_EVENTS), "events sent to --hooks-http, comma separated"
    )
    hooks_http_timeout: float = _setting(10.0, "seconds an HTTP hook may take to answer")
    hooks_http_retries: int = _setting(
        3, "retries of a failed HTTP hook (post-hooks retry in the background, pre-hooks at once)"
    )
    hooks_http_backoff: float = _setting(
        1.0, "seconds before the first retry of a failed HTTP hook, doubled for each next one"
    )
    progress_interval: float = _setting(
        1.0, "least seconds between two post-receive events of one upload"
    )
    metrics_path: str = _setting(
        "/metrics", "URL path of the Prometheus metrics, outside the tus base path; empty: none"
    )
    health: bool = _setting(True, "answer /healthz (serving) and /readyz (Redis and storage)")
    access_log: bool = _setting(True, "log one line per request")
    log_format: str = _setting("text", "request log lines as text or json")
    shutdown_timeout: float = _setting(
        10.0,
        "seconds running requests get to finish on SIGTERM or a graceful reload; running "
        "PATCHes stop reading, keep what came, and answer",
    )
    interim_104: str = _setting(
        "auto",
        "send the IETF draft's 104 (Upload Resumption Supported) before a creation's body: "
        "on, off, or auto (off with --trust-proxy: proxies such as nginx 1.22 take a 104 "
        "for the final answer)",
    )
    demo: bool = _setting(False, "serve a demo upload page with a live status table at /")
    log_level: str = _setting("info", "gunicorn log level")

    def __post_init__(self) -> None:
        base = "/" + self.base_path.strip("/") + "/"
        object.__setattr__(self, "base_path", base.replace("//", "/"))
        # Resolved once, here: every layer (and the gc child process, and
        # Flask's send_file, which resolves relative paths against the
        # package) then sees the same absolute directory.
        object.__setattr__(self, "data_dir", os.path.abspath(self.data_dir))
        problems = [message for check, message in self._rules() if not check]
        if problems:
            raise ValueError("; ".join(problems))

    def _rules(self) -> list[tuple[bool, str]]:
        """Every constraint between and on settings, checked before anything starts."""
        return [
            (1 <= self.port <= 65535, "port must be between 1 and 65535"),
            (self.workers >= 1, "workers must be at least 1"),
            (self.threads >= 1, "threads must be at least 1"),
            (
                self.worker_class in WORKER_CLASSES or "." in self.worker_class,
                f"worker_class must be one of {', '.join(WORKER_CLASSES)} or a dotted path",
            ),
            (self.max_size >= 0, "max_size must be 0 (no limit) or more"),
            (self.chunk_size >= 4096, "chunk_size must be at least 4096"),
            (self.heartbeat >= 0, "heartbeat must be 0 (a quarter of lock_ttl) or positive"),
            (
                self.lock_ttl > self.renewal_interval * 2,
                "lock_ttl must be more than twice the heartbeat",
            ),
            (self.lock_wait >= 0, "lock_wait must not be negative"),
            (self.read_timeout > 0, "read_timeout must be positive"),
            (self.min_body_rate >= 0, "min_body_rate must be 0 (off) or more"),
            (self.header_timeout > 0, "header_timeout must be positive"),
            (self.data_dir_permissions is not None, "data_dir_mode must be octal, e.g. 0700"),
            (self.commit_bytes > 0, "commit_bytes must be positive"),
            (
                5 * MiB <= self.s3_part_size <= 5 * 1024 * MiB,
                "s3_part_size must be 5 MiB to 5 GiB (S3's limits)",
            ),
            (self.commit_seconds > 0, "commit_seconds must be positive"),
            (
                self.expiry >= 0 and self.finished_expiry >= 0 and self.gc_interval >= 0,
                "expiry, finished_expiry and gc_interval must be >= 0",
            ),
            (self.max_concat_parts >= 1, "max_concat_parts must be at least 1"),
            (self.max_metadata_size >= 1, "max_metadata_size must be at least 1"),
            (self.redis_url_problem is None, f"redis_url {self.redis_url_problem}"),
            (self.redis_wait_replicas >= -1, "redis_wait_replicas must be -1 (auto), 0 or more"),
            (
                self.redis_wait_replicas <= 0 or self._redis_kind() != "cluster",
                "redis_wait_replicas does not apply to a Redis Cluster: set min-replicas-to-write "
                "on its nodes instead",
            ),
            (
                "{" not in self.redis_prefix and "}" not in self.redis_prefix,
                "redis_prefix must not hold { or }: the registry's keys use them as hash tags",
            ),
            (self.interim_104 in SWITCHES, f"interim_104 must be one of {', '.join(SWITCHES)}"),
            (
                self.checksum_trailer in SWITCHES,
                f"checksum_trailer must be one of {', '.join(SWITCHES)}",
            ),
            (self.log_format in LOG_FORMATS, f"log_format must be one of {', '.join(LOG_FORMATS)}"),
            (
                not set(self.enabled_hook_events) - set(HOOK_EVENTS),
                f"hooks_enabled_events must name events among {', '.join(HOOK_EVENTS)}",
            ),
            (
                self.hooks_http_timeout > 0
                and self.hooks_http_retries >= 0
                and self.hooks_http_backoff >= 0,
                "hooks_http_timeout must be positive, hooks_http_retries and backoff >= 0",
            ),
            (self.progress_interval > 0, "progress_interval must be positive"),
            (self.shutdown_timeout > 0, "shutdown_timeout must be positive"),
            (self.cors_max_age >= 0, "cors_max_age must be 0 or more"),
            (
                not self.metrics_path or self.metrics_path.startswith("/"),
                "metrics_path must start with / (or be empty: no metrics)",
            ),
            (
                self.log_level.lower() in LOG_LEVELS,
                f"log_level must be one of {', '.join(LOG_LEVELS)}",
            ),
        ]

    @property
    def redis_url_problem(self) -> str | None:
        """Why ``redis_url`` names no Redis, or None (also when it is unset)."""
        if self.redis_url is None:
            return None
        try:
            parse_redis_url(self.redis_url)
        except ValueError as error:
            return str(error)
        return None

    def _redis_kind(self) -> str | None:
        if self.redis_url is None or self.redis_url_problem is not None:
            return None
        return parse_redis_url(self.redis_url).kind

    @property
    def replicas_to_wait(self) -> int:
        """``redis_wait_replicas`` with -1 resolved: 1 behind Sentinel, else none."""
        if self.redis_wait_replicas >= 0:
            return self.redis_wait_replicas
        return 1 if self._redis_kind() == "sentinel" else 0

    @property
    def offers_checksum_trailer(self) -> bool:
        """``checksum_trailer`` resolved: ``auto`` offers it unless a proxy is trusted."""
        if self.checksum_trailer == "auto":
            return not self.trust_proxy
        return self.checksum_trailer == "on"

    @property
    def renewal_interval(self) -> float:
        """Seconds between a Redis holder's lease renewals (``heartbeat``, or lock_ttl / 4)."""
        return self.heartbeat or self.lock_ttl / 4

    @property
    def data_dir_permissions(self) -> int | None:
        """``data_dir_mode`` as a number (None when it is not octal permission bits)."""
        if not re.fullmatch(r"0?[0-7]{3}", self.data_dir_mode.strip()):
            return None
        return int(self.data_dir_mode.strip(), 8)

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        return _items(self.cors_origins)

    @property
    def enabled_hook_events(self) -> tuple[str, ...]:
        return _items(self.hooks_enabled_events)

    @property
    def cors_extra_allowed(self) -> tuple[str, ...]:
        return _items(self.cors_allow_headers)

    @property
    def cors_extra_exposed(self) -> tuple[str, ...]:
        return _items(self.cors_expose_headers)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Defaults, ``RESUMABLE_*`` variables, then a Flask app's ``RESUMABLE_*`` config keys
        (text, as from ``app.config.from_prefixed_env``, or typed values), then ``overrides``."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if key not in config:
                continue
            value = config[key]
            if isinstance(value, str) and field_type(f) is not str:
                try:
                    value = convert(f, value)
                except ValueError:
                    raise ValueError(f"{key}={value!r} is not a valid {f.name}") from None
            values[f.name] = value
        values.update(
            {name: value for name, value in (overrides or {}).items() if value is not None}
        )
        return cls.load(values)

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then ``RESUMABLE_*`` variables, then explicit overrides."""
        environ = os.environ if environ is None else environ
        values = {name: value for name, value in (overrides or {}).items() if value is not None}
        for f in fields(cls):
            variable = ENV_PREFIX + f.name.upper()
            raw = environ.get(variable)
            if raw is not None and f.name not in values:
                try:
                    values[f.name] = convert(f, raw)
                except ValueError:
                    raise ValueError(f"{variable}={raw!r} is not a valid {f.name}") from None
        return cls(**values)


def _items(text: str) -> tuple[str, ...]:
    """A comma-separated setting as its non-empty items."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def convert(f: dataclasses.Field[Any], raw: str) -> Any:
    """Turn the text of a flag or variable into the field's type."""
    kind = field_type(f)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{f.name}: expected true or false, got {raw!r}")
    if kind is int:
        return int(raw.strip())
    if kind is float:
        return float(raw.strip())
    if raw == "" and f.default is None:
        return None
    return raw


def field_type(f: dataclasses.Field[Any]) -> type:
    annotation = str(f.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if annotation.startswith(name):
            return kind
    return str
