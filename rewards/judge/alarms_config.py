"""The ``judge.alarms`` section: when the step metrics warn that the policy may be
hacking the judge (the checks themselves are ``ray_jobs/rl/judge_watch.py``'s)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

__all__ = ["AlarmConfig"]


class AlarmConfig(BaseModel):
    """Thresholds of the reward-hacking alarms, checked every step over the last
    ``window_steps`` steps; an alarm sets ``alarm/<name>`` to 1 and logs one warning
    when it starts (and one line when it ends)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Compute the alarms (the bias diagnostics are logged either way).")
    window_steps: PositiveInt = Field(default=10, description="Steps the alarms look back over.")
    check: str | None = Field(
        default=None,
        description="What the judge's score is compared with: a reward term's name (a rule or your function, weight 0 is fine) or judge.ensemble member's name. null: the ensemble's second member if there is one, else the first rule-based term, else no divergence alarm.",
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
        description="Length alarm: the rank correlation of score with completion length over the window rises above this, and above the first window's.",
    )
    min_distinct_ratio: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Collapse alarm: the mean share of distinct completions per prompt group over the window falls below this.",
    )
