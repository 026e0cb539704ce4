"""The security tests reuse the integration and site-agent test kits (simulated sites)."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for kit in (TESTS / "integration", TESTS / "unit" / "site_agent"):
    if str(kit) not in sys.path:
        sys.path.insert(0, str(kit))
