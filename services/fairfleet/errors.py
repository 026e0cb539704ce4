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


class TransactionError(BusError):
    """A transactional call failed; the flags classify it as Kafka's error contract does.

    ``retriable``: repeating the same call may succeed; ``requires_abort``: the transaction must
    be aborted (then it may be retried from the start); ``fatal``: the producer is unusable
    (e.g. fenced by a newer instance with the same transactional id) and must be re-created.
    A backend that cannot classify an error raises a plain BusError, treated as requires_abort.
    """

    def __init__(
        self,
        message: str,
        *,
        retriable: bool = False,
        requires_abort: bool = False,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.retriable, self.requires_abort, self.fatal = retriable, requires_abort, fatal


class TransactionAborted(BusError):
    """The transaction failed and was aborted: nothing of it is visible."""


class ProducerFenced(BusError):
    """The transactional producer hit a fatal error (typically fenced): it must be re-created.

    Its open transaction is aborted by the broker (at once if a newer instance fenced it,
    otherwise when ``transaction.timeout.ms`` passes). If the error hit ``commit_transaction``
    its outcome is not known to this producer: callers that must know treat it as unknown.
    """


class OutcomeUnknown(BusError):
    """The transaction failed and could not be aborted: whether it committed is unknown."""
