"""Prometheus exposition for every service, plus small read-only JSON routes.

Each service owns a :class:`prometheus_client.CollectorRegistry` (so several services can run in
one process in tests without clashing) and calls :func:`serve` once. Metric names follow the
Prometheus conventions: ``fairfleet_`` prefix, base units in the name, ``_total`` on counters.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

JsonRoute = Callable[[dict[str, str]], Any]

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


class MetricsServer:
    """A running HTTP server: ``/metrics``, ``/healthz`` and any JSON routes given."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(
    registry: CollectorRegistry,
    port: int = 0,
    host: str | None = None,
    routes: dict[str, JsonRoute] | None = None,
    health: Health | None = None,
) -> MetricsServer:
    """Serve ``registry`` on ``host:port`` (0 picks a free port) in a daemon thread.

    ``/healthz`` answers 200 ``{"status": "ok"}``, or 503 ``{"status": "unhealthy",
    "reasons": [...]}`` when ``health`` reports problems.

    ``host`` defaults to ``FAIRFLEET_METRICS_HOST`` (the config's ``metrics_host``; compose sets
    0.0.0.0 so Prometheus can scrape across containers), else 127.0.0.1.
    """
    if host is None:
        host = os.environ.get("FAIRFLEET_METRICS_HOST", "127.0.0.1")
    json_routes = dict(routes or {})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            if path == "/metrics":
                with update_lock(registry):
                    body = generate_latest(registry)
                self._send(200, CONTENT_TYPE_LATEST, body)
            elif path == "/healthz":
                problems = health.problems() if health is not None else []
                if problems:
                    body = json.dumps({"status": "unhealthy", "reasons": problems}).encode()
                    self._send(503, "application/json", body)
                else:
                    self._send(200, "application/json", b'{"status": "ok"}')
            elif path in json_routes:
                try:
                    body = json.dumps(json_routes[path](params), default=str).encode()
                    self._send(200, "application/json", body)
                except Exception as exc:  # a bad query must not kill the server
                    err = json.dumps({"error": str(exc)}).encode()
                    self._send(400, "application/json", err)
            else:
                self._send(404, "application/json", b'{"error": "not found"}')

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                return  # the scraper gave up (timeout); nothing to answer

        def log_message(self, format: str, *args: Any) -> None:  # quiet: services log JSON
            return

    server = ThreadingHTTPServer((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
