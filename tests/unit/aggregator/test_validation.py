"""Validation math and checks (pure): the norm bound, privacy-plan checks, budget parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fairfleet.aggregator import REASONS, Rejection, norm_bound
from fairfleet.aggregator.budgets import spent_sites
from fairfleet.aggregator.validation import (
    check_payload,
    check_privacy,
    noise_std_for,
    safetensors_views,
)
from fairfleet.errors import PayloadError
from fairfleet.learning.tensors import from_safetensors_bytes, shapes_of, to_safetensors_bytes
from fairfleet.messages import (
    LocalTrainingPlan,
    ModelSpec,
    PrivacyPlan,
    RoundAnnouncement,
    SiteUpdate,
    UpdatePrivacy,
)
from fairfleet.privacy.mechanisms import GaussianUpdateMechanism

PLAN = PrivacyPlan(mechanism="update", noise_multiplier=0.8, clip_norm=1.5)
TRAINING = LocalTrainingPlan()
ANN = RoundAnnouncement(
    model_id="m",
    round=0,
    model_version=0,
    model_spec=ModelSpec(name="linear", params={"in_features": 3}),
    privacy=PLAN,
)
SHAPES = {"weight": ((1, 3), "float32"), "bias": ((1,), "float32")}


def update_msg(**privacy: object) -> SiteUpdate:
    fields = {
        "enabled": True,
        "mechanism": "update",
        "unit": "site",
        "noise_multiplier": 0.8,
        "clip_norm": 1.5,
        "noise_std": 1.2,
        **privacy,
    }
    return SiteUpdate(
        site="s",
        site_class="a",
        model_id="m",
        round=0,
        base_version=0,
        n_examples=10,
        privacy=UpdatePrivacy.model_validate(fields),
        payload_sha256="",
        payload_bytes=0,
    )


def test_honest_update_level_releases_pass_the_norm_bound() -> None:
    """5000 releases of the real mechanism at ‖u‖ ≫ C (so clipped to exactly C) never exceed
    C + σC(√d + 6): the Gaussian-concentration tail at t = 6 is e^-18 per release."""
    d = 400
    bound = norm_bound(PLAN, TRAINING, 10, d)
    assert bound == pytest.approx(1.5 + 0.8 * 1.5 * (math.sqrt(d) + 6))
    mech = GaussianUpdateMechanism(PLAN.clip_norm, PLAN.noise_multiplier)
    gen = torch.Generator().manual_seed(7)
    worst = 0.0
    for _ in range(5000):
        released = mech.privatise(torch.full((d,), 10.0), gen).values
        worst = max(worst, float(released.norm()))
    assert worst <= bound
    # and the bound is not slack: the typical norm is within a few noise stds of it
    assert bound - worst < 0.8 * 1.5 * 8


def test_over_norm_payload_is_rejected_and_just_below_passes() -> None:
    bound = norm_bound(PLAN, TRAINING, 10, 4)
    direction = np.ones(4, dtype=np.float32) / 2.0  # unit vector
    for scale, ok in ((bound * 0.999, True), (bound * 1.001, False)):
        v = torch.from_numpy(direction * np.float32(scale))
        payload = to_safetensors_bytes({"weight": v[:3].reshape(1, 3), "bias": v[3:]})
        result = check_payload(update_msg(), payload, SHAPES, ANN)
        assert isinstance(result, Rejection) != ok
        if not ok:
            assert isinstance(result, Rejection) and result.reason == "norm"


def test_dpsgd_bound_uses_steps_rate_and_examples() -> None:
    plan = PrivacyPlan(mechanism="dpsgd", noise_multiplier=1.0, clip_norm=1.0, sampling_rate=0.1)
    training = LocalTrainingPlan(epochs=2, lr=0.1)
    steps, n = 20, 100
    std = noise_std_for(plan, training, n)
    assert std == pytest.approx(0.1 * 1.0 * 1.0 * math.sqrt(steps) / (0.1 * n))
    clipped = 0.1 * 1.0 * steps * (1 + 6 / math.sqrt(steps * 0.1 * n))
    assert norm_bound(plan, training, n, 9) == pytest.approx(clipped + std * (3 + 6))
    assert norm_bound(PrivacyPlan(mechanism="off"), training, n, 9) == math.inf


@pytest.mark.parametrize(
    ("privacy", "problem"),
    [
        ({"enabled": False}, "privacy disabled"),
        ({"noise_multiplier": 0.5}, "noise_multiplier 0.5"),
        ({"clip_norm": 3.0}, "clip_norm 3.0"),
        ({"mechanism": "dpsgd"}, "mechanism 'dpsgd'"),
    ],
)
def test_weaker_privacy_than_announced_is_rejected(
    privacy: dict[str, object], problem: str
) -> None:
    result = check_privacy(update_msg(**privacy), PLAN)
    assert result is not None and result.reason == "privacy_plan" and problem in result.detail
    assert check_privacy(update_msg(noise_multiplier=1.0, clip_norm=1.0), PLAN) is None


def test_shape_dtype_and_nan_payloads_name_the_tensor() -> None:
    good = {"weight": torch.zeros(1, 3), "bias": torch.zeros(1)}
    cases = {
        "shape": {**good, "weight": torch.zeros(3)},
        "dtype": {**good, "bias": torch.zeros(1, dtype=torch.float64)},
        "non_finite": {**good, "bias": torch.tensor([float("inf")])},
    }
    for reason, tensors in cases.items():
        result = check_payload(update_msg(), to_safetensors_bytes(tensors), SHAPES, ANN)
        assert isinstance(result, Rejection) and result.reason == reason
        assert ("bias" in result.detail) or ("weight" in result.detail)
    extra = check_payload(
        update_msg(), to_safetensors_bytes({**good, "x": torch.zeros(1)}), SHAPES, ANN
    )
    assert isinstance(extra, Rejection) and extra.reason == "shape"
    ok = check_payload(update_msg(), to_safetensors_bytes(good), SHAPES, ANN)
    assert not isinstance(ok, Rejection) and ok.vector.dtype == np.float32


def test_safetensors_views_equal_the_safetensors_library_without_copying() -> None:
    gen = torch.Generator().manual_seed(3)
    tensors = {
        "w": torch.randn(4, 5, generator=gen),
        "b": torch.randn(5, generator=gen).to(torch.float64),
        "h": torch.randn(2, 3, 2, generator=gen).to(torch.float16),
        "e": torch.zeros(0, 3),
        "i": torch.arange(6, dtype=torch.int64),
    }
    payload = to_safetensors_bytes(tensors)
    views = safetensors_views(payload)
    reference = from_safetensors_bytes(payload)
    assert {k: (dims, dtype) for k, (dtype, dims, _) in views.items()} == shapes_of(reference)
    for name in ("w", "b", "h", "e"):
        view = views[name][2]
        assert view is not None
        assert view.size == 0 or np.shares_memory(view, np.frombuffer(payload, np.uint8))
        np.testing.assert_array_equal(view, reference[name].numpy())
    assert views["i"][2] is None  # not a float: the update check reports it as a wrong dtype


def test_malformed_safetensors_payloads_raise_payload_error_never_crash() -> None:
    good = to_safetensors_bytes({"weight": torch.ones(1, 3), "bias": torch.ones(1)})
    n = int.from_bytes(good[:8], "little")
    header = good[8 : 8 + n].decode()

    def with_header(text: str, data: bytes = good[8 + n :]) -> bytes:
        raw = text.encode()
        return len(raw).to_bytes(8, "little") + raw + data

    bad = [good[:k] for k in (0, 7, 8, 8 + n // 2, len(good) - 4)]  # truncated
    bad += [good + b"\0" * 4]  # data not tiled: trailing bytes
    bad += [(10**12).to_bytes(8, "little") + good[8:]]  # header length beyond the buffer
    bad += [with_header(t) for t in ("[]", "not json", '{"bias": 3}')]
    bad += [with_header(header.replace('"F32"', '"Q8"', 1))]  # unknown dtype
    bad += [with_header(header.replace("[0,4]", "[0,8]"))]  # byte count != dtype x shape
    bad += [with_header(header.replace("[4,16]", "[0,12]"))]  # overlapping offsets
    bad += [with_header(header.replace("[1]", "[-1]"))]  # negative dimension
    for payload in bad:
        with pytest.raises(PayloadError):
            safetensors_views(payload)
        result = check_payload(update_msg(), payload, SHAPES, ANN)
        assert isinstance(result, Rejection) and result.reason == "payload", payload


def test_the_one_pass_norm_is_the_float64_norm_and_catches_nan_inf_anywhere() -> None:
    """The sum of squares is both the norm (float64 accumulation) and the finiteness check."""
    plan = PrivacyPlan(mechanism="off")
    ann = ANN.model_copy(update={"privacy": plan})
    d = 10_001
    shapes = {"weight": ((1, d - 1), "float32"), "bias": ((1,), "float32")}
    rng = np.random.default_rng(5)
    v = rng.standard_normal(d).astype(np.float32)

    def payload(vec: np.ndarray) -> bytes:
        t = torch.from_numpy(vec)
        return to_safetensors_bytes({"weight": t[:-1].reshape(1, -1), "bias": t[-1:]})

    ok = check_payload(update_msg(), payload(v), shapes, ann)
    assert not isinstance(ok, Rejection)
    np.testing.assert_array_equal(ok.vector, v)
    assert ok.norm == pytest.approx(float(np.linalg.norm(v.astype(np.float64))), rel=1e-12)
    for index, value in ((0, np.nan), (d // 2, np.inf), (d - 1, -np.inf)):
        broken = v.copy()
        broken[index] = value
        result = check_payload(update_msg(), payload(broken), shapes, ann)
        assert isinstance(result, Rejection) and result.reason == "non_finite"
        assert ("bias" if index == d - 1 else "weight") in result.detail
    huge = np.full(d, np.finfo(np.float32).max, dtype=np.float32)  # finite: a norm, not a NaN
    big = check_payload(update_msg(), payload(huge), shapes, ann)
    assert not isinstance(big, Rejection) and math.isfinite(big.norm) and big.norm > 1e38


def test_unknown_reason_is_a_programming_error() -> None:
    assert "budget_spent" in REASONS
    with pytest.raises(ValueError, match="nope"):
        Rejection("nope", "")


@pytest.mark.parametrize(
    "body",
    [
        {"sites": {"a": {"epsilon_remaining": 0.0}, "b": {"epsilon_remaining": 2.0}}},
        {
            "sites": [
                {"site": "a", "epsilon_spent": 8, "epsilon_limit": 8},
                {"site": "b", "spent": 1, "limit": 8},
            ]
        },
        {
            "ledgers": [
                {"site": "a", "source": "x", "exhausted": True},
                {"site": "b", "remaining": 0.5},
            ]
        },
        [{"site": "a", "remaining": -0.1}, {"site": "b", "remaining": 3}],
        {
            "a": [{"epsilon_remaining": 1.0}, {"epsilon_remaining": 0.0}],
            "b": {"epsilon_remaining": 1},
        },
        # the accountant's /budgets (fairfleet.accountant.service.budgets_json)
        {
            "accountant": "rdp",
            "applied_offsets": {"t:0": 4},
            "budgets": [
                {
                    "site": "a",
                    "source": "s1",
                    "epsilon_spent": 8.0,
                    "epsilon_limit": 8.0,
                    "epsilon_remaining": 0.0,
                },
                {
                    "site": "b",
                    "source": "s1",
                    "epsilon_spent": 2.0,
                    "epsilon_limit": None,
                    "epsilon_remaining": None,
                },
            ],
        },
    ],
)
def test_budget_shapes_the_accountant_may_serve(body: object) -> None:
    assert spent_sites(body) == {"a"}


def test_honest_dpsgd_deltas_from_local_train_pass_the_bound() -> None:
    """Real DP-SGD local training (Opacus) with a large lr so the clip binds every step."""
    from fairfleet.learning.models import build_model
    from fairfleet.learning.tensors import flatten
    from fairfleet.learning.train import LocalTrainConfig, local_train

    plan = PrivacyPlan(mechanism="dpsgd", noise_multiplier=0.7, clip_norm=0.5, sampling_rate=0.25)
    training = LocalTrainingPlan(epochs=2, lr=0.5)
    cfg = LocalTrainConfig(
        epochs=2, lr=0.5, privacy="dpsgd", noise_multiplier=0.7, clip_norm=0.5, sampling_rate=0.25
    )
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 3, generator=gen) * 10
    y = (x.sum(dim=1, keepdim=True) > 0).float()
    model = build_model("logistic", in_features=3)
    for seed in range(5):
        result = local_train(model, x, y, "classification", cfg, seed=seed)
        norm = float(flatten(result.delta).norm())
        assert result.noise_std == pytest.approx(noise_std_for(plan, training, 64))
        assert norm <= norm_bound(plan, training, 64, 4)
