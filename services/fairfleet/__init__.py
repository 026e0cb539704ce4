"""fairfleet: streaming federated learning for industrial fleets.

Site agents clip and noise their model updates before publishing them to Kafka; an aggregator
reweights them so no class of sites is left behind; a privacy accountant keeps an exact, durable
ledger of the budget each site's data has spent across every model it feeds.

Layout (pure math imports no I/O):
    privacy/ fairness/ learning/   pure math
    bus/                           topics, envelope, chunking, Kafka and in-process backends
    connectors/                    site data plugins
    site_agent/ aggregator/ accountant/   the three services (wiring only)
    sim/                           fleet simulator, decomposition, reports
"""

__version__ = "0.1.0"
