"""The site agent service: connectors -> windows -> reserve -> train -> privatise -> publish.

from fairfleet.site_agent import SiteAgent
agent = SiteAgent(load_config("fleet.yaml"), "plant-7")
agent.run(stop_event)
"""

from fairfleet.site_agent.agent import SiteAgent, event_id_for

__all__ = ["SiteAgent", "event_id_for"]
