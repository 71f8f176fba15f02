"""Parsing and strict validation of the judge's reply.

Two parsing modes, chosen by ``judge.response_format``:

* **strict** (``json_schema`` and ``json_object``): after surrounding
  whitespace and at most one Markdown code fence are removed, the content must
  be exactly one JSON object, with nothing before or after it.
* **tolerant** (``none``, for providers without a JSON mode): the first JSON
  object found in the content is taken (leading prose and code fences are
  skipped), but a reply that quotes a prompt fence (``<<<CANDIDATE`` ...) is
  rejected: a judge echoing its input would otherwise hand us whatever JSON
  the policy wrote inside the candidate block.

Validation is the same in both modes and never clamps: every rubric criterion
must be an object whose ``score`` is a finite JSON number in [0, 10] (not a
string, not a bool) and whose ``reason``, if present, is a string; with a
request check, ``request_check.inappropriate`` and ``.blocked`` must be JSON
booleans. Keys outside the rubric are ignored. Causes: ``judge_empty``,
``judge_malformed``, ``judge_invalid_verdict``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from rewards.errors import RewardError
from rewards.judge.prompt import CANDIDATE_CLOSE, CANDIDATE_OPEN, REQUEST_CLOSE, REQUEST_OPEN, as_rubric
from rewards.judge.rubric import REQUEST_CHECK_KEY, CriterionConfig, Rubric, Verdict

__all__ = [
    "CriterionVerdict",
    "RequestCheckVerdict",
    "extract_first_json_object",
    "parse_verdict",
    "parse_verdict_object",
    "reply_object",
]

_CODE_FENCE_RE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n(.*)\n```$", re.DOTALL)
_PROMPT_FENCES = (REQUEST_OPEN, REQUEST_CLOSE, CANDIDATE_OPEN, CANDIDATE_CLOSE)


class CriterionVerdict(BaseModel):
    """The judge's verdict on one criterion. ``score`` must be a finite JSON
    number in [0, 10] (not a string, not a bool); out of range is an error."""

    model_config = ConfigDict(extra="ignore")

    reason: StrictStr = ""
    score: Annotated[float, Field(strict=True, ge=0, le=10, allow_inf_nan=False)]


class RequestCheckVerdict(BaseModel):
    """The judge's request check: two JSON booleans (and a reason)."""

    model_config = ConfigDict(extra="ignore")

    reason: StrictStr = ""
    inappropriate: StrictBool
    blocked: StrictBool


def extract_first_json_object(text: str) -> dict[str, object] | None:
    """The first JSON object found in ``text``, or None.

    Tolerates leading prose and Markdown code fences: decoding is tried at each
    ``{`` in order, and the first position that decodes to an object wins.
    """
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _strict_object(content: str) -> dict[str, object]:
    text = content.strip()
    fenced = _CODE_FENCE_RE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise RewardError("judge_malformed", f"the reply is not one JSON object: {_short(content)!r}") from None
    if not isinstance(value, dict):
        raise RewardError("judge_malformed", f"the reply is JSON but not an object: {_short(content)!r}")
    return value


def _tolerant_object(content: str) -> dict[str, object]:
    if any(fence in content for fence in _PROMPT_FENCES):
        raise RewardError("judge_malformed", "the reply quotes the fenced prompt")
    value = extract_first_json_object(content)
    if value is None:
        raise RewardError("judge_malformed", f"no JSON object in reply {_short(content)!r}")
    return value


def reply_object(content: str, strict: bool) -> dict[str, object]:
    """The JSON object of a non-blank reply, parsed strictly or tolerantly (module docstring);
    ``judge_malformed`` when there is none."""
    return _strict_object(content) if strict else _tolerant_object(content)


def parse_verdict_object(value: dict[str, object], rubric: Rubric | Sequence[CriterionConfig]) -> Verdict:
    """Validate a decoded verdict against ``rubric`` (``judge_invalid_verdict`` on any problem)."""
    rubric = as_rubric(rubric)
    scores: dict[str, float] = {}
    reasons: dict[str, str] = {}
    problems: list[str] = []
    for criterion in rubric.criteria:
        if criterion.name not in value:
            problems.append(f"missing criterion {criterion.name!r}")
            continue
        try:
            item = CriterionVerdict.model_validate(value[criterion.name])
        except ValidationError as err:
            problems.append(f"{criterion.name!r}: {err.errors()[0]['msg']}")
            continue
        scores[criterion.name], reasons[criterion.name] = item.score, item.reason
    check: RequestCheckVerdict | None = None
    if rubric.request_check is not None:
        try:
            check = RequestCheckVerdict.model_validate(value.get(REQUEST_CHECK_KEY))
        except ValidationError as err:
            problems.append(f"{REQUEST_CHECK_KEY!r}: {err.errors()[0]['msg']}")
    if problems:
        raise RewardError("judge_invalid_verdict", "; ".join(problems))
    if check is None:
        return Verdict(scores, reasons=reasons)
    reasons[REQUEST_CHECK_KEY] = check.reason
    return Verdict(scores, check.inappropriate, check.blocked, reasons)


def parse_verdict(content: str | None, rubric: Rubric | Sequence[CriterionConfig], *, strict: bool = True) -> Verdict:
    """The validated verdict in a judge reply (see the module docstring).

    Raises ``RewardError`` with cause ``judge_empty`` for blank content,
    ``judge_malformed`` when no acceptable JSON object is found and
    ``judge_invalid_verdict`` when the object does not validate.
    """
    if not content or not content.strip():
        raise RewardError("judge_empty", "the judge returned empty content")
    return parse_verdict_object(reply_object(content, strict), rubric)
