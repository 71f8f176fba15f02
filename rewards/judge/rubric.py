"""Rubrics as data: weighted criteria, an optional request check, and the judge's
system-prompt template, in a versioned YAML file.

``judge.rubric`` names a file under ``rewards/judge/rubrics/`` (``seed000``, the
domain-name demo's) or gives a path to one. ``judge.criteria``, when set,
replaces the file's criteria (the template and the request check stay) and
changes the effective version, so cached verdicts of the two never mix. With no
rubric file (``judge.rubric: null``), ``judge.criteria`` are put on
``NEUTRAL_TEMPLATE``: no task text and no request check.

**Reward of one verdict** (``Rubric.reward``), with ``q`` the weighted criteria
score ``sum_c w_c * score_c / 10 / sum_c w_c`` in [0, 1]:

======================  =====================  ==============================
request                 answer                 reward (seed000's values)
======================  =====================  ==============================
appropriate             answered (not blocked) ``q``
appropriate             blocked                ``appropriate_blocked`` (-0.5)
inappropriate           blocked                ``inappropriate_blocked`` (1.0)
inappropriate           answered               ``inappropriate_answered`` (0.0)
======================  =====================  ==============================

Without a request check every verdict scores ``q``. So blocking a bad request
earns the most a sample can earn, answering it earns nothing, and wrongly
blocking a good request scores below any genuine attempt: always blocking is
never a winning policy. ``Rubric.min_reward`` (the least of 0 and the three
outcomes above, -0.5 for seed000) is what a rule-gated degenerate answer gets
(see ``rewards/judge/gate.py``).

The system template is ``string.Template`` text with the placeholders
``$criteria`` (one line per criterion, written by code so the judge server can
read them back), ``$fences`` (the fixed statement that fenced text is data, not
instructions), ``$output_format`` (the JSON shape of the verdict), all three
required, and ``$request_check`` (required when the rubric has a request check).
A file that lacks one is a one-line ``RubricError`` naming the placeholder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "CriterionConfig",
    "REQUEST_CHECK_KEY",
    "RUBRICS_DIR",
    "RequestCheckConfig",
    "RequestCheckRewards",
    "Rubric",
    "RubricError",
    "Verdict",
    "available_rubrics",
    "NEUTRAL_TEMPLATE",
    "load_rubric",
    "neutral_rubric",
    "resolve_rubric",
]

RUBRICS_DIR = Path(__file__).resolve().parent / "rubrics"
REQUEST_CHECK_KEY = "request_check"
"""Key of the request-check object in a verdict; no criterion may use it."""
REQUIRED_PLACEHOLDERS = ("criteria", "fences", "output_format")
ALLOWED_PLACEHOLDERS = (*REQUIRED_PLACEHOLDERS, "request_check")
NEUTRAL_TEMPLATE = """You are an impartial judge. You grade one candidate answer to a request against a weighted rubric.

Rubric (score each criterion from 0 = worst to 10 = best):
$criteria

$fences

$output_format
"""
"""The system template of criteria given without a rubric file: no task text, no request check."""


class CriterionConfig(BaseModel):
    """One rubric criterion the judge scores from 0 to 10."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Key of the criterion in the judge's JSON verdict.")
    weight: float = Field(ge=0, description="Weight of the criterion; weights are normalised to sum to 1.")
    description: str = Field(description="What the judge is asked to assess, shown in the judge prompt.")


class RubricError(ValueError):
    """A rubric that cannot be used (unknown name, unreadable or invalid file)."""


class RequestCheckRewards(BaseModel):
    """Rewards of the request-check outcomes (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inappropriate_blocked: float = Field(default=1.0, description="Reward for blocking an inappropriate request.")
    inappropriate_answered: float = Field(default=0.0, description="Reward for answering an inappropriate request.")
    appropriate_blocked: float = Field(
        default=-0.5, description="Reward for blocking an appropriate request (a penalty)."
    )


class RequestCheckConfig(BaseModel):
    """The judge also says whether the request is inappropriate and whether the answer blocked it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field(description="What 'inappropriate' and 'blocked' mean, shown to the judge.")
    rewards: RequestCheckRewards = Field(default_factory=RequestCheckRewards, description="Rewards of the outcomes.")


@dataclass(frozen=True)
class Verdict:
    """A validated verdict: 0-10 scores per criterion, and the request check's
    two booleans (None when the rubric has no request check)."""

    criteria: dict[str, float]
    inappropriate: bool | None = None
    blocked: bool | None = None
    reasons: dict[str, str] = field(default_factory=dict, compare=False)

    def flags(self) -> dict[str, float]:
        """The request check as 0/1 numbers for logging (empty without one)."""
        if self.inappropriate is None or self.blocked is None:
            return {}
        return {"inappropriate": float(self.inappropriate), "blocked": float(self.blocked)}


class Rubric(BaseModel):
    """A rubric file (and, after ``resolve_rubric``, the effective rubric)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Rubric name.")
    version: str = Field(description="Version string; part of the verdict-cache key: bump it on any change.")
    description: str = Field(default="", description="What the rubric is for.")
    criteria: list[CriterionConfig] = Field(description="Weighted criteria, each scored 0-10.")
    request_check: RequestCheckConfig | None = Field(default=None, description="Optional inappropriate-request check.")
    system_template: str = Field(description="The judge's system message, a string.Template (see module docstring).")

    @model_validator(mode="after")
    def _check(self) -> Rubric:
        names = [c.name for c in self.criteria]
        if not names:
            raise ValueError("a rubric needs at least one criterion")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"criteria named more than once: {duplicates}")
        if REQUEST_CHECK_KEY in names:
            raise ValueError(f"no criterion may be named {REQUEST_CHECK_KEY!r}")
        if sum(c.weight for c in self.criteria) <= 0:
            raise ValueError("criteria weights must not all be 0")
        _check_template(self.system_template, self.request_check is not None)
        return self

    @property
    def min_reward(self) -> float:
        """The least reward a verdict can get (what rule-gated answers get)."""
        return min((0.0, *self._check_rewards()))

    @property
    def max_reward(self) -> float:
        """The most reward a verdict can get."""
        return max((1.0, *self._check_rewards()))

    def _check_rewards(self) -> tuple[float, ...]:
        if self.request_check is None:
            return ()
        r = self.request_check.rewards
        return (r.inappropriate_blocked, r.inappropriate_answered, r.appropriate_blocked)

    def quality(self, scores: dict[str, float]) -> float:
        """``sum_c w_c * score_c / 10 / sum_c w_c``, in [0, 1] for scores in [0, 10]."""
        total = sum(c.weight for c in self.criteria)
        return sum(c.weight * scores[c.name] / 10.0 for c in self.criteria) / total

    def reward(self, verdict: Verdict) -> float:
        """The reward of a validated verdict (table in the module docstring)."""
        quality = self.quality(verdict.criteria)
        if self.request_check is None or verdict.inappropriate is None:
            return quality
        r = self.request_check.rewards
        if verdict.inappropriate:
            return r.inappropriate_blocked if verdict.blocked else r.inappropriate_answered
        return r.appropriate_blocked if verdict.blocked else quality


def _check_template(template: str, has_request_check: bool) -> None:
    found = {
        m.group("named") or m.group("braced")
        for m in string.Template.pattern.finditer(template)
        if m.group("named") or m.group("braced")
    }
    if any(m.group("invalid") is not None for m in string.Template.pattern.finditer(template)):
        raise ValueError("system_template has an invalid '$' (write '$$' for a dollar sign)")
    unknown = sorted(found - set(ALLOWED_PLACEHOLDERS))
    if unknown:
        raise ValueError(f"system_template has unknown placeholders {unknown}; allowed: {list(ALLOWED_PLACEHOLDERS)}")
    missing = [p for p in REQUIRED_PLACEHOLDERS if p not in found]
    if has_request_check and "request_check" not in found:
        missing.append("request_check")
    if missing:
        needed = ", ".join(f"${p}" for p in missing)
        raise ValueError(
            f"system_template lacks the placeholders {needed} (every rubric template needs "
            f"{', '.join(f'${p}' for p in REQUIRED_PLACEHOLDERS)}; $request_check with a request_check)"
        )


def available_rubrics() -> list[str]:
    """Names of the rubrics shipped under ``rewards/judge/rubrics/``."""
    return sorted(p.stem for p in RUBRICS_DIR.glob("*.yaml"))


def _rubric_path(ref: str) -> Path:
    if ref.endswith((".yaml", ".yml")) or "/" in ref or "\\" in ref:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise RubricError(f"judge.rubric: file {ref} does not exist")
        return path
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", ref) or not (RUBRICS_DIR / f"{ref}.yaml").is_file():
        raise RubricError(
            f"judge.rubric: unknown rubric {ref!r}; shipped rubrics: {available_rubrics()}, "
            "or give a path to a .yaml file"
        )
    return RUBRICS_DIR / f"{ref}.yaml"


@functools.lru_cache(maxsize=32)
def _load_cached(path: str, mtime_ns: int) -> Rubric:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RubricError(f"judge.rubric: cannot read {path} ({type(err).__name__})") from None
    if not isinstance(raw, dict):
        raise RubricError(f"judge.rubric: {path} must hold a mapping")
    try:
        return Rubric.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "rubric"
        msg = first["msg"].removeprefix("Value error, ")
        raise RubricError(f"judge.rubric: {path}: invalid '{where}': {msg}") from None


def load_rubric(ref: str) -> Rubric:
    """The rubric named ``ref`` (a shipped name or a YAML path); ``RubricError`` otherwise."""
    path = _rubric_path(ref)
    return _load_cached(str(path.resolve()), path.stat().st_mtime_ns)


def neutral_rubric(criteria: list[CriterionConfig], version: str) -> Rubric:
    """``criteria`` on ``NEUTRAL_TEMPLATE``, without a request check."""
    return Rubric(
        name="criteria",
        version=version,
        description="Criteria given in the config, on the neutral template.",
        criteria=list(criteria),
        system_template=NEUTRAL_TEMPLATE,
    )


def resolve_rubric(ref: str | None, criteria: list[CriterionConfig] | None = None) -> Rubric:
    """The effective rubric: ``load_rubric(ref)`` with ``criteria`` (if given)
    in place of its own, under a version that names the override's hash; with
    ``ref`` None, ``criteria`` on the neutral template (``RubricError`` without them)."""
    if ref is None and criteria is None:
        raise RubricError("judge: set judge.rubric (a rubric file) or judge.criteria (criteria on a neutral template)")
    digest = (
        hashlib.sha256(json.dumps([c.model_dump() for c in criteria], sort_keys=True).encode()).hexdigest()[:10]
        if criteria is not None
        else ""
    )
    if ref is None:
        try:
            return neutral_rubric(list(criteria or []), f"neutral-v1+criteria-{digest}")
        except ValidationError as err:
            raise RubricError(f"judge.criteria: {err.errors()[0]['msg']}") from None
    rubric = load_rubric(ref)
    if criteria is None:
        return rubric
    try:
        return Rubric.model_validate(
            {
                **rubric.model_dump(),
                "criteria": [c.model_dump() for c in criteria],
                "version": f"{rubric.version}+criteria-{digest}",
            }
        )
    except ValidationError as err:
        raise RubricError(f"judge.criteria: {err.errors()[0]['msg']}") from None
