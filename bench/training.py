"""Local training cost of DP-SGD: time per DP-SGD step versus a non-private step, same run.

For every built-in model (linear, logistic, mlp, cnn1d) at batch 64 and 256:

- non-private step = what ``local_train(privacy="off")`` does per batch: zero grads, forward,
  mean loss, backward, SGD step;
- DP-SGD step = what ``local_train(privacy="dpsgd")`` does per batch: forward, per-example
  gradients (Opacus), per-example clip, Gaussian noise, SGD step. The batch is a fixed B
  examples (q = 0.25 of 4B examples) so both steps see the same number of examples.

Each Opacus grad-sample mode (hooks, functorch, ew = torch ExpandedWeights, ghost clipping) is
timed; the headline ``dp_over_nonprivate_ratio`` uses the mode ``local_train`` picks by default
("auto"). Timing: rounds alternate non-private and DP blocks; the per-step time is the median
over rounds. One torch thread (the machine is shared; recorded in the JSON).
Writes bench/results/training.json.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fairfleet.learning.models import build_model
from fairfleet.learning.train import per_example_loss
from fairfleet.privacy.dpsgd import DpSgd, resolve_grad_sample_mode

OUT = Path(__file__).resolve().parent / "results" / "training.json"
BATCHES = (64, 256)
MODES = ("hooks", "functorch", "ew", "ghost")
ROUNDS = 7
TARGET_BLOCK_S = 0.04  # steps per block are chosen so one block takes about this long

Spec = tuple[str, dict[str, Any], tuple[int, ...], str]  # registry name, params, example, task
MODELS: dict[str, Spec] = {
    "linear": ("linear", {"in_features": 32}, (32,), "regression"),
    "logistic": ("logistic", {"in_features": 32, "n_classes": 2}, (32,), "classification"),
    "mlp": ("mlp", {"in_features": 32, "hidden": (64, 64)}, (32,), "regression"),
    "cnn1d": ("cnn1d", {"in_channels": 8, "conv_channels": 16, "n_conv": 2}, (64, 8), "regression"),
}
# Not the default size: shows how the ratio moves once compute outweighs per-op overhead.
EXTRA: dict[str, Spec] = {
    "mlp_in128_hidden_512x512": (
        "mlp",
        {"in_features": 128, "hidden": (512, 512)},
        (128,),
        "regression",
    ),
}


def _data(shape: tuple[int, ...], task: str, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=gen)
    if task == "classification":
        return x, torch.randint(0, 2, (batch,), generator=gen)
    return x, torch.randn(batch, generator=gen)


def _nonprivate_step(
    name: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, task: str
) -> Callable[[], None]:
    model = build_model(name, **params)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        per_example_loss(model(x), y, task).mean().backward()  # type: ignore[arg-type]
        opt.step()

    return step


def _dp_step(
    name: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, task: str, mode: str
) -> tuple[Callable[[], None], DpSgd]:
    model = build_model(name, **params)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    engine = DpSgd(
        model,
        opt,
        n_examples=4 * len(x),
        sampling_rate=0.25,
        noise_multiplier=1.0,
        clip_norm=1.0,
        noise_generator=torch.Generator().manual_seed(1),
        grad_sample_mode=mode,
    )  # type: ignore[arg-type]

    def step() -> None:
        engine.zero_grad()
        engine.backward(per_example_loss(engine.module(x), y, task))  # type: ignore[arg-type]
        opt.step()

    return step, engine


def _steps_for(fn: Callable[[], None]) -> int:
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(10):
        fn()
    per = (time.perf_counter() - t0) / 10
    return max(5, min(400, int(TARGET_BLOCK_S / max(per, 1e-6))))


def _block_ms(fn: Callable[[], None], steps: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per step over one block of ``steps`` steps."""
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        fn()
    c1, w1 = time.process_time(), time.perf_counter()
    return (c1 - c0) / steps * 1e3, (w1 - w0) / steps * 1e3


def _measure(spec: Spec, batch: int, modes: tuple[str, ...]) -> dict[str, Any]:
    name, params, shape, task = spec
    x, y = _data(shape, task, batch)
    default_mode = resolve_grad_sample_mode(build_model(name, **params), "auto", batch)
    fns: dict[str, Callable[[], None]] = {"nonprivate": _nonprivate_step(name, params, x, y, task)}
    engines = []
    for mode in modes:
        fns[mode], engine = _dp_step(name, params, x, y, task, mode)
        engines.append(engine)
    steps = {key: _steps_for(fn) for key, fn in fns.items()}
    cpu: dict[str, list[float]] = {key: [] for key in fns}
    wall: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(ROUNDS):  # alternate so drift from other load hits every variant alike
        for key, fn in fns.items():
            c, w = _block_ms(fn, steps[key])
            cpu[key].append(c)
            wall[key].append(w)
    for engine in engines:
        engine.close()
    med = {key: statistics.median(v) for key, v in cpu.items()}
    med_wall = {key: statistics.median(v) for key, v in wall.items()}
    base = med["nonprivate"]
    return {
        "dp_over_nonprivate_ratio": round(med[default_mode] / base, 3),
        "dp_step_ms": round(med[default_mode], 4),
        "nonprivate_step_ms": round(base, 4),
        "grad_sample_mode": default_mode,
        "wall_dp_over_nonprivate_ratio": round(med_wall[default_mode] / med_wall["nonprivate"], 3),
        "modes": {
            mode: {
                "dp_step_ms": round(med[mode], 4),
                "dp_over_nonprivate_ratio": round(med[mode] / base, 3),
            }
            for mode in modes
        },
        "fastest_mode": min(modes, key=lambda m: med[m]),
    }


def main() -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        models = {
            name: {str(b): _measure(spec, b, MODES) for b in BATCHES}
            for name, spec in MODELS.items()
        }
        extra = {
            name: {str(b): _measure(spec, b, ("ew", "ghost")) for b in BATCHES}
            for name, spec in EXTRA.items()
        }
    finally:
        torch.set_num_threads(threads)
    modes_used = {m[b]["grad_sample_mode"] for m in models.values() for b in m}
    result: dict[str, Any] = {
        "models": models,
        "grad_sample_mode": "auto (per model and batch, see grad_sample_mode in each row): "
        + ",".join(sorted(modes_used)),
        "goal": "dp_over_nonprivate_ratio <= 2 for mlp",
        "extra_not_builtin": extra,
        "setup": {
            "torch_threads": 1,
            "rounds": ROUNDS,
            "statistic": "median process-CPU ms per step over rounds (wall ratio also given)",
            "dp_batch": "fixed B examples, q = 0.25 of 4B, sigma = 1, C = 1",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    out = main()
    for model_name, by_batch in out["models"].items():
        for b, row in by_batch.items():
            print(
                f"{model_name:9s} B={b:>3s} ratio={row['dp_over_nonprivate_ratio']:.2f} "
                f"dp={row['dp_step_ms']:.3f} ms np={row['nonprivate_step_ms']:.3f} ms "
                f"fastest={row['fastest_mode']}"
            )
    print(f"{out['seconds']} s")
