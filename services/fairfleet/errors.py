"""One root exception type for everything fairfleet raises on purpose.

Messages name the bad value (STYLE.md 8): "Sampling rate must be in [0, 1]. Found 1.5."
"""


class FairfleetError(Exception):
    """Root of every error fairfleet raises deliberately."""


class ConfigError(FairfleetError, ValueError):
    """A configuration value or argument is invalid; the message names it and its value."""


class BrokerError(FairfleetError):
    """The local Kafka broker could not be resolved, started, reached or stopped."""


class BusError(FairfleetError):
    """Publishing, consuming or committing on the bus failed."""


class PayloadError(FairfleetError):
    """A tensor payload or a chunk of one is missing, corrupted or malformed.

    ``reason`` is the dead-letter label a consumer files it under (set where the error is
    raised, never guessed from the text).
    """

    def __init__(self, message: str = "", reason: str = "payload") -> None:
        super().__init__(message)
        self.reason = reason


class SchemaError(FairfleetError, ValueError):
    """A message does not match its schema (type, version or fields).

    ``reason`` is the dead-letter label; ``field`` the dotted path of the offending field, if any.
    """

    def __init__(self, message: str = "", reason: str = "schema", field: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


class PrivacyError(FairfleetError):
    """A privacy parameter is invalid or a release is not covered by a grant."""


class UnsupportedEventError(PrivacyError):
    """No accountant rule for a privacy event; ``event_type`` names the offending (sub-)event."""

    def __init__(self, event_type: str, message: str) -> None:
        super().__init__(message)
        self.event_type = event_type


class BudgetExceededError(PrivacyError):
    """A reservation would take a ledger past its policy's epsilon."""
