"""fairfleet.aggregator."""
