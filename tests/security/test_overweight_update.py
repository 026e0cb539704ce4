"""A compromised site key cannot steer the model (issue 12, item 4), on the REAL broker.

The issue's attack: a signed update near the norm bound with ``n_examples = 10⁹`` and no
reservation moved the global model 5x a clean step. Here the aggregator (``require_ledger``, as
``fairfleet aggregator run`` sets it) runs one FedAvg round of the six simulated sites; site
``new-0``'s key is stolen.

* no ledger entry: the update is dead-lettered ``not_in_ledger`` and the global model is exactly
  the model of the round without that site;
* the attacker also publishes a commit with its stolen key (it is then charged): the update counts
  with the weight its configuration allows (``train_windows × window.size`` = 200 examples), not
  10⁹, so the global step moves by at most ``cap / (cap + W)`` of the distance between the
  attacker's update and the honest average (W = the honest sites' examples) — the number asserted.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import numpy as np
import pytest
import torch
from aggregator_testkit import MODEL, SITES, Watcher, fleet_config, make_sites, site_update
from dp_accounting import dp_event

from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.bus import Publisher, Reader, Topics, connect
from fairfleet.config import parse_config
from fairfleet.learning.tensors import (
    flatten,
    from_safetensors_bytes,
    sha256_hex,
    to_safetensors_bytes,
)
from fairfleet.messages import DeadLetter, PrivacyEventMessage, WindowRange
from fairfleet.privacy.events import dp_event_to_json
from fairfleet.signing import load_private, sign

pytestmark = pytest.mark.kafka

ATTACKER = "new-0"
WINDOW, TRAIN_WINDOWS = 50, 4  # cap = 200 examples = the attacker's true n


def vec(state: Any) -> np.ndarray:
    """One vector, parameters in name order (a state dict and a safetensors blob order differ)."""
    return flatten({k: state[k] for k in sorted(state)}).detach().double().numpy()


def commit(site: str, site_class: str, private_hex: str) -> PrivacyEventMessage:
    msg = PrivacyEventMessage(
        event_id=f"{site}/{MODEL}/0",
        action="commit",
        site=site,
        site_class=site_class,
        source="default",
        unit="site",
        model_id=MODEL,
        round=0,
        windows=WindowRange(first=0, last=3),
        dp_event=dp_event_to_json(dp_event.GaussianDpEvent(1.0)),
    )
    return sign(msg, load_private(private_hex))


def one_round(bootstrap: str, attack: str) -> dict[str, Any]:
    """attack: "absent" (the attacker sends nothing), "no_ledger" or "with_commit"."""
    prefix = f"ow{uuid.uuid4().hex[:6]}."
    cfg, keys = fleet_config(bootstrap, prefix, rounds=1, quorum=len(SITES))
    data = cfg.model_dump(mode="json", by_alias=True)
    data["models"][0]["rounds"].update(deadline_s=4.0, min_sites=len(SITES) - 1)
    for site in data["sites"]:
        site["window"] = {"by": "count", "size": WINDOW}
        site["agent"]["train_windows"] = TRAIN_WINDOWS
    cfg = parse_config(data)
    bus = connect(bootstrap)
    agg = Aggregator(
        cfg, MODEL, bus=bus, options=AggregatorOptions(poll_timeout_s=0.02, require_ledger=True)
    )
    agg.start()
    stop = threading.Event()
    thread = threading.Thread(target=agg.run, args=(stop,), daemon=True)
    thread.start()
    watcher, pub = Watcher(bus, prefix), Publisher(bus.producer())
    try:
        ann, model = watcher.wait_round(0)
        theta0 = vec(model.state_dict())
        honest_deltas, honest_n = [], []
        for site in make_sites():
            msg, payload = site_update(site, ann, model, keys[site.site])
            if site.site == ATTACKER:
                if attack == "absent":
                    continue
                # the norm-bounded update pointing far from the fleet, claiming 10⁹ examples
                delta = {k: torch.full_like(v, 0.05) for k, v in model.state_dict().items()}
                payload = to_safetensors_bytes(delta)
                msg = sign(
                    msg.model_copy(
                        update={
                            "n_examples": 10**9,
                            "payload_sha256": sha256_hex(payload),
                            "payload_bytes": len(payload),
                        }
                    ),
                    load_private(keys[site.site]),
                )
                attacker_delta = vec(delta)
                if attack == "with_commit":
                    pub.send_sync(
                        Topics(prefix).topic("privacy.events"),
                        commit(site.site, site.site_class, keys[site.site]),
                        key=site.site,
                    )
            else:
                pub.send_sync(
                    Topics(prefix).topic("privacy.events"),
                    commit(site.site, site.site_class, keys[site.site]),
                    key=site.site,
                )
                honest_n.append(site.x.shape[0])
                honest_deltas.append(vec(from_safetensors_bytes(payload)))
            pub.send_sync(Topics(prefix).topic("updates"), msg, payload, key=msg.site)
        new = watcher.wait_version(1, timeout=60)
        theta1 = vec(new.state_dict())
        thread.join(30)
    finally:
        stop.set()
        watcher.close()
    letters = dead_letters(bus, prefix)
    w = np.array(honest_n, dtype=float)
    honest_avg = (w[:, None] * np.array(honest_deltas)).sum(axis=0) / w.sum()
    return {
        "step": theta1 - theta0,
        "letters": letters,
        "honest_avg": honest_avg,
        "W": w.sum(),
        "attacker_delta": attacker_delta if attack != "absent" else None,
        "history": agg.ckpt.history,
    }


def dead_letters(bus: Any, prefix: str) -> list[DeadLetter]:
    reader = Reader(
        bus.consumer(f"dl-{uuid.uuid4().hex[:8]}", [Topics(prefix).topic("deadletter")]), "test"
    )
    out = []
    for _ in range(15):
        env = reader.poll(0.2)
        if env is not None and isinstance(env.message, DeadLetter):
            out.append(env.message)
    reader.consumer.close()
    return out


def test_an_overweighted_update_moves_the_model_no_more_than_its_capped_weight(
    kafka_bootstrap: str,
) -> None:
    absent = one_round(kafka_bootstrap, "absent")
    no_ledger = one_round(kafka_bootstrap, "no_ledger")
    with_commit = one_round(kafka_bootstrap, "with_commit")

    # no reservation: rejected, dead-lettered, and the model is exactly the round without it
    assert [(d.reason, d.site) for d in no_ledger["letters"]] == [("not_in_ledger", ATTACKER)], [
        d.detail for d in no_ledger["letters"]
    ]
    np.testing.assert_allclose(no_ledger["step"], absent["step"], rtol=0, atol=1e-7)
    assert no_ledger["history"][0]["sites"] == absent["history"][0]["sites"]

    # FedAvg: the global step is the examples-weighted mean of the accepted updates
    np.testing.assert_allclose(absent["step"], absent["honest_avg"], rtol=0, atol=1e-5)

    # with a commit the update counts, at its capped weight: measured against the same run's
    # honest mean (the sites' DP noise differs between runs)
    cap = WINDOW * TRAIN_WINDOWS
    share = cap / (cap + with_commit["W"])
    distance = float(np.linalg.norm(with_commit["attacker_delta"] - with_commit["honest_avg"]))
    moved = float(np.linalg.norm(with_commit["step"] - with_commit["honest_avg"]))
    uncapped_share = 10**9 / (10**9 + with_commit["W"])
    print(
        f"capped weight share {share:.4f} (uncapped {uncapped_share:.9f}); step moved {moved:.5f} "
        f"of a possible {distance:.5f}; bound {share * distance:.5f}"
    )
    assert moved <= share * distance * (1 + 1e-4) + 1e-6
    assert moved >= 0.5 * share * distance  # it is the capped weight, not a rejection
    assert ATTACKER in with_commit["history"][0]["sites"]
