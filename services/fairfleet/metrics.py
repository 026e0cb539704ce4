"""Prometheus exposition for every service, plus small read-only JSON routes.

Each service owns a :class:`prometheus_client.CollectorRegistry` (so several services can run in
one process in tests without clashing) and calls :func:`serve` once. Metric names follow the
Prometheus conventions: ``fairfleet_`` prefix, base units in the name, ``_total`` on counters.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

JsonRoute = Callable[[dict[str, str]], Any]

_UPDATE_LOCKS: weakref.WeakKeyDictionary[CollectorRegistry, threading.RLock] = weakref.WeakKeyDictionary()
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
) -> MetricsServer:
    """Serve ``registry`` on ``host:port`` (0 picks a free port) in a daemon thread.

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
