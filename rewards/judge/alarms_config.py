"""The ``judge.alarms`` section: when the step metrics warn that the policy may be
hacking the judge (the checks themselves are ``ray_jobs/rl/judge_watch.py``'s)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

__all__ = ["MEMBER_KEY_PREFIX", "AlarmConfig"]

MEMBER_KEY_PREFIX = "judge/member/"
"""An ensemble member's reward appears in ``ScoredSample.terms`` as ``judge/member/<name>``."""


class AlarmConfig(BaseModel):
    """Thresholds of the reward-hacking alarms, checked every step over the last
    ``window_steps`` steps; an alarm sets ``alarm/<name>`` to 1 and logs one warning
    when it starts (and one line when it ends)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Compute the alarms (the bias diagnostics are logged either way).")
    window_steps: PositiveInt = Field(
        default=10,
        description="Steps the alarms look back over; no alarm fires before that many steps were seen (after a resume too).",
    )
    check: str | None = Field(
        default=None,
        description="What the judge's score is compared with (divergence alarm): a reward term's name (a rule or your function; weight 0 is fine) or a judge.ensemble member's name. null: the ensemble's second member if there is one, else the first reward term other than judge, else no divergence alarm.",
    )
    min_agreement: float = Field(
        default=0.0,
        ge=-1,
        le=1,
        description="Divergence alarm: the rank correlation between the judge's score and the check over the window falls below this.",
    )
    max_length_correlation: float = Field(
        default=0.6,
        ge=-1,
        le=1,
        description="Length alarm: the rank correlation of the judge's score with completion length over the window rises above this, and above the first full window's.",
    )
    min_distinct_ratio: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Collapse alarm: the mean share of distinct completions per prompt group over the window falls below this.",
    )

    def check_key(self, term_names: Sequence[str], member_names: Sequence[str]) -> str | None:
        """The ``ScoredSample.terms`` key the judge's score is compared with: ``check`` (a term's
        name first, else a member's as ``judge/member/<name>``) or, when null, the second member,
        else the first term other than judge; None: no divergence alarm. ``ValueError`` (one line)
        when ``check`` names neither a term nor a member, or names the judge itself."""
        others = [name for name in term_names if name != "judge"]
        if self.check is None:
            if len(member_names) >= 2:
                return MEMBER_KEY_PREFIX + member_names[1]
            return others[0] if others else None
        if self.check in others:
            return self.check
        if self.check in member_names:
            return MEMBER_KEY_PREFIX + self.check
        raise ValueError(
            f"judge.alarms.check {self.check!r} names neither a reward term other than judge "
            f"({others or 'none'}) nor a judge.ensemble member ({list(member_names) or 'none'})"
        )
