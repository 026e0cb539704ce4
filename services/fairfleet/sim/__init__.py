"""fairfleet.sim."""
