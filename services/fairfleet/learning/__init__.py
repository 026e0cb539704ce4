"""fairfleet.learning."""
