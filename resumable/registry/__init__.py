"""Upload records, offsets and locks, behind one interface with two backends."""

from __future__ import annotations

from ..settings import Settings
from ..store import Store
from .base import HeartbeatResult, Lease, LeaseLost, Registry, RegistryUnavailable, ReleaseState

__all__ = [
    "Lease",
    "LeaseLost",
    "HeartbeatResult",
    "Registry",
    "RegistryUnavailable",
    "ReleaseState",
    "make_registry",
]

def make_registry(settings: Settings, store: Store) -> Registry:
    """Redis when a URL is configured, else the embedded single-host registry."""
    if settings.redis_url:
        from .redis import RedisRegistry, connect

        return RedisRegistry(
            store,
            connect(settings.redis_url, concurrency=settings.threads),
            settings.redis_prefix,
            settings.lock_ttl,
            settings.lock_wait,
            settings.renewal_interval,
            wait_replicas=settings.replicas_to_wait,
        )
    from .embedded import EmbeddedRegistry

    return EmbeddedRegistry(
        store,
        settings.data_dir,
        settings.lock_ttl,
        settings.lock_wait,
        settings.renewal_interval,
        mode=settings.data_dir_permissions,
    )


def describe_registry(settings: Settings) -> str:
    """The registry a server with ``settings`` uses, for its start-up message."""
    if settings.redis_url:
        from ..redis_url import parse_redis_url, redacted

        shape = {"server": "", "sentinel": " (Sentinel)", "cluster": " (Cluster)"}
        kind = parse_redis_url(settings.redis_url).kind
        return f"Redis{shape[kind]} at {redacted(settings.redis_url)}"
    return "embedded (files and flock locks; one host)"


def unreachable_reason(settings: Settings) -> str | None:
    """Why the configured Redis cannot be reached now, or None (also for the embedded one)."""
    if not settings.redis_url:
        return None
    from .redis import ping_problem

    return ping_problem(settings.redis_url)
