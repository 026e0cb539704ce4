"""Run every benchmark module in bench/ (each exposes ``main() -> dict``) and print a summary.

`make bench` runs this under scripts/with-broker.sh, so FAIRFLEET_BOOTSTRAP points at a real
local broker for the benchmarks that need Kafka.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(names: list[str]) -> int:
    RESULTS.mkdir(exist_ok=True)
    modules = sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name not in ("run", "loadgen") and not m.name.startswith("_")
    )
    failed = []
    for name in modules:
        if names and name not in names:
            continue
        start = time.monotonic()
        print(f"== bench {name}", flush=True)
        try:
            result = importlib.import_module(f"bench.{name}").main()
        except Exception as exc:  # keep going: one failing benchmark must not hide the others
            print(f"   FAILED: {exc!r}", flush=True)
            failed.append(name)
            continue
        print(f"   {time.monotonic() - start:.1f} s -> bench/results/{name}.json", flush=True)
        print("   " + json.dumps(result)[:600], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
