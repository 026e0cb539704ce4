"""Site connectors: the plugin API (base), the built-ins, validation and training windows.

from fairfleet.connectors import build_connector, ConnectorContext, SiteStream
"""

from fairfleet.connectors.base import (
    CONNECTORS,
    ENTRY_POINT_GROUP,
    SCHEMA_PARAMS,
    Connector,
    ConnectorContext,
    FieldSpec,
    LocalPath,
    ObservationSchema,
    Position,
    Progress,
    Row,
    available_connectors,
    build_connector,
    position_of,
    positioned,
    register_connector,
)
from fairfleet.connectors.scaling import FeatureScaler
from fairfleet.connectors.stream import SiteStream, TrainingData, open_site_stream
from fairfleet.connectors.validate import Observation, RejectFile, Rejection, RowValidator
from fairfleet.connectors.windows import Window, Windower

__all__ = [
    "CONNECTORS",
    "ENTRY_POINT_GROUP",
    "SCHEMA_PARAMS",
    "Connector",
    "ConnectorContext",
    "FeatureScaler",
    "FieldSpec",
    "LocalPath",
    "Observation",
    "ObservationSchema",
    "Position",
    "Progress",
    "RejectFile",
    "Rejection",
    "Row",
    "RowValidator",
    "SiteStream",
    "TrainingData",
    "Window",
    "Windower",
    "available_connectors",
    "build_connector",
    "open_site_stream",
    "position_of",
    "positioned",
    "register_connector",
]
