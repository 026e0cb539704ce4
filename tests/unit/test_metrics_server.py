"""The metrics server: /metrics renders under the registry's update lock, so related gauges are
never scraped half-updated; JSON routes answer; a bad route never kills the server."""

from __future__ import annotations

import threading

import httpx
from prometheus_client import CollectorRegistry, Gauge

from fairfleet.metrics import serve, update_lock


def test_scrape_waits_for_a_group_of_updates_to_finish() -> None:
    registry = CollectorRegistry()
    a = Gauge("fairfleet_test_a", "a", registry=registry)
    b = Gauge("fairfleet_test_b", "b (always equal to a)", registry=registry)
    server = serve(registry)
    got: list[str] = []
    done = threading.Event()

    def scrape() -> None:
        got.append(httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text)
        done.set()

    try:
        with update_lock(registry):
            a.set(1)
            worker = threading.Thread(target=scrape)
            worker.start()
            assert not done.wait(0.5)  # the scrape is held back while the group is half-written
            b.set(1)
        assert done.wait(10)
        assert "fairfleet_test_a 1.0" in got[0] and "fairfleet_test_b 1.0" in got[0]
    finally:
        server.close()


def test_json_routes_and_errors() -> None:
    registry = CollectorRegistry()

    def boom(params: dict[str, str]) -> object:
        raise ValueError(f"bad site {params.get('site')}")

    server = serve(registry, routes={"/budgets": lambda p: {"site": p.get("site")}, "/boom": boom})
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert httpx.get(f"{base}/budgets?site=s1").json() == {"site": "s1"}
        bad = httpx.get(f"{base}/boom?site=x")
        assert bad.status_code == 400 and "bad site x" in bad.json()["error"]
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.close()
