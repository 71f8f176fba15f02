"""Typed messages exchanged between the pipeline stages.

Flow: the driver turns dataset rows into ``PromptItem``s, a rollout worker turns
each into a group of ``Sample``s (a ``RolloutResult``), the judge pool turns
those into ``ScoredSample``s (a ``ScoreResult``), and the driver packs the scored
groups of one step into a ``TrainBatch`` for the learner.

Everything here is plain data (lists, not tensors) so that it pickles cheaply
through Ray and can be built by hand in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PromptItem:
    """One prompt of the dataset, ready to generate from.

    Invariant: ``prompt_token_ids`` is the chat-formatted, tokenised form of
    ``prompt_text`` (with the generation prompt appended); ``prompt_text`` is the
    raw user text a judge sees. ``fields`` is the dataset row the prompt came
    from, as plain JSON values (what reward terms read as ``ctx.row``; empty
    when the prompt was not loaded from a dataset). ``messages`` is the chat
    conversation of a conversational row as the dataset gave it (what TRL-style
    reward functions get as ``prompts``; None for a text prompt).
    """

    prompt_id: str
    row: int
    prompt_text: str
    prompt_token_ids: list[int]
    fields: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Sample:
    """One completion of one prompt.

    Invariants: ``len(sampling_logprobs) == len(completion_token_ids)``;
    ``sampling_logprobs[t]`` is the log-probability, under the temperature-scaled
    distribution of policy ``policy_version``, of ``completion_token_ids[t]``.
    ``truncated`` is True when generation stopped at the token limit, not at EOS.
    ``policy_version`` is the version that generated the first token (a lower
    bound, used for staleness); ``final_policy_version`` is set only when the
    weights changed while the sample was generated (vLLM updates in flight) and
    is then the version that generated its last token, so the sample's tokens
    come from versions in ``[policy_version, final_policy_version]`` and each
    ``sampling_logprobs[t]`` is that of the version that sampled token t.
    Samples share a ``group_id`` exactly when they were generated for the same
    prompt in the same request (the group whose rewards form the baseline);
    ``group_index`` is the position within the group. ``finished_at`` is the
    wall-clock time (``time.time()``) the worker had its last token (0: unknown).
    """

    prompt: PromptItem
    group_id: str
    group_index: int
    completion_text: str
    completion_token_ids: list[int]
    sampling_logprobs: list[float]
    policy_version: int
    truncated: bool
    final_policy_version: int | None = None
    finished_at: float = 0.0


@dataclass(frozen=True)
class RolloutResult:
    """The groups a rollout worker generated for one call.

    Invariant: ``samples`` holds ``group_size`` consecutive samples per prompt, in
    the order the prompts were given.
    """

    batch_index: int
    samples: list[Sample]
    generate_s: float
    worker_id: int


@dataclass(frozen=True)
class ScoredSample:
    """A sample with its reward.

    Invariant: exactly one of ``reward`` and ``reward_error`` is None. An
    unscored sample (``reward is None``) is never trained on and never enters a
    group baseline; it is kept for logging so that nothing is lost.
    """

    sample: Sample
    reward: float | None
    reward_error: str | None
    terms: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreResult:
    """The judge pool's answer for one ``RolloutResult``.

    ``judge_metrics`` holds the call's judge health metrics (retries,
    failures by cause, cache hits, rule-gated samples, peak requests in
    flight, a latency histogram) and its per-term (``term/<name>/*``) and
    per-engine (``engine/<name>/*``) metrics, combined per step by
    ``rewards.metrics.aggregate_judge_metrics``. ``score_lags`` has one entry per
    group: seconds from the group's last generated token (``Sample.finished_at``)
    to its score (what streaming to the judge keeps short).
    """

    batch_index: int
    scored: list[ScoredSample]
    generate_s: float
    judge_s: float
    judge_requests: int
    judge_failures: int
    judge_metrics: dict[str, float] = field(default_factory=dict)
    score_lags: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TrainBatch:
    """Everything the learner needs for one gradient step.

    Invariants: all lists have one entry per trained sequence; ``advantages``
    were computed from scored samples only; ``policy_versions[i] <= step`` and
    ``step - policy_versions[i] <= max_staleness``. ``rewards`` (the shaped
    scalar reward each advantage was computed from) and ``group_ids`` (equal
    exactly for samples of the same group) are either empty or one per
    sequence; the learner needs them only to re-estimate advantages itself
    (KL folded into the reward).
    """

    step: int
    prompt_token_ids: list[list[int]]
    completion_token_ids: list[list[int]]
    sampling_logprobs: list[list[float]]
    advantages: list[float]
    policy_versions: list[int]
    rewards: list[float] = field(default_factory=list)
    group_ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.advantages)


@dataclass(frozen=True)
class TrainResult:
    """What one learner step reports back."""

    step: int
    policy_version: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class WeightsUpdate:
    """A versioned set of policy weights, as numpy arrays keyed by name.

    Two kinds: full weights with plain Hugging Face names (LoRA merged in), when
    ``adapter_config`` is None; or only a LoRA adapter, with peft's names
    (``base_model.model....lora_A.weight``) and ``adapter_config`` the peft
    ``LoraConfig`` as a JSON-able dict, applied on top of the rollout's base weights.
    Invariant: ``version`` equals the number of learner batches trained to make them.
    """

    version: int
    tensors: dict[str, object]
    export_s: float
    adapter_config: dict | None = None

    @property
    def is_adapter(self) -> bool:
        return self.adapter_config is not None

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(t, "nbytes", 0)) for t in self.tensors.values())


@dataclass(frozen=True)
class SequenceBatch:
    """Whole token sequences with a per-token loss mask, for supervised and preference objectives.

    Invariants: ``len(loss_masks[i]) == len(input_ids[i])``; ``loss_masks[i][t]``
    is 1 where token ``t`` is a training target (0 for prompt tokens; position 0
    is never a target, nothing predicts it). With ``pairs`` the rows come two by
    two, row ``2k`` the chosen and row ``2k + 1`` the rejected completion of
    pair ``k`` (same prompt), and a *unit* is a pair; otherwise a unit is a row.
    ``step`` is the learner version this batch trains (ignored by scoring and
    evaluation).
    """

    step: int
    input_ids: list[list[int]]
    loss_masks: list[list[int]]
    pairs: bool = False

    def __len__(self) -> int:
        """Units: pairs with ``pairs``, else rows."""
        return len(self.input_ids) // 2 if self.pairs else len(self.input_ids)

    def rows(self, units: slice) -> slice:
        """The rows of ``units``."""
        per = 2 if self.pairs else 1
        return slice(units.start * per, units.stop * per)

    def target_tokens(self, units: slice) -> int:
        """Training-target tokens in ``units``."""
        return sum(sum(mask) for mask in self.loss_masks[self.rows(units)])
