"""What a ``--redis-url`` names: one server, a master watched by Sentinel, or a Cluster.

Parsed here, without redis-py, so a mistyped URL stops ``resumable serve``
with a reason while the settings are checked, before anything connects.
The forms (``s`` after ``redis`` means TLS):

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…``,
  ``unix://[[user]:password@]/path/to/socket[?db=N]`` – one server, as redis-py reads them;
* ``redis+sentinel://[[user]:password@]host:port[,host:port…]/MASTER_NAME[/db]`` – the
  master Sentinel names ``MASTER_NAME``; the password is the master's, and
  ``?sentinel_password=…`` authenticates to the sentinels when they ask;
* ``redis+cluster://[[user]:password@]host:port[,host:port…]`` – a Redis Cluster
  reached through any of the listed nodes (a cluster has no databases).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

SERVER_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SCHEMES = SERVER_SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL: the deployment's shape and how to reach and log in to it."""

    url: str
    #: ``server``, ``sentinel`` or ``cluster``.
    kind: str
    #: The sentinels or the cluster's seed nodes (empty for one server: redis-py reads ``url``).
    nodes: tuple[tuple[str, int], ...] = ()
    #: The master's name in Sentinel.
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


def _nodes(netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rpartition("@")[2]
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:  # no port given
            host, port = item.strip(), str(default_port)
        host = host.strip("[]")  # an IPv6 literal
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port")
        nodes.append((host, int(port)))
    return tuple(nodes)


def _credentials(netloc: str) -> tuple[str | None, str | None]:
    userinfo, at, _ = netloc.rpartition("@")
    if not at:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def parse_redis_url(url: str) -> RedisTarget:
    """The target ``url`` names; ValueError with the reason when it names none."""
    scheme, _, rest = url.partition("://")
    if scheme not in SCHEMES or not rest:
        raise ValueError("must start with " + ", ".join(f"{s}://" for s in SCHEMES))
    if scheme in SERVER_SCHEMES:
        return RedisTarget(url, "server")
    parts = urlsplit(url)
    username, password = _credentials(parts.netloc)
    query = parse_qs(parts.query)
    tls = scheme.startswith("rediss")
    segments = [s for s in parts.path.split("/") if s]
    if scheme in CLUSTER_SCHEMES:
        if segments:
            raise ValueError("a Redis Cluster has no databases: leave the path empty")
        return RedisTarget(
            url, "cluster", _nodes(parts.netloc, DEFAULT_PORT),
            username=username, password=password, tls=tls,
        )
    if not segments or len(segments) > 2:
        raise ValueError("needs the master's name after the sentinels: …/MASTER_NAME[/DB]")
    if len(segments) == 2 and not segments[1].isdigit():
        raise ValueError(f"the database must be a number, not {segments[1]!r}")
    return RedisTarget(
        url,
        "sentinel",
        _nodes(parts.netloc, DEFAULT_SENTINEL_PORT),
        master=unquote(segments[0]),
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=username,
        password=password,
        sentinel_password=next(iter(query.get("sentinel_password", [])), None),
        tls=tls,
    )


def redacted(url: str) -> str:
    """The URL without its passwords, for logs."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    query = "&".join(
        f"{pair.partition('=')[0]}=***" if pair.startswith("sentinel_password=") else pair
        for pair in parts.query.split("&")
    ) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))
