"""``files``: a folder of CSV or Parquet files (pyarrow); new files are picked up as they arrive.

Params::

    path: /data/line-3          # the folder (required; relative: to the config file's folder)
    pattern: "*"                # glob of file names; .csv, .csv.gz and .parquet are read
    settle_s: 0.0               # a file is read once its mtime is this old (writers that do not
                                # rename atomically into the folder should set ~1-2 s)
    fields: {temp: float, ...}  # the observation schema (see ObservationSchema.from_params)
    target: y
    event_time: ts              # optional

Files are read whole, in name order, each exactly once. A row's position is (file name, row
index in the file), so its count window depends only on which file it is in and where — not on
the order files arrived in or on what other files exist (fairfleet.connectors.windows); all
windows of a file close once the file has been read whole. A settled file is therefore
**immutable**: never rewrite or append to a file the connector has read (new data goes into a
new file); rows added to a read file are never read, and a rewritten file's rows would reuse
its windows' ids. Names starting with "." or ending in ".tmp"/".part" are ignored (write there, then
rename). CSV columns are read as text and converted by the schema, so a stray "abc" in a number
column rejects that row only, not the file. An unreadable file is reported as one rejected unit.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fairfleet.connectors.base import (
    SCHEMA_PARAMS,
    Connector,
    ConnectorContext,
    LocalPath,
    ObservationSchema,
    Progress,
    Row,
    positioned,
)
from fairfleet.errors import ConfigError

_IGNORED_SUFFIXES = (".tmp", ".part", ".partial")


def _read_file(path: Path, schema: ObservationSchema) -> list[Row]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    name = path.name.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        return list(pq.read_table(path).to_pylist())
    convert = pacsv.ConvertOptions(
        column_types={f.name: pa.string() for f in schema.fields},
        strings_can_be_null=True,
        null_values=[""],  # "nan"/"NA" stay text, so the schema decides (nan_not_allowed)
    )
    return list(pacsv.read_csv(path, convert_options=convert).to_pylist())


class FilesConnector(Connector):
    """A folder of CSV/Parquet files, followed for new files."""

    name = "files"
    param_names = frozenset({"path", "pattern", "settle_s"}) | SCHEMA_PARAMS

    def __init__(self, params: Mapping[str, Any], context: ConnectorContext) -> None:
        super().__init__(params, context)
        if "path" not in params:
            raise ConfigError("The files connector needs 'path' (a folder). Found none.")
        self.folder = context.resolve(str(params["path"]))
        self.pattern = str(params.get("pattern", "*"))
        self.settle_s = float(params.get("settle_s", 0.0))
        if self.settle_s < 0:
            raise ConfigError(f"settle_s must be >= 0. Found {self.settle_s}.")
        self._schema = ObservationSchema.from_params(params)
        self._seen: set[str] = set()
        self._pending: deque[Row] = deque()
        self._rows_read = 0
        self._files_read = 0
        self._last_file = ""

    def schema(self) -> ObservationSchema:
        return self._schema

    def local_paths(self) -> list[LocalPath]:
        return [LocalPath("path", self.folder, "dir")]

    def _new_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        now = time.time()
        out = []
        for p in sorted(self.folder.glob(self.pattern)):
            n = p.name
            if n in self._seen or n.startswith(".") or n.lower().endswith(_IGNORED_SUFFIXES):
                continue
            if not p.is_file():
                continue
            if self.settle_s and now - p.stat().st_mtime < self.settle_s:
                break  # keep name order: do not read a later file before this one settles
            out.append(p)
        return out

    def read(self, max_rows: int = 10_000) -> Sequence[Row]:
        if len(self._pending) < max_rows:
            for path in self._new_files():
                self._seen.add(path.name)
                self._files_read += 1
                self._last_file = path.name
                try:
                    rows = _read_file(path, self._schema)
                    self._pending.extend(
                        positioned(row, path.name, i, last=i == len(rows) - 1)
                        for i, row in enumerate(rows)
                    )
                except Exception as exc:  # any parse failure is one rejected unit, never fatal
                    self._pending.append(
                        {"__reject__": "unreadable", "__detail__": f"{path.name}: {exc}"[:500]}
                    )
                if len(self._pending) >= max_rows:
                    break
        out = [self._pending.popleft() for _ in range(min(max_rows, len(self._pending)))]
        self._rows_read += len(out)
        return out

    def progress(self) -> Progress:
        return Progress(
            rows_read=self._rows_read,
            position=f"{self._files_read} files, last '{self._last_file}'",
            extra={"files_read": self._files_read, "rows_pending": len(self._pending)},
        )
