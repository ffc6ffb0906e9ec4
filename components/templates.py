"""Render the files kube-hardway writes onto hosts from `templates/*.j2`.

StrictUndefined turns a missing value into an error at plan time instead of an empty flag on a host.
"""

from __future__ import annotations

import base64
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["q"] = shlex.quote  # a value from the stack config, as one shell word
    env.filters["yaml"] = lambda value: yaml.safe_dump(value, sort_keys=False, default_flow_style=False)
    env.filters["b64"] = lambda text: base64.b64encode(text.encode()).decode()  # kubeconfig *-data
    return env


def render(template: str, /, **values: Any) -> str:
    """Render `templates/<template>` with `values`; every variable the template uses must be given."""
    return _environment().get_template(template).render(**values)
