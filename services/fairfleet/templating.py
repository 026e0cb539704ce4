"""HTML pages rendered from the Jinja2 templates shipped in ``fairfleet/templates/`` (package
data): the decomposition report, and the quality report of ``fairfleet demo`` and ``fairfleet
report``. Autoescaped everywhere, since site ids and class names come from configs and
messages; an undefined name in a template is an error, not an empty string."""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fairfleet", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # {{ x|fmt("+.4f") }}: Python's format spec, as the reports' numbers always were written
    env.filters["fmt"] = format
    return env


def render(template: str, **context: Any) -> str:
    """``templates/<template>`` rendered with ``context``."""
    return environment().get_template(template).render(**context)
