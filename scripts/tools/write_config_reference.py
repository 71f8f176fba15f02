"""Write the configuration reference of every job from its pydantic models.

    python -m scripts.tools.write_config_reference          # rewrites docs/reference/configuration.md
    python -m scripts.tools.write_config_reference --check  # exit 1 when the file is not current

One section per job (``relay train``, ``sft``, ``preference``, ``evaluate``), one table per
top-level config section, one row per key: the dotted key, its type (with its bounds), its
default and its description. Invariants: the rows are exactly the models' fields, in declaration
order, nested sections flattened under their dotted prefix (``judge.retry.max_attempts``), the
items of a list or mapping of sections written ``reward.terms[*].name`` and
``conditions.<name>.policy``; a default is the job's default config's value, rendered as
``configs/cpu_default.yaml`` renders it (``ray_jobs/config/commented_yaml.py``), so the page changes exactly
when a model's fields, types, defaults or descriptions do. ``tests/scripts/test_config_reference.py``
checks the committed page is current.
"""

from __future__ import annotations

import argparse
import html
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ray_jobs.cli import COMMANDS
from ray_jobs.config.commented_yaml import scalar as yaml_scalar  # the default config's rendering of a value
from ray_jobs.config.evaluation import EvaluateConfig
from ray_jobs.config.experiment import ExperimentConfig
from ray_jobs.preference import PreferenceConfig
from ray_jobs.sft import SftConfig

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "reference" / "configuration.md"
COMMAND = "python -m scripts.tools.write_config_reference"
MAX_DEFAULT_CHARS = 80
"""A longer default is cut here (``…``); the full value is in the job's commented default config."""


@dataclass(frozen=True)
class Job:
    command: str
    config: type[BaseModel]


JOBS = (
    Job("train", ExperimentConfig),
    Job("sft", SftConfig),
    Job("preference", PreferenceConfig),
    Job("evaluate", EvaluateConfig),
)

_BOUNDS: tuple[tuple[type, str, str], ...] = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)
"""A bound's class, its attribute, its sign."""


REQUIRED = "\0required"
"""The default of a key that has none (an item's ``name``, an engine's ``model``): written *required*."""


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    description: str


def _section_class(annotation: object) -> type[BaseModel] | None:
    """The config section a field holds: a model, or a model or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(found) == 1:
            return _section_class(found[0])
    return None


def type_name(annotation: object) -> str:
    """A type as a reader writes it in YAML terms: ``int > 0 or "auto"``, ``list[RewardTermConfig]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " or ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return f"{type_name(args[0])}{_bounds(list(args[1:]))}"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _bounds(metadata: list[object]) -> str:
    parts = [f"{sign} {getattr(m, attr)}" for m in metadata for kind, attr, sign in _BOUNDS if isinstance(m, kind)]
    return f" ({', '.join(parts)})" if parts else ""


def default_text(value: object) -> str:
    text = yaml_scalar(value.model_dump(mode="json") if isinstance(value, BaseModel) else _plain(value))
    text = " ".join(text.split())
    return text if len(text) <= MAX_DEFAULT_CHARS else text[: MAX_DEFAULT_CHARS - 1] + "…"


def _plain(value: object) -> object:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [v.model_dump(mode="json") if isinstance(v, BaseModel) else _plain(v) for v in value]
    if isinstance(value, dict):
        return {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else _plain(v) for k, v in value.items()}
    return value


def _field_default(field: FieldInfo) -> object:
    return field.get_default(call_default_factory=True, validated_data={})


def rows(section: type[BaseModel], value: BaseModel | None, prefix: str) -> Iterator[Row]:
    """Every key of ``section`` under ``prefix``; ``value`` the job default's instance (None: the
    class's own defaults, for the items of a list or mapping)."""
    for name, field in section.model_fields.items():
        key = f"{prefix}{name}"
        current = getattr(value, name) if value is not None else _field_default(field)
        required = value is None and field.is_required()
        nested = _section_class(field.annotation)
        kind = type_name(field.annotation) + _bounds(list(field.metadata))
        default = REQUIRED if required or current is PydanticUndefined else default_text(current)
        if nested is not None and (current is None or isinstance(current, BaseModel)):
            if current is None:
                yield Row(key, kind, default, field.description or "")
            yield from rows(nested, current, f"{key}.")
            continue
        yield Row(key, kind, default, field.description or "")
        item = _item_class(field.annotation)
        if item is not None:
            items_key = f"{key}.<name>." if typing.get_origin(_unwrap(field.annotation)) is dict else f"{key}[*]."
            yield from rows(item, None, items_key)


def _unwrap(annotation: object) -> object:
    """``X | None`` -> ``X``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if a is not type(None)]
        return found[0] if len(found) == 1 else annotation
    return annotation


def _item_class(annotation: object) -> type[BaseModel] | None:
    """The section class of a list's items or a mapping's values, if they are sections."""
    bare = _unwrap(annotation)
    if typing.get_origin(bare) in (list, dict) and typing.get_args(bare):
        return _section_class(typing.get_args(bare)[-1])
    return None


def _cell(text: str) -> str:
    """Markdown table text: HTML and emphasis characters escaped, pipes escaped."""
    text = html.escape(" ".join(text.split()), quote=False)
    for char in "\\*[]|":  # an intraword _ (snake_case) is no emphasis in Python-Markdown or GitHub
        text = text.replace(char, "\\" + char)
    return text


def _code(text: str) -> str:
    """A code span (literal), or escaped text where a pipe would end the table cell."""
    return f"`{text}`" if "|" not in text and "`" not in text else _cell(text)


def section_table(name: str, field: FieldInfo, value: object) -> list[str]:
    section = _section_class(field.annotation)
    lines = [f"### `{name}`", "", _cell(field.description or ""), ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    if section is not None and isinstance(value, BaseModel):
        found = list(rows(section, value, f"{name}."))
    else:
        kind = type_name(field.annotation) + _bounds(list(field.metadata))
        found = [Row(name, kind, default_text(value), field.description or "")]
        item = _item_class(field.annotation)
        if item is not None:
            dict_items = typing.get_origin(_unwrap(field.annotation)) is dict
            found += rows(item, None, f"{name}.<name>." if dict_items else f"{name}[*].")
    for row in found:
        default = "*required*" if row.default == REQUIRED else _code(row.default)
        lines.append(f"| {_code(row.key)} | {_cell(row.type)} | {default} | {_cell(row.description)} |")
    return [*lines, ""]


def job_section(job: Job) -> list[str]:
    module, about = COMMANDS[job.command]
    doc = " ".join((job.config.__doc__ or "").split())
    lines = [f"## relay {job.command}", ""]
    lines += [f"{about[0].upper()}{about[1:]}: `relay {job.command} --config FILE [a.b=value ...]`", ""]
    lines += [f"(or `python -m {module}`); config class `{job.config.__module__}.{job.config.__name__}`. {doc}", ""]
    default = job.config()
    for name, field in job.config.model_fields.items():
        lines += section_table(name, field, getattr(default, name))
    return lines


def reference() -> str:
    """The whole page."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the pydantic models; do not edit by hand. -->",
        "",
        "Every key of every job's config, generated from the models the jobs validate against "
        f"(regenerate with `{COMMAND}`). A config file sets any of them in YAML; on the command "
        "line `a.b=value` overrides one (the value parsed as YAML). An unknown key or an invalid value "
        "is a one-line error before anything starts. Defaults are the CPU demo's; a default longer than "
        f"{MAX_DEFAULT_CHARS} characters is cut (`…`): `configs/cpu_default.yaml` spells out the train "
        "job's in full, and `relay init` writes a commented starter config.",
        "",
        *(f"- [relay {job.command}](#relay-{job.command})" for job in JOBS),
        "",
    ]
    for job in JOBS:
        lines += job_section(job)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed page is not current")
    args = parser.parse_args(argv)
    text = reference()
    if args.check:
        current = REFERENCE.exists() and REFERENCE.read_text() == text
        if not current:
            print(f"{REFERENCE.relative_to(REPO)} is not current: run `{COMMAND}`", file=sys.stderr)
        return 0 if current else 1
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(text)
    print(f"wrote {REFERENCE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
