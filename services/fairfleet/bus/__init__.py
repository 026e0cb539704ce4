"""fairfleet.bus."""
