"""fairfleet.connectors."""
