"""Upload records, offsets and locks, behind one interface with two backends."""

from __future__ import annotations

from ..settings import Settings
from ..storage import FileStore
from .base import Lease, LeaseLost, Mailbox, Registry

__all__ = ["Lease", "LeaseLost", "Mailbox", "Registry", "make_registry"]


def make_registry(settings: Settings, store: FileStore) -> Registry:
    """Redis when a URL is configured, else the embedded single-host registry."""
    if settings.redis_url:
        from .redis import RedisRegistry, connect

        return RedisRegistry(
            store,
            connect(settings.redis_url),
            settings.redis_prefix,
            settings.lock_ttl,
            settings.lock_wait,
            settings.heartbeat,
        )
    from .embedded import EmbeddedRegistry

    return EmbeddedRegistry(store, settings.lock_ttl, settings.lock_wait, settings.heartbeat)
