"""Prometheus exposition for every service, plus small read-only JSON routes.

Each service owns a :class:`prometheus_client.CollectorRegistry` (so several services can run in
one process in tests without clashing) and calls :func:`serve` once. Metric names follow the
Prometheus conventions: ``fairfleet_`` prefix, base units in the name, ``_total`` on counters.

The HTTP side is WSGI: ``/metrics`` is prometheus_client's own app (``?name[]=`` filtering,
OpenMetrics negotiation, gzip), composed with a small router for ``/healthz`` and the JSON
routes, served by the standard library's ``wsgiref`` with a thread per request (as
``prometheus_client.start_wsgi_server`` does), so a slow scrape never holds up ``/healthz``.
Query strings are parsed and percent-decoded by :func:`urllib.parse.parse_qs`; a route names
the parameters it accepts and anything else is a 400 naming the parameter (docs/operations.md,
"HTTP endpoints").
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from fairfleet import __version__
from fairfleet.bus.metrics import dead_letter_counter

logger = logging.getLogger(__name__)

JsonHandler = Callable[[dict[str, str]], Any]
"""A JSON route's function: the decoded query parameters in, a JSON-serialisable value out."""

_UPDATE_LOCKS: weakref.WeakKeyDictionary[CollectorRegistry, threading.RLock] = (
    weakref.WeakKeyDictionary()
)
_LOCKS_GUARD = threading.Lock()


def update_lock(registry: CollectorRegistry) -> threading.RLock:
    """The lock that makes a group of related updates atomic for scrapers of ``registry``.

    ``/metrics`` renders under this lock, so a service that sets several gauges that must agree
    (per-class losses and the gap computed from them) holds it while setting them and no scrape
    ever sees half of a round.
    """
    with _LOCKS_GUARD:
        lock = _UPDATE_LOCKS.get(registry)
        if lock is None:
            lock = _UPDATE_LOCKS[registry] = threading.RLock()
        return lock


class ServiceMetrics:
    """One service's registry, holding what every service exports (docs/metrics.md):
    ``fairfleet_service_info`` (``info``, 1 with the service and version),
    ``fairfleet_bus_consumer_lag_messages`` (``lag``) and ``fairfleet_dead_letters_total``
    (``dead_letters``). A service's own metrics class extends it and declares the rest with
    :meth:`counter`, :meth:`gauge` and :meth:`histogram` (label names after the help text)."""

    def __init__(
        self,
        service: str,
        info_help: str,
        lag_help: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        self.info = self.gauge("fairfleet_service_info", info_help, "service", "version")
        self.info.labels(service, __version__).set(1)
        self.lag = self.gauge("fairfleet_bus_consumer_lag_messages", lag_help, "service", "topic")
        self.dead_letters = dead_letter_counter(self.registry)

    def counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)

    def histogram(
        self, name: str, documentation: str, *labels: str, buckets: Sequence[float]
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)


DEFAULT_PROGRESS_TIMEOUT_S = 300.0
"""Default of every service's ``progress_timeout_s`` (docs/configuration.md)."""


class Health:
    """What ``/healthz`` answers for one service: healthy, or unhealthy with the reasons.

    Unhealthy when (a) Kafka cannot be reached: the service's own loop says so while it waits
    for the broker (:mod:`fairfleet.bus.waiting`), or ``probe`` (at most every
    ``probe_every_s``) finds no answer; or (b) the service's loop has not called
    :meth:`progress` for ``progress_timeout_s`` (it is stuck).
    """

    def __init__(
        self,
        progress_timeout_s: float = DEFAULT_PROGRESS_TIMEOUT_S,
        probe: Callable[[], str | None] | None = None,
        probe_every_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if progress_timeout_s <= 0:
            raise ValueError(f"progress_timeout_s must be > 0. Found {progress_timeout_s}.")
        self.progress_timeout_s = progress_timeout_s
        self._probe = probe
        self._probe_every_s = probe_every_s
        self._clock = clock
        self._last_progress = clock()
        self._lost: str | None = None
        self._probe_lock = threading.Lock()
        self._probed_at: float | None = None
        self._probed: str | None = None

    def progress(self) -> None:
        """The service's loop went round once (call it every iteration)."""
        self._last_progress = self._clock()

    def kafka_lost(self, reason: str) -> None:
        self._lost = reason

    def kafka_back(self) -> None:
        self._lost = None
        with self._probe_lock:
            self._probed_at, self._probed = self._clock(), None

    def _kafka_problem(self) -> str | None:
        if self._lost is not None:
            return self._lost
        if self._probe is None:
            return None
        with self._probe_lock:  # one probe at a time; others reuse its answer
            now = self._clock()
            if self._probed_at is None or now - self._probed_at >= self._probe_every_s:
                try:
                    self._probed = self._probe()
                except Exception as exc:  # a probe must never break /healthz
                    self._probed = f"probe failed: {exc}"
                self._probed_at = self._clock()
            return self._probed

    def problems(self) -> list[str]:
        """Why the service is unhealthy; empty when healthy."""
        out = []
        kafka = self._kafka_problem()
        if kafka is not None:
            out.append(f"cannot reach Kafka: {kafka}")
        idle = self._clock() - self._last_progress
        if idle > self.progress_timeout_s:
            out.append(
                f"no progress for {idle:.0f} s (progress_timeout_s = {self.progress_timeout_s:g})"
            )
        return out


@dataclass(frozen=True)
class Route:
    """A read-only JSON route: ``handler`` gets the decoded query parameters, at most one value
    each, all of them among ``params``; what it returns is served as JSON (200).

    A ``ValueError`` from ``handler`` (a bad value: ``ConfigError`` is one) answers 400 with its
    message, :class:`NotReady` 503; any other exception answers 500 and is logged; none of them
    stops the server.
    """

    handler: JsonHandler
    params: Collection[str] = frozenset()

    def __post_init__(self) -> None:
        if isinstance(self.params, str):  # frozenset("site") would be its letters
            raise TypeError(f"Route params must be a collection of names, not {self.params!r}.")
        object.__setattr__(self, "params", frozenset(self.params))


METRICS_PARAMS = frozenset({"name[]"})
"""What ``/metrics`` accepts: prometheus_client's filter to the named metric families."""


class NotReady(Exception):
    """Raised by a route whose data does not exist yet (the service is still starting, e.g.
    waiting for the broker): answered 503 with the message and ``Retry-After``, not logged."""


RETRY_AFTER_S = 5


class QueryError(ValueError):
    """A query parameter the route does not take, or one given more than once."""

    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def query_params(path: str, query: str, accepted: Collection[str]) -> dict[str, list[str]]:
    """``query`` parsed and percent-decoded (``+`` is a space; ``site=`` keeps its empty value);
    QueryError naming the first parameter ``path`` does not accept."""
    params = parse_qs(query, keep_blank_values=True, max_num_fields=100)
    for name in sorted(params):
        if name not in accepted:
            takes = ", ".join(sorted(accepted)) or "no parameters"
            raise QueryError(
                f"unknown query parameter {name!r} for {path} (it takes: {takes})", name
            )
    return params


def single_values(path: str, params: dict[str, list[str]]) -> dict[str, str]:
    """One value per parameter; QueryError naming one given more than once."""
    for name, values in sorted(params.items()):
        if len(values) > 1:
            raise QueryError(
                f"query parameter {name!r} given {len(values)} times for {path}; give it once",
                name,
            )
    return {name: values[0] for name, values in params.items()}


ALLOWED_METHODS = ("GET", "HEAD")


class App:
    """The WSGI application of one service: ``/metrics`` (prometheus_client's app, rendered under
    the registry's :func:`update_lock`), ``/healthz`` and the JSON routes.

    Errors are JSON ``{"error": message}``; a bad query parameter adds ``"parameter": name``, an
    unknown path ``"path"``. HEAD answers what GET would, without the body.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        routes: Mapping[str, Route | JsonHandler] | None = None,
        health: Health | None = None,
    ) -> None:
        self.registry = registry
        self.health = health
        self.routes = {
            path: r if isinstance(r, Route) else Route(r) for path, r in (routes or {}).items()
        }
        for reserved in ("/metrics", "/healthz"):
            if reserved in self.routes:
                raise ValueError(f"route {reserved!r} is served by every service; pick another.")
        self._metrics = make_wsgi_app(registry)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        if method not in ALLOWED_METHODS:
            status, headers, body = _json(
                HTTPStatus.METHOD_NOT_ALLOWED,
                {"error": f"method {method} not allowed; use {' or '.join(ALLOWED_METHODS)}"},
            )
            headers.append(("Allow", ", ".join(ALLOWED_METHODS)))
        else:
            status, headers, body = self._answer(path, environ)
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [] if method == "HEAD" else [body]

    def _answer(
        self, path: str, environ: WSGIEnvironment
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        query = environ.get("QUERY_STRING", "")
        try:
            if path == "/metrics":
                query_params(path, query, METRICS_PARAMS)
                return self._scrape(environ)
            if path == "/healthz":
                query_params(path, query, frozenset())
                return self._healthz()
            route = self.routes.get(path)
            if route is None:
                return _json(HTTPStatus.NOT_FOUND, {"error": "not found", "path": path})
            params = single_values(path, query_params(path, query, route.params))
        except QueryError as exc:
            return _json(HTTPStatus.BAD_REQUEST, {"error": str(exc), "parameter": exc.parameter})
        except ValueError as exc:  # parse_qs: more than max_num_fields
            return _json(HTTPStatus.BAD_REQUEST, {"error": f"bad query string: {exc}"})
        try:
            return _json(HTTPStatus.OK, route.handler(params))
        except NotReady as exc:
            status, headers, body = _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return status, [*headers, ("Retry-After", str(RETRY_AFTER_S))], body
        except ValueError as exc:  # a bad value (docs/operations.md, "HTTP endpoints")
            return _json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except Exception as exc:  # a failing route must not kill the server
            logger.exception("route %s failed", path)
            return _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{path} failed: {exc}"})

    def _scrape(self, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes]:
        answer: list[Any] = []

        def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer[:] = [status, list(headers)]
            return lambda _data: None

        # prometheus_client's app answers GET only; HEAD is GET without the body (stripped above)
        with update_lock(self.registry):
            chunks = self._metrics({**environ, "REQUEST_METHOD": "GET"}, keep)
        return answer[0], answer[1], b"".join(chunks)

    def _healthz(self) -> tuple[str, list[tuple[str, str]], bytes]:
        problems = self.health.problems() if self.health is not None else []
        if problems:
            return _json(
                HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unhealthy", "reasons": problems}
            )
        return _json(HTTPStatus.OK, {"status": "ok"})


def _json(code: HTTPStatus, value: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    body = json.dumps(value, default=str).encode()
    return f"{code.value} {code.phrase}", [("Content-Type", "application/json")], body


class _QuietHandler(WSGIRequestHandler):
    """No access log (services log JSON); a client that stops sending is dropped after
    ``timeout`` s instead of holding its thread."""

    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        return


class MetricsServer:
    """A running HTTP server: ``/metrics``, ``/healthz`` and any JSON routes given."""

    def __init__(self, server: ThreadingWSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port (requests in flight finish on their own threads)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    registry: CollectorRegistry,
    port: int = 0,
    host: str | None = None,
    routes: Mapping[str, Route | JsonHandler] | None = None,
    health: Health | None = None,
) -> MetricsServer:
    """Serve ``registry`` on ``host:port`` (0 picks a free port) in a daemon thread.

    ``/healthz`` answers 200 ``{"status": "ok"}``, or 503 ``{"status": "unhealthy",
    "reasons": [...]}`` when ``health`` reports problems. ``routes`` maps a path to a
    :class:`Route`, or to a bare handler that takes no query parameters.

    ``host`` defaults to ``FAIRFLEET_METRICS_HOST`` (the config's ``metrics_host``; compose sets
    0.0.0.0 so Prometheus can scrape across containers), else 127.0.0.1.
    """
    if host is None:
        host = os.environ.get("FAIRFLEET_METRICS_HOST", "127.0.0.1")
    app: WSGIApplication = App(registry, routes, health)
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
