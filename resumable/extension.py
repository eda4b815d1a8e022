"""The Flask extension: mount the tus endpoint in an app that has its own routes.

::

    from resumable import Resumable

    app = Flask(__name__)
    uploads = Resumable(app, url_prefix="/api/uploads")

    # or, with an application factory:
    uploads = Resumable()
    uploads.init_app(app, url_prefix="/api/uploads")

Settings come from ``app.config["RESUMABLE_<NAME>"]``, named like the
environment variables of ``resumable serve`` (or from a :class:`Settings`
given here). Everything the endpoint adds is scoped to its blueprint: the
``Tus-Resumable`` header, CORS, the plain-text errors, method override and
the proxy headers apply to its URLs only, and the app's own routes, error
pages and hooks stay as they were. ``/healthz`` and ``/readyz`` are added to
the app unless ``RESUMABLE_HEALTH`` is false.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from flask import Flask

# Imported for its hooks on the tus blueprint: one log line and the metrics of each request.
from . import request_log  # noqa: F401
from .concat import BackgroundJoins, Concatenator
from .events import HookAnswer, HookEvent
from .expiry import ExpiryPolicy
from .gc import CollectorThread, collect
from .health import health_blueprint
from .hooks import Authorizer, load_authorizer
from .lifecycle import Lifecycle, Receiver
from .metrics import metrics_blueprint, record_metrics
from .registry import make_registry
from .settings import HOOK_EVENTS, Settings
from .store import make_store
from .transfer import Appender, BufferPool
from .views import Services, blueprint

log = logging.getLogger("resumable")

EXTENSION_KEY = "resumable"


class Resumable:
    """The tus endpoint as a Flask extension (one per app)."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        url_prefix: str | None = None,
        settings: Settings | None = None,
        authorizer: Authorizer | None = None,
        collect_garbage: bool = True,
    ):
        self.url_prefix = url_prefix
        self.settings = settings
        self.authorizer = authorizer
        #: Run garbage collection every ``gc_interval`` in the serving processes
        #: (``resumable serve`` runs it in a process of its own instead).
        self.collect_garbage = collect_garbage
        #: Receivers given with ``@hook``, and the lifecycles of the apps they apply to.
        self.receivers: list[tuple[str, Receiver]] = []
        self.lifecycles: list[tuple[Flask, Lifecycle]] = []
        if app is not None:
            self.init_app(app)

    def init_app(
        self,
        app: Flask,
        *,
        url_prefix: str | None = None,
        settings: Settings | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        """Build the endpoint's services for ``app`` and register its blueprint.

        ``authorizer`` is the access hook (see hooks.py) as a callable; it
        runs inside the request, so the app's session and login work there.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("resumable is already mounted in this app")
        url_prefix = url_prefix if url_prefix is not None else self.url_prefix
        overrides = {"base_path": url_prefix} if url_prefix is not None else {}
        settings = settings or self.settings
        if settings is None:
            settings = Settings.from_config(app.config, overrides)
        elif overrides:
            settings = settings.replace(**overrides)
        services = build_services(settings, authorizer or self.authorizer)
        for event_type, receiver in self.receivers:
            services.lifecycle.add(event_type, _in_app_context(app, receiver))
        self.lifecycles.append((app, services.lifecycle))
        if self.collect_garbage and settings.gc_interval > 0:
            services.collector = CollectorThread(
                lambda: collect(services.registry, services.store, services.expiry,
                                settings.max_size, lifecycle=services.lifecycle),
                settings.gc_interval,
            )
        app.extensions[EXTENSION_KEY] = services
        # Owed post-finish events go out from every serving process, also one that
        # serves nothing yet (a worker that replaced a killed one); after a fork,
        # the endpoint's first request starts them again.
        services.lifecycle.start_sweeper()
        app.register_blueprint(blueprint, url_prefix=settings.base_path.rstrip("/"))
        if settings.health:
            app.register_blueprint(health_blueprint)
        record_metrics(bool(settings.metrics_path))
        if settings.metrics_path:
            app.register_blueprint(metrics_blueprint(settings.metrics_path))


    def hook(self, event_type: str) -> Callable[[Receiver], Receiver]:
        """``@uploads.hook("post-finish")``: the decorated function receives that event.

        It gets a :class:`~resumable.events.HookEvent` and may return a
        :class:`~resumable.events.HookAnswer` (see lifecycle.py).
        """
        if event_type not in HOOK_EVENTS:
            raise ValueError(f"no such event {event_type!r}; events: {', '.join(HOOK_EVENTS)}")

        def register(receiver: Receiver) -> Receiver:
            self.receivers.append((event_type, receiver))
            for app, lifecycle in self.lifecycles:
                lifecycle.add(event_type, _in_app_context(app, receiver))
            return receiver

        return register


def _in_app_context(app: Flask, receiver: Receiver) -> Receiver:
    """The receiver, run inside ``app``'s context: post-events are delivered on threads of
    their own, where ``current_app``, its config and extensions would otherwise be missing."""

    @functools.wraps(receiver)
    def in_context(event: HookEvent) -> HookAnswer | None:
        with app.app_context():
            return receiver(event)

    return in_context


def build_services(settings: Settings, authorizer: Authorizer | None = None) -> Services:
    """Everything the views use, for one app."""
    store = make_store(settings)
    registry = make_registry(settings, store)
    expiry = ExpiryPolicy.from_settings(settings)
    lifecycle = Lifecycle.from_settings(settings, store, registry)
    concatenator = Concatenator(registry, store, expiry, settings.max_size, lifecycle)
    pool = BufferPool(settings.chunk_size)
    return Services(
        settings=settings,
        store=store,
        registry=registry,
        appender=Appender(settings, registry, store, pool, expiry, lifecycle),
        concatenator=concatenator,
        joins=BackgroundJoins(concatenator),
        expiry=expiry,
        lifecycle=lifecycle,
        authorizer=authorizer or load_authorizer(settings.auth_hook),
    )
