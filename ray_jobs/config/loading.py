"""Config loading for every job: defaults <- YAML file <- ``a.b=value`` overrides,
validated as a pydantic model, with one-line errors.

Unknown keys are rejected with an error that names the key and the nearest valid
one; ``redacted`` masks secret-looking values before a config is recorded.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ray_jobs.config.run_paths import with_run_paths

_SECRET_NAMES = ("api_key", "apikey", "access_key", "token", "secret", "password")


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the key."""


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside ``annotation`` (X, X | None, list[X]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_class(arg)
            if found is not None:
                return found
    return None


def check_keys(raw: Any, model: type[BaseModel], prefix: str = "") -> None:
    """Raise ``ConfigError`` for the first key in ``raw`` that ``model`` lacks."""
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            check_keys(item, model, f"{prefix}[{i}]")
        return
    if not isinstance(raw, dict):
        return
    fields = model.model_fields
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{(prefix + '.' if prefix else '') + near[0]}'?" if near else ""
            raise ConfigError(f"unknown config key '{dotted}'{hint}")
        annotation = fields[key].annotation
        sub = _model_class(annotation)
        if sub is not None:
            check_keys(value, sub, dotted)
        elif typing.get_origin(annotation) is dict and isinstance(value, dict):  # name -> section (conditions)
            entry = _model_class(typing.get_args(annotation)[-1])
            if entry is not None:
                for name, item in value.items():
                    check_keys(item, entry, f"{dotted}.{name}")


def apply_override(raw: dict, override: str) -> None:
    """Set ``a.b.c=value`` in ``raw``; the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form a.b=value")
    dotted, text = override.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override '{override}' has an empty key")
    node = raw
    for key in keys[:-1]:
        nxt = node.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{override}': '{key}' is not a section")
        node = nxt
    try:
        node[keys[-1]] = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{override}': value is not valid YAML ({exc.__class__.__name__})") from None


ConfigModel = typing.TypeVar("ConfigModel", bound=BaseModel)


def load_validated(
    model: type[ConfigModel], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> ConfigModel:
    """Defaults <- YAML file <- ``a.b=value`` overrides, validated as ``model`` (any job's
    config); errors are one-line ``ConfigError``s."""
    raw: dict = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        raw = loaded
    for override in overrides:
        apply_override(raw, override)
    check_keys(raw, model)
    try:
        raw = with_run_paths(raw)  # run:<name>/... model paths under run.output_root
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"invalid config value at '{where}': {first['msg']}") from None


def redacted(config: BaseModel) -> dict:
    """The resolved config as plain data with any secret-looking value masked.

    Keys are never stored in configs (only the *name* of their environment
    variable, e.g. ``judge.api_key_env``), so this is a second line of defence.
    """

    def scrub(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: scrub(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v, key) for v in node]
        lowered = key.lower()
        if node and any(lowered == w or lowered.endswith("_" + w) for w in _SECRET_NAMES):
            return "***"
        return node

    return scrub(config.model_dump(mode="json"))
