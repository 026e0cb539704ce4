"""fairfleet.site_agent."""
