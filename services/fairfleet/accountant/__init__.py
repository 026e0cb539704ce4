"""fairfleet.accountant."""
