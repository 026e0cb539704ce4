"""The /budgets client (fairfleet.accountant.client): what `fairfleet budget` prints and the demo
reports is the accountant's own row, read over real HTTP from a running accountant."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from test_privacy_service_memory import PLAN, fields, run_until

from fairfleet.accountant.client import budgets_endpoint, epsilon_spent_by_site, fetch_budgets
from fairfleet.accountant.service import AccountantOptions, AccountantService
from fairfleet.bus import Publisher, Topics, connect
from fairfleet.errors import ConfigError
from fairfleet.messages import PrivacyEventMessage
from fairfleet.privacy.accounting import epsilon
from fairfleet.privacy.policy import Policy, PolicySet


def test_the_client_reads_the_accountants_own_rows(tmp_path: Path) -> None:
    bus = connect(f"memory://{uuid.uuid4().hex}")
    bus.create_topics(Topics().specs())
    policies = PolicySet(default=Policy(epsilon_max=100.0, delta=1e-5))
    service = AccountantService(
        bus, tmp_path / "l.sqlite", policies, AccountantOptions(metrics_port=0)
    )
    http = service.start_http()
    assert http is not None
    try:
        publisher = Publisher(bus.producer())
        for eid, site in (("a", "s1"), ("b", "s1"), ("c", "s2"), ("d", "plant a")):
            publisher.send(
                Topics().topic("privacy.events"),
                PrivacyEventMessage(action="commit", **{**fields(eid), "site": site}),
            )
        sample = service.metrics.registry.get_sample_value
        run_until(service, lambda: sample("fairfleet_privacy_events_applied_total") == 4)
        url = f"http://127.0.0.1:{http.port}"
        data = fetch_budgets(url)
        assert data["budgets"] == json.loads(json.dumps(service.budgets_json({})["budgets"]))
        spent = epsilon_spent_by_site(data)
        assert spent == {
            "s1": pytest.approx(epsilon([PLAN, PLAN], 1e-5), rel=1e-9),
            "s2": pytest.approx(epsilon(PLAN, 1e-5), rel=1e-9),
            "plant a": pytest.approx(epsilon(PLAN, 1e-5), rel=1e-9),
        }
        assert spent["s1"] == sample(
            "fairfleet_privacy_epsilon_spent",
            {"site": "s1", "source": "line", "unit": "observation"},
        )
        assert [r["site"] for r in fetch_budgets(url + "/budgets/", site="s2")["budgets"]] == ["s2"]
        # the query is percent-decoded: a site id with a space reaches the ledger as it is
        assert [r["site"] for r in fetch_budgets(url, site="plant a")["budgets"]] == ["plant a"]
        raw = httpx.get(f"{url}/budgets?site=plant%20a&accountant=rdp").json()["budgets"]
        assert [r["site"] for r in raw] == ["plant a"]
        for query, parameter in (
            ("sites=s1", "sites"),
            ("model=m1", "model"),
            ("accountant=pld", None),
        ):
            res = httpx.get(f"{url}/budgets?{query}")
            assert res.status_code == 400 and res.json().get("parameter") == parameter, query
        with pytest.raises(ConfigError, match=r"The accountant answered 404"):
            fetch_budgets(url + "/nope")
    finally:
        http.close()
        service.close()
    with pytest.raises(ConfigError, match=rf"Cannot reach the accountant at {url}/budgets"):
        fetch_budgets(url, timeout=2.0)


def test_epsilon_per_site_is_the_largest_of_its_ledgers() -> None:
    rows = [
        {"site": "a", "epsilon_spent": 1.0},
        {"site": "a", "epsilon_spent": 3.0},
        {"site": "b", "epsilon_spent": 0.0},
        {"site": "c", "epsilon_spent": None},
    ]
    assert epsilon_spent_by_site({"budgets": rows}) == {"a": 3.0, "b": 0.0}
    assert (
        budgets_endpoint("http://h:1/")
        == budgets_endpoint("http://h:1/budgets")
        == "http://h:1/budgets"
    )
