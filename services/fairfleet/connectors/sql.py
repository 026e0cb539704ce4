"""``sql``: a table or a query through SQLAlchemy (a SQLite file by default, any URL).

Params::

    url: sqlite:///site.db        # any SQLAlchemy URL; or
    path: site.db                 # shorthand for a SQLite file (relative: to the config's folder)
    table: readings               # or
    query: "SELECT ... FROM ..."  # must expose the declared fields
    order_by: id                  # a key column that increases with new rows (required): rows
                                  # are read in this order, and later reads continue after the
                                  # last value seen (new rows are picked up)
    follow: true                  # false: the source is bounded and reports finished once read
    batch_rows: 5000
    fields / target / event_time  # the observation schema

A row's position is its ``order_by`` value (one stream), so count windows are key ranges
[k·size, (k+1)·size) and the same in every replay whatever order rows were inserted in. Count
windows therefore need an ``order_by`` column of integers >= 0 (an INTEGER PRIMARY KEY, a
sequence); a row with another value is rejected (``no_position``, naming the value). Time windows (``event_time``) work
with any ``order_by`` column. Keys must not be reused: a deleted key never comes back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fairfleet.connectors.base import (
    NO_POSITION_KEY,
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


class SqlConnector(Connector):
    """Incremental reads of a table or query, ordered by an increasing column."""

    name = "sql"
    param_names = (
        frozenset({"url", "path", "table", "query", "order_by", "follow", "batch_rows"})
        | SCHEMA_PARAMS
    )

    def __init__(self, params: Mapping[str, Any], context: ConnectorContext) -> None:
        super().__init__(params, context)
        import sqlalchemy as sa

        url = params.get("url")
        if url is None:
            path = params.get("path")
            if path is None:
                raise ConfigError(
                    "The sql connector needs 'url' or 'path' (a SQLite file). Found neither."
                )
            url = f"sqlite:///{context.resolve(str(path))}"
        self.url = str(url)
        table, query = params.get("table"), params.get("query")
        self.table, self.query = table, query
        if (table is None) == (query is None):
            raise ConfigError(
                f"The sql connector needs exactly one of 'table' or 'query'. Found table={table!r}, query={query!r}."
            )
        self.order_by = params.get("order_by")
        if not self.order_by or not str(self.order_by).replace("_", "").isalnum():
            raise ConfigError(
                f"The sql connector needs 'order_by', a column name that increases with new rows. Found {self.order_by!r}."
            )
        if table is not None and not str(table).replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"Table name must be alphanumeric (with _ or .). Found {table!r}.")
        self.follow = bool(params.get("follow", True))
        self.batch_rows = int(params.get("batch_rows", 5000))
        if self.batch_rows < 1:
            raise ConfigError(f"batch_rows must be >= 1. Found {self.batch_rows}.")
        source = f"SELECT * FROM {table}" if table is not None else f"SELECT * FROM ({query}) AS q"
        # Names are validated above; values are bound parameters.
        self._first = sa.text(f"SELECT * FROM ({source}) AS s ORDER BY {self.order_by} LIMIT :n")
        self._next = sa.text(
            f"SELECT * FROM ({source}) AS s WHERE {self.order_by} > :last ORDER BY {self.order_by} LIMIT :n"
        )
        self._engine = sa.create_engine(str(url))
        self._schema = ObservationSchema.from_params(params)
        self._last: Any = None
        self._rows_read = 0
        self._finished = False

    def schema(self) -> ObservationSchema:
        return self._schema

    def sqlite_file(self) -> Path | None:
        """The database file when the URL is a SQLite file (None: a server or in memory)."""
        prefix = "sqlite:///"
        if not self.url.startswith(prefix) or self.url in (prefix, prefix + ":memory:"):
            return None
        return self.context.resolve(self.url[len(prefix) :].split("?", 1)[0])

    def local_paths(self) -> list[LocalPath]:
        db = self.sqlite_file()
        return [LocalPath("url" if "url" in self.params else "path", db, "file")] if db else []

    def read(self, max_rows: int = 10_000) -> Sequence[Row]:
        if self._finished:
            return []
        n = min(max_rows, self.batch_rows)
        try:
            with self._engine.connect() as conn:
                if self._last is None:
                    result = conn.execute(self._first, {"n": n})
                else:
                    result = conn.execute(self._next, {"n": n, "last": self._last})
                rows = [dict(r._mapping) for r in result]
        except Exception as exc:  # e.g. the table does not exist yet: nothing to read now
            if "no such table" in str(exc).lower():
                return []
            raise
        for row in rows:
            key = row[self.order_by]
            if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
                positioned(row, "", key)
            else:
                row[NO_POSITION_KEY] = (
                    f"order_by '{self.order_by}' value {key!r} is not an integer >= 0"
                )
        if rows:
            self._last = rows[-1][self.order_by]
        elif not self.follow:
            self._finished = True
        self._rows_read += len(rows)
        return rows

    def progress(self) -> Progress:
        return Progress(
            rows_read=self._rows_read,
            position=f"{self.order_by} > {self._last!r}",
            finished=self._finished,
        )

    def close(self) -> None:
        self._engine.dispose()
