"""fairfleet.fairness."""
