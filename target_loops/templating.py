"""The Jinja2 environment of the two HTML pages (the run report and the sandbox's page): templates ship in the
package (``target_loops/templates``), and every value is escaped unless a template says otherwise (it never does:
records, Loops' messages and stream names are whatever a sync sent)."""

from __future__ import annotations

import functools
from typing import Any

import jinja2


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """One environment per process (templates are compiled once)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("target_loops", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name is an error in the tests, not a silent blank
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(name: str, **context: Any) -> str:
    """The template ``name`` rendered with ``context``."""
    return environment().get_template(name).render(**context)
