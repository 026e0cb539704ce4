"""Measurement on the user's own deployment: the fleet config ``fairfleet up`` runs, read in-process.

``fairfleet decompose --fleet my-fleet.yaml`` and ``fairfleet simulate --fleet my-fleet.yaml``
accept a deployment config (the file with ``kafka:``, ``models:``, ``sites:`` that ``fairfleet
up`` starts) as well as a preset or a simulated-fleet YAML. For a deployment config:

- every site's rows come from its own connector (files, SQL, Kafka, any plugin), built through
  the connector registry (:func:`fairfleet.connectors.build_connector`) with the site's params,
  validated by the connector's schema and cut into the site's windows exactly as the site agent
  does (:class:`fairfleet.connectors.SiteStream`); rejected rows go to a reject file in a
  throw-away folder, never into the live site's state (a connector's offsets there are untouched);
- a site's data are all its closed windows once its source is drained (the source's end closes
  the last window; a source that never reports its end, such as Kafka, is read until it has been
  quiet for ``QUIET_S`` = 1 s); its held-out part is the site agent's (``split_holdout`` with the site's
  ``holdout_fraction``: every k-th observation), the rest is its training data;
- the model, local training plan, privacy mechanism, strategy γ, rounds and the per-site ε of the
  policies are the configured model's (``--model ID``, default: the only / first model);
- features are those the site agent trains on: as the connector gives them, standardised by the
  config's fixed ``features.scale`` where set (the same :class:`fairfleet.connectors.SiteStream`
  code); a missing value allowed by ``nan_ok`` becomes 0.

The in-process engine (sim/engine.py) trains linear models: ``logistic`` (softmax over
``n_classes`` logits; the binary case is trained as two logits, the same model family as the
platform's one logit) and ``linear`` (squared error, one output). Other registered models are
refused with an error naming them.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fairfleet.config import FleetConfig, ModelConfig, SiteConfig, load_config, read_yaml
from fairfleet.errors import ConfigError
from fairfleet.privacy.policy import Policy
from fairfleet.sim.arrays import FleetData
from fairfleet.sim.synthetic import SiteData

ENGINE_MODELS = ("logistic", "linear")
QUIET_S = 1.0
"""A source that does not report ``finished`` is read until it gives no row for this long."""


def is_deployment_config(text: str | Path) -> bool:
    """Whether ``text`` is a YAML file holding a deployment config (``models:`` or ``kafka:``).

    A simulated-fleet YAML (sim/fleet.py) has neither; a preset name is not a file.
    """
    path = Path(str(text))
    if not path.is_file():
        return False
    try:
        data = read_yaml(path, empty=None)
    except ConfigError:
        return False
    return isinstance(data, dict) and ("models" in data or "kafka" in data)


def pick_model(config: FleetConfig, model_id: str | None) -> ModelConfig:
    """The model to measure: ``model_id``, or the only / first configured model."""
    if not config.models:
        raise ConfigError("The fleet config declares no models (models: [...]); nothing to train.")
    if model_id is not None:
        return config.model(model_id)
    return config.models[0]


@dataclass(frozen=True)
class Deployment:
    """A deployment config and the model measured on it (picklable: worker processes reload)."""

    path: str
    model_id: str | None = None

    def config(self) -> FleetConfig:
        return load_config(self.path)

    def model(self) -> ModelConfig:
        return pick_model(self.config(), self.model_id)

    @property
    def name(self) -> str:
        cfg = self.config()
        return f"{cfg.fleet}/{self.model().id}"

    def data(self) -> FleetData:
        """The sites' arrays, read once per process (the CLI and every worker use them)."""
        key = (str(Path(self.path).resolve()), self.model_id)
        if key not in _DATA:
            _DATA.clear()
            _DATA[key] = deployment_data(self.config(), self.model_id)
        return _DATA[key]


_DATA: dict[tuple[str, str | None], FleetData] = {}


def serving_sites(config: FleetConfig, model_id: str) -> list[SiteConfig]:
    """The sites that train ``model_id``: those listing it in ``models`` (as the site agent
    does: a site with no models trains none)."""
    serving = [s for s in config.sites if model_id in s.models]
    if not serving:
        raise ConfigError(f"No site serves model '{model_id}' (sites[].models).")
    return serving


def _engine_shape(model: ModelConfig) -> tuple[str, int, int]:
    """(task, in_features, outputs) of a model the engine trains; ConfigError otherwise."""
    spec = model.model
    if spec.name not in ENGINE_MODELS:
        raise ConfigError(
            f"Model '{model.id}' is '{spec.name}'; in-process measurement trains "
            f"{list(ENGINE_MODELS)} only."
        )
    try:
        d = int(spec.params["in_features"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"Model '{model.id}' needs params.in_features. Found {spec.params!r}."
        ) from None
    if spec.name == "logistic":
        if spec.task != "classification":
            raise ConfigError(
                f"Model '{model.id}': logistic needs task classification. Found {spec.task!r}."
            )
        return "classification", d, int(spec.params.get("n_classes", 2))
    if spec.task != "regression" or int(spec.params.get("out_features", 1)) != 1:
        raise ConfigError(
            f"Model '{model.id}': linear is measured as regression with out_features 1. "
            f"Found task {spec.task!r}, params {spec.params!r}."
        )
    return "regression", d, 1


def read_site(config: FleetConfig, site_id: str, scratch: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every observation of ``site_id``'s source (x (n, d), y (n, k)), as the site agent reads it."""
    from fairfleet.connectors import open_site_stream

    site = config.site(site_id)
    state = scratch / site_id
    state.mkdir(parents=True, exist_ok=True)
    stream = open_site_stream(config, site_id, state, 2**31, state / "rejects.jsonl")
    connector = stream.connector
    try:
        stream.drain(max_rounds=1_000_000)
        quiet_until = time.monotonic() + QUIET_S  # a live source (Kafka, SQL follow): read until
        while not connector.progress().finished and time.monotonic() < quiet_until:  # it is quiet
            time.sleep(0.1)
            if stream.poll():
                stream.drain(max_rounds=1_000_000)
                quiet_until = time.monotonic() + QUIET_S
        stream.windower.finish()
        data = stream.training_data(None)
    finally:
        connector.close()
    if data is None:
        raise ConfigError(
            f"Site '{site_id}' ({site.connector.type} connector) gave no observations "
            f"(rejected: {stream.rejected or 'none'}; see {state / 'rejects.jsonl'})."
        )
    return data.x, data.y


def deployment_data(config: FleetConfig, model_id: str | None = None) -> FleetData:
    """Train/held-out arrays of every site serving the model (see the module docstring)."""
    from fairfleet.learning.train import split_holdout

    model = pick_model(config, model_id)
    task, d, outputs = _engine_shape(model)
    serving = serving_sites(config, model.id)
    sites = []
    with tempfile.TemporaryDirectory(prefix="fairfleet-measure-") as scratch:
        for site in serving:
            x, y = read_site(config, site.id, Path(scratch))
            if x.shape[1] != d:
                raise ConfigError(
                    f"Site '{site.id}' gives {x.shape[1]} features; model '{model.id}' has "
                    f"in_features {d}."
                )
            x = np.where(np.isnan(x), 0.0, x).astype(np.float32)
            target = y[:, 0]
            if task == "classification":
                labels = np.rint(target)
                bad = (labels < 0) | (labels >= outputs) | (labels != target)
                if bad.any():
                    raise ConfigError(
                        f"Site '{site.id}': target values must be labels 0..{outputs - 1}. "
                        f"Found {target[bad][:3].tolist()}."
                    )
                yy: np.ndarray = labels.astype(np.int64)
            else:
                yy = target.astype(np.float32)
            x_tr, y_tr, x_te, y_te = split_holdout(x, yy, site.agent.holdout_fraction)
            if len(y_tr) < 1 or len(y_te) < 1:
                raise ConfigError(
                    f"Site '{site.id}' has {len(yy)} observations: too few to hold out "
                    f"{site.agent.holdout_fraction}."
                )
            sites.append(SiteData(site.id, site.site_class, x_tr, y_tr, x_te, y_te))
    return FleetData(
        f"{config.fleet}/{model.id}",
        task,
        d,
        max(outputs, 2) if task == "classification" else 1,
        sites,
    )


def site_policies(config: FleetConfig, sites: list[str], unit: str) -> dict[str, Policy]:
    """Each site's policy for ``unit`` ledgers (the one resolver: PolicySet.resolve); a site
    without one is an error naming it, as the accountant would deny every release."""
    out: dict[str, Policy] = {}
    for s in sites:
        match = config.policy_for(s, unit)
        if match.policy is None:
            raise ConfigError(
                f"Site '{s}' has no {unit}-level policy: {match.reason or match.matched}."
            )
        out[s] = match.policy
    return out


def training_defaults(
    config: FleetConfig, model_id: str | None, n_train: np.ndarray
) -> dict[str, Any]:
    """The run settings ``fairfleet up`` would use for the model, as decompose/simulate options.

    ``local_steps``: the plan's epochs over the median site's training rows in ``batch_size``
    batches (the engine runs the same number of steps at every site). ``epsilon``: the strictest
    policy among the serving sites (the engine calibrates one noise level for the fleet).
    """
    model = pick_model(config, model_id)
    plan, training = model.privacy, model.training
    median = float(np.median(n_train)) if len(n_train) else 1.0
    sites = [s.id for s in serving_sites(config, model.id)]
    policies = site_policies(config, sites, plan.protected_unit)
    eps = {s: p.epsilon_max for s, p in policies.items()}
    return {
        "rounds": model.rounds.rounds,
        "epochs": training.epochs,
        "local_steps": max(1, training.epochs * math.ceil(median / training.batch_size)),
        "batch_size": training.batch_size,
        "lr": training.lr,
        "clip_norm": plan.clip_norm,
        "loss_bound": plan.loss_bound,
        "gamma": model.gamma,
        "strategy": model.strategy.name,
        "strategy_params": dict(model.strategy.params),
        "mechanism": plan.mechanism,
        "sampling_rate": plan.sampling_rate,
        "epsilon": min(eps.values()) if eps else None,
        "delta": min(p.delta for p in policies.values()) if policies else 1e-5,
        "site_epsilons": eps,
    }
