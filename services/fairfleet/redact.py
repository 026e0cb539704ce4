"""Secrets never printed: which keys hold secrets, and masking them in any text.

Used by every error path that may echo a config value (`fairfleet config check`, ``load_config``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

# A key holding one of these words is a secret: its value is never printed (misspellings such
# as "sasl_pasword" included: a typo'd secret is still a secret).
SECRET_WORDS = ("pass", "pasw", "pwd", "secret", "token", "credential", "api_key", "apikey")
MASK = "***"


def is_secret_key(key: Any) -> bool:
    name = str(key).lower().replace(".", "_").replace("-", "_")
    return any(word in name for word in SECRET_WORDS)


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@/\s]+)@")


def secret_values(data: Any, environ: Mapping[str, str] | None = None) -> set[str]:
    """Every secret string in a raw config mapping (and the FAIRFLEET_* environment): values
    under secret-looking keys and passwords embedded in URLs (``postgresql://u:pw@host``)."""
    out: set[str] = set()

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, secret or is_secret_key(k))
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, secret)
        elif value is not None and not isinstance(value, bool):
            text = str(value)
            if secret and text:
                out.add(text)
            for match in _URL_PASSWORD.finditer(text):
                out.add(match.group("pw"))

    walk(data, False)
    for key, value in (environ if environ is not None else os.environ).items():
        if key.upper().startswith("FAIRFLEET_") and (
            is_secret_key(key) or _URL_PASSWORD.search(value)
        ):
            walk({key: value}, False)
    return {s for s in out if len(s) >= 3}  # masking "a" everywhere would garble every line


def scrub(lines: Iterable[str], secrets: set[str]) -> list[str]:
    """``lines`` with every secret replaced by ``***`` (longest first, so no fragment survives)."""
    ordered = sorted(secrets, key=len, reverse=True)
    out = []
    for line in lines:
        for s in ordered:
            line = line.replace(s, MASK)
        out.append(_URL_PASSWORD.sub(lambda m: m.group("scheme") + MASK + "@", line))
    return out
