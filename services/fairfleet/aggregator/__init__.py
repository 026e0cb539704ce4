"""The aggregator service (one per model): rounds, validation, fair aggregation, checkpoints.

    from fairfleet.aggregator import Aggregator, AggregatorOptions
    agg = Aggregator(load_config("fleet.yaml"), "model-a", options=AggregatorOptions(metrics_port=0))
    agg.run(stop_event)          # or agg.start(); agg.step() ...; agg.close()

Wiring only: the math is in fairfleet.fairness (strategies, estimators) and
fairfleet.learning (models, tensors). See docs/aggregator.md.
"""

from fairfleet.aggregator.checkpoint import Checkpoint, read_checkpoint
from fairfleet.aggregator.service import CRASH_ENV, Aggregator, AggregatorOptions
from fairfleet.aggregator.validation import REASONS, Rejection, norm_bound

__all__ = [
    "CRASH_ENV",
    "REASONS",
    "Aggregator",
    "AggregatorOptions",
    "Checkpoint",
    "Rejection",
    "norm_bound",
    "read_checkpoint",
]
