"""A config model as commented YAML: every field preceded by its description.

``configs/cpu_default.yaml`` (``python -m scripts.tools.write_default_config``) and the starter
config of ``relay init`` (``ray_jobs/init_task.py``) are written by ``commented_yaml``.
Invariant: ``yaml.safe_load`` of the text, validated as the model's class, gives back an
equal model (the values are written, never summarised; only comments are added).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import yaml
from pydantic import BaseModel

WIDTH = 100
"""Comment lines are wrapped to this many characters (indentation included)."""


def scalar(value: object) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def render(model: BaseModel, indent: int = 0, notes: Mapping[str, str] | None = None, prefix: str = "") -> list[str]:
    """YAML lines for ``model``, each field preceded by its description as a comment; ``notes``
    maps a dotted key (``data.path``) to a comment added at the end of that field's line."""
    pad = " " * indent
    notes = notes or {}
    lines: list[str] = []
    for name, field in type(model).model_fields.items():
        key = f"{prefix}{name}"
        for chunk in textwrap.wrap(field.description or "", WIDTH - indent):
            lines.append(f"{pad}# {chunk}")
        note = f"  # {notes[key]}" if key in notes else ""
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:{note}")
            lines.extend(render(value, indent + 2, notes, f"{key}."))
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            lines.append(f"{pad}{name}:{note}")
            for item in value:
                dumped = yaml.safe_dump([item.model_dump(mode="json")], sort_keys=False, width=10_000)
                lines.extend(pad + "  " + line for line in dumped.rstrip().splitlines())
        else:
            plain = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            if isinstance(plain, tuple):
                plain = list(plain)
            lines.append(f"{pad}{name}: {scalar(plain)}{note}")
    return lines


def commented_yaml(model: BaseModel, header: list[str], notes: Mapping[str, str] | None = None) -> str:
    """The whole file: ``header`` lines (each written as a comment; an empty one as an empty
    line), then ``render(model, notes=notes)``, ending in a newline."""
    head = [f"# {line}".rstrip() if line else "" for line in header]
    return "\n".join([*head, *render(model, notes=notes)]) + "\n"
