"""The learner's forward ahead of the judge: the same step as without it, or none held."""

import pytest
import torch

from actors.learner.forward_ahead import HeldForward, held_rows
from actors.learner.learner import Learner, LearnerConfig
from actors.messages import PromptItem, RolloutResult, Sample, TrainBatch
from algorithms.config import AlgorithmConfig

PROMPTS = [[1, 10, 11], [1, 12]]
COMPLETIONS = [[[20, 21, 2], [22]], [[23, 24], [25, 26, 27, 2]]]  # two samples per prompt
LR = 1e-2


def _generated(step: int = 0) -> RolloutResult:
    samples = []
    for p, (prompt, group) in enumerate(zip(PROMPTS, COMPLETIONS)):
        item = PromptItem(prompt_id=f"p{p}", row=p, prompt_text="", prompt_token_ids=prompt)
        for i, completion in enumerate(group):
            samples.append(Sample(item, f"g{p}", i, "", completion, [-6.9] * len(completion), step, truncated=False))
    return RolloutResult(batch_index=step, samples=samples, generate_s=0.0, worker_id=0)


def _batch(rows: list[int], step: int = 0) -> TrainBatch:
    """A train batch of the generated samples ``rows`` (flat index: prompt * 2 + sample)."""
    pairs = [(PROMPTS[r // 2], COMPLETIONS[r // 2][r % 2]) for r in rows]
    return TrainBatch(
        step=step,
        prompt_token_ids=[p for p, _ in pairs],
        completion_token_ids=[c for _, c in pairs],
        sampling_logprobs=[[-6.9] * len(c) for _, c in pairs],
        advantages=[1.0, -1.0, 0.5, -0.5][: len(rows)],
        policy_versions=[step] * len(rows),
        group_ids=[r // 2 for r in rows],
    )


def _learner(model, **algorithm) -> Learner:
    return Learner(LearnerConfig(lr=LR), model, AlgorithmConfig(**algorithm), temperature=0.7)


def _trained(learner: Learner, batch: TrainBatch, ahead: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    if ahead:
        assert learner.forward_ahead(batch.step, _generated(batch.step)) > 0
    result = learner.train(batch)
    return result.metrics, {k: v.clone() for k, v in learner.backend.model.state_dict().items()}


def test_the_held_forward_gives_the_step_it_would_have_taken(tiny_model_config) -> None:
    """Every generated sample trained, in order: loss, statistics and new weights equal
    those of the step that ran its own forward."""
    plain, plain_weights = _trained(_learner(tiny_model_config), _batch([0, 1, 2, 3]), ahead=False)
    held, held_weights = _trained(_learner(tiny_model_config), _batch([0, 1, 2, 3]), ahead=True)
    assert held["learner/forward_ahead"] == 1.0 and held["time/forward_ahead_s"] > 0
    assert "learner/forward_ahead" not in plain
    for key in ("loss", "grad_norm", "entropy", "logprob_gap/mean_abs"):
        assert held[key] == plain[key], key
    for name, value in plain_weights.items():
        assert torch.equal(held_weights[name], value), name  # the same computation, bit for bit


def test_a_batch_of_some_samples_in_another_order_uses_their_held_rows(tiny_model_config) -> None:
    """One sample left out (unscored) and the rest reordered: the held rows are picked by
    their tokens, and the step equals a plain step on that batch."""
    batch = _batch([3, 0, 2])
    plain, plain_weights = _trained(_learner(tiny_model_config), batch, ahead=False)
    held, held_weights = _trained(_learner(tiny_model_config), batch, ahead=True)
    assert held["learner/forward_ahead"] == 1.0
    assert held["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert held["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5)
    # The held rows were computed in a batch of four, padded otherwise, so the gradients agree to
    # rounding, not bit for bit. Adam's first step moves each weight by lr * g / (|g| + eps): where a
    # gradient is near eps that rounding can move the update by up to 2 * lr; everywhere else the
    # weights agree to 1e-6. Wrong rows would change the loss above and most of the weights.
    total = off = 0
    for name, value in plain_weights.items():
        diff = (held_weights[name] - value).abs()
        assert float(diff.max()) <= 2 * LR, name
        total, off = total + diff.numel(), off + int((diff > 1e-6).sum())
    assert off <= total * 1e-3, (off, total)


@pytest.mark.parametrize("kl_penalty", ["loss", "reward"])
def test_the_reference_forward_runs_ahead_too_and_the_step_is_the_same(tiny_model_config, kl_penalty: str) -> None:
    """With the KL term on, the frozen reference's forward is held with the policy's: the step
    calls the reference no more, and its loss, KL and new weights equal a plain step's."""

    def batch(rows: list[int], step: int = 0) -> TrainBatch:  # the KL folded into the reward needs rewards
        return TrainBatch(**{**_batch(rows, step).__dict__, "rewards": [1.0, 0.0, 0.5, 0.25][: len(rows)]})

    algorithm = {"beta": 0.05, "kl_penalty": kl_penalty}
    plain, plain_weights = _trained(_learner(tiny_model_config, **algorithm), batch([0, 1, 2, 3]), ahead=False)
    learner = _learner(tiny_model_config, **algorithm)
    calls: list[int] = []
    reference_logprobs = learner._reference_logprobs
    learner._reference_logprobs = lambda t: calls.append(len(t["input_ids"])) or reference_logprobs(t)  # type: ignore[method-assign]
    assert learner.forward_ahead(0, _generated(0)) > 0 and calls == [4]  # the four samples, ahead
    held = learner.train(batch([0, 1, 2, 3])).metrics
    assert calls == [4] and held["learner/forward_ahead"] == 1.0  # none in the step
    for key in ("loss", "grad_norm", "kl"):
        assert held[key] == plain[key], key
    for name, value in plain_weights.items():
        assert torch.equal(learner.backend.model.state_dict()[name], value), name
    learner.forward_ahead(1, _generated(1))
    learner.train(TrainBatch(**{**batch([0, 1], step=1).__dict__, "completion_token_ids": [[20, 21, 2], [30]]}))
    assert calls == [4, 4, 2]  # a batch the held rows do not cover computes its own


def test_a_batch_row_that_was_not_held_makes_the_step_run_its_own_forward(tiny_model_config) -> None:
    batch = _batch([0, 1])
    other = TrainBatch(**{**batch.__dict__, "completion_token_ids": [[20, 21, 2], [30]]})
    learner = _learner(tiny_model_config)
    learner.forward_ahead(0, _generated(0))
    metrics = learner.train(other).metrics
    assert metrics["learner/forward_ahead"] == 0.0  # counted, not used
    assert learner._held is None


def test_nothing_is_held_for_another_version_or_several_optimiser_steps(tiny_model_config) -> None:
    learner = _learner(tiny_model_config)
    assert learner.forward_ahead(1, _generated(1)) == 0.0 and learner._held is None  # learner at version 0
    assert "learner/forward_ahead" not in learner.train(_batch([0, 1])).metrics
    several = _learner(tiny_model_config, num_iterations=2)
    assert several.forward_ahead(0, _generated(0)) == 0.0 and several._held is None
    small = Learner(LearnerConfig(micro_batch_size=2), tiny_model_config, AlgorithmConfig(), temperature=0.7)
    assert small.forward_ahead(0, _generated(0)) == 0.0  # four samples do not fit one micro-batch


def test_held_rows_match_tokens_and_use_each_duplicate_once() -> None:
    same = ((1, 2), (3,))
    held = HeldForward(
        step=4,
        rows={same: [0, 2], ((1, 2), (5,)): [1]},
        logps=torch.zeros(3, 2),
        entropy=torch.zeros(3, 2),
        seconds=0.1,
    )
    batch = TrainBatch(
        step=4,
        prompt_token_ids=[[1, 2]] * 3,
        completion_token_ids=[[5], [3], [3]],
        sampling_logprobs=[[0.0]] * 3,
        advantages=[0.0] * 3,
        policy_versions=[4] * 3,
    )
    assert held_rows(held, batch) == [1, 0, 2]
    three_of_two = TrainBatch(**{**batch.__dict__, "completion_token_ids": [[3], [3], [3]]})
    assert held_rows(held, three_of_two) is None
    assert held_rows(held, TrainBatch(**{**batch.__dict__, "step": 5})) is None
