"""docs/reference/configuration.md is current (scripts/tools/write_config_reference.py), and it
documents every key of every job's config with its default."""

from __future__ import annotations

import re

from pydantic import BaseModel

from scripts.tools.write_config_reference import COMMAND, JOBS, REFERENCE, reference


def test_the_committed_configuration_reference_is_current() -> None:
    assert REFERENCE.exists(), f"{REFERENCE} is missing: run `{COMMAND}`"
    assert REFERENCE.read_text() == reference(), f"docs/reference/configuration.md is not current: run `{COMMAND}`"


def _keys(model: BaseModel, prefix: str = "") -> dict[str, object]:
    """Dotted key -> default value, for the fields of ``model`` and the sections it holds."""
    found: dict[str, object] = {}
    for name, _ in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found.update(_keys(value, f"{prefix}{name}."))
        else:
            found[f"{prefix}{name}"] = value
    return found


def test_every_key_of_every_job_has_a_row_with_its_default() -> None:
    text = reference()
    for job in JOBS:
        part = text.split(f"\n## relay {job.command}\n", 1)[1].split("\n## relay ", 1)[0]
        rows = {
            m["key"]: m["default"]
            for m in re.finditer(r"^\| `(?P<key>[^`]+)` \| [^|]* \| (?P<default>.*?) \| ", part, re.M)
        }
        keys = _keys(job.config())
        assert keys and set(keys) <= set(rows), f"relay {job.command}: no row for {sorted(set(keys) - set(rows))}"
        # a few defaults derived here, rendered as YAML writes them
        for key, value in keys.items():
            if isinstance(value, bool):
                assert rows[key] == f"`{str(value).lower()}`", key
            elif isinstance(value, int) and not isinstance(value, bool):
                assert rows[key] == f"`{value}`", key
