"""DP-SGD at the site, wired through Opacus, with the privacy event it spends.

One DP-SGD step on n local examples (Abadi et al. 2016; Opacus):

1. Poisson sampling: every example joins the batch B_t independently with probability q
   (the *explicit* ``sampling_rate``; never inferred from a data loader, STYLE.md 9).
2. Per-example clipping: g_i <- g_i * min(1, C / ||g_i||_2).
3. Gaussian noise on the sum: g~ = (sum_{i in B_t} g_i + N(0, sigma^2 C^2 I)) / (q n),
   i.e. normalised by the *expected* batch size q n (a constant, so the sensitivity stays C).

T such steps are ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), T)``
under add/remove-one-observation neighbours, built by ``fairfleet.privacy.events.dpsgd_event``
(sigma = 0 is ``NonPrivateDpEvent``: no privacy); everything computed from the noisy gradients
(the released model delta) is post-processing.

Opacus does steps 1-3: ``UniformWithReplacementSampler`` (sample_rate given explicitly),
``GradSampleModule`` for per-example gradients and ``DPOptimizer`` for clip + noise. The only
thing added here is that the per-example norms of each step are kept (for the
``update_norm`` / ``clipped_fraction`` metrics) without computing them twice.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import dp_accounting
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator

from fairfleet.checks import check_positive
from fairfleet.errors import ConfigError
from fairfleet.privacy.events import dpsgd_event, validate_noise_multiplier, validate_sampling_rate
from fairfleet.privacy.mechanisms import secure_generator

# Opacus' backward hooks fire on the first layer although the input needs no gradient; torch warns
# about that on every step. It is expected here, so only this one message is silenced, and only
# around our own backward passes.
_HOOK_WARNING = "Full backward hook is firing when gradients are computed"

GradSampleMode = Literal["auto", "hooks", "functorch", "ew", "ghost"]
GRAD_SAMPLE_MODES: tuple[str, ...] = ("auto", "hooks", "functorch", "ew", "ghost")
# "auto" picks among the Opacus modes by what bench/training.py measured (docs/models.md):
# - "ghost" (fast gradient clipping) when every parametrised layer is Linear/Embedding and the
#   per-example gradients would be large (expected batch x parameters >= GHOST_MIN_FLOATS):
#   it never materialises them (MLP 32-64-64-1 at B=256: 5.3x vs 8.6x for "ew");
# - else "ew" (torch ExpandedWeights) when all parametrised layers support it: the least
#   per-op overhead for small models and for Conv1d (MLP at B=64: 4.3x vs 5.7x "hooks");
# - else "hooks" (Opacus GradSampleModule; functorch fallback for layers it does not know).
DEFAULT_GRAD_SAMPLE_MODE: GradSampleMode = "auto"
GHOST_MIN_FLOATS = 1 << 20
_EW_LAYERS: tuple[type[torch.nn.Module], ...] = (
    torch.nn.Linear,
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
    torch.nn.Embedding,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
)
_GHOST_LAYERS: tuple[type[torch.nn.Module], ...] = (torch.nn.Linear, torch.nn.Embedding)


def resolve_grad_sample_mode(
    model: torch.nn.Module, mode: str, expected_batch_size: float = 1.0
) -> GradSampleMode:
    """Validate ``mode``; resolve "auto" by layer types and per-example gradient size."""
    if mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"Unknown grad_sample_mode {mode!r}; known: {list(GRAD_SAMPLE_MODES)}.")
    if mode != "auto":
        return mode  # type: ignore[return-value]
    layer_types = {
        type(m) for m in model.modules() if any(True for _ in m.parameters(recurse=False))
    }
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if layer_types <= set(_GHOST_LAYERS) and expected_batch_size * n_params >= GHOST_MIN_FLOATS:
        return "ghost"
    if layer_types <= set(_EW_LAYERS):
        return "ew"
    return "hooks"


def validate_clip_norm(clip_norm: float) -> float:
    return check_positive("Clip norm", clip_norm)


def steps_per_epoch(sampling_rate: float) -> int:
    """Poisson 'epoch' length used by Opacus' sampler: floor(1/q) steps (at least 1)."""
    return max(1, int(1.0 / validate_sampling_rate(sampling_rate)))


def make_generator(seed: int, secure: bool) -> torch.Generator:
    """A CPU torch.Generator: seeded for reproducibility, or from the OS CSPRNG when secure.

    torchcsprng (what Opacus' secure_mode used) is unmaintained; seeding from the OS CSPRNG makes
    the stream unpredictable to an observer, and Opacus' secure_mode sampler (sum of 4 Gaussians)
    closes the floating-point attack on the noise itself.
    """
    if secure:
        return secure_generator()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return generator


class _NormRecordingDPOptimizer(DPOptimizer):
    """DPOptimizer that keeps the per-example gradient norms it computes for clipping.

    Same maths as ``DPOptimizer.clip_and_accumulate`` (Opacus 1.6); re-stated here only so the
    norms are stored instead of being computed a second time for the metrics.
    """

    last_norms: torch.Tensor | None = None

    def clip_and_accumulate(self) -> None:
        if len(self.grad_samples[0]) == 0:
            norms = torch.zeros((0,), device=self.grad_samples[0].device)
        else:
            per_param = [g.reshape(len(g), -1).norm(2, dim=-1) for g in self.grad_samples]
            norms = torch.stack(per_param, dim=1).norm(2, dim=1)
        self.last_norms = norms.detach()
        clip_factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for p in self.params:
            grad_sample = self._get_flat_grad_sample(p).to(p.dtype)
            grad = torch.einsum("i,i...", clip_factor.to(grad_sample.dtype), grad_sample)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            p.grad_sample = None  # consumed; frees memory before the next step


@dataclass
class DpSgdStats:
    """What the steps so far did (observations of the site's own data: never released)."""

    steps: int = 0
    examples_seen: int = 0
    grad_norm_sum: float = 0.0
    clipped: int = 0

    @property
    def mean_grad_norm(self) -> float:
        return self.grad_norm_sum / self.examples_seen if self.examples_seen else 0.0

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.examples_seen if self.examples_seen else 0.0


class DpSgd:
    """Per-example clip + Gaussian noise around a plain torch optimizer (Opacus underneath).

    Per step: ``zero_grad()``; forward ``module`` on the Poisson batch; ``backward(losses)`` with
    the vector of per-example losses leaves p.grad = (sum_i clip(g_i) + N(0, sigma^2 C^2 I)) / (q n);
    then add any data-independent gradient term (e.g. FedProx) and step the inner optimizer.

    grad_sample_mode: ``hooks`` (Opacus GradSampleModule, per-example grads from module hooks),
    ``functorch`` (the same through torch.func vmap), ``ew`` (torch ExpandedWeights) or ``ghost``
    (Opacus fast gradient clipping: per-example *norms* without per-example gradients, then a
    second backward of sum_i c_i l_i with c_i = min(1, C/||g_i||); Li et al. 2022, Bu et al. 2023).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        n_examples: int,
        sampling_rate: float,
        noise_multiplier: float,
        clip_norm: float,
        noise_generator: torch.Generator,
        secure_mode: bool = False,
        grad_sample_mode: GradSampleMode = DEFAULT_GRAD_SAMPLE_MODE,
    ) -> None:
        if n_examples < 1:
            raise ConfigError(f"DP-SGD needs at least one example. Found n_examples={n_examples}.")
        self.sampling_rate = validate_sampling_rate(sampling_rate)
        self.noise_multiplier = validate_noise_multiplier(noise_multiplier)
        self.clip_norm = validate_clip_norm(clip_norm)
        incompatible = ModuleValidator.validate(model, strict=False)
        if incompatible:
            raise ConfigError(
                f"Model {type(model).__name__} cannot be trained with DP-SGD: "
                + "; ".join(str(err).split(".")[0] for err in incompatible)
                + ". Replace the layers (e.g. opacus.layers.DPGRU for nn.GRU, GroupNorm for "
                "BatchNorm; opacus.validators.ModuleValidator.fix does both)."
            )
        self.n_examples = int(n_examples)
        self.expected_batch_size = self.sampling_rate * self.n_examples
        grad_sample_mode = resolve_grad_sample_mode(
            model, grad_sample_mode, self.expected_batch_size
        )
        self.grad_sample_mode = grad_sample_mode
        self.stats = DpSgdStats()
        self.module: torch.nn.Module
        self.optimizer: DPOptimizer
        dp_args: dict[str, Any] = {
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.clip_norm,
            "expected_batch_size": None,
            "loss_reduction": "sum",
            "generator": noise_generator,
            "secure_mode": secure_mode,
        }
        if grad_sample_mode == "ghost":
            from opacus.grad_sample import GradSampleModuleFastGradientClipping
            from opacus.optimizers import DPOptimizerFastGradientClipping

            self.module = GradSampleModuleFastGradientClipping(
                model,
                batch_first=True,
                loss_reduction="sum",
                max_grad_norm=self.clip_norm,
                use_ghost_clipping=True,
            )
            self.optimizer = DPOptimizerFastGradientClipping(optimizer, **dp_args)
            return
        if grad_sample_mode == "ew":
            from opacus.grad_sample import GradSampleModuleExpandedWeights

            self.module = GradSampleModuleExpandedWeights(
                model, batch_first=True, loss_reduction="sum"
            )
        else:
            self.module = GradSampleModule(
                model,
                batch_first=True,
                loss_reduction="sum",
                force_functorch=grad_sample_mode == "functorch",
            )
        self.optimizer = _NormRecordingDPOptimizer(optimizer, **dp_args)

    @property
    def noise_std_per_step(self) -> float:
        """Per-coordinate std of the noise in one privatised mean gradient: sigma C / (q n)."""
        return self.noise_multiplier * self.clip_norm / self.expected_batch_size

    def poisson_batches(self, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """``steps`` Poisson batches of example indices (each example in with probability q)."""
        sampler = UniformWithReplacementSampler(
            num_samples=self.n_examples,
            sample_rate=self.sampling_rate,
            generator=generator,
            steps=steps,
        )
        for indices in sampler:
            yield torch.as_tensor(indices, dtype=torch.long)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, per_example_losses: torch.Tensor) -> None:
        """Backward the batch, clip per example, add N(0, sigma^2 C^2) to the sum, divide by q n.

        The result is in p.grad of the wrapped model's parameters. An empty Poisson batch (no
        forward needed: pass an empty tensor) still adds the noise: the step is accounted for.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_HOOK_WARNING, category=UserWarning)
            self._backward(per_example_losses)

    def _backward(self, per_example_losses: torch.Tensor) -> None:
        opt = self.optimizer
        if per_example_losses.numel() == 0:
            for p in opt.params:
                p.summed_grad = torch.zeros_like(p)
            norms: torch.Tensor | None = None
        elif self.grad_sample_mode == "ghost":
            norms = self._ghost_backward(per_example_losses)
            for p in opt.params:  # Opacus' accumulate() deep-copies p.grad; it is ours to take
                p.summed_grad = p.grad if p.grad is not None else torch.zeros_like(p)
                p.grad = None
        else:
            per_example_losses.sum().backward()
            opt.clip_and_accumulate()
            norms = opt.last_norms
        opt.add_noise()
        for p in opt.params:
            p.grad /= self.expected_batch_size
            p.summed_grad = None
        if norms is not None:
            self.stats.examples_seen += int(norms.numel())
            self.stats.grad_norm_sum += float(norms.sum())
            self.stats.clipped += int((norms > self.clip_norm).sum())
        self.stats.steps += 1

    def _ghost_backward(self, losses: torch.Tensor) -> torch.Tensor:
        """Opacus' DPTensorFastGradientClipping.backward, with the norms kept for the metrics."""
        module: Any = self.module  # a GradSampleModuleFastGradientClipping (untyped Opacus)
        losses.sum().backward(retain_graph=True)  # hooks store per-example norms only
        self.optimizer.zero_grad(set_to_none=True)
        norms: torch.Tensor = module.get_norm_sample().detach()
        coef = (self.clip_norm / (norms + 1e-6)).clamp(max=1.0)
        module.disable_hooks()
        try:
            (coef * losses).sum().backward()  # = sum_i clip(g_i), in p.grad
        finally:
            module.enable_hooks()
        return norms

    def event(self) -> dp_accounting.DpEvent:
        """What the steps taken so far spent (raises ConfigError if none were taken)."""
        return dpsgd_event(self.sampling_rate, self.noise_multiplier, self.stats.steps)

    def close(self) -> None:
        """Remove the Opacus hooks from the wrapped model."""
        remove = getattr(self.module, "_close", None)
        if callable(remove):
            remove()
