"""The built-in demo's defaults, and a run on its own data without them.

The pydantic defaults are the domain-name demo as a whole: its dataset
(``DEMO_DATA_FILES``), its system prompt, its prompt field ``description``, the
``seed000`` rubric and the heuristic stand-in judge started when no judge
endpoint is set. As soon as ``data.path`` names another dataset, none of those
applies unless the config sets it (``own_task_defaults``, run on the raw config
before validation, so each component still receives only its own section):

==============================  ====================  ===============================
key                             the demo              a run on its own data.path
==============================  ====================  ===============================
``data.system_prompt``          the domain-name one   null (none)
``data.prompt_field``           ``description``       ``prompt`` (TRL's column)
``judge.rubric``                ``seed000``           null (``judge.criteria`` on the
                                                      neutral template, or an error)
``judge.local_server.enabled``  null: started when    null means false: started only
                                no endpoint is set    when set to true
``eval.label_field``            ``inappropriate``     null
==============================  ====================  ===============================

A key the config sets (to any value, null included) keeps its value. Then
``check_own_task`` makes a ``judge`` reward term without a judge endpoint or
without a rubric a one-line error naming the keys to set, and so is the demo's
system prompt set explicitly on one's own data (a copy of ``cpu_default.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from actors.model.loading import DOMAIN_TASK_SYSTEM_PROMPT

REPO_ROOT = Path(__file__).resolve().parents[2]

DEMO_DATA_FILES = (
    "configs/data/business_descriptions.jsonl",
    "configs/data/business_descriptions_bad_third.jsonl",
    "configs/data/business_descriptions_heldout.jsonl",
)
"""The domain-name demo's datasets (training, the SmolLM2 study's variant, held-out), relative to
the repository root; a ``data.path`` naming one of them (relative or absolute) is the demo."""

OWN_DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"system_prompt": None, "prompt_field": "prompt"},
    "judge": {"rubric": None},
}
"""Per section, the value a key takes on one's own data when the config does not set it."""


def is_demo_data(path: str) -> bool:
    """True when ``path`` is one of the demo's datasets (``DEMO_DATA_FILES``)."""
    if path in DEMO_DATA_FILES:
        return True
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError):
        return False
    return any(resolved == (REPO_ROOT / name).resolve() for name in DEMO_DATA_FILES)


def _as_dict(section: Any) -> tuple[dict[str, Any], set[str]]:
    """A section as given (a mapping or a validated model) and the keys it sets."""
    if isinstance(section, BaseModel):
        return dict(section), set(section.model_fields_set)
    if isinstance(section, dict):
        return dict(section), set(section)
    return {}, set()


def _with(section: Any, values: dict[str, Any]) -> Any:
    """``section`` with ``values`` added; a model stays a model (``model_copy``), anything else a dict."""
    if not values:
        return section
    if isinstance(section, BaseModel):
        return section.model_copy(update=values)
    return {**(section if isinstance(section, dict) else {}), **values}


def data_path(raw: Any, section: str = "data", default: str = DEMO_DATA_FILES[0]) -> str:
    """The ``data.path`` a raw config gives (``default``: the field's default when it sets none)."""
    values, _ = _as_dict(raw.get(section) if isinstance(raw, dict) else None)
    path = values.get("path")
    return path if isinstance(path, str) else default


def own_task_defaults(raw: Any, data_default: str, label_section: str | None = "eval") -> Any:
    """A raw job config (a mapping of sections) with the own-data defaults of the module table
    filled in where it names its own dataset; unchanged for the demo's (or anything else).

    ``data_default`` is the job's default ``data.path``; ``label_section`` the section whose
    ``label_field`` defaults to the demo's request-check label (``eval`` for training, ``data``
    for the evaluation job)."""
    if not isinstance(raw, dict) or is_demo_data(data_path(raw, default=data_default)):
        return raw
    out = dict(raw)
    defaults = {name: dict(values) for name, values in OWN_DATA_DEFAULTS.items()}
    if label_section is not None:
        defaults.setdefault(label_section, {})["label_field"] = None
    for name, values in defaults.items():
        current, given = _as_dict(out.get(name))
        template = name == "data" and current.get("prompt_template") is not None
        missing = {k: v for k, v in values.items() if k not in given and not (template and k == "prompt_field")}
        if missing:
            out[name] = _with(out.get(name, {}), missing)
    out["judge"] = _stand_in_off(out.get("judge", {}))
    return out


def _stand_in_off(judge: Any) -> Any:
    """``judge`` with ``local_server.enabled`` null resolved to false (own data: explicit only)."""
    values, _ = _as_dict(judge)
    server = values.get("local_server", {})
    server_values, _ = _as_dict(server)
    if server_values.get("enabled") is not None:
        return judge
    return _with(judge, {"local_server": _with(server, {"enabled": False})})


def check_own_task(path: str, system_prompt: str | None, judge: Any, terms: list[Any]) -> None:
    """``check_judge_term``, and a ValueError (one line) when a run on its own ``path`` still has
    the demo's system prompt (e.g. a copy of ``configs/cpu_default.yaml`` with data.path changed)."""
    if not is_demo_data(path) and system_prompt == DOMAIN_TASK_SYSTEM_PROMPT:
        raise ValueError(
            f"data.path {path} is your own dataset but data.system_prompt is the domain-name demo's "
            "(copied from configs/cpu_default.yaml?); set your own system prompt, or null for none"
        )
    check_judge_term(path, judge, terms)


def check_judge_term(path: str, judge: Any, terms: list[Any]) -> None:
    """ValueError (one line) when a ``judge`` reward term on one's own ``path`` has no judge
    endpoint (``judge.base_url``, ``judge.endpoints`` or ``judge.local_server.enabled: true``),
    no rubric (``judge.rubric`` or ``judge.criteria``), or a remote endpoint but not
    ``judge.model`` (the stand-in's model name is the demo's). ``judge`` is a ``JudgeConfig``."""
    if is_demo_data(path) or not any(t.name == "judge" for t in terms):
        return
    missing = []
    if not judge.has_endpoint:
        missing.append("judge.base_url (an OpenAI-compatible endpoint serving your judge model)")
    if judge.rubric is None and judge.criteria is None:
        missing.append("judge.rubric (a rubric file) or judge.criteria")
    own_models = bool(judge.endpoints) and all(e.model for e in judge.endpoints)
    if judge.is_remote and "model" not in judge.model_fields_set and not own_models:
        missing.append("judge.model (the model your endpoint serves)")
    if missing:
        raise ValueError(
            f"data.path {path} is your own dataset, so the domain-name demo's judge does not apply: "
            f"the 'judge' reward term needs {' and '.join(missing)}; "
            "or drop 'judge' from reward.terms (judge.local_server.enabled: true starts the heuristic stand-in)"
        )
