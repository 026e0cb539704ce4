"""fairfleet.privacy."""
