"""The metrics server over a real socket: /metrics renders under the registry's update lock (so
related gauges are never scraped half-updated) while /healthz keeps answering; queries are
percent-decoded and checked against what each route takes; errors are JSON; HEAD is GET without
the body; the port is free again after close."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from fairfleet.metrics import NotReady, Route, serve, update_lock


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:  # one client: httpx.get builds an SSL context per call
        yield client


def test_scrape_waits_for_a_group_of_updates_to_finish_and_healthz_does_not(
    http: httpx.Client,
) -> None:
    registry = CollectorRegistry()
    a = Gauge("fairfleet_test_a", "a", registry=registry)
    b = Gauge("fairfleet_test_b", "b (always equal to a)", registry=registry)
    server = serve(registry)
    base = f"http://127.0.0.1:{server.port}"
    got: list[str] = []
    done = threading.Event()

    def scrape() -> None:
        got.append(http.get(f"{base}/metrics").text)
        done.set()

    try:
        with update_lock(registry):
            a.set(1)
            worker = threading.Thread(target=scrape)
            worker.start()
            assert not done.wait(0.5)  # the scrape is held back while the group is half-written
            # ... on its own thread: the server answers /healthz meanwhile
            health = http.get(f"{base}/healthz", timeout=5)
            assert health.status_code == 200 and not done.is_set()
            b.set(1)
        assert done.wait(10)
        assert "fairfleet_test_a 1.0" in got[0] and "fairfleet_test_b 1.0" in got[0]
    finally:
        server.close()


def test_queries_are_percent_decoded_and_checked_against_the_route(http: httpx.Client) -> None:
    seen: list[dict[str, str]] = []

    def budgets(params: dict[str, str]) -> dict[str, Any]:
        seen.append(params)
        return {"site": params.get("site"), "model": params.get("model")}

    server = serve(
        CollectorRegistry(),
        routes={"/budgets": Route(budgets, params={"site", "model"}), "/status": lambda _: 1},
    )
    base = f"http://127.0.0.1:{server.port}"
    try:
        res = http.get(f"{base}/budgets?site=plant%20a&model=m%2F1")
        assert res.status_code == 200 and res.headers["content-type"] == "application/json"
        assert res.json() == {"site": "plant a", "model": "m/1"}
        assert http.get(f"{base}/budgets?site=plant+a%26b").json()["site"] == "plant a&b"
        assert http.get(f"{base}/budgets", params={"site": "<b>é"}).json()["site"] == "<b>é"
        assert http.get(f"{base}/budgets?site=").json()["site"] == ""  # empty kept, as before
        assert seen[-1] == {"site": ""}
        calls = len(seen)
        for url, name in (
            (f"{base}/budgets?site=a&sight=b", "sight"),
            (f"{base}/budgets?st%C3%A9=1", "sté"),  # named decoded
            (f"{base}/budgets?site=a&site=b", "site"),  # which one? refused, not guessed
            (f"{base}/status?verbose", "verbose"),  # a bare handler takes none
            (f"{base}/healthz?x=1", "x"),
            (f"{base}/metrics?names=a", "names"),
        ):
            bad = http.get(url)
            assert bad.status_code == 400, url
            assert bad.headers["content-type"] == "application/json"
            assert bad.json()["parameter"] == name and repr(name) in bad.json()["error"], url
        assert len(seen) == calls  # the handler never ran on a refused query
        takes = http.get(f"{base}/budgets?x=1").json()["error"]
        assert "it takes: model, site" in takes
        missing = http.get(f"{base}/bud%67ets%2Fx")  # the path is decoded too
        assert missing.status_code == 404 and missing.json() == {
            "error": "not found",
            "path": "/budgets/x",
        }
        assert http.get(f"{base}/bud%67ets").json()["site"] is None
    finally:
        server.close()


def test_a_failing_route_answers_400_503_or_500_and_the_server_carries_on(
    http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def bad_value(params: dict[str, str]) -> object:
        raise ValueError(f"bad site {params.get('site')}")

    def bug(_params: dict[str, str]) -> object:
        raise KeyError("oops")

    def starting(_params: dict[str, str]) -> object:
        raise NotReady("agent not running yet")

    server = serve(
        CollectorRegistry(),
        routes={
            "/bad": Route(bad_value, {"site"}),
            "/bug": bug,
            "/starting": starting,
            "/ok": lambda _: [1],
        },
    )
    base = f"http://127.0.0.1:{server.port}"
    try:
        bad = http.get(f"{base}/bad?site=x%20y")
        assert bad.status_code == 400 and bad.json() == {"error": "bad site x y"}
        res = http.get(f"{base}/bug")
        assert res.status_code == 500 and "oops" in res.json()["error"]
        assert "route /bug failed" in caplog.text
        res = http.get(f"{base}/starting")  # the data does not exist yet: try again later
        assert res.status_code == 503 and res.json() == {"error": "agent not running yet"}
        assert res.headers["Retry-After"] == "5" and "route /starting" not in caplog.text
        assert http.get(f"{base}/ok").json() == [1]
        assert http.get(f"{base}/healthz").json() == {"status": "ok"}
    finally:
        server.close()
    with pytest.raises(ValueError, match="'/healthz'"):
        serve(CollectorRegistry(), routes={"/healthz": lambda _: {}})
    with pytest.raises(TypeError, match="'site'"):
        Route(bad_value, "site")


def test_head_is_get_without_the_body_and_other_methods_are_405(http: httpx.Client) -> None:
    registry = CollectorRegistry()
    Counter("fairfleet_test_events", "events", registry=registry).inc(3)
    server = serve(registry, routes={"/status": lambda _: {"round": 4}})
    base = f"http://127.0.0.1:{server.port}"
    identity = {"Accept-Encoding": "identity"}
    try:
        for path in ("/metrics", "/healthz", "/status", "/nope", "/status?x=1"):
            get = http.get(base + path, headers=identity)
            head = http.head(base + path, headers=identity)
            assert head.status_code == get.status_code, path
            assert head.content == b"" and get.content, path
            assert head.headers["content-type"] == get.headers["content-type"], path
            assert int(head.headers["content-length"]) == len(get.content), path
        post = http.post(f"{base}/status", json={})
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
        assert "POST" in post.json()["error"]
        assert http.delete(f"{base}/metrics").status_code == 405
    finally:
        server.close()


def test_metrics_filters_by_name_and_negotiates_openmetrics(http: httpx.Client) -> None:
    registry = CollectorRegistry()
    Counter("fairfleet_test_events", "events", registry=registry).inc(3)
    Gauge("fairfleet_test_level", "level", registry=registry).set(2)
    server = serve(registry)
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        text = http.get(url)
        assert text.headers["content-type"].startswith("text/plain")
        assert "fairfleet_test_events_total 3.0" in text.text
        assert "fairfleet_test_level 2.0" in text.text
        only = http.get(url, params={"name[]": "fairfleet_test_level"}).text
        assert "fairfleet_test_level 2.0" in only and "fairfleet_test_events" not in only
        both = http.get(f"{url}?name%5B%5D=fairfleet_test_level&name[]=fairfleet_test_events_total")
        assert "fairfleet_test_level" in both.text and "fairfleet_test_events_total" in both.text
        om = http.get(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")
        zipped = http.get(url, headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip" and zipped.text == text.text
    finally:
        server.close()


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_close_frees_the_port_every_time(http: httpx.Client) -> None:
    first = serve(CollectorRegistry())
    port = first.port
    first.close()
    first.close()  # twice is harmless
    assert _refused(port)
    for round_ in range(5):
        with serve(CollectorRegistry(), port, routes={"/n": lambda _, r=round_: r}) as server:
            assert server.port == port
            # a request in flight on another thread does not keep the port after close
            assert http.get(f"http://127.0.0.1:{port}/n").json() == round_
        assert _refused(port), round_
